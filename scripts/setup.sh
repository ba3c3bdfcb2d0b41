#!/usr/bin/env bash
# Set up everything gansvc needs on a fresh machine: venv, pinned wheels, the Fashion-MNIST
# Debian package (when root), and the C++/CUDA extension (incremental after the first build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "gansvc setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
# A stamp keeps repeated runs fast: pip is asked again only when requirements.txt changed.
if ! cmp -s requirements.txt .venv/.requirements.stamp 2>/dev/null; then
    echo "gansvc setup: installing pinned wheels (first time: ~2 min, 5.7 GB)" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt .venv/.requirements.stamp
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "gansvc setup: installing dataset-fashion-mnist" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
        || echo "gansvc setup: could not install dataset-fashion-mnist; pass a data root instead" >&2
fi

# The CUDA build on a machine without a GPU needs these (see ENVIRONMENT facts in the README).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-2}
# flock: several builds in one checkout (parallel shells, tests) must not share ninja's build dir at once.
exec 9>.venv/.build.lock
flock 9
if [ ! -x .venv/bin/gansvc ]; then
    echo "gansvc setup: installing gansvc (editable) and building the extension" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
# Incremental rebuild of gansvc._C and regeneration of the gRPC stubs (seconds when nothing changed).
.venv/bin/python setup.py --quiet build_ext --inplace

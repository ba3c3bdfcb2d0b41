#!/usr/bin/env bash
# Set up everything gansvc needs on a fresh machine: venv, pinned wheels, the Fashion-MNIST
# Debian package (when root), and the C++/CUDA extension (built once, incremental afterwards).
#
# The terminal gets one line per step with its time; everything the tools print (pip's notices,
# hundreds of compiler warnings from torch's headers) goes to the log, build/setup.log by default
# (GANSVC_SETUP_LOG overrides). When a step fails, the log's last lines are shown and the script
# exits with the step's status.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LOG=${GANSVC_SETUP_LOG:-build/setup.log}
mkdir -p "$(dirname "$LOG")"
# flock: several set-ups in one checkout (parallel shells, tests) must not share pip, the log or
# ninja's build dir at once.
exec 9>"$LOG.lock"
flock 9
: >"$LOG"

# Microseconds since the epoch (bash 5's EPOCHREALTIME, whose decimal mark follows the locale).
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
# seconds_since START_US: "12.3 s"
seconds_since() {
    local tenths=$((($(now_us) - $1) / 100000))
    echo "$((tenths / 10)).$((tenths % 10)) s"
}
say() { echo "gansvc setup: $*" >&2; }
SETUP_START=$(now_us)

# step DESCRIPTION COMMAND...: run COMMAND with its output in the log; print DESCRIPTION and its time.
step() {
    local what=$1 started status=0
    started=$(now_us)
    shift
    printf 'gansvc setup: %s ... ' "$what" >&2
    printf '\n===== %s: %s\n===== $ %s\n' "$(date '+%F %T')" "$what" "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 </dev/null || status=$?
    if [ "$status" -ne 0 ]; then
        echo "FAILED after $(seconds_since "$started") (exit $status)" >&2
        echo "----- last 40 lines of $LOG -----" >&2
        tail -n 40 "$LOG" >&2
        echo "----- the whole log: $LOG" >&2
        exit "$status"
    fi
    echo "done ($(seconds_since "$started"))" >&2
}

if [ ! -x .venv/bin/python ]; then
    step "creating .venv with $PYTHON" "$PYTHON" -m venv .venv
fi
# A stamp keeps repeated runs fast: pip is asked again only when requirements.txt changed. --no-compile: pip
# would byte-compile every module of every wheel (torch alone has thousands); Python compiles what it imports.
if ! cmp -s requirements.txt .venv/.requirements.stamp 2>/dev/null; then
    step "installing the pinned wheels of requirements.txt (torch, grpcio, ...; first time ~2 min, 5.7 GB)" \
        .venv/bin/pip install --disable-pip-version-check --no-input --progress-bar off --no-compile -r requirements.txt
    cp requirements.txt .venv/.requirements.stamp
fi

install_dataset() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
}
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # A missing data package is not fatal: a user can pass a data root instead.
    ( step "installing the Debian package dataset-fashion-mnist" install_dataset ) \
        || say "could not install dataset-fashion-mnist; pass a data root instead"
fi

# The CUDA build on a machine without a GPU needs these (see "Building the extension" in the README).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-2}
# One build of gansvc._C and the gRPC stubs, in place: ninja keeps its objects under build/, so a later run
# recompiles only what changed (seconds when nothing did).
step "building the C++/CUDA extension and the gRPC stubs (first time ~2 min, then incremental)" \
    .venv/bin/python setup.py --quiet build_ext --inplace
if [ ! -x .venv/bin/gansvc ]; then
    # Metadata, the console script and the editable path only: the extension built above is used as it is.
    step "installing gansvc (editable)" env GANSVC_SKIP_EXTENSION=1 \
        .venv/bin/pip install --disable-pip-version-check --no-input --no-build-isolation --no-deps -e .
fi
# The worked plugin package (docs/plugins.md), which the test suite trains through the service.
if [ -f examples/plugins/pyproject.toml ] \
    && ! compgen -G ".venv/lib/python*/site-packages/gansvc_example_plugins-*.dist-info" >/dev/null; then
    step "installing the example plugins (examples/plugins, editable)" \
        .venv/bin/pip install --disable-pip-version-check --no-input --no-build-isolation --no-deps -e examples/plugins
fi
say "ready in $(seconds_since "$SETUP_START") (full log: $LOG)"

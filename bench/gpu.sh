#!/usr/bin/env bash
# The GPU check in one command, for the day a GPU node is at hand: build the extension with its CUDA
# kernels, run the kernel tests on CUDA, the kernel self-test (`gansvc doctor`, where this version has
# it), bench/losses.py, bench/fid.py, and a short training job on the GPU scored by `gansvc eval` there.
# Every step's command, time, status and output go into one markdown report, whose path is printed at the
# end; a failing step is recorded and the next one still runs; the exit status is 1 if any step failed.
#
#   bash bench/gpu.sh              # on a GPU machine: ~10 min on an H100-class GPU
#   bash bench/gpu.sh --dry-run    # anywhere: the same steps on the CPU with tiny sizes (< 3 min), no GPU needed
#   bash bench/gpu.sh --python python3 [--quick]
#                                  # a GPU image that brings its own PyTorch and no package index: build the
#                                  # extension in place with that Python instead of scripts/setup.sh's .venv;
#                                  # --quick: a shorter bench/losses.py, no bench/fid.py (host CPU work) and a
#                                  # 1 000-step job (~4 min on an H200)
#
# Environment: GANSVC_GPU_REPORT_DIR (default runs/gpu-report) holds report.md and each step's files.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
QUICK=0
SYSTEM_PY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --quick) QUICK=1 ;;
        --python)
            [ $# -ge 2 ] || { echo "bench/gpu.sh: --python needs a Python that has torch" >&2; exit 2; }
            SYSTEM_PY=$2
            shift ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (expected --dry-run, --quick or --python PY)" >&2; exit 2 ;;
    esac
    shift
done

OUT=${GANSVC_GPU_REPORT_DIR:-runs/gpu-report}
rm -rf "$OUT"
mkdir -p "$OUT"
REPORT="$OUT/report.md"
if [ -n "$SYSTEM_PY" ]; then
    # That Python's own torch, numpy and scipy; gansvc is imported from this checkout, not installed.
    PY=$(command -v "$SYSTEM_PY") || { echo "bench/gpu.sh: no Python $SYSTEM_PY" >&2; exit 2; }
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    GANSVC=("$PY" -m gansvc)
else
    PY=.venv/bin/python
    GANSVC=(.venv/bin/gansvc)
fi
FAILED=()
START=$SECONDS

# step NAME COMMAND...: run it, append a section (command, status, time, output) to the report.
step() {
    local name=$1 started=$SECONDS status=0
    shift
    echo "bench/gpu.sh: $name ..." >&2
    "$@" >"$OUT/step.log" 2>&1 </dev/null || status=$?
    local took=$((SECONDS - started)) shown="$*"
    # a python -c program is shown by its first line only
    [[ "$shown" == *$'\n'* ]] && shown="${shown%%$'\n'*} …"
    {
        echo
        echo "## $name"
        echo
        echo "\`$shown\` — $( [ "$status" = 0 ] && echo ok || echo "**FAILED (exit $status)**" ), ${took} s"
        echo
        echo '```'
        # A failed build's cause is far above its traceback: show the first error lines before the tail.
        if [ "$status" != 0 ] && grep -qE '(error|Error)[: ]' "$OUT/step.log"; then
            echo "first error lines:"
            grep -nE '(error|Error)[: ]' "$OUT/step.log" | head -n 20 | cut -c1-400
            echo "… the output's end:"
        fi
        # tqdm redraws a bar with carriage returns: keep only the last state of each run of bar lines;
        # long logs keep their end.
        tr '\r' '\n' <"$OUT/step.log" | grep -v '^\s*$' \
            | awk '/%\|/ { bar = $0; next } bar != "" { print bar; bar = "" } { print } END { if (bar != "") print bar }' \
            | tail -n 80
        echo '```'
    } >>"$REPORT"
    rm -f "$OUT/step.log"
    if [ "$status" = 0 ]; then
        echo "bench/gpu.sh: $name: ok (${took} s)" >&2
    else
        echo "bench/gpu.sh: $name: FAILED (exit $status, ${took} s; see $REPORT)" >&2
        FAILED+=("$name")
    fi
    return 0
}

# ------------------------------------------------------------------ what the machine is
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    MODE="dry run (CPU, tiny sizes: proves the script, measures nothing)"
else
    DEVICE=cuda
    MODE="GPU run"
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "bench/gpu.sh: no GPU visible (nvidia-smi -L fails); use --dry-run to check the script on a CPU" >&2
        exit 1
    fi
fi
{
    echo "# gansvc GPU check — $MODE"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') × $(nproc)"
    if [ "$DRY_RUN" = 0 ]; then
        echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | paste -sd ';')"
    fi
} >"$REPORT"

# ------------------------------------------------------------------ build
# On a GPU machine build for its own architecture (setup.py does the same when torch sees the GPU; without
# one it builds 8.0 only). The dry run builds what setup.sh always builds.
if [ "$DRY_RUN" = 0 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ -x "$PY" ]; then
    ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null) \
        && export TORCH_CUDA_ARCH_LIST="$ARCH"
fi
if [ -n "$SYSTEM_PY" ]; then
    step "build (setup.py build_ext --inplace with $PY)" env MAX_JOBS="$(nproc)" GANSVC_SKIP_GRPC_STUBS=1 \
        "$PY" setup.py --quiet build_ext --inplace
else
    step "build (scripts/setup.sh)" bash scripts/setup.sh
fi
step "extension" "$PY" -c '
import torch, gansvc.ops as ops
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "capability %d.%d" % torch.cuda.get_device_capability())
print(f"gansvc._C loaded: {ops.use_extension()}; CUDA kernels compiled: {ops.cuda_compiled()}")
import sys
sys.exit(0 if ops.use_extension() and (ops.cuda_compiled() or not torch.cuda.is_available()) else 1)
'

# ------------------------------------------------------------------ correctness
KERNEL_TESTS=(tests/test_losses.py tests/test_fid_ops.py tests/test_fid_metric.py tests/test_eval_cli.py
    tests/test_fid_device.py)
if [ "$DRY_RUN" = 1 ]; then
    # The CUDA cases skip here with their reason; run the fast loss tests on the CPU to exercise the step.
    step "kernel tests" "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_losses.py -k "cpu or cuda"
else
    step "kernel tests on CUDA" "$PY" -m pytest -q -p no:cacheprovider -rs "${KERNEL_TESTS[@]}" -k cuda
fi
if "${GANSVC[@]}" doctor --help >/dev/null 2>&1; then
    step "kernel self-test (gansvc doctor)" "${GANSVC[@]}" doctor
else
    echo "bench/gpu.sh: kernel self-test: skipped, this version has no \`gansvc doctor\`" >&2
    printf '\n## kernel self-test (gansvc doctor)\n\nnot run: this version of gansvc has no `doctor` command.\n' >>"$REPORT"
fi

# ------------------------------------------------------------------ speed
if [ "$DRY_RUN" = 1 ]; then
    step "bench/losses.py" "$PY" bench/losses.py --device cpu --threads 1 --kinds bce,hinge --sizes 64,4096 --seconds 0.1
    step "bench/fid.py" "$PY" bench/fid.py --dims 64 --repeat 1 --skip-memory
elif [ "$QUICK" = 1 ]; then
    # bench/fid.py times LAPACK on the host's CPU, not the GPU: the quick run leaves it out.
    step "bench/losses.py" "$PY" bench/losses.py --device cuda --seconds 0.3
else
    step "bench/losses.py" "$PY" bench/losses.py --device cuda
    step "bench/fid.py" "$PY" bench/fid.py
fi

# ------------------------------------------------------------------ a short job, trained and scored on the device
if [ "$DRY_RUN" = 1 ]; then
    TRAIN=(--steps 20 --log-every 10 --sample-every 0 --checkpoint-every 0 --eval-samples 200 --threads 1)
    SAMPLES=200
    EVAL=(--kid-subsets 10 --kid-subset-size 100 --n-real 1000)
elif [ "$QUICK" = 1 ]; then
    TRAIN=(--steps 1000 --log-every 100 --sample-every 0 --checkpoint-every 0 --eval-samples 10000)
    SAMPLES=10000
    EVAL=()
else
    TRAIN=(--steps 3000 --log-every 100 --sample-every 1000 --checkpoint-every 1000 --eval-every 1000
        --eval-samples 10000)
    SAMPLES=10000
    EVAL=()
fi
step "training (default recipe, $DEVICE)" "${GANSVC[@]}" train --device "$DEVICE" --seed 0 "${TRAIN[@]}" --out "$OUT/train"
step "sampling" "${GANSVC[@]}" sample "$OUT/train" -n "$SAMPLES" --device "$DEVICE" -o "$OUT/samples.npz"
step "evaluation (gansvc eval, $DEVICE)" "${GANSVC[@]}" eval --fake "$OUT/samples.npz" --real fashion-mnist:test \
    --device "$DEVICE" --quiet --output "$OUT/eval.json" "${EVAL[@]}"
if [ -f "$OUT/train/summary.json" ]; then
    step "training summary" "$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("%d steps in %.1f s of training: %.0f images/s on %s" % (s["step"], s["train_seconds"], s["images_per_sec"], s["device"]))
print("evaluation at the end:", json.dumps(s.get("eval", {})))
' "$OUT/train/summary.json"
fi

# ------------------------------------------------------------------ verdict
{
    echo
    echo "## verdict"
    echo
    if [ "${#FAILED[@]}" = 0 ]; then
        echo "every step passed in $((SECONDS - START)) s"
    else
        echo "FAILED: ${FAILED[*]} ($((SECONDS - START)) s)"
    fi
} >>"$REPORT"
echo "bench/gpu.sh: report: $REPORT ($((SECONDS - START)) s)" >&2
[ "${#FAILED[@]}" = 0 ]

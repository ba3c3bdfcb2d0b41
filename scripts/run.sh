#!/usr/bin/env bash
# The README's run command: set everything up, start the gRPC service on a free 127.0.0.1 port, train
# a short GAN on Fashion-MNIST through it with a live progress bar, print the final metrics (FID
# included), write the sample grid PNG, then stop the service.
#
# Environment: GANSVC_DEMO_DIR (default runs/demo) holds the state, the server log and samples.png;
# GANSVC_DEMO_STEPS (default 6000) and GANSVC_DEMO_MINUTES (default 5, a wall-clock cap) size the job.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

OUT=${GANSVC_DEMO_DIR:-runs/demo}
STEPS=${GANSVC_DEMO_STEPS:-6000}
MINUTES=${GANSVC_DEMO_MINUTES:-5}
STATE="$OUT/state"
READY="$OUT/server.json"
LOG="$OUT/server.log"
GANSVC=.venv/bin/gansvc
mkdir -p "$OUT"
# A fresh state directory: a job left over from an interrupted demo would otherwise resume first.
rm -rf "$STATE" "$READY"

DATA_ROOTS=()
[ -d /usr/share/datasets ] && DATA_ROOTS+=(--data-root /usr/share/datasets)
"$GANSVC" serve --listen 127.0.0.1:0 --state-dir "$STATE" --ready-file "$READY" "${DATA_ROOTS[@]}" >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
    if kill -0 "$SERVER" 2>/dev/null; then
        echo "run.sh: stopping the service" >&2
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

for _ in $(seq 600); do
    [ -s "$READY" ] && break
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "run.sh: the service did not start:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
[ -s "$READY" ] || { echo "run.sh: the service did not get ready in 60 s; see $LOG" >&2; exit 1; }
GANSVC_SERVER=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$READY")
export GANSVC_SERVER
until .venv/bin/python -m gansvc.service.cli health >/dev/null 2>&1; do
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.2
done
echo "run.sh: service SERVING on $GANSVC_SERVER (state in $STATE, log in $LOG)" >&2

# The seeds' MLP GAN (100 -> 256 -> 256 -> 784, BCE, Adam 2e-4): about 6 epochs in a few minutes on
# 2 CPU cores, recognisable clothes, and FID / IS / KID of 5000 samples at the end.
JOB=$("$GANSVC" submit --dataset fashion-mnist --model mlp --loss bce --no-spectral-norm --batch-size 64 \
    --steps "$STEPS" --log-every 100 --sample-every 1000 --checkpoint-every 2000 --eval-samples 5000 \
    --max-minutes "$MINUTES" --seed 0 --request-id "run-sh-$$-$(date +%s)")
"$GANSVC" watch "$JOB"
"$GANSVC" samples "$JOB" -o "$OUT/samples.png"
echo "sample grid: $OUT/samples.png   generator: $STATE/jobs/$JOB/generator.pt"

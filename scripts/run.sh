#!/usr/bin/env bash
# The README's run command: set everything up, start the gRPC service on a free 127.0.0.1 port, train a
# short GAN on Fashion-MNIST through it (examples/demo_fashion_mnist.toml: at most 2 minutes) with a live
# progress bar, print the final metrics (FID included), write the sample grid PNG, then stop the service.
#
# The web dashboard runs beside it (gansvc serve --web); its URL is printed once the service is up.
#
# Environment: GANSVC_DEMO_DIR (default runs/demo) holds the state, the server log and samples.png;
# GANSVC_DEMO_SPEC (default examples/demo_fashion_mnist.toml) is the job; GANSVC_DEMO_STEPS and
# GANSVC_DEMO_MINUTES (a wall-clock cap) override its steps and max_minutes; GANSVC_WEB (HOST:PORT, default
# 127.0.0.1:0, a free port) is where the dashboard listens.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_START=$SECONDS

bash scripts/setup.sh

OUT=${GANSVC_DEMO_DIR:-runs/demo}
SPEC=${GANSVC_DEMO_SPEC:-examples/demo_fashion_mnist.toml}
OVERRIDES=()
[ -n "${GANSVC_DEMO_STEPS:-}" ] && OVERRIDES+=(--steps "$GANSVC_DEMO_STEPS")
[ -n "${GANSVC_DEMO_MINUTES:-}" ] && OVERRIDES+=(--max-minutes "$GANSVC_DEMO_MINUTES")
STATE="$OUT/state"
READY="$OUT/server.json"
LOG="$OUT/server.log"
GANSVC=.venv/bin/gansvc
mkdir -p "$OUT"
# A fresh state directory: a job left over from an interrupted demo would otherwise resume first.
rm -rf "$STATE" "$READY"

DATA_ROOTS=()
[ -d /usr/share/datasets ] && DATA_ROOTS+=(--data-root /usr/share/datasets)
echo "run.sh: starting gansvc serve (log in $LOG)" >&2
SERVE_START=$SECONDS
# --web: the dashboard (gansvc web) beside the server, on GANSVC_WEB (default a free loopback port)
"$GANSVC" serve --listen 127.0.0.1:0 --state-dir "$STATE" --ready-file "$READY" "${DATA_ROOTS[@]}" \
    --web "${GANSVC_WEB:-127.0.0.1:0}" >"$LOG" 2>&1 &
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
until .venv/bin/python -m gansvc.clients.cli health >/dev/null 2>&1; do
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.2
done
echo "run.sh: service SERVING on $GANSVC_SERVER after $((SECONDS - SERVE_START)) s (state in $STATE)" >&2
WEB_URL=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("web_url", ""))' "$READY")
echo "run.sh: web dashboard on $WEB_URL (open it to watch the job; it stops with the service)" >&2

# The seeds' MLP GAN with gansvc's default optimiser and EMA: 12 000 steps in about 2 minutes on one CPU
# thread, and FID / IS / KID of 5 000 samples at the end. The spec file says what it sets and why.
echo "run.sh: submitting $SPEC${OVERRIDES[*]:+ ${OVERRIDES[*]}}" >&2
JOB=$("$GANSVC" submit --spec "$SPEC" "${OVERRIDES[@]}" --request-id "run-sh-$$-$(date +%s)")
STATUS=0
"$GANSVC" watch "$JOB" || STATUS=$?
if [ "$STATUS" -eq 0 ]; then
    "$GANSVC" samples "$JOB" -o "$OUT/samples.png"
    echo "sample grid: $OUT/samples.png   generator: $STATE/jobs/$JOB/generator.pt"
fi
stop_server
ELAPSED=$((SECONDS - RUN_START))
echo "run.sh: done in $((ELAPSED / 60))m$(printf %02d $((ELAPSED % 60)))s" >&2
exit "$STATUS"

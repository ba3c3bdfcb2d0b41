"""The dashboard's cost to a training job: 50 browsers' worth of server-sent-event streams on one running job.

Starts a real `gansvc serve --web` (server and dashboard, fresh state, free 127.0.0.1 ports) and runs the same short
training spec --rounds times each way, alternating (this machine's cores are shared):

- alone: nothing watches the job;
- watched: --streams plain HTTP clients (threads in this process) each read the job page's event stream
  (`GET /api/jobs/ID/events`, what every open job page holds) from the submit to the job's end.

It prints the trainer's own images/s (its summary: images over the seconds inside training steps) and the images
per CPU second of the trainer process (less disturbed by other work on a shared machine) of each run, their medians
and the slow-down (goal <= 3 %); and the event-to-page latency: for every live event each stream received, the
arrival time minus the event's time (when the server stored it), p50 / p99 / max over all streams. The load
(`uptime`) before and after is printed with the figures.

    .venv/bin/python bench/web.py [--streams 50] [--steps 600] [--rounds 2] [--model mlp]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import DATA_ROOT, child_env, gansvc_command, percentile, rates  # noqa: E402
from gansvc.clients.python import GanClient, pb, state_name  # noqa: E402


def uptime() -> str:
    """Return the load line of `uptime`."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Served:
    """`gansvc serve --web` on free loopback ports, its state in `folder`."""

    def __init__(self, folder: Path):
        ready = folder / "ready.json"
        self.log = open(folder / "serve.log", "wb")
        roots = ["--data-root", str(DATA_ROOT)] if DATA_ROOT.is_dir() else []
        self.process = subprocess.Popen(
            [*gansvc_command(), "serve", "--listen", "127.0.0.1:0", "--state-dir", str(folder / "state"),
             "--ready-file", str(ready), "--web", "127.0.0.1:0", *roots],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while not (ready.is_file() and ready.stat().st_size and "web_url" in ready.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gansvc serve --web did not start; see {self.log.name}")
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        self.address, self.web = info["address"], info["web_url"].rstrip("/")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def read_stream(url: str, opened: float, delays: list[float], failures: list[str], guard: threading.Lock) -> None:
    """Read one job page's event stream until its `end` event; add each live event's delivery delay."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    mine = []
    try:
        connection.request("GET", parsed.path)
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read(300)!r}")
        kind = "message"
        while True:
            line = response.readline()
            if not line:
                raise RuntimeError("the stream ended before the job's end event")
            arrived = time.time()
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                if kind == "end":
                    break
                if kind == "message":
                    stored = json.loads(line[6:])["time"]
                    if stored >= opened:  # events stored before the stream began are a replay, not a delivery
                        mine.append(arrived - stored)
                kind = "message"
    except Exception as error:  # noqa: BLE001 - a failed stream is reported, the run goes on
        with guard:
            failures.append(f"{type(error).__name__}: {error}")
    finally:
        connection.close()
        with guard:
            delays.extend(mine)


def run(client: GanClient, web: str, spec: dict, streams: int) -> tuple[tuple[float, float], list[float], int]:
    """Run `spec` with `streams` event streams open on it; return (trainer rates, delays, failed streams)."""
    job = client.submit_training(spec, request_id=f"bench-web-{uuid.uuid4()}")
    delays: list[float] = []
    failures: list[str] = []
    guard = threading.Lock()
    opened = time.time()
    readers = [threading.Thread(target=read_stream, daemon=True,
                                args=(f"{web}/api/jobs/{job.id}/events", opened, delays, failures, guard))
               for _ in range(streams)]  # fmt: skip
    for reader in readers:
        reader.start()
    done = client.wait(job.id, timeout=3600)
    for reader in readers:
        reader.join(timeout=60)
    if done.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job {job.id} ended {state_name(done.state)}: {done.message}")
    for failure in failures[:3]:
        print(f"  a stream failed: {failure}", flush=True)
    return rates(done.summary), delays, len(failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50, help="event streams on the watched job (default 50)")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (default 600)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument("--model", default="mlp", help="model of the job (default mlp: a short CPU run)")
    parser.add_argument("--threads", type=int, default=1, help="the trainer's torch threads (default 1)")
    args = parser.parse_args()
    spec = {
        "dataset": "fashion-mnist", "model": args.model, "steps": args.steps, "threads": args.threads, "seed": 0,
        "log_every": 10, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
    }  # fmt: skip
    print(f"load before: {uptime()}", flush=True)
    alone, watched, delays, failed = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="gansvc-bench-web-") as tmp:
        served = Served(Path(tmp))
        try:
            with GanClient(served.address) as client:
                client.wait_until_serving()
                print(f"server {served.address}, dashboard {served.web}; {os.cpu_count()} CPUs; {args.model}, "
                      f"{args.steps} steps, log every 10; {args.streams} streams", flush=True)  # fmt: skip
                for round_ in range(args.rounds):
                    rate, _, _ = run(client, served.web, spec, 0)
                    alone.append(rate)
                    rate, round_delays, round_failed = run(client, served.web, spec, args.streams)
                    watched.append(rate)
                    delays += round_delays
                    failed += round_failed
                    print(f"round {round_ + 1}: alone {alone[-1][0]:.0f} img/s ({alone[-1][1]:.0f} per CPU s); "
                          f"with {args.streams} streams {watched[-1][0]:.0f} img/s ({watched[-1][1]:.0f} per CPU s); "
                          f"{len(round_delays)} events delivered", flush=True)  # fmt: skip
        finally:
            served.stop()
    print(f"load after: {uptime()}")
    rate_alone, rate_watched = (statistics.median(r[0] for r in rs) for rs in (alone, watched))
    cpu_alone, cpu_watched = (statistics.median(r[1] for r in rs) for rs in (alone, watched))
    print(f"images/s (median of {args.rounds}): alone {rate_alone:.0f}, with {args.streams} streams "
          f"{rate_watched:.0f}: {100 * (1 - rate_watched / rate_alone):+.1f} % slower (goal <= 3 %)")  # fmt: skip
    print(f"images per CPU second: alone {cpu_alone:.0f}, watched {cpu_watched:.0f}: "
          f"{100 * (1 - cpu_watched / cpu_alone):+.1f} % slower")
    if delays:
        ms = 1e3
        print(f"event-to-page latency over {len(delays)} deliveries: p50 {percentile(delays, 50) * ms:.1f} ms, "
              f"p99 {percentile(delays, 99) * ms:.1f} ms, max {max(delays) * ms:.1f} ms")  # fmt: skip
    print(f"failed streams: {failed}")
    return 1 if failed or not delays else 0


if __name__ == "__main__":
    sys.exit(main())

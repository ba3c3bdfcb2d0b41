"""The service's own cost: submit latency, a job's speed through the service vs `gansvc train`, WatchJob latency.

Starts a real `gansvc serve` (its own process, a fresh state directory, a free 127.0.0.1 port) and measures:

- SubmitTraining latency, p50 / p99 over --submits tiny jobs (each with its own request id), which are
  then cancelled (the first one starts a worker meanwhile, as on a live server);
- images/s of one training spec through the service vs the same spec run by `gansvc train` in its own
  process, alternating the two (--rounds each) because this machine's cores are shared; both the
  trainer's own rate (its summary's images_per_sec, training steps only) and the end-to-end wall time
  (submit to SUCCEEDED vs the `gansvc train` process, start-up included) are compared, and the images per
  CPU second of the trainer process, which other work on a shared machine disturbs far less. Goal: <= 5 %;
- WatchJob delivery latency: for every event of those jobs, the time a live watcher received it minus
  the event's time (when the server stored it), p50 / p99 / max.

    .venv/bin/python bench/service.py [--submits 50] [--steps 300] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gansvc.clients.python import TERMINAL, GanClient, pb, state_name  # noqa: E402

DATA_ROOT = Path("/usr/share/datasets")


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) of values, linearly interpolated (NumPy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def gansvc_command() -> list[str]:
    """Return the command that runs the gansvc CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "gansvc"]


def child_env() -> dict:
    """Return the environment for child processes: this checkout's code first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Server:
    """A `gansvc serve` process on a free loopback port with its state in `state_dir`."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        ready = state_dir.parent / "server.json"
        self.log = open(state_dir.parent / "server.log", "wb")
        roots = ["--data-root", str(DATA_ROOT)] if DATA_ROOT.is_dir() else []
        self.process = subprocess.Popen(
            [*gansvc_command(), "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir),
             "--ready-file", str(ready), *roots],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (ready.is_file() and ready.stat().st_size):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gansvc serve did not start; see {self.log.name}")
            time.sleep(0.1)
        self.address = json.loads(ready.read_text())["address"]

    def stop(self) -> None:
        """Stop the server the way an operator does (SIGTERM), and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------- submit latency
def submit_latency(client: GanClient, count: int) -> list[float]:
    """Submit `count` tiny jobs, cancel them all, wait until they have ended; return each submit's seconds."""
    tiny = {
        "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 16, "z_dim": 8, "batch_size": 16, "steps": 1000,
        "eval_samples": 0, "sample_every": 0, "checkpoint_every": 0, "tensorboard": False, "threads": 1,
    }  # fmt: skip
    seconds, ids = [], []
    for _ in range(count):
        started = time.perf_counter()
        job = client.submit_training(tiny, request_id=f"bench-{uuid.uuid4()}")
        seconds.append(time.perf_counter() - started)
        ids.append(job.id)
    for job_id in ids:
        client.cancel(job_id)
    for job_id in ids:
        job = client.wait(job_id, timeout=300)
        if job.state not in TERMINAL:
            raise RuntimeError(f"{job_id} did not end: {state_name(job.state)}")
    return seconds


# ---------------------------------------------------------------------- one spec, two ways
def rates(summary) -> tuple[float, float]:
    """Return (images per wall second, images per CPU second of the trainer process) of a trainer summary."""
    images = float(summary["images_per_sec"]) * float(summary["train_seconds"])
    return float(summary["images_per_sec"]), images / float(summary["train_cpu_seconds"])


def run_through_service(client: GanClient, spec: dict) -> tuple[tuple[float, float], float, list[float]]:
    """Run `spec` as a service job with a live watcher; return (trainer rates, wall s, delivery latencies)."""
    delays: list[float] = []
    started = time.perf_counter()
    job = client.submit_training(spec, request_id=f"bench-{uuid.uuid4()}")

    def watch() -> None:
        asked = time.time()
        for event in client.watch(job.id):
            stored = event.time.ToNanoseconds() / 1e9
            if stored >= asked:  # events stored before the watch began are a replay, not a delivery
                delays.append(time.time() - stored)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watcher.join(timeout=3600)
    done = client.get_job(job.id)
    wall = time.perf_counter() - started
    if done.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"service job {job.id} ended {state_name(done.state)}: {done.message}")
    return rates(done.summary), wall, delays


def run_train_cli(spec: dict, folder: Path) -> tuple[tuple[float, float], float]:
    """Run `spec` with `gansvc train` in its own process; return (trainer rates, wall s of the process)."""
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = folder / f"train-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    subprocess.run(
        [*gansvc_command(), "train", "--spec", str(spec_file), "--out", str(out)], check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    wall = time.perf_counter() - started
    return rates(json.loads((out / "summary.json").read_text())), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=50, help="tiny jobs submitted for the latency (default 50)")
    parser.add_argument("--steps", type=int, default=300, help="steps of the throughput job (default 300)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides (default 1)")
    parser.add_argument("--model", default="dcgan", help="model of the throughput job (default: dcgan, the default)")
    args = parser.parse_args()
    spec = {
        "dataset": "fashion-mnist", "model": args.model, "steps": args.steps, "threads": args.threads, "seed": 0,
        "log_every": 10, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
    }  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="gansvc-bench-service-") as tmp:
        folder = Path(tmp)
        (folder / "state").mkdir()
        server = Server(folder / "state")
        try:
            with GanClient(server.address) as client:
                client.wait_until_serving()
                print(f"server {server.address}; {os.cpu_count()} CPUs; torch threads {args.threads} on both sides")
                submit = submit_latency(client, args.submits)
                service_rates, service_walls, delays = [], [], []
                cli_rates, cli_walls = [], []
                for round_ in range(args.rounds):
                    rate, wall = run_train_cli(spec, folder)
                    cli_rates.append(rate)
                    cli_walls.append(wall)
                    rate, wall, round_delays = run_through_service(client, spec)
                    service_rates.append(rate)
                    service_walls.append(wall)
                    delays += round_delays
                    print(
                        f"round {round_ + 1}: gansvc train {cli_rates[-1][0]:.0f} img/s, {cli_walls[-1]:.1f} s; "
                        f"service {service_rates[-1][0]:.0f} img/s, {service_walls[-1]:.1f} s", flush=True,
                    )  # fmt: skip
        finally:
            server.stop()

    ms = 1e3
    cli_rate, service_rate = (statistics.median(r[0] for r in rs) for rs in (cli_rates, service_rates))
    cli_cpu, service_cpu = (statistics.median(r[1] for r in rs) for rs in (cli_rates, service_rates))
    cli_wall, service_wall = statistics.median(cli_walls), statistics.median(service_walls)
    print()
    print(f"{args.model} on Fashion-MNIST, {args.steps} steps, median of {args.rounds} alternating runs each")
    print(f"{'measure':<46}{'service':>12}{'gansvc train':>14}{'ratio':>9}")
    print(f"{'trainer images/s (training steps only)':<46}{service_rate:>12.0f}{cli_rate:>14.0f}"
          f"{service_rate / cli_rate:>8.3f}×")  # fmt: skip
    print(f"{'trainer images per CPU second of its process':<46}{service_cpu:>12.0f}{cli_cpu:>14.0f}"
          f"{service_cpu / cli_cpu:>8.3f}×")  # fmt: skip
    print(f"{'wall s, submit to SUCCEEDED vs the process':<46}{service_wall:>12.1f}{cli_wall:>14.1f}"
          f"{service_wall / cli_wall:>8.3f}×")  # fmt: skip
    print(f"overhead: {100 * (cli_rate / service_rate - 1):+.1f} % in images/s, "
          f"{100 * (cli_cpu / service_cpu - 1):+.1f} % in images per CPU second (steadier on a shared machine), "
          f"{100 * (service_wall / cli_wall - 1):+.1f} % in wall time (goal <= 5 %)")  # fmt: skip
    print()
    print(f"{'latency':<46}{'p50':>10}{'p99':>10}{'max':>10}{'n':>6}")
    print(f"{'SubmitTraining (ms)':<46}{percentile(submit, 50) * ms:>10.1f}{percentile(submit, 99) * ms:>10.1f}"
          f"{max(submit) * ms:>10.1f}{len(submit):>6}")  # fmt: skip
    print(f"{'WatchJob delivery, stored -> received (ms)':<46}{percentile(delays, 50) * ms:>10.1f}"
          f"{percentile(delays, 99) * ms:>10.1f}{max(delays) * ms:>10.1f}{len(delays):>6}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

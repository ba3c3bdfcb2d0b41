"""What the Ray backend costs: twelve short jobs on a three-node Ray cluster vs the local backend, same slots.

Both backends run on this machine with three CPU job slots in all: the local backend as `gansvc serve --cpu-jobs
3`, the Ray backend as `gansvc serve --backend ray` in front of a simulated cluster (ray.cluster_utils.Cluster: a
head without slots and three worker nodes of one CPU slot each, separate raylet processes). --jobs identical
short training jobs (one thread each) are submitted at once to each, one backend after the other, and from
every job's stored events the bench measures:

    to RUNNING   submit -> the RUNNING event, p50 / p99 (mostly queueing: 12 jobs, 3 slots)
    jobs/min     jobs finished per minute: jobs / (last SUCCEEDED - first submit)
    run s        the RUNNING event -> SUCCEEDED, median (the job's own time on its slot)
    hand-over    a freed slot -> the next job RUNNING there, median over the jobs that waited: the time to
                 start an attempt (Ray: placement group, actor, worker process; local: the worker process),
                 which training speed, and so the machine's load, changes far less than the rest
    overhead     slot-seconds Ray adds per job: (Ray's makespan - local's makespan) x slots / jobs: actor and
                 placement-group start, the relay's polling, the slot's hand-over to the next job

and the overhead as a share of a one-minute job (goal: <= 2 s per job, <= 5 % of a 1-minute job). The load
of the machine (`uptime`) is printed before and after: compare ratios of one run, not seconds across runs.

Ray binds the machine's interface address unless it runs in a network namespace with loopback only, so the
bench re-runs itself under `unshare -n` (root) unless --inside is given.

    .venv/bin/python bench/cluster.py [--jobs 12] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import DATA_ROOT, child_env, gansvc_command, percentile  # noqa: E402

from gansvc.clients.python import GanClient, state_name  # noqa: E402
from gansvc.runtime.process import children  # noqa: E402

SLOTS = 3


def job_spec(steps: int, seed: int) -> dict:
    """Return one short CPU training job (an MLP on Fashion-MNIST, one thread)."""
    return {
        "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": steps,
        "log_every": 50, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
        "threads": 1, "device": "cpu", "seed": seed,
    }  # fmt: skip


def serve(folder: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `gansvc serve EXTRA` with its state in `folder`; return (the process, its address)."""
    ready = folder / "ready.json"
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - the server's output for as long as it runs
    process = subprocess.Popen([*gansvc_command(), "serve", "--listen", "127.0.0.1:0", "--state-dir",
                                str(folder / "state"), "--ready-file", str(ready), "--data-root", str(DATA_ROOT),
                                *extra], stdout=log, stderr=subprocess.STDOUT, env=child_env())  # fmt: skip
    deadline = time.monotonic() + 180
    while not (ready.is_file() and ready.stat().st_size):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gansvc serve did not start; see {folder / 'server.log'}")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())["address"]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server and wait for it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_jobs(address: str, jobs: int, steps: int) -> dict:
    """Submit `jobs` jobs at once, wait for all; return the figures of the table (seconds)."""
    with GanClient(address, timeout=120) as client:
        submitted = time.time()
        ids = [client.submit_training(job_spec(steps, seed)).id for seed in range(jobs)]
        for job_id in ids:
            job = client.wait(job_id, timeout=1800)
            if state_name(job.state) != "SUCCEEDED":
                raise RuntimeError(f"{job_id} ended {state_name(job.state)}: {job.message}")
        to_running, run, ends, starts = [], [], [], []
        for job_id in ids:
            states = [(e.time.ToNanoseconds() / 1e9, state_name(e.state.state))
                      for e in client.watch(job_id, history_only=True) if e.WhichOneof("payload") == "state"]
            created = states[0][0]
            started = next(t for t, s in states if s == "RUNNING")
            ended = next(t for t, s in states if s == "SUCCEEDED")
            to_running.append(started - created)
            run.append(ended - started)
            ends.append(ended)
            starts.append(started)
    makespan = max(ends) - submitted
    # a job that started after some job ended took that job's slot: the gap from the latest end before it
    handover = [start - max(e for e in ends if e <= start) for start in starts if any(e <= start for e in ends)]
    return {"to_running_p50": percentile(to_running, 50), "to_running_p99": percentile(to_running, 99),
            "jobs_per_min": jobs / makespan * 60, "run_median": statistics.median(run), "makespan": makespan,
            "handover": statistics.median(handover) if handover else float("nan")}


def local_backend(folder: Path, jobs: int, steps: int) -> dict:
    """Return the figures of the local backend with SLOTS CPU job slots."""
    folder.mkdir()
    process, address = serve(folder, "--cpu-jobs", str(SLOTS))
    try:
        return run_jobs(address, jobs, steps)
    finally:
        stop(process)


def start_cluster(tries: int = 3):
    """Return a started cluster: a head without slots and SLOTS one-slot worker nodes. Ray gives a node 30 s to
    register, which a loaded machine can miss: the processes of a failed try (children of this one) are ended and
    the start is tried again."""
    from ray.cluster_utils import Cluster

    for attempt in range(1, tries + 1):
        before = set(children())
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(SLOTS):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            return cluster
        except Exception as error:  # noqa: BLE001 - Ray's own "timed out during startup"
            print(f"the cluster did not start (try {attempt} of {tries}): {error}", flush=True)
            for pid in set(children()) - before:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


def ray_backend(cluster, folder: Path, jobs: int, steps: int) -> dict:
    """Return the figures of the Ray backend on the cluster."""
    folder.mkdir()
    process, address = serve(folder, "--backend", "ray", "--ray-address", cluster.address)
    try:
        return run_jobs(address, jobs, steps)
    finally:
        stop(process)


def uptime() -> str:
    """Return the machine's load as `uptime` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=150, help="training steps of each job (default 150)")
    parser.add_argument("--inside", action="store_true", help="already in a loopback-only network namespace")
    args = parser.parse_args()
    if not args.inside:
        if not shutil.which("unshare"):
            print("bench/cluster.py: needs unshare (util-linux) and root for a loopback-only network namespace",
                  file=sys.stderr)  # fmt: skip
            return 2
        inner = f"ip link set lo up; exec {sys.executable} {Path(__file__).resolve()} --inside --jobs {args.jobs} " \
                f"--steps {args.steps}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        return subprocess.run(["unshare", "-n", "bash", "-c", inner], env=env, check=False).returncode
    print(f"load before: {uptime()}", flush=True)
    # the cluster first (its idle raylets cost little), so that a cluster that cannot start costs no local run
    started = time.monotonic()
    cluster = start_cluster()
    cluster_start = time.monotonic() - started
    try:
        with tempfile.TemporaryDirectory(prefix="gansvc-bench-cluster-") as tmp:
            local = local_backend(Path(tmp) / "local", args.jobs, args.steps)
            print(f"local: {local}", flush=True)
            ray = ray_backend(cluster, Path(tmp) / "ray", args.jobs, args.steps)
    finally:
        cluster.shutdown()
    ray["cluster_start"] = cluster_start
    print(f"load after:  {uptime()}")
    print(f"{args.jobs} jobs of {args.steps} steps, {SLOTS} slots (local --cpu-jobs {SLOTS}; Ray: {SLOTS} one-slot "
          f"nodes, cluster started in {ray['cluster_start']:.1f} s)")
    print(f"{'':12} {'to RUNNING p50':>15} {'p99':>8} {'jobs/min':>9} {'run s (median)':>15} {'makespan s':>11} "
          f"{'hand-over s':>12}")
    for name, figures in (("local", local), ("ray", ray)):
        print(f"{name:12} {figures['to_running_p50']:15.2f} {figures['to_running_p99']:8.2f} "
              f"{figures['jobs_per_min']:9.2f} {figures['run_median']:15.2f} {figures['makespan']:11.1f} "
              f"{figures['handover']:12.2f}")
    overhead = (ray["makespan"] - local["makespan"]) * SLOTS / args.jobs
    print(f"ray / local: jobs/min {ray['jobs_per_min'] / local['jobs_per_min']:.2f}, run time "
          f"{ray['run_median'] / local['run_median']:.2f}")
    print(f"hand-over Ray adds per job: {ray['handover'] - local['handover']:.2f} s = "
          f"{(ray['handover'] - local['handover']) / 60 * 100:.1f} % of a 1-minute job")
    print(f"per-job overhead Ray adds: {overhead:.2f} slot-seconds per job = {overhead / 60 * 100:.1f} % of a 1-minute "
          f"job (goal <= 2 s, <= 5 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

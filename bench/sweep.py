"""What a sweep of short trials costs with the reference statistics shared vs recomputed by every trial.

Runs the same sweep twice on an in-process server (fresh state directory, a free 127.0.0.1 port): tiny MLP
trials on Fashion-MNIST, each scoring its FID against fashion-mnist:test during training.

- shared:     every trial reads the cached statistics of the real split (GANSVC_CACHE_DIR, shared by all
              workers); the first trial that evaluates computes them;
- recomputed: the cache file is deleted whenever a trial starts, so each trial computes the statistics
              itself, as trials do when each runs with its own cache (separate machines, scripts around a
              trainer).

It prints each sweep's wall time, the mean time per trial, the ratio, and the time of one computation of
the reference statistics measured directly. Timing on a shared machine varies: read the ratio.

    .venv/bin/python bench/sweep.py [--trials 8] [--steps 60] [--eval-samples 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gansvc.clients.python import GanClient, state_name  # noqa: E402
from gansvc.data.datasets import DEBIAN_FASHION_MNIST  # noqa: E402
from gansvc.sweep_spec import sweep_spec_to_proto  # noqa: E402


def sweep_request(trials: int, steps: int, eval_samples: int):
    """Return the SweepSpec: a random search over lr_g of `trials` short MLP runs, one at a time."""
    base = {
        "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": steps,
        "log_every": 20, "sample_every": 0, "checkpoint_every": 0, "eval_every": steps // 2,
        "eval_samples": eval_samples, "tensorboard": False, "threads": 1,
    }  # fmt: skip
    raw = {"base": base, "search": {"method": "random", "trials": trials, "parallel": 1,
                                    "space": {"lr_g": {"low": 1e-4, "high": 3e-3, "log": True}}}}  # fmt: skip
    return sweep_spec_to_proto(raw)


def run_sweep(trials: int, steps: int, eval_samples: int, recompute: bool) -> tuple[float, int]:
    """Run one sweep on a fresh server and cache; return (wall seconds, cache computations seen)."""
    from gansvc.service.server import GanServer, ServerConfig

    work = Path(tempfile.mkdtemp(prefix="gansvc-bench-sweep-"))
    cache = work / "cache"
    os.environ["GANSVC_CACHE_DIR"] = str(cache)
    server = GanServer(ServerConfig(state_dir=work / "state", listen="127.0.0.1:0", data_roots=[DEBIAN_FASHION_MNIST]))
    server.start()
    computed = 0
    try:
        with GanClient(server.address) as client:
            start = time.perf_counter()
            sweep = client.submit_sweep(sweep_request(trials, steps, eval_samples))
            for event in client.watch(sweep.id):
                if recompute and event.WhichOneof("payload") == "trial_started":
                    # before the trial's worker starts: it finds no cached statistics and computes them
                    shutil.rmtree(cache / "fid-stats", ignore_errors=True)
                    computed += 1
            elapsed = time.perf_counter() - start
            job = client.get_job(sweep.id)
            if state_name(job.state) != "SUCCEEDED":
                raise RuntimeError(f"the sweep ended {state_name(job.state)}: {job.message}")
            computed = computed or 1
    finally:
        server.shutdown(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return elapsed, computed


def reference_seconds() -> float:
    """Return the time of one computation of fashion-mnist:test's statistics with fmnist-cnn (empty cache)."""
    from gansvc.metrics.evaluate import get_extractor
    from gansvc.metrics.reference import real_reference

    work = Path(tempfile.mkdtemp(prefix="gansvc-bench-ref-"))
    os.environ["GANSVC_CACHE_DIR"] = str(work)
    try:
        net = get_extractor("fmnist-cnn", "cpu")
        start = time.perf_counter()
        real_reference("fashion-mnist:test", net, DEBIAN_FASHION_MNIST, None, False)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """Run both sweeps and print the comparison; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-samples", type=int, default=200)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    one = reference_seconds()
    print(f"one computation of the reference statistics (fashion-mnist:test, 10000 images, fmnist-cnn): {one:.1f} s")
    results = {}
    for name, recompute in (("shared", False), ("recomputed", True)):
        elapsed, computed = run_sweep(args.trials, args.steps, args.eval_samples, recompute)
        results[name] = elapsed
        print(f"{name:>10}: {args.trials} trials in {elapsed:.1f} s ({elapsed / args.trials:.1f} s per trial; "
              f"reference statistics computed {computed}x)", flush=True)  # fmt: skip
        threading.Event().wait(1.0)
    print(f"recomputed / shared: {results['recomputed'] / results['shared']:.2f}x "
          f"({results['recomputed'] - results['shared']:.1f} s saved by sharing)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel scaling: images/s of `gansvc train` on 1 process and on N processes (torchrun, DDP).

Every configuration trains the same model with the same global batch, so the work per step is the same
and only its split differs. On CPUs (gloo) three configurations are compared:

    1 proc x 1 thread      the baseline
    1 proc x N threads     what N cores do without torch.distributed (intra-op threads)
    N procs x 1 thread     DDP over gloo: each process computes B/N samples, gradients are all-reduced

On GPUs (--device cuda): 1 process on one GPU against N processes on N GPUs (NCCL).

The rate is the trainer's own images/s (summary.json): global images over the seconds spent in training
steps, which include DDP's gradient all-reduce, the all-reduce of the logged statistics and the per-step
stop agreement; process start-up (torchrun, imports, data loading) is reported apart. Runs alternate
between configurations and the median of --rounds runs is shown, because this machine's cores are shared.

    .venv/bin/python bench/ddp.py                           # MLP and DCGAN, 1 vs 2 processes, CPU
    .venv/bin/python bench/ddp.py --models mlp --rounds 1 --steps 200
    .venv/bin/python bench/ddp.py --device cuda --nproc 8  # on a GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    # the seeds' MLP GAN (100 -> 256 -> 256 -> 784), bce, batch 64: small layers, communication-heavy
    "mlp": {"model": "mlp", "loss": "bce", "spectral_norm": False, "batch_size": 64, "ema_decay": 0.0},
    # gansvc's default DCGAN recipe (hinge, spectral norm, EMA) at width 32: more compute per parameter
    "dcgan": {"model": "dcgan", "loss": "hinge", "spectral_norm": True, "batch_size": 64, "width": 32},
}
QUIET = {"log_every": 10_000, "sample_every": 0, "eval_samples": 0, "checkpoint_every": 0, "tensorboard": False}


def run(recipe: dict, steps: int, nproc: int, threads: int, device: str, folder: Path) -> dict:
    """Train `steps` steps with `nproc` processes of `threads` threads; return its summary plus the wall time."""
    spec = {**recipe, **QUIET, "steps": steps, "threads": threads, "device": device, "nproc": nproc}
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    run_dir = folder / f"run-{time.monotonic_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.setdefault("GANSVC_KERNELS", "ext")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gansvc", "train", "--spec", str(spec_file), "--out", str(run_dir), "--quiet"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench/ddp.py: {nproc} x {threads} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_seconds"] = wall
    return summary


def main(argv: list[str] | None = None) -> int:
    """Print images/s for each configuration and model; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,dcgan", help="comma-separated: mlp, dcgan (default both)")
    parser.add_argument("--nproc", type=int, default=2, help="processes (CPU) or GPUs (CUDA) to scale to (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: mlp 400, dcgan 40; x10 on GPUs)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration; the median is shown (default 3)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if args.nproc < 2:
        parser.error(f"--nproc: got {args.nproc}, expected >= 2")
    n = args.nproc
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < n:
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            print(f"bench/ddp.py: --device cuda --nproc {n} needs {n} GPUs; {found} found here")
            return 0
        configs = [("1 GPU", 1, 1), (f"{n} GPUs (NCCL)", n, 1)]
    else:
        configs = [("1 proc x 1 thread", 1, 1), (f"1 proc x {n} threads", 1, n), (f"{n} procs x 1 thread (gloo)", n, 1)]
    print(f"bench/ddp.py: {args.device}, {os.cpu_count()} cores, {args.rounds} round(s); global batch 64 in every run")
    with tempfile.TemporaryDirectory(prefix="gansvc-bench-ddp-") as tmp:
        folder = Path(tmp)
        for name in models:
            steps = args.steps or {"mlp": 400, "dcgan": 40}[name] * (10 if args.device == "cuda" else 1)
            rates: dict[str, list[float]] = {label: [] for label, _, _ in configs}
            startup: dict[str, list[float]] = {label: [] for label, _, _ in configs}
            for _ in range(args.rounds):
                for label, nproc, threads in configs:
                    summary = run(MODELS[name], steps, nproc, threads, args.device, folder)
                    rates[label].append(summary["images_per_sec"])
                    startup[label].append(summary["wall_seconds"] - summary["train_seconds"])
            base = statistics.median(rates[configs[0][0]])
            print(f"\n{name} ({steps} steps of batch 64): images/s, median of {args.rounds}")
            for label, nproc, threads in configs:
                rate = statistics.median(rates[label])
                workers = nproc * threads
                print(f"  {label:<26} {rate:9.0f} img/s   x{rate / base:4.2f} vs 1x1   "
                      f"efficiency {rate / base / workers:4.0%} of {workers}   "
                      f"start-up + teardown {statistics.median(startup[label]):5.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streamed vs in-memory training data: images/s and start-up time of a 64x64 image folder.

Writes N random 64x64 RGB PNGs to a temporary folder (in class sub-folders), then measures, for the data
set held in memory (decoded once, DeviceBatches) and streamed from disk (a DataLoader with worker
processes, StreamedBatches; forced with a memory budget of one byte):

    data      start-up: open_training_data + the first batch (decoding everything, or listing the files and
              starting the workers); rate: batches served per second after the first, as images/s
    train     a Trainer run (DCGAN width 16, batch 64): set-up seconds (data, models) and the trainer's
              own images/s (summary.json: images over the seconds inside training steps)

Runs alternate between the two paths and the median of --rounds is shown (the machine's cores are shared).

    .venv/bin/python bench/data.py
    .venv/bin/python bench/data.py --images 4000 --batches 60 --steps 40 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(folder: Path, count: int, size: int = 64, classes: int = 4) -> None:
    """Write `count` random size x size RGB PNGs (smooth noise, so they compress like photos a little)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        array = np.kron(low, np.ones((8, 8, 1), dtype=np.uint8)) + rng.integers(0, 16, (size, size, 3), dtype=np.uint8)
        path = folder / f"class{i % classes}" / f"img{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def data_rate(name: str, budget: int, batches: int, batch_size: int) -> tuple[float, float]:
    """Return (start-up seconds, images/s) of serving `batches` batches of the data set `name`."""
    import torch

    from gansvc.data.streaming import make_batches, open_training_data

    started = time.perf_counter()
    data = open_training_data(name, image_size=64, budget=budget)
    reader = make_batches(data, batch_size, 0, torch.device("cpu"))
    reader.next()
    startup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(batches):
        reader.next()
    rate = batches * batch_size / (time.perf_counter() - started)
    if hasattr(reader, "close"):
        reader.close()
    return startup, rate


def train_rate(name: str, budget: int, steps: int, run_dir: Path) -> tuple[float, float]:
    """Return (set-up seconds, images/s) of a short DCGAN run on the data set `name`."""
    from gansvc.train import Trainer, TrainSpec

    os.environ["GANSVC_MAX_DATASET_MEMORY"] = str(budget)
    spec = TrainSpec.from_dict({
        "dataset": name, "model": "dcgan", "width": 16, "image_size": 64, "batch_size": 64, "steps": steps,
        "log_every": 10, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
        "ema_decay": 0.0,
    })  # fmt: skip
    trainer = Trainer(spec, run_dir)
    summary = trainer.run()
    return trainer.setup_seconds, summary["images_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="PNGs in the folder (default 2000)")
    parser.add_argument("--batches", type=int, default=40, help="batches timed in the data-only run (default 40)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20; 0 = skip)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: gansvc's choice)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration, alternating (default 2)")
    args = parser.parse_args()
    if args.workers:
        os.environ["GANSVC_DATA_WORKERS"] = str(args.workers)
    from gansvc.data.streaming import data_workers

    paths = {"in memory": 1 << 40, "streamed": 1}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        started = time.perf_counter()
        write_folder(folder, args.images)
        print(f"wrote {args.images} 64x64 PNGs in {time.perf_counter() - started:.1f} s; {os.cpu_count()} cores, "
              f"{data_workers()} DataLoader worker(s)")  # fmt: skip
        name = f"folder:{folder}"
        for round_ in range(args.rounds):
            for label, budget in paths.items():
                results.setdefault(("data", label), []).append(data_rate(name, budget, args.batches, args.batch_size))
                if args.steps:
                    run = Path(tmp) / f"run-{label.replace(' ', '-')}-{round_}"
                    results.setdefault(("train", label), []).append(train_rate(name, budget, args.steps, run))
    print(f"\n{'what':<8}{'path':<12}{'start-up s':>12}{'images/s':>12}{'start-up ratio':>16}{'rate ratio':>12}")
    for kind in ("data", "train"):
        if (kind, "in memory") not in results:
            continue
        base = [statistics.median(v) for v in zip(*results[(kind, "in memory")])]
        for label in paths:
            startup, rate = (statistics.median(v) for v in zip(*results[(kind, label)]))
            print(f"{kind:<8}{label:<12}{startup:>12.2f}{rate:>12.0f}{startup / base[0]:>16.2f}{rate / base[1]:>12.2f}")
    print("\nratios: streamed / in memory (start-up < 1: starts sooner; rate < 1: serves fewer images per second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality on a CPU time budget: a plain DCGAN vs `gansvc train`'s defaults, side by side, same extractor.

Both recipes train the same DCGAN (width 64) on Fashion-MNIST for the same wall-clock budget
(--minutes each, same thread count), then each is scored on the same number of samples (10 000 by
default, same noise seed) with gansvc.metrics' fmnist-cnn FID and Inception Score against the
Fashion-MNIST test set.

  plain:   BCE (non-saturating G), Adam lr 2e-4 / 2e-4, beta1 0.5, batch 64, BatchNorm in D, no EMA
  gansvc:  TrainSpec's defaults (see gansvc/train/spec.py), only the data set and budget given
  conditional, resnet, augmented (issue 12; choose with --recipes): the defaults with conditional: true,
           with model: resnet (hinge, spectral norm in D), with DiffAugment + ADA. Conditional runs are also
           scored per class: intra-class FID and the share the classifier puts in the class asked for.

The machine is shared, so the two budgets are interleaved: each recipe trains for --slice minutes,
stops with a checkpoint, and the other takes its turn, until both have used --minutes (the
trainer's exact resume makes this the same training as one session; max_minutes counts the
wall-clock time of all sessions). Both thus see the same load. Checkpoints every 250 steps also
give the gansvc recipe's score at the plain run's step count: the comparison at equal compute.

The sample grid of the gansvc run (64 fixed-noise samples) is written to docs/quality_grid.png
(and the plain run's to docs/quality_grid_plain.png); the numbers to RUN_DIR/quality.json.

    .venv/bin/python bench/quality.py --minutes 12 --threads 1    # the full comparison (about 26 minutes)
    .venv/bin/python bench/quality.py --minutes 1 --samples 5000 --no-docs
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN = {"loss": "bce", "spectral_norm": False, "ema_decay": 0.0, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5,
         "beta2": 0.999}  # fmt: skip
RECIPES = {
    "plain": PLAIN,
    "gansvc": {},
    "conditional": {"conditional": True},
    "resnet": {"model": "resnet"},
    "augmented": {"augment": "translation,cutout,color", "ada_target": 0.6},
}
DEFAULT_RECIPES = "plain,gansvc"
CHECKPOINT_EVERY = 250


def recipe_spec(overrides: dict, minutes: float, threads: int, seed: int):
    """Return the TrainSpec of a recipe trained until `minutes` of wall-clock time in all."""
    from gansvc.train import TrainSpec

    return TrainSpec.from_dict({
        "dataset": "fashion-mnist", "model": "dcgan", "steps": 10**9, "max_minutes": minutes, "threads": threads,
        "seed": seed, "log_every": 200, "sample_every": 2000, "eval_samples": 0, "checkpoint_every": CHECKPOINT_EVERY,
        "tensorboard": False, **overrides,
    })  # fmt: skip


def train_interleaved(recipes: dict, minutes: float, slice_minutes: float, threads: int, out: Path, seed: int) -> dict:
    """Train every recipe to `minutes`, taking turns of `slice_minutes`; return each recipe's last summary."""
    from gansvc.train import Trainer

    for name in recipes:
        if (out / name).exists():
            shutil.rmtree(out / name)
    summaries = {}
    turns = max(1, math.ceil(minutes / slice_minutes))
    for turn in range(1, turns + 1):
        budget = min(minutes, turn * slice_minutes)
        for name, overrides in recipes.items():
            spec = recipe_spec(overrides, budget, threads, seed)
            summaries[name] = Trainer(spec, out / name).run()
            s = summaries[name]
            print(f"  [{name}] {s['elapsed_seconds'] / 60:5.2f} min: step {s['step']:6d}, epoch {s['epoch']:5.2f}, "
                  f"{s['images_per_sec']:.0f} images/s this turn", flush=True)  # fmt: skip
    return summaries


def score(run_dir: Path, samples: int, threads: int, source: Path | None = None) -> dict:
    """Return fmnist-cnn FID / IS / KID of `samples` images from the run's generator (EMA where kept);
    for a conditional run also intra-class FID and class agreement (labels drawn as in training)."""
    from gansvc.metrics import evaluate
    from gansvc.metrics.per_class import evaluate_per_class
    from gansvc.train.conditional import sample_labels
    from gansvc.train.sampling import generate, load_generator

    torch.set_num_threads(threads)
    generator, _ = load_generator(source or run_dir)
    fake = generate(generator, samples, seed=2024)
    scores = evaluate(fake, real="fashion-mnist:test", extractor="fmnist-cnn")
    labels = sample_labels(generator, samples, 2024)  # the labels generate() drew
    if labels is not None:
        per_class = evaluate_per_class(fake, labels, real="fashion-mnist:test", extractor="fmnist-cnn")
        scores.update(intra_fid=per_class["intra_fid"], class_agreement=per_class["class_agreement"])
    return scores


def write_grid(run_dir: Path, target: Path) -> None:
    """Write the run's last fixed-noise grid (64 samples, 8 x 8; conditional: one row per class) at twice the size,
    pixels kept square."""
    from PIL import Image

    from gansvc.atomic import atomic_write_bytes

    with Image.open(run_dir / "samples" / "latest.png") as grid:
        big = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    import io

    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per recipe (default 12)")
    parser.add_argument("--samples", type=int, default=10000, help="generated samples scored (default 10000)")
    parser.add_argument("--slice", type=float, default=1.0, help="minutes per turn (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"), help="folder for the two run directories")
    parser.add_argument("--only", choices=list(RECIPES), help="run one recipe only")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"comma-separated recipes of {', '.join(RECIPES)} (default: %(default)s)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/quality_grid*.png")
    args = parser.parse_args()
    from gansvc.atomic import atomic_write_text
    from gansvc.metrics import evaluate
    from gansvc.train.trainer import cpu_threads

    threads = args.threads or cpu_threads()
    out = Path(args.out)
    results: dict = {"minutes": args.minutes, "samples": args.samples, "threads": threads, "recipes": {}}
    started = time.time()
    chosen = [args.only] if args.only else [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RECIPES]
    if unknown or not chosen:
        parser.error(f"--recipes: unknown recipe {unknown[0] if unknown else '(none)'!r}; known: {', '.join(RECIPES)}")
    recipes = {name: RECIPES[name] for name in chosen}
    for name, overrides in recipes.items():
        print(f"[{name}] {json.dumps(overrides) if overrides else 'TrainSpec defaults'}", flush=True)
    print(f"training {args.minutes:g} min each in turns of {args.slice:g} min on {threads} thread(s)", flush=True)
    summaries = train_interleaved(recipes, args.minutes, args.slice, threads, out, args.seed)
    for name, summary in summaries.items():
        run_dir = out / name
        scores = score(run_dir, args.samples, threads)
        images = summary["step"] * 64
        results["recipes"][name] = {
            "overrides": recipes[name], "spec": json.loads((run_dir / "spec.json").read_text()),
            "steps": summary["step"], "epochs": summary["epoch"],
            "images_per_sec": images / summary["elapsed_seconds"],  # over the whole budget, all turns
            **{k: scores[k] for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "intra_fid",
                                      "class_agreement") if k in scores},
        }  # fmt: skip
        print(f"[{name}] {summary['step']} steps: FID {scores['fid']:.2f}  IS {scores['is_mean']:.2f} +- "
              f"{scores['is_std']:.2f}", flush=True)  # fmt: skip
        if not args.no_docs:
            target = ROOT / "docs" / ("quality_grid.png" if name == "gansvc" else f"quality_grid_{name}.png")
            write_grid(run_dir, target)
    if {"plain", "gansvc"} <= set(results["recipes"]):
        # the same comparison at equal steps: the gansvc checkpoint at (or just below) the plain run's step count
        plain_steps = results["recipes"]["plain"]["steps"]
        matched = min(plain_steps // CHECKPOINT_EVERY * CHECKPOINT_EVERY, results["recipes"]["gansvc"]["steps"])
        checkpoint = out / "gansvc" / "checkpoints" / f"step_{matched:07d}.pt"
        if matched > 0 and checkpoint.is_file():
            scores = score(out / "gansvc", args.samples, threads, checkpoint)
            results["gansvc_at_plain_steps"] = {"steps": matched, "fid": scores["fid"], "is_mean": scores["is_mean"]}
    # calibration: real training images scored the same way (the floor of this FID)
    from gansvc.data import load_images

    real = load_images("fashion-mnist", "train").images[: args.samples]
    results["real_train_images_fid"] = evaluate(real, real="fashion-mnist:test", extractor="fmnist-cnn")["fid"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "quality.json", json.dumps(results, indent=2) + "\n")

    print(f"\nFashion-MNIST, {args.minutes:g} min of training each on {threads} CPU thread(s), "
          f"fmnist-cnn FID / IS on {args.samples} samples vs the test set "
          f"(real training images: FID {results['real_train_images_fid']:.2f})")  # fmt: skip
    print(f"{'recipe':12} {'steps':>7} {'epochs':>7} {'images/s':>9} {'FID':>8} {'IS':>6} {'intra-FID':>9} "
          f"{'agree':>6}")  # fmt: skip
    for name, r in results["recipes"].items():
        intra = f"{r['intra_fid']:9.2f}" if r.get("intra_fid") is not None else f"{'-':>9}"
        agree = f"{r['class_agreement']:6.1%}" if r.get("class_agreement") is not None else f"{'-':>6}"
        print(f"{name:12} {r['steps']:7d} {r['epochs']:7.2f} {r['images_per_sec']:9.0f} {r['fid']:8.2f} "
              f"{r['is_mean']:6.2f} {intra} {agree}")  # fmt: skip
    if {"plain", "gansvc"} <= set(results["recipes"]):
        ratio = results["recipes"]["gansvc"]["fid"] / results["recipes"]["plain"]["fid"]
        print(f"gansvc defaults / plain FID ratio: {ratio:.2f} (goal < 0.5)")
    if "gansvc_at_plain_steps" in results:
        matched = results["gansvc_at_plain_steps"]
        print(f"at equal steps: gansvc at step {matched['steps']} FID {matched['fid']:.2f} "
              f"(ratio {matched['fid'] / results['recipes']['plain']['fid']:.2f} to plain at step "
              f"{results['recipes']['plain']['steps']})")  # fmt: skip
    print(f"({(time.time() - started) / 60:.1f} min in all; results in {out / 'quality.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

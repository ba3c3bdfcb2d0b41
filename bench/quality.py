"""Quality on a CPU time budget: the plain DCGAN recipe, `gansvc train`'s defaults and the new recipes, side by side.

Every recipe trains on Fashion-MNIST for the same wall-clock budget (--minutes each, same thread
count) and is scored twice on the same number of samples (10 000 by default, same noise seed) with
gansvc.metrics' fmnist-cnn FID and Inception Score against the Fashion-MNIST test set: at its
checkpoint after --early-epochs epochs (3 by default: equal images for every recipe) and at the end
of the budget (equal time). Conditional runs are also scored per class: intra-class FID and the
share of samples the shipped classifier puts in the class asked for (labels drawn as in training).

  plain:       BCE (non-saturating G), Adam lr 2e-4 / 2e-4, beta1 0.5, batch 64, BatchNorm in D, no EMA
  gansvc:      TrainSpec's defaults (see gansvc/train/spec.py), only the data set and budget given
  conditional: the defaults with conditional: true (conditional BatchNorm in G, projection D)
  resnet:      model: resnet at width 16 (hinge, spectral norm in D, its own optimiser defaults: G 2e-4 / D 2e-4,
               betas 0 / 0.9; width 16 keeps its epoch near the default's)
  augmented:   the defaults with DiffAugment (translation, cutout, colour) at ADA's adaptive probability

The machine is shared, so the budgets are interleaved: each recipe trains for --slice minutes,
stops with a checkpoint, and the next takes its turn, until all have used --minutes (the trainer's
exact resume makes this the same training as one session; max_minutes counts the wall-clock time
of all sessions). All recipes thus see the same load.

Each run's last fixed-noise grid (64 samples; conditional: one row per class) is written to
docs/quality_grid_NAME.png, the numbers to RUN_DIR/quality.json, and a markdown table is printed.

    .venv/bin/python bench/quality.py --minutes 12 --recipes plain,gansvc,conditional,resnet,augmented
    .venv/bin/python bench/quality.py --minutes 1 --samples 5000 --early-epochs 0.25 --no-docs

Candidates at a fixed step (issue 22): `--at-step N --seeds 0,1 --recipes a,b` trains each recipe (RECIPES and
CANDIDATES) for exactly N steps per seed, one after the other, and scores each the same way; the figures
count steps, not seconds, so they do not depend on the machine's load. It prints each figure per seed and
their mean and spread (half the range), and writes RUN_DIR/candidates.json.

    .venv/bin/python bench/quality.py --at-step 2813 --seeds 0,1 --threads 1 \
        --recipes conditional,conditional-ac,conditional-ac-balanced
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
         "beta2": 0.999, "batch_size": 64}  # fmt: skip
RECIPES = {
    "plain": PLAIN,
    "gansvc": {},
    "conditional": {"conditional": True},
    "resnet": {"model": "resnet", "width": 16},
    "augmented": {"augment": "translation,cutout,color", "ada_target": 0.6},
}
# Candidates for the recipes' defaults (issue 22), each a spec option on top of the present recipe.
CANDIDATES = {
    "conditional-no-ac": {"conditional": True, "ac_weight": 0.0, "balanced_classes": False},
    "conditional-ac": {"conditional": True, "ac_weight": 1.0, "balanced_classes": False},
    "conditional-ac-balanced": {"conditional": True, "ac_weight": 1.0, "balanced_classes": True},
    # the batch size before issue 22 (the default is now 32: twice the updates for the same images; compare
    # with --at-epochs)
    "gansvc-b64": {"batch_size": 64},
    "conditional-no-ac-b64": {"conditional": True, "ac_weight": 0.0, "batch_size": 64},
    "conditional-ac-b64": {"conditional": True, "ac_weight": 1.0, "batch_size": 64},
    # one-sided label smoothing (Salimans et al. 2016) and a faster G, on the present defaults
    "gansvc-smooth": {"real_label": 0.9},
    "gansvc-lr-g-1.6e-3": {"lr_g": 1.6e-3},
    # R1 on real data (lazy, every 16 D steps, the StyleGAN2 way): any R1 weight takes BatchNorm out of DCGAN's D
    "gansvc-r1": {"r1_gamma": 1.0, "r1_every": 16},
    "gansvc-r1-0.1": {"r1_gamma": 0.1, "r1_every": 16},
    # both learning rates rising linearly over the first ~9 % of the 3 epochs' 5 625 steps
    "gansvc-warmup": {"lr_warmup_steps": 500},
    # a longer average of G's weights (~2 000 steps against ~1 000)
    "gansvc-ema-0.9995": {"ema_decay": 0.9995},
    # the larger batch with both rates scaled linearly (Goyal et al. 2017), and hinge with D's BatchNorm kept
    "gansvc-b64-scaled": {"batch_size": 64, "lr_g": 2e-3, "lr_d": 8e-4},
    "gansvc-hinge": {"loss": "hinge"},
    # Adam's second-moment average over ~100 steps instead of ~1 000 (the GAN papers' 0.99 / 0.9)
    "gansvc-beta2-0.99": {"beta2": 0.99},
    # ProGAN's minibatch standard deviation in D (groups of 4): D sees a batch's variety
    "gansvc-mbstd": {"minibatch_std": 4},
    # G wider than D (G is about a third of a step): G at 96 channels, D at 64 (the "gansvc" recipe since it won:
    # kept to reproduce the table); and at ~equal cost, D narrowed to 48
    "gansvc-g96": {"g_width": 96},
    "gansvc-g96-d48": {"g_width": 96, "width": 48},
    # the wider G for the conditional recipe too (its G stays at width unless given)
    "conditional-g96": {"conditional": True, "g_width": 96},
    "conditional-g80": {"conditional": True, "g_width": 80},
    # the wider G at less cost: D narrowed to 48 (the conditional D carries the projection and the classifier)
    "conditional-g96-d48": {"conditional": True, "g_width": 96, "width": 48},
    # RaGAN's relativistic average loss on the defaults (D and G score each side less the other side's mean)
    "gansvc-ra": {"relativistic": True},
    # batch 16: twice the updates again for the same images (batch 64 -> 32 took 52.9 to 43.2), with the present
    # G 96 / D 64 and, cheaper per epoch, with G at D's width
    "gansvc-b16": {"batch_size": 16},
    "gansvc-b16-g64": {"batch_size": 16, "g_width": 64},
    # batch 16 with both rates scaled by 1/sqrt(2) (Adam's square-root rule for half the batch)
    "gansvc-b16-sqrt": {"batch_size": 16, "lr_g": 7e-4, "lr_d": 2.8e-4},
    # D's rate raised towards G's (the wider G 96 may now outpace D at 4e-4)
    "gansvc-lr-d-6e-4": {"lr_d": 6e-4},
    # G upsampling by nearest-neighbour doubling + 3 x 3 convolution (no checkerboard); at G 64 it costs what the
    # transposed G 96 does (9 taps on 4x the positions at 4/9 the channels squared)
    "gansvc-up-g64": {"g_upsample": True, "g_width": 64},
    # PacGAN2: D judges pairs of images (the variety the unconditional G lacks shows); D's cost per image halves
    "gansvc-pack2": {"pack": 2},
    # both rates decayed to 0 at the last step (the final G is then an average over small steps, as EMA's is)
    "gansvc-linear-decay": {"lr_schedule": "linear-decay"},
    "gansvc-cosine": {"lr_schedule": "cosine"},
    # CatGAN's class entropy on the data's labels, the GAN unconditional: D also classifies the reals, G's fakes
    # should each be one clear class and the classes equally common
    "gansvc-class-entropy": {"class_entropy": 1.0},
    "gansvc-class-entropy-0.5": {"class_entropy": 0.5},
    "gansvc-class-entropy-2": {"class_entropy": 2.0},
    "gansvc-class-entropy-4": {"class_entropy": 4.0},
    # the defaults without it (the recipe before it was adopted), for like-for-like 12-minute comparisons
    "gansvc-no-class-entropy": {"class_entropy": 0.0},
}
DEFAULT_RECIPES = "plain,gansvc,conditional,resnet,augmented"
TRAIN_IMAGES = 60000  # Fashion-MNIST's training split


def recipe_spec(overrides: dict, minutes: float, threads: int, seed: int, checkpoint_every: int):
    """Return the TrainSpec of a recipe trained until `minutes` of wall-clock time in all."""
    from gansvc.train import TrainSpec

    return TrainSpec.from_dict({
        "dataset": "fashion-mnist", "model": "dcgan", "steps": 10**9, "max_minutes": minutes, "threads": threads,
        "seed": seed, "log_every": 200, "sample_every": 2000, "eval_samples": 0, "checkpoint_every": checkpoint_every,
        "tensorboard": False, **overrides,
    })  # fmt: skip


def step_spec(overrides: dict, steps: int, threads: int, seed: int):
    """Return the TrainSpec of a recipe trained for exactly `steps` steps (no evaluation, one checkpoint at the end)."""
    from gansvc.train import TrainSpec

    return TrainSpec.from_dict({
        "dataset": "fashion-mnist", "model": "dcgan", "steps": steps, "threads": threads, "seed": seed,
        "log_every": 200, "sample_every": 0, "eval_samples": 0, "checkpoint_every": 0, "tensorboard": False,
        **overrides,
    })  # fmt: skip


def spread(values: list[float]) -> tuple[float, float]:
    """Return (mean, half the range) of a figure over seeds."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def recipe_batch(overrides: dict) -> int:
    """Return a recipe's batch size: its own, else TrainSpec's default."""
    from gansvc.train.spec import TrainSpec

    return int(overrides.get("batch_size", TrainSpec.batch_size))


def recipe_steps(overrides: dict, at_step: int, at_epochs: float) -> int:
    """Return a candidate's training steps: `at_step`, or `at_epochs` passes at the recipe's own batch size."""
    if at_step:
        return at_step
    return max(1, math.ceil(at_epochs * TRAIN_IMAGES / recipe_batch(overrides)))


def run_candidates(recipes: dict, at_step: int, at_epochs: float, seeds: list[int], samples: int, threads: int,
                   out: Path) -> dict:
    """Train every recipe for its steps (recipe_steps) with each seed and score it; return {name: {seed: scores}}."""
    import os

    from gansvc.train import Trainer

    results: dict = {}
    for name, overrides in recipes.items():
        for seed in seeds:
            run_dir = out / f"{name}_s{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            load = os.getloadavg()[0]
            summary = Trainer(step_spec(overrides, recipe_steps(overrides, at_step, at_epochs), threads, seed),
                              run_dir).run()
            record = {"steps": summary["step"], "images_per_sec": summary["images_per_sec"], "load_at_start": load,
                      "seconds_per_epoch": summary["elapsed_seconds"] / summary["epoch"],
                      **scored(score(run_dir, samples, threads))}  # fmt: skip
            results.setdefault(name, {"overrides": overrides, "seeds": {}})["seeds"][seed] = record
            agree = record.get("class_agreement")
            print(f"  [{name} seed {seed}] step {record['steps']}: FID {record['fid']:.2f}"
                  + (f", agreement {agree:.1%}" if agree is not None else "") + f" (load {load:.1f})", flush=True)
    return results


def candidates_table(results: dict, at: str) -> str:
    """Return a markdown table of the candidates: FID and agreement per seed, mean +- half the range."""
    lines = [f"| recipe | steps | s / epoch | FID @ {at} (per seed) | FID mean ± spread | agree (per seed) | agree mean |",
             "|---|---:|---:|---|---:|---|---:|"]  # fmt: skip
    for name, r in results.items():
        runs = list(r["seeds"].values())
        fids = [x["fid"] for x in runs]
        mean, half = spread(fids)
        agrees = [x["class_agreement"] for x in runs if "class_agreement" in x]
        agree_cells = (" / ".join(f"{a:.1%}" for a in agrees), f"{spread(agrees)[0]:.1%}") if agrees else ("–", "–")
        per_epoch = " / ".join(f"{x['seconds_per_epoch']:.0f}" for x in runs if "seconds_per_epoch" in x) or "–"
        lines.append(f"| {name} | {runs[0]['steps']} | {per_epoch} | {' / '.join(f'{f:.1f}' for f in fids)} | "
                     f"{mean:.1f} ± {half:.1f} | "
                     f"{agree_cells[0]} | {agree_cells[1]} |")  # fmt: skip
    return "\n".join(lines)


def train_interleaved(recipes: dict, minutes: float, slice_minutes: float, threads: int, out: Path, seed: int,
                      checkpoint_every: dict) -> dict:
    """Train every recipe to `minutes`, taking turns of `slice_minutes`; return each recipe's last summary.
    checkpoint_every: steps between checkpoints per recipe (0 = at the end of each turn only)."""
    from gansvc.train import Trainer

    for name in recipes:
        if (out / name).exists():
            shutil.rmtree(out / name)
    summaries = {}
    turns = max(1, math.ceil(minutes / slice_minutes))
    for turn in range(1, turns + 1):
        budget = min(minutes, turn * slice_minutes)
        for name, overrides in recipes.items():
            spec = recipe_spec(overrides, budget, threads, seed, checkpoint_every[name])
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




def scored(scores: dict) -> dict:
    """Return the quality numbers the table reports from an evaluate()/score() result."""
    keys = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "intra_fid", "class_agreement")
    return {k: scores[k] for k in keys if k in scores}


def markdown_table(results: dict) -> str:
    """Return the README's quality table: per recipe, the scores at the early epochs and at the end of the budget."""
    early = results["early_epochs"]
    lines = [f"| recipe | s / epoch | FID @ {early:g} ep | agree @ {early:g} ep | steps in {results['minutes']:g} min "
             "| FID | IS | intra-FID | agree |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cell = lambda value, fmt: "–" if value is None else format(value, fmt)  # noqa: E731
    for name, r in results["recipes"].items():
        at = r.get("early") or {}
        lines.append(f"| {name} | {r['seconds_per_epoch']:.0f} | {cell(at.get('fid'), '.1f')} | "
                     f"{cell(at.get('class_agreement'), '.1%')} | {r['steps']} | {r['fid']:.1f} | {r['is_mean']:.2f} | "
                     f"{cell(r.get('intra_fid'), '.1f')} | {cell(r.get('class_agreement'), '.1%')} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per recipe (default 12)")
    parser.add_argument("--early-epochs", type=float, default=3.0,
                        help="also score each recipe at its checkpoint after this many epochs (default 3; 0 = no)")
    parser.add_argument("--samples", type=int, default=10000, help="generated samples scored (default 10000)")
    parser.add_argument("--slice", type=float, default=3.0, help="minutes per turn (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"), help="folder for the run directories")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"comma-separated recipes of {', '.join({**RECIPES, **CANDIDATES})} (default: "
                        "%(default)s)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/quality_grid_*.png")
    parser.add_argument("--at-step", type=int, default=0,
                        help="train each recipe for exactly this many steps per seed and score it (no time budget)")
    parser.add_argument("--at-epochs", type=float, default=0.0,
                        help="as --at-step, for this many epochs at each recipe's own batch size (equal images)")
    parser.add_argument("--seeds", default="0", help="with --at-step/--at-epochs: comma-separated seeds (default 0)")
    args = parser.parse_args()
    from gansvc.atomic import atomic_write_text
    from gansvc.metrics import evaluate
    from gansvc.train.trainer import cpu_threads

    threads = args.threads or cpu_threads()
    out = Path(args.out)
    chosen = [name.strip() for name in args.recipes.split(",") if name.strip()]
    known = {**RECIPES, **CANDIDATES}
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"--recipes: unknown recipe {unknown[0] if unknown else '(none)'!r}; known: {', '.join(known)}")
    recipes = {name: known[name] for name in chosen}
    if args.at_step or args.at_epochs:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        found = run_candidates(recipes, args.at_step, args.at_epochs, seeds, args.samples, threads, out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "candidates.json", json.dumps({"steps": args.at_step, "epochs": args.at_epochs,
                                                               "samples": args.samples, "threads": threads,
                                                               "recipes": found}, indent=2) + "\n")
        print(candidates_table(found, f"step {args.at_step}" if args.at_step else f"{args.at_epochs:g} epochs"))
        return 0
    # the early checkpoint (equal images: each recipe's own batch) doubles as the checkpoint interval
    early = {name: recipe_steps(o, 0, args.early_epochs) if args.early_epochs > 0 else 0 for name, o in recipes.items()}
    results: dict = {"minutes": args.minutes, "early_epochs": args.early_epochs, "early_steps": early,
                     "samples": args.samples, "threads": threads, "recipes": {}}  # fmt: skip
    started = time.time()
    for name, overrides in recipes.items():
        print(f"[{name}] {json.dumps(overrides) if overrides else 'TrainSpec defaults'}", flush=True)
    print(f"training {args.minutes:g} min each in turns of {args.slice:g} min on {threads} thread(s); "
          f"checkpoints after {args.early_epochs:g} epochs: steps {early}", flush=True)  # fmt: skip
    summaries = train_interleaved(recipes, args.minutes, args.slice, threads, out, args.seed, early)
    for name, summary in summaries.items():
        run_dir = out / name
        scores = score(run_dir, args.samples, threads)
        record = {
            "overrides": recipes[name], "spec": json.loads((run_dir / "spec.json").read_text()),
            "steps": summary["step"], "epochs": summary["epoch"],
            # over the whole budget, all turns (start-ups and checkpoints included)
            "images_per_sec": summary["step"] * recipe_batch(recipes[name]) / summary["elapsed_seconds"],
            "seconds_per_epoch": summary["elapsed_seconds"] / summary["epoch"], **scored(scores),
        }  # fmt: skip
        checkpoint = run_dir / "checkpoints" / f"step_{early[name]:07d}.pt"
        if early[name] and checkpoint.is_file():
            record["early"] = {"steps": early[name], **scored(score(run_dir, args.samples, threads, checkpoint))}
        results["recipes"][name] = record
        at = record.get("early")
        print(f"[{name}] {summary['step']} steps: FID {scores['fid']:.2f}  IS {scores['is_mean']:.2f}"
              + (f"; at {early[name]} steps FID {at['fid']:.2f}" if at else ""), flush=True)  # fmt: skip
        if not args.no_docs:
            write_grid(run_dir, ROOT / "docs" / f"quality_grid_{name}.png")
    # calibration: real training images scored the same way (the floor of this FID)
    from gansvc.data import load_images

    real = load_images("fashion-mnist", "train").images[: args.samples]
    results["real_train_images_fid"] = evaluate(real, real="fashion-mnist:test", extractor="fmnist-cnn")["fid"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "quality.json", json.dumps(results, indent=2) + "\n")

    print(f"\nFashion-MNIST, {args.minutes:g} min of training each on {threads} CPU thread(s), fmnist-cnn FID / IS "
          f"on {args.samples} samples vs the test set (real training images: FID "
          f"{results['real_train_images_fid']:.2f}); early = {args.early_epochs:g} epochs\n")  # fmt: skip
    print(markdown_table(results))
    print(f"({(time.time() - started) / 60:.1f} min in all; results in {out / 'quality.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`gansvc train` (train a GAN into a run directory) and `gansvc sample` (write N generated images)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from gansvc.runtime.console import UsageError, format_duration, size_argument
from gansvc.runtime.registry import DATASET_MEMORY_ENV


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the options of `gansvc train` or `gansvc sample` to `parser`."""
    if name == "train":
        _train_arguments(parser)
    elif name == "sample":
        _sample_arguments(parser)
    else:
        raise ValueError(f"gansvc.train.cli has no command {name!r}")


def run(name: str, args) -> int:
    """Run `gansvc train` or `gansvc sample`; return the exit code."""
    return _run_train(args) if name == "train" else _run_sample(args)


# ---------------------------------------------------------------------- train
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from gansvc.train.spec import TrainSpec, field_help

    parser.add_argument("--spec", metavar="FILE", help="TOML or JSON spec file; options given here override it")
    parser.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory (default runs/<model>-<loss>-<time>); "
                        "an existing run there is resumed")  # fmt: skip
    parser.add_argument("--download", action="store_true",
                        help="fetch a missing fashion-mnist/mnist/cifar10 into --data-root with torchvision")  # fmt: skip
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--inception-weights", metavar="FILE", default=None,
                        help="FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05 file) that score "
                        "runs on data sets other than 28x28 grey ones (default $GANSVC_INCEPTION_WEIGHTS)")  # fmt: skip
    parser.add_argument("--max-dataset-memory", type=size_argument, default=None, metavar="SIZE",
                        help="a data set larger than this (decoded) streams from disk through a DataLoader instead "
                        "of being held in memory; e.g. 4G, 512M (default a quarter of RAM)")  # fmt: skip
    launch = parser.add_argument_group(
        "several processes / nodes (torch.distributed under torchrun; see docs/distributed.md)"
    )
    launch.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                        help="processes on this node, one per GPU (or CPU processes with gloo); "
                        "re-launches this command under torchrun (default: the spec's nproc)")  # fmt: skip
    launch.add_argument("--nnodes", default=None, metavar="N|MIN:MAX",
                        help="nodes taking part (run the same command on each; default 1)")  # fmt: skip
    launch.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                        help="c10d rendezvous all nodes reach (one node's address, a free port)")  # fmt: skip
    launch.add_argument("--rdzv-id", default=None, metavar="ID",
                        help="run name shared by the nodes of one run (default gansvc-train)")  # fmt: skip
    launch.add_argument("--local-addr", default=None, metavar="ADDR",
                        help="this node's address as the other nodes reach it (default: torchrun's guess)")  # fmt: skip
    defaults = TrainSpec()
    for field in _flag_fields():
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = f"{field_help(field.name)} (default {default})"
        if field.type in ("bool", bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)  # fmt: skip
        else:
            kind = {"int": int, "float": float, "str": str}.get(field.type if isinstance(field.type, str) else "", str)
            parser.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(),
                                help=help_text)  # fmt: skip


def _flag_fields():
    """Return the spec's fields that are `gansvc train` options: all but nnodes, whose --nnodes is the launcher's
    (the nodes taking part, N or MIN:MAX); the spec's nnodes is for the server's Ray backend."""
    from gansvc.train.spec import TrainSpec

    return [f for f in dataclasses.fields(TrainSpec) if f.name != "nnodes"]


def spec_from_args(args):
    """Return the TrainSpec of a `gansvc train` command line (spec file, then the options given)."""
    from gansvc.train.spec import SpecError, TrainSpec

    overrides = {f.name: getattr(args, f.name) for f in _flag_fields() if getattr(args, f.name) is not None}
    # a length given on the command line replaces the file's, whichever of the two the file used
    if "epochs" in overrides and "steps" not in overrides:
        overrides["steps"] = 0
    if "steps" in overrides and "epochs" not in overrides:
        overrides["epochs"] = 0.0
    try:
        base = {}
        if args.spec:
            TrainSpec.from_file(args.spec)  # the file alone is checked first, as before the options join it
            base = TrainSpec.file_settings(args.spec)
        base.update(overrides)
        return TrainSpec.from_dict(base)
    except SpecError as error:
        option = "--spec" if error.field == "spec" else "--" + error.field.replace("_", "-")
        raise UsageError(f"{option}: {error.message}") from None


def _run_train(args) -> int:
    import time

    from gansvc.train.launch import launched_by_torchrun
    from gansvc.train.spec import SpecError

    spec = spec_from_args(args)
    if spec.track and not launched_by_torchrun():  # the server's tracker logs jobs to MLflow (docs/tracking.md)
        print(f"gansvc train: warning: track {spec.track} applies to jobs on a server (gansvc submit); this run is "
              "not logged to MLflow", file=sys.stderr)  # fmt: skip
    _use_inception_weights(args.inception_weights)
    if getattr(args, "max_dataset_memory", None):  # for the Trainer here and every rank a launcher starts
        os.environ[DATASET_MEMORY_ENV] = args.max_dataset_memory
    out = Path(args.out) if args.out else Path("runs") / f"{spec.model}-{spec.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    launch_options = [name for name in _LAUNCH_OPTIONS if getattr(args, name, None) is not None]
    if not launched_by_torchrun():
        nproc = _nproc_per_node(args, spec)
        if nproc > 1 or (args.nnodes or "1") != "1":
            try:
                spec = spec.with_overrides(nproc=nproc)
            except SpecError as error:
                raise UsageError(f"--{error.field.replace('_', '-')}: {error.message}") from None
            return _launch(args, spec, out)  # this process only waits: it never imports torch
    elif launch_options:
        option = "--" + launch_options[0].replace("_", "-")
        raise UsageError(f"{option}: this process is already a rank started by torchrun; give {option} to torchrun")
    return _train_here(args, spec, out)


def _train_here(args, spec, out: Path) -> int:
    """Train in this process (one rank of several when torchrun started it); return the exit code."""
    from gansvc.data import DatasetNotFound
    from gansvc.train import distributed
    from gansvc.train.spec import SpecError
    from gansvc.train.trainer import Trainer, TrainingDiverged

    world = distributed.world_from_env()
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted:  # a second Ctrl-C: stop now, without the final checkpoint
            raise KeyboardInterrupt
        interrupted.append(signum)
        print("\ngansvc train: stopping after this step and writing a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)  # fmt: skip

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        # Under a launcher the stop request comes as a file every rank polls; rank 0 sends the events.
        events = distributed.event_sender_from_env()
        trainer = Trainer(
            spec, out, on_event=events, should_stop=lambda: bool(interrupted) or distributed.stop_file_requested(),
            progress=not args.quiet and world.is_main, download=args.download,
        )  # fmt: skip
        try:
            summary = trainer.run()
        finally:
            if events is not None:
                events.close()
    except SpecError as error:
        raise UsageError(f"--{error.field.replace('_', '-')}: {error.message}") from None
    except DatasetNotFound as error:
        raise UsageError(f"--dataset: {error}") from None
    except TrainingDiverged as error:
        distributed.record_failure(1, error)
        if world.is_main:
            print(f"gansvc train: error: {error}; the last good checkpoint is in {out / 'checkpoints'}",
                  file=sys.stderr)  # fmt: skip
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    if world.is_main:
        _print_summary(summary, out)
    return 0


def _use_inception_weights(path: str | None) -> None:
    """Make `path` the Inception weights of this run and of every rank it starts (through the environment the
    trainer reads, $GANSVC_INCEPTION_WEIGHTS); a missing file is a usage error."""
    if not path:
        return
    import os

    from gansvc.runtime.registry import INCEPTION_WEIGHTS_ENV

    chosen = Path(path).expanduser()
    if not chosen.is_file():
        raise UsageError(f"--inception-weights: {str(chosen)!r} is not a file")
    os.environ[INCEPTION_WEIGHTS_ENV] = str(chosen.resolve())


_LAUNCH_OPTIONS = ("nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_id", "local_addr")


def _nproc_per_node(args, spec) -> int:
    """Return the processes per node: --nproc-per-node, else the spec's nproc (they must agree when both are given)."""
    if args.nproc_per_node is None:
        return spec.nproc
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node: got {args.nproc_per_node}, expected >= 1")
    if args.nproc is not None and args.nproc != args.nproc_per_node:
        raise UsageError(f"--nproc-per-node: {args.nproc_per_node} contradicts --nproc {args.nproc}; give one of them")
    return args.nproc_per_node


def _launch(args, spec, out: Path) -> int:
    """Run this training on several processes under torchrun (gansvc.train.launch); return the exit code."""
    import json
    import tempfile

    from gansvc.train.launch import LaunchConfig, launch

    config = LaunchConfig(
        nproc_per_node=spec.nproc, nnodes=args.nnodes or "1", rdzv_endpoint=args.rdzv_endpoint or "",
        rdzv_id=args.rdzv_id or "gansvc-train", local_addr=args.local_addr or "",
    )  # fmt: skip
    try:
        config.validate()
    except ValueError as error:
        raise UsageError(str(error)) from None
    with tempfile.TemporaryDirectory(prefix="gansvc-train-") as folder:
        # every rank reads the spec resolved here, so the command line is parsed (and checked) once
        spec_file = Path(folder) / "spec.json"
        spec_file.write_text(json.dumps(spec.to_dict()), encoding="utf-8")
        rank_args = ["--spec", str(spec_file), "--out", str(out)]
        rank_args += ["--download"] * bool(args.download) + ["--quiet"] * bool(args.quiet)
        nodes = f" on each of {config.nnodes} nodes" if config.max_nodes > 1 else ""
        if not args.quiet:
            print(f"gansvc train: starting {spec.nproc} processes{nodes} with torchrun (global batch "
                  f"{spec.batch_size}); run directory {out}", file=sys.stderr)  # fmt: skip
        result = launch(config, rank_args, forward_signals=True)
    if result.exit_code and result.failure is not None:
        print(f"gansvc train: error: {result.failure.describe()}", file=sys.stderr)
    elif result.exit_code:
        print(f"gansvc train: error: the distributed run ended with exit code {result.exit_code}", file=sys.stderr)
    return result.exit_code


def _print_summary(summary: dict, out: Path) -> None:
    status = {"completed": "finished", "max_minutes": "stopped at the --max-minutes budget",
              "stopped": "stopped (resume with the same command)"}[summary["status"]]  # fmt: skip
    lines = [
        f"gansvc train: {status} at step {summary['step']}/{summary['total_steps']} "
        f"(epoch {summary['epoch']:.2f}) in {format_duration(summary['elapsed_seconds'])}, "
        f"{summary['images_per_sec']:.0f} images/s on {summary['device']}",
    ]
    final = summary.get("final") or {}
    if final:
        lines.append(
            f"  D loss {final['d_loss']:.4f}  G loss {final['g_loss']:.4f}  D(x) {final['d_real']:.3f}  "
            f"D(G(z)) {final['d_fake']:.3f}  D accuracy {final['d_accuracy']:.3f}"
        )
    scores = summary.get("eval") or {}
    if scores:
        lines.append("  " + "  ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if summary["warnings"]:
        lines.append(f"  warnings: {', '.join(sorted(set(summary['warnings'])))} (see {out / 'warnings.jsonl'})")
    lines.append(f"  run directory {out}: metrics.jsonl, samples/latest.png, loss_curve.png, generator.pt, "
                 f"checkpoints/, tensorboard/ (tensorboard --logdir {out / 'tensorboard'})")  # fmt: skip
    print("\n".join(lines))


# ---------------------------------------------------------------------- sample
_FORMATS = (".npy", ".npz", ".pt", ".png")
DEFAULT_COUNT = 10000
DEFAULT_FRAMES = 16
DEFAULT_BATCH = 500
MAX_SEEDS = 1_000_000  # a typo such as 0-10000000000 is refused before it fills the memory with seeds


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory, checkpoint or generator.pt")
    parser.add_argument("-n", "--num", type=int, default=None,
                        help=f"number of samples, drawn from one noise stream (default {DEFAULT_COUNT})")  # fmt: skip
    parser.add_argument("-o", "--output", required=True,
                        help="output file: .npy / .npz / .pt (float32 [N, C, H, W] in [-1, 1]) or .png (a grid)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="noise seed of the -n samples (default 0)")
    parser.add_argument("--seeds", metavar="LIST", default=None,
                        help="one image per seed, e.g. 0-63 or 1,5,9-12: each latent from its own generator seeded "
                        "with it, the same on any machine and in any batch size (.npz files hold `seeds`)")  # fmt: skip
    parser.add_argument("--truncation", type=float, default=None, metavar="PSI",
                        help="truncation trick, PSI in (0, 1]: latent components beyond the threshold "
                        "Phi^-1((1+PSI)/2) are resampled within it (0.5 -> 0.674, 0.9 -> 1.645; 1 = off). "
                        "Cleaner, less varied images; FID rises as PSI falls, so score without it")  # fmt: skip
    parser.add_argument("--interpolate", metavar="A,B", default=None,
                        help="spherical interpolation from seed A's latent to seed B's: --frames images, written "
                        "as the -o grid (or arrays) and an animation (--animation)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help=f"frames of --interpolate, both ends included (default {DEFAULT_FRAMES})")  # fmt: skip
    parser.add_argument("--animation", metavar="FILE", default=None,
                        help="the animation of --interpolate: .gif or .webp (default: -o with .gif)")  # fmt: skip
    parser.add_argument("--per-class", action="store_true",
                        help="a conditional run: every --seeds seed in every class, a grid row per class")  # fmt: skip
    parser.add_argument("--best", action="store_true", help="the run's best generator (generator_best.pt)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="the EMA of G's weights (--no-ema: G's own); default: what the run samples with")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per forward pass (default 500; with --seeds / --interpolate 1: each image its own "
                        "pass, bit for bit the same in any company; larger batches agree to float rounding)")  # fmt: skip
    parser.add_argument("--nrow", type=int, default=None, help="images per row of a .png grid")
    parser.add_argument("--class", dest="label", default=None, metavar="K",
                        help="a conditional run: every sample of class K (an index or a class name); default: labels "
                        "drawn as in training (.npz files hold `labels` next to `images`)")  # fmt: skip


def _check_sample_args(args) -> None:
    """Raise UsageError for options that contradict each other or are out of range."""
    by_seed = args.seeds is not None or args.interpolate is not None
    if args.seeds is not None and args.interpolate is not None:
        raise UsageError("--interpolate: draws its own frames; give --seeds or --interpolate, not both")
    if by_seed and (args.num is not None or args.seed is not None):
        option = "-n" if args.num is not None else "--seed"
        raise UsageError(f"{option}: --seeds / --interpolate name their images by seed; drop {option}")
    if args.interpolate is None and (args.frames is not None or args.animation is not None):
        raise UsageError(f"{'--frames' if args.frames is not None else '--animation'}: only with --interpolate A,B")
    if args.per_class and args.seeds is None:
        raise UsageError("--per-class: give --seeds too (a grid column per seed, a row per class)")
    if args.num is not None and args.num < 1:
        raise UsageError(f"-n: got {args.num}, expected at least 1 sample")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: got {args.batch_size}, expected >= 1")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed: got {args.seed}, expected 0 <= seed < 2**63")


def _run_sample(args) -> int:
    from gansvc.train.latents import SamplingError, check_truncation, parse_seeds
    from gansvc.train.sampling import draw_interpolation, draw_seeds, generate, open_generator
    from gansvc.train.spec import SpecError
    from gansvc.train.trainer import resolve_device

    output = Path(args.output)
    if output.suffix.lower() not in _FORMATS:
        raise UsageError(f"--output: {str(output)!r} must end in {', '.join(_FORMATS)}")
    _check_sample_args(args)
    try:
        seeds = parse_seeds(args.seeds, "--seeds", limit=MAX_SEEDS) if args.seeds is not None else None
        ends = _interpolation_ends(args.interpolate) if args.interpolate is not None else None
        if args.truncation is not None:
            check_truncation(args.truncation, "--truncation")
    except SamplingError as error:
        raise UsageError(str(error)) from None
    animation = _animation_path(args, output) if ends else None
    try:
        device = resolve_device(args.device)
    except SpecError as error:
        raise UsageError(f"--device: {error.message}") from None
    except (ValueError, RuntimeError) as error:
        raise UsageError(f"--device: {error}") from None
    try:
        loaded = open_generator(args.source, device=device, best=args.best, ema=args.ema)
    except SamplingError as error:
        raise UsageError(f"--{error.field}: {error.message}") from None
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"RUN_DIR_OR_CHECKPOINT: {error}") from None
    generator, spec = loaded.generator, loaded.spec
    label = _class_option(generator, args.label)
    batch_size = args.batch_size or (1 if seeds is not None or ends is not None else DEFAULT_BATCH)
    drawn = None
    try:
        if seeds is not None:
            drawn = draw_seeds(generator, seeds, truncation=args.truncation, label=label, per_class=args.per_class,
                               device=device, batch_size=batch_size)  # fmt: skip
        elif ends is not None:
            drawn = draw_interpolation(generator, *ends, args.frames or DEFAULT_FRAMES, truncation=args.truncation,
                                       label=label, device=device, batch_size=batch_size)  # fmt: skip
    except SamplingError as error:
        raise UsageError(f"--{error.field.replace('_', '-')}: {error.message}") from None
    if drawn is not None:
        samples, labels = drawn.images, drawn.labels
    else:
        num, seed = args.num or DEFAULT_COUNT, args.seed or 0
        labels = _sample_labels(generator, num, seed, label)
        samples = generate(generator, num, seed=seed, device=device, batch_size=batch_size, labels=labels,
                           truncation=args.truncation)  # fmt: skip
    _write_samples(output, samples, labels, drawn, args.nrow)
    shape = "x".join(map(str, samples.shape))
    print(f"gansvc sample: wrote {len(samples)} samples ({shape}, float32) from {spec.model} ({spec.dataset}, step "
          f"{loaded.step}{', EMA' if loaded.ema else ''}) to {output}")  # fmt: skip
    if animation is not None:
        from gansvc.atomic import atomic_write_bytes
        from gansvc.images import encode_animation

        atomic_write_bytes(animation, encode_animation(samples, animation.suffix.lower().lstrip(".")))
        print(f"  animation of {len(samples)} frames (seed {ends[0]} to seed {ends[1]}) in {animation}")
    if label is not None:
        names = getattr(generator, "class_names", None) or []
        print(f"  class {label}" + (f" ({names[label]})" if label < len(names) else ""))
    if args.truncation is not None:
        from gansvc.train.latents import truncation_threshold

        tau = truncation_threshold(args.truncation)
        print(f"  truncation {args.truncation:g}: latent components within +-{tau:.4g}")
    if spec.dataset == "gaussian-mixture":
        from gansvc.data.mixture import NUM_MODES, ring_quality

        quality = ring_quality(samples)
        print(f"  modes covered {quality['modes_covered']}/{NUM_MODES}, "
              f"high-quality samples {quality['high_quality_fraction']:.1%}")  # fmt: skip
    return 0


def _interpolation_ends(text: str) -> tuple[int, int]:
    """Return the two seeds of --interpolate A,B."""
    from gansvc.train.latents import SamplingError, parse_seeds

    parts = text.split(",")
    if len(parts) != 2:
        raise SamplingError("--interpolate", f"got {text!r}, expected two seeds A,B (e.g. 3,17)")
    (a,), (b,) = (parse_seeds(part, "--interpolate", limit=1) for part in parts)
    return a, b


def _animation_path(args, output: Path) -> Path:
    """Return the animation file of --interpolate: --animation, else -o with .gif."""
    from gansvc.images import ANIMATION_FORMATS

    if args.frames is not None and args.frames < 2:
        raise UsageError(f"--frames: got {args.frames}, expected at least 2 (both ends)")
    path = Path(args.animation) if args.animation else output.with_suffix(".gif")
    if path.suffix.lower().lstrip(".") not in ANIMATION_FORMATS:
        raise UsageError(f"--animation: {str(path)!r} must end in .gif or .webp")
    return path


def _write_samples(output: Path, samples, labels, drawn, nrow: int | None) -> None:
    """Write samples to `output` by its suffix: .npy, .npz (with labels, seeds and latents when known), .pt, .png."""
    import numpy as np

    from gansvc.atomic import atomic_torch_save, atomic_write

    suffix = output.suffix.lower()
    if suffix == ".npy":
        atomic_write(output, lambda f: np.save(f, samples.numpy()))
    elif suffix == ".npz":
        arrays = {"images": samples.numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        if drawn is not None:
            arrays["seeds"] = np.asarray(drawn.seeds, dtype=np.int64)
            arrays["latents"] = drawn.latents.numpy()
        atomic_write(output, lambda f: np.savez_compressed(f, **arrays))
    elif suffix == ".pt":
        atomic_torch_save(samples, output)
    elif samples.dim() == 4:
        from gansvc.images import save_grid

        save_grid(samples, output, nrow or (drawn.nrow if drawn is not None else None))
    else:
        from gansvc.data.mixture import ring_centers
        from gansvc.train.monitor import plot_points

        plot_points(samples, output, ring_centers(), f"{len(samples)} samples")


def _class_option(generator, value) -> int | None:
    """Return the class index of --class K (an index or a name), None without it; UsageError when it is none."""
    from gansvc.train.conditional import check_class

    if value is None:
        return None
    count = getattr(generator, "num_classes", 0)
    names = getattr(generator, "class_names", None) or []
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        label = int(text)
    elif text in names:
        label = names.index(text)
    else:
        known = f" (classes: {', '.join(names)})" if names else ""
        raise UsageError(f"--class: got {text!r}, expected a class index or name{known}")
    try:
        check_class(label, count, "--class")
    except ValueError as error:
        raise UsageError(str(error)) from None
    return label


def _sample_labels(generator, num: int, seed: int, label: int | None):
    """Return the labels of `gansvc sample -n`'s samples: all `label`, else drawn as in training (None when the
    generator is unconditional)."""
    import torch

    from gansvc.train.conditional import sample_labels

    if label is None:
        return sample_labels(generator, num, seed)
    return torch.full((num,), label, dtype=torch.int64)

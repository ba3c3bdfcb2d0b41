"""Generators outside the trainer: export to generator.pt, load from a run / checkpoint / export (the best, the
EMA or G's own weights), and sample: n from one noise stream, or by seed (gansvc.train.latents)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gansvc.atomic import atomic_torch_save
from gansvc.runtime import paths
from gansvc.runtime.rundir import (
    CHECKPOINT_FORMAT,
    GENERATOR_FORMAT,
    best_checkpoint_path,
    best_generator_path,
    generator_path,
    latest_checkpoint_path,
)
from gansvc.train.latents import SamplingError, seed_latents, slerp, truncate_
from gansvc.train.spec import TrainSpec


def export_generator(
    generator: nn.Module, spec: TrainSpec, data_shape, step: int, ema: bool, path, *, num_classes: int = 0,
    class_names: list[str] | None = None, label_probs: list[float] | None = None,
) -> Path:
    """Write a generator file loadable without the trainer (weights, spec, sample shape); return its path.

    A conditional generator's file also holds its classes: their number, names and the probabilities its
    training drew labels with (None = uniform).
    """
    state = {
        "format": GENERATOR_FORMAT,
        "version": 1,
        "spec": spec.to_dict(),
        "data_shape": list(data_shape),
        "step": step,
        "ema": ema,
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }
    if num_classes:
        state.update(num_classes=num_classes, class_names=list(class_names or []), label_probs=label_probs)
    return atomic_torch_save(state, path)


def attach_classes(generator: nn.Module, class_names, label_probs) -> nn.Module:
    """Give a conditional generator what sampling by class reads: `class_names` and `label_probs` (None = uniform)."""
    generator.class_names = list(class_names) if class_names else None
    generator.label_probs = None if label_probs is None else torch.as_tensor(label_probs, dtype=torch.float64)
    return generator


def sampling_model(generator: nn.Module, spec: TrainSpec, device) -> nn.Module:
    """Return the eval-mode copy of `generator` that samples come from, BatchNorm statistics recomputed.

    The statistics come from the run's own fixed noise stream (seed + 3), so the trainer's samples,
    generator.pt and a generator loaded from a checkpoint are the same function.
    """
    from gansvc.train.ema import with_standing_batchnorm

    return with_standing_batchnorm(generator, spec.z_dim, torch.device(device), seed=spec.seed + 3)


@dataclass
class LoadedGenerator:
    """A generator ready to sample (eval mode) and where it came from."""

    generator: nn.Module
    spec: TrainSpec
    file: Path  # the generator or checkpoint file its weights were read from
    step: int
    ema: bool  # whether the weights are the EMA of G's


def _candidates(path: str | os.PathLike, best: bool) -> list[Path]:
    """Return the files that may hold the generator of `path` (a run directory or a file), preferred first."""
    path = Path(path)
    check = paths.check_path(path)
    if check.kind == "dir":
        if best:
            found = [p for p in (best_generator_path(path), best_checkpoint_path(path)) if p.is_file()]
            if not found:
                raise SamplingError("best", f"{path}: no best generator (generator_best.pt or checkpoints/best.pt; "
                                            "kept at evaluations with the spec's keep_best)")  # fmt: skip
            return found
        found = [p for p in (generator_path(path), latest_checkpoint_path(path)) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no generator.pt or checkpoints/latest.pt in this run directory")
        return found
    if check.kind != "file":
        raise FileNotFoundError(paths.describe_missing(str(path), check, "run directory, checkpoint or generator file"))
    if best:
        raise SamplingError("best", f"{path} is a file; --best picks the best generator of a run directory")
    return [path]


def _read_state(file: Path) -> dict:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and I/O errors all mean "not a generator" to the user
        raise ValueError(f"{file}: not a readable gansvc generator or checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") not in (GENERATOR_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{file}: not a gansvc generator or checkpoint")
    return state


def _weights(state: dict, ema: bool | None) -> tuple[dict, bool] | None:
    """Return (G's state_dict, whether it is the EMA) of a generator or checkpoint state, as `ema` asks; None
    when the file does not hold the weights asked for."""
    if state["format"] == GENERATOR_FORMAT:  # one set of weights: the sampler's (EMA where the run kept one)
        held = bool(state.get("ema"))
        return (state["state_dict"], held) if ema is None or ema == held else None
    has_ema = state.get("ema") is not None
    if ema is None:
        ema = has_ema
    if ema and not has_ema:
        return None
    return (state["ema"]["model"], True) if ema else (state["G"], False)


def open_generator(path: str | os.PathLike, device="cpu", *, best: bool = False,
                   ema: bool | None = None) -> LoadedGenerator:  # fmt: skip
    """Return the generator of a run directory, checkpoint or generator file, in eval mode on `device`.

    A run directory gives generator.pt (else checkpoints/latest.pt); with best, generator_best.pt (else
    checkpoints/best.pt). ema=None takes the weights samples come from (the EMA where the run kept one),
    True the EMA of G, False G's own weights; a file without them is passed over for the checkpoint,
    and SamplingError('ema') says when none has them. Weights read from a checkpoint get BatchNorm
    statistics recomputed for them (see gansvc.train.ema.with_standing_batchnorm), as generator.pt's were.
    """
    from gansvc.models import build_generator

    for file in _candidates(path, best):
        state = _read_state(file)
        chosen = _weights(state, ema)
        if chosen is None:
            continue
        weights, is_ema = chosen
        spec = TrainSpec.from_dict(state["spec"])
        generator = build_generator(spec, tuple(state["data_shape"]), int(state.get("num_classes") or 0))
        generator.load_state_dict(weights)
        if state["format"] == GENERATOR_FORMAT:
            generator = generator.to(device).eval().requires_grad_(False)
        else:
            generator = sampling_model(generator.to(device), spec, device)
        attach_classes(generator, state.get("class_names"), state.get("label_probs"))
        return LoadedGenerator(generator, spec, file, int(state.get("step") or 0), is_ema)
    kind = "EMA weights (the spec's ema_decay was 0)" if ema else "G's own weights (only its EMA was exported)"
    raise SamplingError("ema", f"{path}: no {kind}")


def load_generator(path: str | os.PathLike, device="cpu") -> tuple[nn.Module, TrainSpec]:
    """Return (generator in eval mode on `device`, its TrainSpec) from a run dir, a checkpoint or generator.pt.

    From a checkpoint the EMA weights are used where the run kept them, with BatchNorm statistics
    recomputed for those weights (see gansvc.train.ema.with_standing_batchnorm).
    """
    loaded = open_generator(path, device)
    return loaded.generator, loaded.spec


@torch.no_grad()
def generate(
    generator: nn.Module,
    n: int,
    seed: int = 0,
    device="cpu",
    batch_size: int = 500,
    part: tuple[int, int] | None = None,
    labels: torch.Tensor | None = None,
    truncation: float | None = None,
) -> torch.Tensor:
    """Return n samples as float32 on the CPU: images [N, C, H, W] clamped to [-1, 1], or 2-D points [N, 2].

    The noise comes from its own generator seeded with `seed`, so the same call gives the same samples.
    part=(start, stop) returns only samples [start, stop) of those n (one rank's share), from the same noise.
    A conditional generator draws sample i of class labels[i]; without `labels`, the labels
    gansvc.train.conditional.sample_labels(generator, n, seed) gives (drawn as in training).
    truncation ψ resamples latent components beyond τ(ψ) from the same stream (gansvc.train.latents).
    The noise is drawn batch by batch (torch draws normals in blocks), so it depends on batch_size; draw_seeds'
    images do not.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start_at, stop_at = (0, n) if part is None else part
    if not 0 <= start_at <= stop_at <= n:
        raise ValueError(f"part must be (start, stop) with 0 <= start <= stop <= n={n}, got {part}")
    device = torch.device(device)
    if getattr(generator, "num_classes", 0):
        if labels is None:
            from gansvc.train.conditional import sample_labels

            labels = sample_labels(generator, n, seed)
        if labels.shape != (n,):
            raise ValueError(f"labels must hold one class per sample ([{n}]), got {list(labels.shape)}")
        labels = labels.long().to(device)
    was_training = generator.training
    generator.eval()
    rng = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    try:
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), generator.z_dim, device=device, generator=rng)
            truncate_(z, truncation, rng)
            lo, hi = max(start_at - start, 0), min(stop_at - start, z.shape[0])
            if lo < hi:  # the noise of every chunk is drawn, so a part sees the same noise as the whole
                extra = () if labels is None else (labels[start + lo : start + hi],)
                chunks.append(generator(z[lo:hi], *extra).float().cpu())
    finally:
        generator.train(was_training)
    return _joined(chunks, generator)



def _joined(chunks: list[torch.Tensor], generator: nn.Module) -> torch.Tensor:
    """Return the generated chunks as one tensor, images clamped to [-1, 1] (empty of G's shape when none)."""
    if not chunks:
        return torch.empty(0, *getattr(generator, "out_shape", ()), dtype=torch.float32)
    samples = torch.cat(chunks)
    return samples.clamp_(-1.0, 1.0) if samples.dim() == 4 else samples

@torch.no_grad()
def images_for(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, device="cpu",
               batch_size: int = 500) -> torch.Tensor:  # fmt: skip
    """Return generator(z, labels) float32 on the CPU for latents z [N, z_dim], images clamped to [-1, 1].

    Each latent's image depends on that latent alone (eval mode: BatchNorm uses its stored statistics),
    so the batch size changes how fast, not what.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = generator.training
    generator.eval()
    chunks = []
    try:
        for start in range(0, z.shape[0], batch_size):
            extra = () if labels is None else (labels[start : start + batch_size].long().to(device),)
            chunks.append(generator(z[start : start + batch_size].to(device), *extra).float().cpu())
    finally:
        generator.train(was_training)
    return _joined(chunks, generator)


INTERPOLATION_ROW = 16  # frames per grid row of an interpolation: a long one wraps, still read row by row


@dataclass
class Drawn:
    """Images drawn by seed (draw_seeds, draw_interpolation) with what made each."""

    images: torch.Tensor  # [N, C, H, W] in [-1, 1] (or [N, 2] points)
    latents: torch.Tensor  # [N, z_dim]
    labels: torch.Tensor | None  # [N] int64 for a conditional generator
    seeds: list[int]  # the seed of each image (an interpolation's frames: seed A's)
    nrow: int | None  # images per row of the grid that shows them best (None: square)


def _fixed_label(generator: nn.Module, label: int | None, field: str = "class") -> int | None:
    from gansvc.train.conditional import check_class

    if label is None:
        return None
    try:
        check_class(label, getattr(generator, "num_classes", 0), field)
    except ValueError as error:
        raise SamplingError(field, str(error).removeprefix(f"{field}: ")) from None
    return int(label)


def draw_seeds(generator: nn.Module, seeds: list[int], *, truncation: float | None = None, label: int | None = None,
               per_class: bool = False, device="cpu", batch_size: int = 1) -> Drawn:  # fmt: skip
    """Return one image per seed, each from its own latent (gansvc.train.latents.seed_latent), truncated by ψ.

    batch_size 1 (the default, as StyleGAN's generate.py) gives each image its own forward pass, so it is bit
    for bit the same whatever other seeds are drawn; larger batches are faster, and agree to float rounding
    (matrix products sum in another order for another batch size).

    A conditional generator draws seed s of class `label`, else of the class drawn for s alone
    (gansvc.train.conditional.seed_labels); per_class draws every seed in every class, a grid row per class
    (the same latent down each column).
    """
    from gansvc.train.conditional import seed_labels

    z = seed_latents(seeds, generator.z_dim, truncation)
    count = getattr(generator, "num_classes", 0)
    label = _fixed_label(generator, label)
    nrow = None
    if per_class:
        if not count:
            raise SamplingError("per_class", "the generator is not class-conditional (trained without conditional)")
        if label is not None:
            raise SamplingError("per_class", "draws every class; give it or a class, not both")
        z = z.repeat(count, 1)
        labels = torch.arange(count).repeat_interleave(len(seeds))
        seeds, nrow = list(seeds) * count, len(seeds)
    elif label is not None:
        labels = torch.full((len(seeds),), label, dtype=torch.int64)
    else:
        labels = seed_labels(generator, seeds)
    images = images_for(generator, z, labels, device, batch_size)
    return Drawn(images, z, labels, list(seeds), nrow)


def draw_interpolation(generator: nn.Module, seed_a: int, seed_b: int, frames: int, *,
                       truncation: float | None = None, label: int | None = None, device="cpu",
                       batch_size: int = 1) -> Drawn:  # fmt: skip
    """Return `frames` images along the spherical interpolation from seed_a's latent to seed_b's (both
    truncated by ψ first); a conditional generator keeps one class throughout: `label`, else seed_a's. The
    ends are the images draw_seeds gives seed_a and seed_b (batch_size as there)."""
    from gansvc.train.conditional import seed_labels

    ends = seed_latents([seed_a, seed_b], generator.z_dim, truncation)
    z = slerp(ends[0], ends[1], frames)
    label = _fixed_label(generator, label)
    labels = seed_labels(generator, [seed_a])
    if labels is not None:
        labels = torch.full((frames,), int(labels[0]) if label is None else label, dtype=torch.int64)
    images = images_for(generator, z, labels, device, batch_size)
    return Drawn(images, z, labels, [seed_a] * frames, min(frames, INTERPOLATION_ROW))

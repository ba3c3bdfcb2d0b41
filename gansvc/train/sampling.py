"""Generators outside the trainer: export to generator.pt, load from a run / checkpoint / export, and sample."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gansvc.atomic import atomic_torch_save
from gansvc.runtime import paths
from gansvc.runtime.rundir import CHECKPOINT_FORMAT, GENERATOR_FORMAT, generator_source
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


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    check = paths.check_path(path)
    if check.kind == "dir":
        source = generator_source(path)
        if source is None:
            raise FileNotFoundError(f"{path}: no generator.pt or checkpoints/latest.pt in this run directory")
        return source
    if check.kind != "file":
        raise FileNotFoundError(paths.describe_missing(str(path), check, "run directory, checkpoint or generator file"))
    return path


def load_generator(path: str | os.PathLike, device="cpu") -> tuple[nn.Module, TrainSpec]:
    """Return (generator in eval mode on `device`, its TrainSpec) from a run dir, a checkpoint or generator.pt.

    From a checkpoint the EMA weights are used where the run kept them, with BatchNorm statistics
    recomputed for those weights (see gansvc.train.ema.with_standing_batchnorm).
    """
    from gansvc.models import build_generator

    file = _resolve(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and I/O errors all mean "not a generator" to the user
        raise ValueError(f"{file}: not a readable gansvc generator or checkpoint ({error})") from None
    kind = state.get("format") if isinstance(state, dict) else None
    if kind not in (GENERATOR_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{file}: not a gansvc generator or checkpoint")
    spec = TrainSpec.from_dict(state["spec"])
    shape = tuple(state["data_shape"])
    generator = build_generator(spec, shape, int(state.get("num_classes") or 0))
    if kind == GENERATOR_FORMAT:
        generator.load_state_dict(state["state_dict"])
        generator = generator.to(device).eval().requires_grad_(False)
    else:
        weights = state["ema"]["model"] if state.get("ema") else state["G"]
        generator.load_state_dict(weights)
        generator = sampling_model(generator.to(device), spec, device)
    return attach_classes(generator, state.get("class_names"), state.get("label_probs")), spec


@torch.no_grad()
def generate(
    generator: nn.Module,
    n: int,
    seed: int = 0,
    device="cpu",
    batch_size: int = 500,
    part: tuple[int, int] | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return n samples as float32 on the CPU: images [N, C, H, W] clamped to [-1, 1], or 2-D points [N, 2].

    The noise comes from its own generator seeded with `seed`, so the same call gives the same samples.
    part=(start, stop) returns only samples [start, stop) of those n (one rank's share), from the same noise.
    A conditional generator draws sample i of class labels[i]; without `labels`, the labels
    gansvc.train.conditional.sample_labels(generator, n, seed) gives (drawn as in training).
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
            lo, hi = max(start_at - start, 0), min(stop_at - start, z.shape[0])
            if lo < hi:  # the noise of every chunk is drawn, so a part sees the same noise as the whole
                extra = () if labels is None else (labels[start + lo : start + hi],)
                chunks.append(generator(z[lo:hi], *extra).float().cpu())
    finally:
        generator.train(was_training)
    if not chunks:
        return torch.empty(0, *getattr(generator, "out_shape", ()), dtype=torch.float32)
    samples = torch.cat(chunks)
    return samples.clamp_(-1.0, 1.0) if samples.dim() == 4 else samples

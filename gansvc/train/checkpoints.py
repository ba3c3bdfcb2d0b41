"""Checkpoint files of a run: written atomically, step_NNNNNNN.pt plus latest.pt, older ones pruned.

The names and the format tag are gansvc.runtime.rundir's; this module reads and writes the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gansvc.atomic import atomic_torch_save
from gansvc.runtime.rundir import (
    CHECKPOINT_FORMAT,
    checkpoint_dir,
    checkpoint_path,
    checkpoint_steps,
    latest_checkpoint,
    latest_checkpoint_path,
)

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_dir", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict, run_dir: str | os.PathLike, step: int, keep: int = 0) -> Path:
    """Write `state` to checkpoints/step_<step>.pt and latest.pt atomically; keep the newest `keep` step files.

    latest.pt is a hard link to the step file (renamed into place, so it is never half-written);
    where links are not possible it is a second copy.
    """
    path = atomic_torch_save(state, checkpoint_path(run_dir, step))
    latest = latest_checkpoint_path(run_dir)
    tmp = latest.with_name(f".{latest.name}.{os.getpid()}.tmp")  # the atomic temp pattern: clean_leftovers knows it
    try:
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, latest)
    except OSError:
        atomic_torch_save(state, latest)
    if keep > 0:
        steps = sorted((s, p) for s, p in checkpoint_steps(run_dir).items() if s <= step)
        for _, old in steps[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Return the checkpoint dict stored at `path` (a ValueError naming the file if it is not one)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and I/O errors all mean the same thing to a user
        raise ValueError(f"{path}: not a readable gansvc checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a gansvc checkpoint")
    return state

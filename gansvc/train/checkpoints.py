"""Checkpoint files of a run: written atomically, step_NNNNNNN.pt plus latest.pt, older ones pruned."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from gansvc.atomic import atomic_torch_save

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/checkpoints."""
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Return run_dir/checkpoints/latest.pt if it exists, else None."""
    path = checkpoint_dir(run_dir) / "latest.pt"
    return path if path.is_file() else None


def save_checkpoint(state: dict, run_dir: str | os.PathLike, step: int, keep: int = 0) -> Path:
    """Write `state` to checkpoints/step_<step>.pt and latest.pt atomically; keep the newest `keep` step files.

    latest.pt is a hard link to the step file (renamed into place, so it is never half-written);
    where links are not possible it is a second copy.
    """
    folder = checkpoint_dir(run_dir)
    path = atomic_torch_save(state, folder / f"step_{step:07d}.pt")
    latest = folder / "latest.pt"
    tmp = folder / f".latest.{os.getpid()}.tmp"
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, latest)
    except OSError:
        atomic_torch_save(state, latest)
    if keep > 0:
        steps = sorted(
            (int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)) and int(m.group(1)) <= step
        )
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
    if not isinstance(state, dict) or state.get("format") != "gansvc-checkpoint":
        raise ValueError(f"{path}: not a gansvc checkpoint")
    return state

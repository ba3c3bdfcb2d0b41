"""The layout of a run directory, one definition for the trainer, sampling and the service's artefacts.

    run_dir/
      checkpoints/step_0000100.pt ...  checkpoints/latest.pt (a hard link to the newest step file)
      samples/step_0000100.png ...     samples/latest.png
      generator.pt                     the exported generator (format GENERATOR_FORMAT)
      checkpoints/best.pt, generator_best.pt   the checkpoint and generator of the best evaluation (keep_best)
      metrics.jsonl, warnings.jsonl, loss_curve.png, tensorboard/, ...

Atomic writes (gansvc.atomic) go through `.NAME.XXXX.tmp` files beside their target; a process
killed mid-write leaves one behind, which `clean_leftovers` removes (on resume and server start).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CHECKPOINT_FORMAT = "gansvc-checkpoint"  # the "format" key of a checkpoint dict
GENERATOR_FORMAT = "gansvc-generator"  # the "format" key of generator.pt
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
LATEST_CHECKPOINT = "latest.pt"
LATEST_SAMPLES = "latest.png"
GENERATOR_FILE = "generator.pt"
CHECKPOINT_SUFFIX = ".pt"
BEST_CHECKPOINT = "best.pt"  # in checkpoints/: the full state at the best evaluation (keep_best)
BEST_GENERATOR_FILE = "generator_best.pt"  # the exported generator of that step
SAMPLES_SUFFIX = ".png"
_STEP_FILE = re.compile(r"^step_(\d+)(\.[A-Za-z0-9]+)$")
# gansvc.atomic's temp files: mkstemp(prefix=f".{name}.", suffix=".tmp") -> .NAME.XXXXXXXX.tmp (8 random
# characters), and the checkpoint link's .latest.pt.PID.tmp; nothing else (".step.pt.tmp" is a user's file)
_TEMP_FILE = re.compile(r"^\..+\.([A-Za-z0-9_]{8}|\d+)\.tmp$")


def step_name(step: int, suffix: str) -> str:
    """Return the file name of a step: step_0000100.pt, step_0000100.png."""
    return f"step_{step:07d}{suffix}"


def step_of(name: str, suffix: str) -> int | None:
    """Return the step of a step_N<suffix> file name, else None."""
    match = _STEP_FILE.match(name)
    return int(match.group(1)) if match and match.group(2) == suffix else None


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/checkpoints."""
    return Path(run_dir) / CHECKPOINTS


def samples_dir(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/samples."""
    return Path(run_dir) / SAMPLES


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Return run_dir/checkpoints/step_<step>.pt."""
    return checkpoint_dir(run_dir) / step_name(step, CHECKPOINT_SUFFIX)


def latest_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/checkpoints/latest.pt (whether or not it exists)."""
    return checkpoint_dir(run_dir) / LATEST_CHECKPOINT


def best_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/checkpoints/best.pt (whether or not it exists)."""
    return checkpoint_dir(run_dir) / BEST_CHECKPOINT


def best_generator_path(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/generator_best.pt (whether or not it exists)."""
    return Path(run_dir) / BEST_GENERATOR_FILE


def samples_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Return run_dir/samples/step_<step>.png."""
    return samples_dir(run_dir) / step_name(step, SAMPLES_SUFFIX)


def latest_samples_path(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/samples/latest.png (whether or not it exists)."""
    return samples_dir(run_dir) / LATEST_SAMPLES


def generator_path(run_dir: str | os.PathLike) -> Path:
    """Return run_dir/generator.pt (whether or not it exists)."""
    return Path(run_dir) / GENERATOR_FILE


def numbered_files(folder: str | os.PathLike, suffix: str) -> dict[int, Path]:
    """Return {step: path} for the files step_N<suffix> in `folder` ({} when there is no folder)."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:  # missing, or not a folder
        return {}
    found = {}
    for name in names:
        step = step_of(name, suffix)
        if step is not None:
            found[step] = folder / name
    return found


def checkpoint_steps(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Return {step: path} of the run's checkpoints/step_N.pt files."""
    return numbered_files(checkpoint_dir(run_dir), CHECKPOINT_SUFFIX)


def sample_grid_steps(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Return {step: path} of the run's samples/step_N.png grids."""
    return numbered_files(samples_dir(run_dir), SAMPLES_SUFFIX)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Return run_dir/checkpoints/latest.pt if it is a file, else None."""
    path = latest_checkpoint_path(run_dir)
    return path if path.is_file() else None


def latest_checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """Return the step of checkpoints/latest.pt (the one a resumed run starts from), or None without one.

    latest.pt is a hard link to its step file, so the inode names the step without loading the file;
    where it is a copy, the newest step file is the best answer.
    """
    try:
        inode = latest_checkpoint_path(run_dir).stat().st_ino
    except OSError:
        return None
    steps = checkpoint_steps(run_dir)
    for step, path in steps.items():
        try:
            if path.stat().st_ino == inode:
                return step
        except OSError:
            continue
    return max(steps) if steps else None


def generator_source(run_dir: str | os.PathLike) -> Path | None:
    """Return generator.pt, else checkpoints/latest.pt, whichever is a file first; None without either."""
    for candidate in (generator_path(run_dir), latest_checkpoint_path(run_dir)):
        if candidate.is_file():
            return candidate
    return None


def partial_name(name: str) -> str:
    """Return the name of a resumable transfer's partial file for `name` (.NAME.partial_.tmp).

    One fixed name per target, so a transfer can continue where it stopped; it has the atomic temp
    pattern, so clean_leftovers removes it (the server's start: uploads do not survive a restart).
    """
    return f".{name}.partial_.tmp"


def is_leftover(name: str) -> bool:
    """Return whether a file name is an atomic write's temp file (.NAME.XXXX.tmp)."""
    return bool(_TEMP_FILE.match(name))


def clean_leftovers(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temp files interrupted atomic writes left anywhere under `run_dir`; return what was removed.

    Call it only while no process writes into the run directory (before a resume, at server start):
    a live writer's temp file looks the same.
    """
    removed = []
    for folder, dirs, files in os.walk(run_dir):
        for name in files:
            if is_leftover(name):
                path = Path(folder) / name
                try:
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
                except OSError:  # gone meanwhile, or not ours to remove: not a leftover to worry about
                    continue
    return sorted(removed)

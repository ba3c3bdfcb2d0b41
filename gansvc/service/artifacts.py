"""A job's files (its run directory): listing them, naming one safely, finding checkpoints and grids by step.

The trainer writes checkpoints/step_NNNNNNN.pt + checkpoints/latest.pt (a hard link to the newest
step file), generator.pt, samples/step_NNNNNNN.png + samples/latest.png, metrics.jsonl, ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gansvc.service.errors import InvalidField, MissingReference

# Files of a job directory that are the service's own bookkeeping, not results.
PRIVATE_FILES = frozenset({"worker_input.json", "worker.lock"})


@dataclass(frozen=True)
class ArtifactInfo:
    """One file of a run directory."""

    name: str  # relative, with '/' separators
    size: int
    modified: float


def list_artifacts(run_dir: Path) -> list[ArtifactInfo]:
    """Return the run directory's files (hidden and bookkeeping files left out), sorted by name."""
    found = []
    if not run_dir.is_dir():
        return found
    for folder, dirs, files in os.walk(run_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or (folder == str(run_dir) and name in PRIVATE_FILES):
                continue
            path = Path(folder) / name
            if path.is_symlink():  # the trainer makes none; one could point anywhere
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # pruned by the trainer meanwhile
                continue
            found.append(ArtifactInfo(path.relative_to(run_dir).as_posix(), stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda a: a.name)


def resolve_artifact(run_dir: Path, name: str, field: str = "name") -> Path:
    """Return the file `name` of the run directory; InvalidField for a name that leaves it, else MissingReference."""
    if not name:
        raise InvalidField(field, "is empty; see ListArtifacts for the names")
    posix = PurePosixPath(name)
    if posix.is_absolute() or "\\" in name or "\x00" in name:
        raise InvalidField(field, f"{name!r} must be a relative path such as 'checkpoints/latest.pt'")
    if any(part in ("..", ".") or part.startswith(".") for part in posix.parts):
        raise InvalidField(field, f"{name!r}: '..' and hidden names are not allowed")
    if len(posix.parts) == 1 and name in PRIVATE_FILES:
        raise MissingReference(field, f"job {run_dir.name} has no artifact {name!r}")
    root = run_dir.resolve()
    path = (root / posix).resolve()
    if root not in path.parents:
        raise InvalidField(field, f"{name!r} leaves the job's run directory")
    if not path.is_file():
        raise MissingReference(field, f"job {run_dir.name} has no artifact {name!r} (see ListArtifacts)")
    return path


def numbered_files(folder: Path, suffix: str) -> dict[int, Path]:
    """Return {step: path} for the files step_N<suffix> in `folder`."""
    found = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return found
    for name in names:
        digits = name[len("step_") : -len(suffix)]
        if name.startswith("step_") and name.endswith(suffix) and digits.isdigit():
            found[int(digits)] = folder / name
    return found


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """Return {step: path} of the run's checkpoints/step_N.pt files."""
    return numbered_files(run_dir / "checkpoints", ".pt")


def sample_grid_steps(run_dir: Path) -> dict[int, Path]:
    """Return {step: path} of the run's samples/step_N.png grids."""
    return numbered_files(run_dir / "samples", ".png")


def checkpoint_file(run_dir: Path, step: int, field: str = "checkpoint.step") -> Path:
    """Return the generator source for `step`: 0 = generator.pt (else latest.pt), N = checkpoints/step_N.pt.

    Raises MissingReference naming `field` when there is none.
    """
    if step == 0:
        for candidate in (run_dir / "generator.pt", run_dir / "checkpoints" / "latest.pt"):
            if candidate.is_file():
                return candidate
        raise MissingReference(field, f"job {run_dir.name} has no checkpoint yet")
    steps = checkpoint_steps(run_dir)
    if step not in steps:
        known = ", ".join(map(str, sorted(steps))) or "none yet"
        raise MissingReference(field, f"job {run_dir.name} has no checkpoint at step {step} (steps kept: {known})")
    return steps[step]


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """Return the step of checkpoints/latest.pt (the one a resumed run starts from), or None without one.

    latest.pt is a hard link to its step file, so the inode names the step without loading the file;
    where it is a copy, the newest step file is the best answer.
    """
    latest = run_dir / "checkpoints" / "latest.pt"
    try:
        inode = latest.stat().st_ino
    except FileNotFoundError:
        return None
    steps = checkpoint_steps(run_dir)
    for step, path in steps.items():
        try:
            if path.stat().st_ino == inode:
                return step
        except FileNotFoundError:
            continue
    return max(steps) if steps else None

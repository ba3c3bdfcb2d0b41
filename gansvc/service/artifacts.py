"""A job's files (its run directory): listing them, naming one safely, finding checkpoints and grids by step.

The trainer writes checkpoints/step_NNNNNNN.pt + checkpoints/latest.pt (a hard link to the newest
step file), generator.pt, samples/step_NNNNNNN.png + samples/latest.png, metrics.jsonl, ...; with keep_best,
checkpoints/best.pt and generator_best.pt (the best evaluation's; downloadable by those names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gansvc.runtime import paths
from gansvc.runtime.rundir import (
    best_checkpoint_path,
    best_generator_path,
    checkpoint_steps,
    generator_source,
    latest_checkpoint_step,
    numbered_files,
    sample_grid_steps,
)
from gansvc.service.errors import InvalidField, MissingReference

# The layout is gansvc.runtime.rundir's; these names stay importable from here for the service's callers.
__all__ = [
    "ArtifactInfo", "best_file", "checkpoint_file", "checkpoint_steps", "latest_checkpoint_step", "list_artifacts",
    "numbered_files", "resolve_artifact", "sample_grid_steps",
]  # fmt: skip

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
    if not paths.is_dir(run_dir):
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
    path = (root / posix).resolve()  # non-strict: a name the OS refuses (too long, ...) resolves as it is
    if root not in path.parents:
        raise InvalidField(field, f"{paths.short_repr(name)} leaves the job's run directory")
    if not paths.is_file(path):  # never an OSError: a 300-character name is simply not an artifact
        raise MissingReference(
            field, f"job {run_dir.name} has no artifact {paths.short_repr(name)} (see ListArtifacts)"
        )
    return path


def checkpoint_file(run_dir: Path, step: int, field: str = "checkpoint.step") -> Path:
    """Return the generator source for `step`: 0 = generator.pt (else latest.pt), N = checkpoints/step_N.pt.

    Raises MissingReference naming `field` when there is none.
    """
    if step == 0:
        source = generator_source(run_dir)
        if source is None:
            raise MissingReference(field, f"job {run_dir.name} has no checkpoint yet")
        return source
    steps = checkpoint_steps(run_dir)
    if step not in steps:
        known = ", ".join(map(str, sorted(steps))) or "none yet"
        raise MissingReference(field, f"job {run_dir.name} has no checkpoint at step {step} (steps kept: {known})")
    return steps[step]


def best_file(run_dir: Path, field: str = "best") -> Path:
    """Return the generator source of the best checkpoint: generator_best.pt, else checkpoints/best.pt.

    Raises MissingReference naming `field` when the job has kept none (yet; keep_best off, or no evaluation).
    """
    for candidate in (best_generator_path(run_dir), best_checkpoint_path(run_dir)):
        if paths.is_file(candidate):
            return candidate
    raise MissingReference(
        field, f"job {run_dir.name} has no best checkpoint yet (kept at evaluations with the spec's keep_best)"
    )

"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable


_TEMP_SUFFIX = ".tmp"
# The temp files of atomic_write (".NAME." + mkstemp's random letters + ".tmp") and of writers that make
# their own beside a target (".NAME.PID.tmp", as checkpoints.py's hard link to latest.pt).


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call write(f) on a temp file beside `path`, then rename it into place; return the path.

    A reader sees the old file or the new one, never half of one, and a crash leaves the old file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes 0600 files; give the result the mode an ordinary open() would.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically; return the path."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to `path` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically; return the path."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))

"""Path checks that never raise on what the file system says: too long, no permission, a loop, a NUL.

pathlib's is_dir() / is_file() / exists() re-raise ENAMETOOLONG, EACCES and others; a check of a
path a user named must instead answer "missing" or "refused", with the reason, so the caller can
name the field (INVALID_ARGUMENT / NOT_FOUND, a CLI message) instead of crashing.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

# The OS says the path does not exist (or one of its parents is not a folder).
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR})


@dataclass(frozen=True)
class PathCheck:
    """What a path is: kind 'dir', 'file', 'other' or None (missing or refused); `problem` says why it is refused."""

    kind: str | None
    problem: str = ""

    @property
    def refused(self) -> bool:
        """Return whether the OS refused to look (too long, no permission, ...), as opposed to a missing path."""
        return bool(self.problem)


def check_path(path: str | os.PathLike) -> PathCheck:
    """Return what `path` is (symlinks followed), never raising: OS refusals come back as `problem`."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno in _MISSING:
            return PathCheck(None)
        return PathCheck(None, error.strerror or str(error))
    except ValueError as error:  # an embedded NUL character
        return PathCheck(None, str(error))
    if stat.S_ISDIR(mode):
        return PathCheck("dir")
    if stat.S_ISREG(mode):
        return PathCheck("file")
    return PathCheck("other")


def is_dir(path: str | os.PathLike) -> bool:
    """Return whether `path` is a folder; False (never an OSError) when the OS refuses to look."""
    return check_path(path).kind == "dir"


def is_file(path: str | os.PathLike) -> bool:
    """Return whether `path` is a regular file; False (never an OSError) when the OS refuses to look."""
    return check_path(path).kind == "file"


def exists(path: str | os.PathLike) -> bool:
    """Return whether `path` exists; False (never an OSError) when the OS refuses to look."""
    return check_path(path).kind is not None


def describe_missing(value: str, check: PathCheck, kind: str) -> str:
    """Return the message for a path that is not the `kind` ('folder', 'file', ...) asked for."""
    if check.refused:
        return f"{_short(value)}: cannot be used as a {kind} ({check.problem})"
    if check.kind is not None:
        return f"{_short(value)} is not a {kind}"
    return f"{_short(value)}: no such {kind}"


def _short(value: str, limit: int = 120) -> str:
    """Return repr(value), cut in the middle when long (a 4 KiB name does not belong in a status message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def short_repr(value: str, limit: int = 120) -> str:
    """Return repr(value), cut in the middle beyond `limit` characters."""
    return _short(value, limit)

"""Checkpoints a run can start from (issue 21): uploaded ones, and snapshots of jobs' checkpoints.

    state_dir/uploads/checkpoints/<sha256>.pt                 complete, verified, never changed again
    state_dir/uploads/checkpoints/.<sha256>.pt.partial_.tmp   an upload under way (rundir.partial_name)

Content-addressed: the file of `upload:SHA256` is the one whose bytes hash to SHA256. An upload arrives in
chunks, each appended at the offset the server holds, so an interrupted upload continues where it stopped;
at the end the digest is checked and the file read as a checkpoint (torch.load(weights_only=True): nothing
in it runs) before it is renamed into place. Partial files are kept for their resume for MAX_PARTIAL_AGE
after their last chunk, and removed at the server's start (rundir.clean_leftovers).

A job reference (job:ID:best, ...) is snapshotted into the same store at submit: a hard link to the job's
file (its checkpoints are replaced by rename, never rewritten, so the link keeps the bytes it had), named by
their digest. The new job then starts from what its submitter named, whatever the source job does next.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gansvc.runtime.rundir import clean_leftovers, is_leftover, partial_name
from gansvc.service.errors import Busy, InvalidField, TooLarge, WrongState

MAX_PARTIAL_AGE = 24 * 3600.0  # seconds an interrupted upload is kept for its resume
REFERENCE_PREFIX = "upload:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_BYTES = 1 << 20
_SNAPSHOTS = itertools.count(1_000_000)  # distinct temp names for concurrent snapshots


@dataclass(frozen=True)
class UploadStatus:
    """How much of an upload the server holds."""

    sha256: str
    received: int
    complete: bool

    @property
    def reference(self) -> str:
        """Return the init_from reference of a complete upload ('' before)."""
        return REFERENCE_PREFIX + self.sha256 if self.complete else ""


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(value: str, field: str = "sha256") -> str:
    """Return a hex sha256 as given, or raise InvalidField naming `field`."""
    if not _SHA256.match(value or ""):
        raise InvalidField(field, f"got {value[:80]!r}, expected 64 lower-case hex digits (a sha256 of the file)")
    return value


class CheckpointUploads:
    """The server's checkpoints to start runs from: receive uploads, snapshot jobs' checkpoints, find them."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        # uploads interrupted before the last stop: nobody resumes them across a restart
        self.removed_at_start = clean_leftovers(self.root)
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    def path(self, sha256: str) -> Path:
        """Return the stored file of a complete upload (whether or not it exists)."""
        return self.root / f"{sha256}.pt"

    def file_of(self, reference: str) -> Path | None:
        """Return the stored file an 'upload:SHA256' reference names (None for anything else)."""
        if not reference.startswith(REFERENCE_PREFIX):
            return None
        return self.path(reference.removeprefix(REFERENCE_PREFIX))

    def _partial(self, sha256: str) -> Path:
        return self.root / partial_name(f"{sha256}.pt")

    def status(self, sha256: str) -> UploadStatus:
        """Return how much of upload `sha256` the server holds (0 bytes for one it does not know)."""
        check_sha256(sha256)
        self.sweep()
        if self.path(sha256).is_file():
            return UploadStatus(sha256, self.path(sha256).stat().st_size, True)
        try:
            return UploadStatus(sha256, self._partial(sha256).stat().st_size, False)
        except FileNotFoundError:
            return UploadStatus(sha256, 0, False)

    @contextmanager
    def _claim(self, sha256: str):
        with self._lock:
            if sha256 in self._busy:
                raise Busy(f"another upload of {sha256} is in progress; retry when it has ended")
            self._busy.add(sha256)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(sha256)

    def receive(self, chunks: Iterable) -> UploadStatus:
        """Append a stream of CheckpointChunk messages to their upload; return its status (complete once verified).

        Raises InvalidField (bad field, digest mismatch, not a checkpoint), TooLarge (over max_bytes),
        WrongState (a chunk not at the held offset) or Busy (the same file uploading in another stream).
        """
        iterator = iter(chunks)
        first = next(iterator, None)
        if first is None:
            raise InvalidField("chunks", "the stream held no chunk: send sha256, total_size and data")
        sha256, total = check_sha256(first.sha256), first.total_size
        if total < 1:
            raise InvalidField("total_size", f"got {total}, expected the file's size in bytes (>= 1)")
        if total > self.max_bytes:
            raise TooLarge("total_size", f"{total} bytes is over this server's upload limit of "
                           f"{self.max_bytes} bytes ({self.max_bytes / 2**20:g} MiB; gansvc serve --max-upload-mb)")
        with self._claim(sha256):
            self.sweep()
            if self.path(sha256).is_file():  # uploaded before: the bytes are the same by their digest
                return UploadStatus(sha256, total, True)
            partial = self._partial(sha256)
            received = partial.stat().st_size if partial.is_file() else 0
            if received > total:  # left by a stream that claimed another size: not this file's start
                partial.unlink()
                received = 0
            with open(partial, "ab") as out:
                chunk = first
                while chunk is not None:
                    if chunk.sha256 != sha256 or chunk.total_size != total:
                        raise InvalidField("sha256", "every chunk of a stream must name the same sha256 and total_size")
                    if chunk.offset != received:
                        raise WrongState(f"offset: got {chunk.offset}, but the server holds {received} bytes of this "
                                         "upload; continue from there (GetCheckpointUpload)")  # fmt: skip
                    if received + len(chunk.data) > total:
                        raise InvalidField("data", f"runs past total_size {total} (offset {chunk.offset} + "
                                           f"{len(chunk.data)} bytes)")  # fmt: skip
                    out.write(chunk.data)
                    out.flush()  # what was received survives a broken stream
                    received += len(chunk.data)
                    chunk = next(iterator, None)
                os.fsync(out.fileno())
            if received < total:
                return UploadStatus(sha256, received, False)
            return self._finish(sha256, partial, total)

    def _finish(self, sha256: str, partial: Path, total: int) -> UploadStatus:
        """Verify a fully received upload and store it; a bad one is dropped (InvalidField says why)."""
        from gansvc.train.init_from import read_checkpoint

        digest = file_sha256(partial)
        if digest != sha256:
            partial.unlink(missing_ok=True)
            raise InvalidField("sha256", f"the {total} bytes received hash to {digest}, not {sha256}; the upload was "
                               "dropped: send the file again")  # fmt: skip
        try:
            read_checkpoint(partial, mmap=True)
        except ValueError as error:
            partial.unlink(missing_ok=True)
            raise InvalidField("data", f"the uploaded file is not a usable gansvc checkpoint: {error}") from None
        os.replace(partial, self.path(sha256))
        return UploadStatus(sha256, total, True)

    def snapshot(self, source: Path) -> str:
        """Store the checkpoint file `source` as it is now (a hard link, else a copy); return its sha256."""
        temp = self.root / f".snapshot.{os.getpid()}{next(_SNAPSHOTS)}.tmp"  # the atomic temp pattern
        temp.unlink(missing_ok=True)
        try:
            os.link(source, temp)  # the inode as it is now: a later rename over `source` leaves it unchanged
        except OSError:
            shutil.copyfile(source, temp)
        try:
            digest = file_sha256(temp)
            target = self.path(digest)
            if target.is_file():
                temp.unlink()
            else:
                os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return digest

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove partial uploads untouched for MAX_PARTIAL_AGE (none in progress); return what was removed."""
        now = time.time() if now is None else now
        removed = []
        with self._lock:
            busy = {self._partial(sha) for sha in self._busy}
        for path in self.root.iterdir():
            if not is_leftover(path.name) or path in busy:
                continue
            try:
                if now - path.stat().st_mtime > MAX_PARTIAL_AGE:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
        return removed

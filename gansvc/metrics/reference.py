"""Reference statistics of a real image set: computed once per (images, extractor weights), then cached.

The real side of FID/KID is named by a string:
- a data set, `NAME[:SPLIT]` (fashion-mnist:test, mnist:train, cifar10:test, a plugin's; split defaults
  to train), `folder:PATH` or `zip:PATH`. The built-ins are read into memory (gansvc.data.load_images);
  folders, archives and plugin sets open as training opens them (gansvc.data.streaming.open_training_data):
  one larger than the memory budget streams through the training loader, chunk by chunk into the
  mergeable float64 feature moments (FeatureStats), never held whole;
- a file or folder of images (see gansvc.metrics.image_files);
- a statistics .npz with mu and sigma (pytorch-fid's precomputed files load as they are; KID then
  needs the file's `kid_features`, which gansvc's own cache files carry).
`label` picks one class of a labelled data set (intra-class FID): the built-ins' labels, a folder's class
sub-folders, an archive's dataset.json, a plugin's labels (held in memory while the images stream).

Cache files live in $GANSVC_CACHE_DIR (default ~/.cache/gansvc)/fid-stats/, are written atomically,
and are named SOURCE-EXTRACTOR-WEIGHTS-DIGEST.npz: the extractor's weights digest and a digest of the
images' bytes and the extractor's fingerprint, so a change in either computes them anew. The digest is
taken chunk by chunk, so a set has the same one in memory or streamed (a streamed set is read once for
it, and once more when the statistics are not cached yet). Within a process (a training run scoring every
few thousand steps) the last few references are also kept in memory, keyed by (real, data root, count,
size, extractor fingerprint) and, for files, folders and archives, the path's modification time.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gansvc.metrics.features import FeatureExtractor
from gansvc.metrics.fid import (
    FeatureStats,
    GaussianStatistics,
    load_statistics,
    save_statistics,
    statistics_device,
)
from gansvc.runtime import paths
from gansvc.runtime.registry import is_folder_dataset, parse_real

CACHE_ENV = "GANSVC_CACHE_DIR"
# Real feature rows kept for KID (a seeded random subset when the set is larger): KID's subsets of
# 1000 are drawn from these. 10 000 × 2048 float32 = 80 MB for Inception, 5 MB for fmnist-cnn.
KID_REFERENCE_ROWS = 10_000
# Images per extractor call while an in-memory real set is folded into FeatureStats (a streamed set: per
# loader chunk, gansvc.data.streaming.READ_CHUNK).
_STREAM_CHUNK = 5_000
_CACHE_VERSION = 1
_MEMO_SIZE = 4  # references kept in memory per process (Inception's KID rows are 80 MB each)
_MEMO: OrderedDict = OrderedDict()  # key -> RealReference
# What the real side of per-class statistics may be (said when it is not).
LABELLED_SETS = "NAME[:SPLIT], folder:PATH with one sub-folder per class, zip:PATH with dataset.json labels"


class NoClassLabels(ValueError):
    """Per-class statistics were asked of a real set without class labels."""


def cache_dir() -> Path:
    """Return the cache folder: $GANSVC_CACHE_DIR, else ~/.cache/gansvc."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "gansvc"


@dataclass
class RealReference:
    """The real side of an evaluation: statistics, KID feature rows (None if unknown), sample count."""

    stats: GaussianStatistics
    kid_features: torch.Tensor | None
    count: int | None
    source: str
    cache_path: Path | None = None


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """Return (data set name, split) of 'NAME[:train|:test]' or 'folder:PATH' (see registry.parse_real)."""
    source = parse_real(spec)
    if source.kind == "path":
        raise ValueError(f"{spec!r} names a file or folder, not a data set")
    return source.name, source.split


def real_image_size(real: str, fake_shape, image_size: int = 0) -> int:
    """Return the size to score the real side at: `image_size` if set, else the generated images' for a folder.

    A folder's images have no size of their own (its loader needs one, 64 px by default), so a folder scored
    against generated images is read at their size, as a training run reads it at its resolution; named data
    sets and zip archives keep theirs.
    """
    if image_size or not is_folder_dataset(real):
        return image_size
    return int(fake_shape[-1])


def real_reference(
    real: str,
    extractor: FeatureExtractor,
    data_root=None,
    n_real: int | None = None,
    progress: bool = False,
    pixel_range: str = "-1,1",
    image_size: int = 0,
    label: int | None = None,
) -> RealReference:
    """Return the statistics of the real set named `real` for `extractor`, from the cache when there.

    `image_size` > 0 resizes a data set's images to that size first (a training run's resolution).
    label: only the images of that class (a labelled data set's; the real side of intra-class FID).
    """
    if n_real is not None and n_real < 2:
        raise ValueError(f"n_real must be at least 2, got {n_real}")
    parsed = parse_real(real, is_path=lambda text: paths.exists(Path(text).expanduser()))
    key = _memo_key(real, parsed, extractor, data_root, n_real, pixel_range, image_size, label)
    if key is not None and key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    reference = _real_reference(parsed, real, extractor, data_root, n_real, progress, pixel_range, image_size, label)
    if key is not None:
        _MEMO[key] = reference
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return reference


def _memo_key(real, parsed, extractor, data_root, n_real, pixel_range, image_size, label) -> tuple | None:
    """Return the in-memory key of a reference (None: not kept, e.g. a path that cannot be read)."""
    stamp = None
    if parsed.kind in ("path", "folder", "zip"):
        try:  # a file, folder or archive may change between calls: its modification time is part of the key
            stamp = os.stat(Path(parsed.path).expanduser()).st_mtime_ns
        except OSError:
            return None
    return (str(cache_dir()), real, str(data_root), n_real, pixel_range, image_size, label, extractor.name,
            extractor.fingerprint(), stamp)  # fmt: skip


def _real_reference(parsed, real, extractor, data_root, n_real, progress, pixel_range, image_size,
                    label) -> RealReference:  # fmt: skip
    if parsed.kind == "path":
        path = Path(parsed.path).expanduser()
        check = paths.check_path(path)
        if check.kind is None:
            raise ValueError(f"real images {real!r}: " + (check.problem if check.refused else "no such file or folder"))
        if label is not None:
            raise NoClassLabels(f"real images {real!r}: per-class statistics need a labelled data set "
                                f"({LABELLED_SETS})")  # fmt: skip
        if path.suffix.lower() == ".npz" and check.kind == "file" and _is_statistics_file(path):
            return _statistics_file(path, extractor, n_real)
        from gansvc.metrics.image_files import load_image_set

        images = _ImageSet(load_image_set(path, pixel_range))
        source = f"file:{path.resolve()}"
    else:
        source, data = _open_data_set(parsed, data_root, image_size)
        images = _ImageSet.of(data)
        if label is not None:
            if data.labels is None:
                raise NoClassLabels(f"real images {real!r} carry no class labels: per-class statistics need them")
            images = images.take((data.labels == label).nonzero().flatten())
            if images.count < 2:
                raise ValueError(f"real images {real!r} hold {images.count} image(s) of class {label}, need >= 2")
            source = f"{source}:class{label}"
    if not extractor.fits(images.shape):
        raise ValueError(
            f"the real images of {real!r} have shape {list(images.shape)}, which the {extractor.name} extractor "
            "cannot take"
        )
    if n_real is not None and n_real < images.count:
        # A seeded random subset, not the first n: data sets are often ordered.
        images = images.take(torch.randperm(images.count, generator=torch.Generator().manual_seed(0))[:n_real]
                             .sort().values)  # fmt: skip
    digest = _cache_key(images, extractor, source)
    weights = _weights_digest(extractor)
    cache_path = cache_dir() / "fid-stats" / f"{_slug(source)}-{extractor.name}-{weights}-{digest}.npz"
    cached = _read_cache(cache_path)
    if cached is not None:
        return cached
    reference = _compute(images, extractor, source, progress)
    extra = {"fingerprint": np.asarray(extractor.fingerprint()), "source": np.asarray(source)}
    if reference.kid_features is not None:
        extra["kid_features"] = reference.kid_features.numpy()
    save_statistics(cache_path, reference.stats, **extra)
    reference.cache_path = cache_path
    return reference


def _open_data_set(parsed, data_root, image_size: int):
    """Return (the cache's source name, ImageData or StreamedData) of a named data set.

    folder:PATH, zip:PATH and plugin sets open through the training loader, so a set larger than the memory
    budget streams here as it does in training; the built-ins are small and read into memory.
    """
    from gansvc.runtime import registry

    source = f"{parsed.name}:{parsed.split}" + (f"@{image_size}px" if image_size else "")
    plugin = registry.is_plugin("datasets", parsed.name)
    if parsed.kind in ("folder", "zip") or plugin:
        from gansvc.data.streaming import open_training_data

        data = open_training_data(parsed.name, parsed.split, data_root, image_size)
        if plugin:
            source += f"@{registry.dataset_info(parsed.name).plugin}"  # a new plugin version: new statistics
        return source, data
    from gansvc.data import load_images

    return source, load_images(parsed.name, parsed.split, data_root, image_size)


@dataclass(frozen=True)
class _ImageSet:
    """The real images of a reference: a tensor in memory, or rows of a streamed data set that are only ever read
    a chunk at a time (through gansvc.data.streaming.read_chunks, the training loader)."""

    images: torch.Tensor | None = None  # in memory
    data: object = None  # a StreamedData
    rows: torch.Tensor | None = None  # the streamed data set's rows, in order

    @classmethod
    def of(cls, data) -> _ImageSet:
        """Return the images of ImageData (in memory) or of StreamedData (all rows, streamed)."""
        from gansvc.data.streaming import StreamedData

        if isinstance(data, StreamedData):
            return cls(data=data, rows=torch.arange(len(data)))
        return cls(data.images)

    @property
    def count(self) -> int:
        """The number of images."""
        return self.images.shape[0] if self.images is not None else self.rows.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's shape (C, H, W)."""
        return tuple(self.images.shape[1:]) if self.images is not None else tuple(self.data.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The images' dtype (uint8 for every data set)."""
        return self.images.dtype if self.images is not None else torch.uint8

    def take(self, index: torch.Tensor) -> _ImageSet:
        """Return the images at positions `index` of this set (in that order)."""
        if self.images is not None:
            return _ImageSet(self.images[index])
        return _ImageSet(data=self.data, rows=self.rows[index])

    def chunks(self):
        """Yield the images in order, a chunk at a time (each call reads them again from the first)."""
        if self.images is not None:
            yield from self.images.split(_STREAM_CHUNK)
            return
        from gansvc.data.streaming import read_chunks

        for images, _ in read_chunks(self.data, self.rows):
            yield images


def _weights_digest(extractor: FeatureExtractor) -> str:
    """Return the digest of the extractor's weights file (the fingerprint's last part), or its hash when it has none."""
    fingerprint = extractor.fingerprint()
    tail = fingerprint.rpartition(":")[2]
    return _slug(tail)[:16] if tail else hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()


def _is_statistics_file(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data.files and "sigma" in data.files
    except Exception:  # not an .npz at all: let the image reader report it
        return False


def _statistics_file(path: Path, extractor: FeatureExtractor, n_real: int | None) -> RealReference:
    if n_real is not None:
        raise ValueError(f"n_real cannot subsample {path}: it holds statistics, not images")
    stats, extra = load_statistics(path)
    if stats.mu.shape[0] != extractor.feature_dim:
        raise ValueError(
            f"{path} holds statistics of {stats.mu.shape[0]}-d features but the {extractor.name} extractor "
            f"gives {extractor.feature_dim}-d features"
        )
    kid = extra.get("kid_features")
    usable = kid is not None and kid.ndim == 2 and kid.shape[1] == extractor.feature_dim
    kid_features = torch.from_numpy(kid) if usable else None
    return RealReference(stats, kid_features, stats.count, f"stats:{path.resolve()}", path)


def _cache_key(images: _ImageSet, extractor: FeatureExtractor, source: str) -> str:
    """Return the digest of the images' bytes (read chunk by chunk: the same digest in memory or streamed)."""
    digest = hashlib.blake2b(digest_size=8)
    shape = [images.count, *images.shape]
    digest.update(f"v{_CACHE_VERSION}|{extractor.fingerprint()}|{source}|{shape}|{images.dtype}".encode())
    for chunk in images.chunks():
        digest.update(memoryview(chunk.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "images"


def _read_cache(path: Path) -> RealReference | None:
    if not paths.is_file(path):
        return None
    try:
        stats, extra = load_statistics(path)
    except ValueError:
        return None  # unreadable: recompute and overwrite
    kid = extra.get("kid_features")
    source = str(extra["source"]) if "source" in extra else str(path)
    return RealReference(stats, torch.from_numpy(kid) if kid is not None else None, stats.count, source, path)


def _compute(images: _ImageSet, extractor: FeatureExtractor, source: str, progress: bool) -> RealReference:
    """Return the statistics of `images`, folded chunk by chunk into float64 FeatureStats (no N x d matrix)."""
    n = images.count
    kid_rows = torch.arange(n)
    if n > KID_REFERENCE_ROWS:
        kid_rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:KID_REFERENCE_ROWS].sort().values
    keep_for_kid = torch.zeros(n, dtype=torch.bool)
    keep_for_kid[kid_rows] = True
    device = statistics_device(extractor.device)  # a GPU's features stay there (see fid.statistics_device)
    stats = FeatureStats(extractor.feature_dim, device=device)
    kid_parts = []
    bar = tqdm(total=n, desc=f"reference statistics {source}", unit="img", disable=not progress, file=sys.stderr)
    start = 0
    for chunk in images.chunks():
        features, _ = extractor(chunk, features_device=device)
        stats.update(features)
        kid_parts.append(features[keep_for_kid[start : start + chunk.shape[0]].to(device)].cpu())
        start += chunk.shape[0]
        bar.update(features.shape[0])
    bar.close()
    return RealReference(stats.statistics(), torch.cat(kid_parts), n, source)

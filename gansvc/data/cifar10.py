"""CIFAR-10 from its python version (pickled batches, folder or the original .tar.gz), read without torchvision."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from gansvc.data.datasets import DatasetNotFound, ImageData
from gansvc.runtime import paths

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# The batches hold only dicts, lists, bytes and NumPy arrays: refuse anything else, so a tampered
# file under a data root cannot run code when the service unpickles it.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which a data batch never needs")


def _decode_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [n, 3, 32, 32], labels int64 [n]) from one pickled batch."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as error:
        raise ValueError(f"{source}: not a CIFAR-10 python batch ({error})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{source}: expected data [n, 3072] and n labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    env = os.environ.get("GANSVC_DATA_ROOT")
    return [Path(env) / "cifar10", Path(env)] if env else []


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None) -> ImageData:
    """Return CIFAR-10 `split` ('train' | 'test') as uint8 [N, 3, 32, 32] with its 10 class labels.

    `root` may hold the batches directly, a cifar-10-batches-py folder, or cifar-10-python.tar.gz.
    """
    if split not in _BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = _BATCHES[split]
    roots = _candidate_roots(root)
    for folder in roots:
        for batch_dir in (folder, folder / FOLDER):
            if all(paths.is_file(batch_dir / name) for name in names):
                parts = [_decode_batch((batch_dir / name).read_bytes(), str(batch_dir / name)) for name in names]
                return _join(parts)
        archive = folder / ARCHIVE
        if paths.is_file(archive):
            with tarfile.open(archive, "r:gz") as tar:
                parts = []
                for name in names:
                    member = tar.extractfile(f"{FOLDER}/{name}")
                    if member is None:
                        raise ValueError(f"{archive}: no {FOLDER}/{name} inside")
                    parts.append(_decode_batch(member.read(), f"{archive}:{name}"))
            return _join(parts)
    searched = ", ".join(str(r) for r in roots) or "(no root given: set data_root or GANSVC_DATA_ROOT)"
    raise DatasetNotFound(
        f"cifar10 {split} set not found in {searched}: put the python version of CIFAR-10 "
        f"({ARCHIVE}, or its {FOLDER}/ folder with data_batch_1..5 and test_batch) under a root and pass it, "
        "or download it once with torchvision where there is internet (gansvc train --download)"
    )


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> ImageData:
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageData("cifar10", images, labels, 10)

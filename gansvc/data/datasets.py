"""Image data sets decoded once into one uint8 tensor: Fashion-MNIST and MNIST from IDX files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gansvc.data.idx import read_idx
from gansvc.runtime import paths

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFound(FileNotFoundError):
    """A data set's files are missing; the message says how to install them."""


@dataclass
class ImageData:
    """A whole data set in memory: uint8 images [N, C, H, W] and optional integer labels [N] (with class names)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int | None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


def _find_idx(root: Path, stem: str) -> Path | None:
    """Return the IDX file `stem` under root (plain or .gz, also torchvision's */raw layout)."""
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if paths.is_file(folder / name):
                return folder / name
    return None


def _idx_roots(name: str, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    env = os.environ.get("GANSVC_DATA_ROOT")
    roots = [Path(env) / name] if env else []
    if name == "fashion-mnist":
        roots.append(DEBIAN_FASHION_MNIST)
    return roots


def load_idx_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None) -> ImageData:
    """Return Fashion-MNIST or MNIST `split` ('train' | 'test') from IDX files as uint8 [N, 1, 28, 28]."""
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_stem, label_stem = _IDX_FILES[split]
    roots = _idx_roots(name, root)
    for folder in roots:
        image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
        if image_path and label_path:
            images = torch.from_numpy(read_idx(image_path).copy()).unsqueeze(1)
            labels = torch.from_numpy(read_idx(label_path).astype("int64"))
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{image_path}: {images.shape[0]} images but {labels.shape[0]} labels")
            return ImageData(name, images, labels, 10)
    hint = (
        "install it with `apt-get install -y dataset-fashion-mnist` (files land in "
        f"{DEBIAN_FASHION_MNIST}), pass a root holding the IDX files, or download them once with "
        "torchvision where there is internet (gansvc train --download)"
        if name == "fashion-mnist"
        else "pass a root holding the IDX files (train-images-idx3-ubyte[.gz], ...), or download them once "
        "with torchvision where there is internet (gansvc train --download)"
    )
    searched = ", ".join(str(r) for r in roots) or "(no root given: set data_root or GANSVC_DATA_ROOT)"
    raise DatasetNotFound(f"{name} {split} set not found in {searched}: {hint}")

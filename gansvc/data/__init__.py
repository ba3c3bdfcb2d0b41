"""Data sets for training and evaluation, each decoded once into memory.

`load_images` returns image data sets (fashion-mnist, mnist, cifar10, folder:PATH, zip:PATH) as one
uint8 tensor; `load_dataset` also knows the 2-D `gaussian-mixture` ring, which has points, not images.
Training data that may not fit in memory (and data set plugins) open through gansvc.data.streaming.
"""

from __future__ import annotations

import os

from gansvc.data.datasets import DatasetNotFound, ImageData, load_idx_dataset
from gansvc.data.mixture import PointData
from gansvc.runtime import registry

# Kept importable; the names live in gansvc.runtime.registry.
IMAGE_DATASETS = registry.image_dataset_names()  # plus folder:PATH
ALL_DATASETS = registry.dataset_names()


def load_images(
    name: str, split: str = "train", root=None, image_size: int = 0, download: bool = False
) -> ImageData:
    """Return the image data set `name` as one uint8 tensor [N, C, H, W] (resized when image_size > 0).

    name: 'fashion-mnist', 'mnist', 'cifar10', 'folder:PATH' or 'zip:PATH'. `root` is where the files are
    (None = the default places). `download=True` fetches fashion-mnist, mnist or cifar10 into `root`
    with torchvision when they are missing (needs internet; never done unless asked).
    """
    if registry.is_folder_dataset(name):
        from gansvc.data.folder import load_image_folder

        return load_image_folder(registry.folder_path(name), image_size)
    if registry.is_zip_dataset(name):
        from gansvc.data.sources import zip_files

        return zip_files(registry.zip_path(name), image_size).read_all()
    if name == "gaussian-mixture":
        raise ValueError("dataset 'gaussian-mixture' holds 2-D points, not images: use gansvc.data.load_dataset")
    if name not in IMAGE_DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}: expected one of {', '.join(IMAGE_DATASETS)}, folder:PATH or zip:PATH"
        )
    try:
        data = _load_named(name, split, root)
    except DatasetNotFound:
        if not download:
            raise
        _download(name, root)
        data = _load_named(name, split, root)
    if image_size and image_size != data.images.shape[-1]:
        data = ImageData(data.name, resize_images(data.images, image_size), data.labels, data.num_classes)
    return data


def load_dataset(name: str, split: str = "train", root=None, image_size: int = 0, download: bool = False):
    """Return ImageData for image data sets (see load_images), or PointData for 'gaussian-mixture'."""
    if name == "gaussian-mixture":
        from gansvc.data.mixture import load_gaussian_mixture

        return load_gaussian_mixture(split)
    return load_images(name, split, root, image_size, download)


def resize_images(images, size: int):
    """Return uint8 images [N, C, H, W] resized to size x size (antialiased bilinear), in chunks."""
    import torch
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_named(name: str, split: str, root) -> ImageData:
    if name == "cifar10":
        from gansvc.data.cifar10 import load_cifar10

        return load_cifar10(split, root)
    return load_idx_dataset(name, split, root)


def _download(name: str, root) -> None:
    """Fetch a data set with torchvision into `root` (its usual layout, which the readers find)."""
    if root is None:
        raise DatasetNotFound(f"{name}: download needs a root folder to put the files in (set data_root)")
    try:
        import torchvision.datasets as tv
    except ImportError as error:
        raise DatasetNotFound(f"{name}: download needs torchvision ({error})") from None
    cls = {"fashion-mnist": tv.FashionMNIST, "mnist": tv.MNIST, "cifar10": tv.CIFAR10}[name]
    os.makedirs(root, exist_ok=True)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as error:  # torchvision raises URLError, RuntimeError, ... when offline
        raise DatasetNotFound(f"{name}: download into {root} failed ({error})") from None


__all__ = ["ALL_DATASETS", "DatasetNotFound", "ImageData", "PointData", "load_dataset", "load_images"]

"""Data sets for training and evaluation, each decoded once into memory."""

from gansvc.data.datasets import DatasetNotFound, ImageData, load_idx_dataset


def load_images(name: str, split: str = "train", root=None) -> ImageData:
    """Return the image data set `name` ('fashion-mnist', 'mnist') as one uint8 tensor."""
    if name in ("fashion-mnist", "mnist"):
        return load_idx_dataset(name, split, root)
    raise ValueError(f"unknown dataset {name!r}: expected one of fashion-mnist, mnist")


__all__ = ["DatasetNotFound", "ImageData", "load_images"]

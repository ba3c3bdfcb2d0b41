"""An image folder as a data set: every image center-cropped to a square and resized once, with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gansvc.data.datasets import DatasetNotFound, ImageData
from gansvc.images import list_images, read_images
from gansvc.runtime import paths
from gansvc.runtime.registry import FOLDER_IMAGE_SIZE

DEFAULT_SIZE = FOLDER_IMAGE_SIZE


def load_image_folder(path: str | os.PathLike, image_size: int = 0) -> ImageData:
    """Return the images under `path` as uint8 [N, C, H, W], square, `image_size` pixels (0 = 64).

    C is 1 when every image is grey, else 3 (gansvc.images.read_images, the one rule for both). When
    every image sits in a first-level subfolder, the subfolder names are the classes (sorted), as in
    torchvision's ImageFolder; else labels are None.
    """
    folder = Path(path)
    check = paths.check_path(folder)
    if check.kind != "dir":
        raise DatasetNotFound(
            f"image folder {str(folder)!r} does not exist: pass an existing folder of images"
            + (f" ({check.problem})" if check.refused else "")
        )
    files = list_images(folder)
    if not files:
        raise DatasetNotFound(f"image folder {str(folder)!r} holds no images (png, jpg, bmp, webp, gif, tif)")
    images = read_images(files, image_size or DEFAULT_SIZE)
    labels, num_classes = _subfolder_labels(folder, files)
    return ImageData(f"folder:{folder}", images, labels, num_classes)


def _subfolder_labels(folder: Path, files: list[Path]) -> tuple[torch.Tensor | None, int | None]:
    parents = [f.relative_to(folder).parts for f in files]
    if any(len(parts) < 2 for parts in parents):
        return None, None
    classes = sorted({parts[0] for parts in parents})
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[parts[0]] for parts in parents], dtype=torch.int64), len(classes)

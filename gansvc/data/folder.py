"""An image folder as a data set: every image center-cropped to a square and resized once, with Pillow."""

from __future__ import annotations

import os

from gansvc.data.datasets import ImageData
from gansvc.data.sources import folder_files
from gansvc.runtime.registry import FOLDER_IMAGE_SIZE

DEFAULT_SIZE = FOLDER_IMAGE_SIZE


def load_image_folder(path: str | os.PathLike, image_size: int = 0) -> ImageData:
    """Return the images under `path` as uint8 [N, C, H, W], square, `image_size` pixels (0 = 64).

    C is 1 when every image is grey, else 3 (gansvc.images.read_images, the one rule for both). When
    every image sits in a first-level subfolder, the subfolder names are the classes (sorted), as in
    torchvision's ImageFolder; else labels are None.
    """
    return folder_files(path, image_size).read_all()

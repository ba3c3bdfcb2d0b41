"""An image folder as a data set: every image center-cropped to a square and resized once, with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gansvc.data.datasets import DatasetNotFound, ImageData
from gansvc.images import list_images

DEFAULT_SIZE = 64


def load_image_folder(path: str | os.PathLike, image_size: int = 0) -> ImageData:
    """Return the images under `path` as uint8 [N, C, H, W], square, `image_size` pixels (0 = 64).

    C is 1 when every image is grey, else 3. When every image sits in a first-level subfolder, the
    subfolder names are the classes (sorted), as in torchvision's ImageFolder; else labels are None.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise DatasetNotFound(f"image folder {str(folder)!r} does not exist: pass an existing folder of images")
    files = list_images(folder)
    if not files:
        raise DatasetNotFound(f"image folder {str(folder)!r} holds no images (png, jpg, bmp, webp, gif, tif)")
    size = image_size or DEFAULT_SIZE
    pictures = []
    for file in files:
        try:
            with Image.open(file) as picture:
                pictures.append(_square(picture, size))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{file}: cannot read this image ({error})") from None
    grey = all(p.mode == "L" for p in pictures)
    arrays = [np.asarray(p.convert("L" if grey else "RGB"), dtype=np.uint8) for p in pictures]
    images = np.stack(arrays)[:, None] if grey else np.stack(arrays).transpose(0, 3, 1, 2)
    labels, num_classes = _subfolder_labels(folder, files)
    return ImageData(f"folder:{folder}", torch.from_numpy(np.ascontiguousarray(images)), labels, num_classes)


def _square(picture, size: int):
    """Return the picture center-cropped to a square and resized to size x size (grey kept grey)."""
    from PIL import Image

    picture = picture.convert("L") if picture.mode in ("L", "1", "I", "I;16", "LA") else picture.convert("RGB")
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    if side != size:
        picture = picture.resize((size, size), Image.Resampling.LANCZOS)
    return picture


def _subfolder_labels(folder: Path, files: list[Path]) -> tuple[torch.Tensor | None, int | None]:
    parents = [f.relative_to(folder).parts for f in files]
    if any(len(parts) < 2 for parts in parents):
        return None, None
    classes = sorted({parts[0] for parts in parents})
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[parts[0]] for parts in parents], dtype=torch.int64), len(classes)

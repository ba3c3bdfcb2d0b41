"""Image grids and PNG files, with NumPy and Pillow only (torchvision stays optional)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from gansvc.atomic import atomic_write_bytes
from gansvc.runtime import paths

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Return uint8 images [0, 255] as float32 in [-1, 1] (x / 127.5 - 1, correctly rounded), on their device."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(images) -> np.ndarray:
    """Return images (float in [-1, 1] or uint8, [N, C, H, W]) as a uint8 NumPy array of the same shape."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.dtype == torch.uint8:
            return images.numpy()
        images = images.float().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    scaled = (np.clip(images.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5
    return np.rint(scaled).astype(np.uint8)


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Return a uint8 H x W x C array tiling images ([N, C, H, W], float [-1, 1] or uint8), nrow per row."""
    array = to_uint8(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3, 4) or array.shape[0] == 0:
        raise ValueError(f"images must be [N, C, H, W] with N >= 1 and C in 1, 3, 4; got shape {tuple(array.shape)}")
    n, c, h, w = array.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for index in range(n):
        top = padding + (index // nrow) * (h + padding)
        left = padding + (index % nrow) * (w + padding)
        grid[top : top + h, left : left + w] = array[index].transpose(1, 2, 0)
    return grid


def encode_png(images, nrow: int | None = None) -> bytes:
    """Return the PNG bytes of the grid of `images` (see make_grid)."""
    from PIL import Image

    grid = make_grid(images, nrow)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[grid.shape[2]]
    picture = Image.fromarray(grid[:, :, 0] if mode == "L" else grid, mode=mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


ANIMATION_FORMATS = ("gif", "webp")


def encode_animation(frames, fmt: str = "gif", frame_ms: int = 100, nrow: int | None = None) -> bytes:
    """Return an animated GIF or WebP (lossless, looping) of `frames`: [F, C, H, W] images, one per frame, or
    [F, N, C, H, W], a grid of N images (nrow per row) per frame."""
    from PIL import Image

    fmt = fmt.lower()
    if fmt not in ANIMATION_FORMATS:
        raise ValueError(f"animation format must be one of {', '.join(ANIMATION_FORMATS)}, got {fmt!r}")
    array = to_uint8(frames)
    if array.ndim == 4:
        array = array[:, None]
    pictures = []
    for frame in array:
        grid = make_grid(frame, nrow or len(frame), padding=0 if len(frame) == 1 else 2)
        if grid.shape[2] == 1:
            grid = np.repeat(grid, 3, axis=2)  # GIF and WebP animations are colour; grey stays grey in RGB
        pictures.append(Image.fromarray(np.ascontiguousarray(grid[:, :, :3]), mode="RGB"))
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "webp" else {"disposal": 1}
    pictures[0].save(buffer, format=fmt.upper(), save_all=True, append_images=pictures[1:], duration=frame_ms,
                     loop=0, **options)  # fmt: skip
    return buffer.getvalue()


def save_grid(images, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write the grid of `images` as a PNG file atomically; return its path."""
    return atomic_write_bytes(path, encode_png(images, nrow))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Return the image files directly in `folder` (and its subfolders), sorted by path."""
    folder = Path(folder)
    if not paths.is_dir(folder):
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def count_images(folder: str | os.PathLike, stop_at: int | None = None) -> int:
    """Return how many image files list_images finds in `folder`, counting no further than `stop_at`."""
    count = 0
    for path in Path(folder).rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            count += 1
            if stop_at is not None and count >= stop_at:
                break
    return count


# Pillow modes that hold one grey channel: an image folder of only these is read as C = 1.
GREY_MODES = ("1", "L", "LA", "I", "I;16")


def read_images(files: list[Path], size: int | None = None) -> torch.Tensor:
    """Return image files as one uint8 tensor [N, C, H, W]: C = 1 when every image is grey, else 3.

    size: each image center-cropped to a square and resized to size x size (Lanczos); None: the
    images must share one size (a ValueError names the odd one out). An unreadable file is a ValueError.
    """
    pictures = [open_image(file, size) for file in files]
    if not pictures:
        raise ValueError("no images to read")
    grey = all(p.mode in GREY_MODES for p in pictures)
    first = pictures[0].size
    arrays = []
    for file, picture in zip(files, pictures):
        if picture.size != first:
            raise ValueError(f"{file}: size {picture.size} differs from {first} of {files[0].name}")
        arrays.append(image_array(picture, grey))
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


def open_image(file, size: int | None = None, name: str | None = None):
    """Return the decoded Pillow picture of an image file (a path or a binary file object).

    size: center-cropped to a square and resized to size x size (Lanczos); None: as stored. An unreadable
    file is a ValueError naming `name` (default: the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as picture:
            picture.load()
            return picture.copy() if size is None else _square(picture, size)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name or file}: cannot read this image ({error})") from None


def image_array(picture, grey: bool) -> np.ndarray:
    """Return a picture as uint8 [C, H, W]: C = 1 when `grey` (the whole data set is grey), else 3."""
    array = np.array(picture.convert("L" if grey else "RGB"), dtype=np.uint8)  # writable: torch.from_numpy takes it
    return array[None] if grey else array.transpose(2, 0, 1)


def _square(picture, size: int):
    """Return the picture center-cropped to a square and resized to size x size (its mode kept)."""
    from PIL import Image

    if picture.mode not in GREY_MODES + ("RGB",):
        picture = picture.convert("RGB")  # palette, CMYK, RGBA, ...: resampled as colour
    elif picture.mode in ("1", "I", "I;16", "LA"):
        picture = picture.convert("L")  # Lanczos needs 8 bits per channel; grey stays grey
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    if side != size:
        picture = picture.resize((size, size), Image.Resampling.LANCZOS)
    return picture


def load_png_folder(path: str | os.PathLike) -> torch.Tensor:
    """Return every image in a folder as one uint8 tensor [N, C, H, W] (C = 1 if all are grey, else 3).

    The images must share one size (see gansvc.data.folder to resize); the error names the odd one out.
    """
    files = list_images(path)
    if not files:
        raise ValueError(f"image folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return read_images(files)

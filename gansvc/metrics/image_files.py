"""Reading image sets to score from files: .npz, .npy, .pt/.pth, or a folder of PNG/JPEG images.

Arrays may be [N, C, H, W], [N, H, W, C] (C = 1 or 3) or [N, H, W] (grey); uint8 in [0, 255], or
float in [-1, 1] (pixel_range="-1,1", the generators' convention) or [0, 1] (pixel_range="0,1").
Every problem is an ImageFileError (a ValueError) that names the file and what was wrong with it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from gansvc.runtime.registry import ARRAY_SUFFIXES

PIXEL_RANGES = ("-1,1", "0,1")
# Keys tried, in order, in .npz files and dicts saved with torch.save.
IMAGE_KEYS = ("images", "samples", "fake", "x", "arr_0")
_SLACK = 1e-3


class ImageFileError(ValueError):
    """A file or folder of images cannot be scored; the message names it and says why."""


def load_image_set(path: str | os.PathLike, pixel_range: str = "-1,1") -> torch.Tensor:
    """Return the images stored at `path` as uint8 or float32-in-[-1, 1] [N, C, H, W] (C = 1 or 3)."""
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"pixel_range must be one of {', '.join(PIXEL_RANGES)}, got {pixel_range!r}")
    path = Path(path)
    if path.is_dir():
        from gansvc.images import load_png_folder

        try:
            return load_png_folder(path)
        except (OSError, ValueError) as error:
            raise ImageFileError(f"{path}: {error}") from None
    if not path.exists():
        raise ImageFileError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ImageFileError(
            f"{path}: unsupported file type {suffix!r}; use .npz, .npy, .pt/.pth or a folder of images"
        )
    array = _read_array(path, suffix)
    return _to_image_tensor(array, path, pixel_range)


def _read_array(path: Path, suffix: str):
    # A wrong file type is named as such, not as whatever its parser stumbles over first.
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise ImageFileError(f"{path}: not an .npz file (it is not a zip archive of .npy arrays)")
    if suffix == ".npy":
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ImageFileError(f"{path}: not an .npy file (no NumPy header)")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "mu" in data.files and "sigma" in data.files:
                    raise ImageFileError(f"{path}: holds statistics (mu, sigma), not images; pass it as --real instead")
                return data[_pick_key(list(data.files), path)]
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except ImageFileError:
        raise
    except Exception as error:  # numpy, zipfile and torch's unpickler each raise their own types
        raise ImageFileError(f"{path}: cannot read it as {suffix} ({type(error).__name__}: {error})") from None
    if isinstance(loaded, dict):
        tensors = [k for k, v in loaded.items() if isinstance(v, torch.Tensor)]
        loaded = loaded[_pick_key(tensors, path)]
    if not isinstance(loaded, torch.Tensor):
        raise ImageFileError(f"{path}: expected a tensor of images, found {type(loaded).__name__}")
    return loaded


def _pick_key(keys: list[str], path: Path) -> str:
    for key in IMAGE_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise ImageFileError(
        f"{path}: cannot tell which array holds the images among {keys or 'no arrays'}; "
        f"name it one of {', '.join(IMAGE_KEYS)}"
    )


def _to_image_tensor(array, path: Path, pixel_range: str) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 4:
        raise ImageFileError(
            f"{path}: images must be [N, C, H, W], [N, H, W, C] or [N, H, W]; got shape {list(tensor.shape)}"
        )
    if tensor.shape[1] not in (1, 3) and tensor.shape[3] in (1, 3):
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.shape[1] not in (1, 3):
        raise ImageFileError(f"{path}: images need 1 or 3 channels, got shape {list(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ImageFileError(f"{path}: holds no images (N = 0)")
    tensor = tensor.contiguous()
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype.is_floating_point:
        tensor = tensor.to(torch.float32)
        low, high = float(tensor.min()), float(tensor.max())
        lo_ok, hi_ok = (-1.0, 1.0) if pixel_range == "-1,1" else (0.0, 1.0)
        if not (low >= lo_ok - _SLACK and high <= hi_ok + _SLACK):  # also rejects NaN
            hint = " (uint8 0-255 data saved as float? convert it to uint8)" if high > 1.5 else ""
            raise ImageFileError(
                f"{path}: float pixels must be in [{lo_ok:g}, {hi_ok:g}] (pixel range {pixel_range}), "
                f"got [{low:g}, {high:g}]{hint}"
            )
        tensor = tensor.clamp(lo_ok, hi_ok)
        return tensor * 2.0 - 1.0 if pixel_range == "0,1" else tensor
    if not tensor.dtype.is_complex and tensor.dtype != torch.bool:
        low, high = int(tensor.min()), int(tensor.max())
        if 0 <= low and high <= 255:
            return tensor.to(torch.uint8)
        raise ImageFileError(f"{path}: integer pixels must be in [0, 255], got [{low}, {high}]")
    raise ImageFileError(f"{path}: images must be uint8, integer 0-255 or float, got {tensor.dtype}")

"""`shapes` and `shapes-stream`: procedurally drawn grey images of circles, squares and triangles,
one class each, at random places and sizes; image i of a split is the same on every machine.

`shapes` returns the whole split in memory (an object with images, labels, class_names);
`shapes-stream` returns a map-style torch Dataset that draws image i when asked, the shape gansvc
streams through a DataLoader (a data set larger than memory would look like this).
dataset_args: count (images per split; default 6000 train, 1000 test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASS_NAMES = ["circle", "square", "triangle"]
_SPLIT_SEEDS = {"train": 0, "test": 1_000_003}


def draw(index: int, size: int, split: str) -> tuple[np.ndarray, int]:
    """Return image `index` of `split` (uint8 [1, size, size]) and its class."""
    rng = np.random.default_rng(_SPLIT_SEEDS[split] + index)
    label = int(rng.integers(0, 3))
    radius = rng.uniform(0.18, 0.4) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if label == 0:
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    elif label == 1:
        inside = (np.abs(y - cy) <= radius * 0.8) & (np.abs(x - cx) <= radius * 0.8)
    else:  # a triangle pointing up: below the apex, inside both slanted edges
        top, bottom = cy - radius, cy + radius * 0.7
        half = (y - top) / (bottom - top) * radius
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)
    image = np.where(inside, 230, 20).astype(np.uint8)
    return image[None], label


def _check(split: str, image_size: int, count):
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be train or test, got {split!r}")
    size = image_size or 32
    if not 8 <= size <= 256:
        raise ValueError(f"image_size must be in [8, 256] (0 = 32), got {image_size}")
    count = (6000 if split == "train" else 1000) if count is None else count
    if not isinstance(count, int) or not 1 <= count <= 10_000_000:
        raise ValueError(f"count must be an integer in [1, 10000000], got {count!r}")
    return size, count


@dataclass
class ShapesData:
    images: torch.Tensor  # uint8 [N, 1, S, S]
    labels: torch.Tensor  # int64 [N]
    class_names: list


def build(*, split, root=None, image_size=0, count=None):
    """Return the whole split in memory."""
    size, count = _check(split, image_size, count)
    pairs = [draw(i, size, split) for i in range(count)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))
    labels = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return ShapesData(images, labels, list(CLASS_NAMES))


class StreamedShapes(torch.utils.data.Dataset):
    """Draws image i on demand: (uint8 [1, S, S] tensor, label)."""

    class_names = CLASS_NAMES

    def __init__(self, split: str, size: int, count: int):
        self.split, self.size, self.count = split, size, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(index)
        image, label = draw(index, self.size, self.split)
        return torch.from_numpy(image), label


def build_streamed(*, split, root=None, image_size=0, count=None):
    """Return the split as a map-style Dataset that draws each image when it is read."""
    size, count = _check(split, image_size, count)
    return StreamedShapes(split, size, count)

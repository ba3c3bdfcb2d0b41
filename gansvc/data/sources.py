"""Image files as a data set read one image at a time: an image folder (`folder:PATH`) or a ZIP archive
(`zip:PATH`, the layout StyleGAN's dataset_tool.py writes), with their labels.

`ImageFiles` is a map-style torch Dataset of (uint8 image [C, H, W], label): the streamed path reads it
through a DataLoader; `read_all()` decodes it whole for the in-memory path. Both decode every image with
the same functions (gansvc.images.open_image / image_array), so a streamed epoch holds exactly the pixels
the in-memory one does.

Labels:
- a folder whose images all sit in first-level sub-folders: the sorted sub-folder names are the classes
  (torchvision's ImageFolder convention); images directly in the folder: unlabelled.
- a ZIP: `dataset.json` at its top with {"labels": [["00000/img00000000.png", 3], ...]} (or null, or
  absent: unlabelled), as dataset_tool.py writes it; the classes are 0..max label.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from gansvc.data.datasets import DatasetNotFound, ImageData
from gansvc.images import GREY_MODES, IMAGE_SUFFIXES, image_array, list_images, open_image
from gansvc.runtime import paths
from gansvc.runtime.registry import FOLDER_IMAGE_SIZE, FOLDER_PREFIX, ZIP_PREFIX

UNLABELLED = -1  # the label a streamed sample of an unlabelled data set carries (batches give None)
ZIP_LABELS = "dataset.json"


class ImageFiles(torch.utils.data.Dataset):
    """Image files (a folder's paths or a ZIP's members) as a Dataset of (uint8 [C, S, S] tensor, int label).

    Every image is center-cropped to a square and resized to `size` pixels; C is 1 when every image of
    the data set is grey, else 3 (the rule of gansvc.images.read_images).
    """

    def __init__(self, name: str, entries: list[str], size: int, grey: bool, labels: torch.Tensor | None,
                 class_names: list[str] | None, archive: str | None = None):  # fmt: skip
        self.name = name
        self.entries = entries  # file paths (folder) or member names (archive)
        self.size = size
        self.grey = grey
        self.labels = labels
        self.class_names = class_names
        self.archive = archive
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1

    @property
    def shape(self) -> tuple[int, int, int]:
        """Return one image's shape (C, S, S)."""
        return (1 if self.grey else 3, self.size, self.size)

    @property
    def num_classes(self) -> int | None:
        """Return the number of classes (None when unlabelled)."""
        return None if self.class_names is None else len(self.class_names)

    def nbytes(self) -> int:
        """Return the bytes the decoded data set takes in memory."""
        return len(self) * int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.read(index)), UNLABELLED if self.labels is None else int(self.labels[index])

    def read(self, index: int) -> np.ndarray:
        """Return image `index` as uint8 [C, S, S]."""
        entry = self.entries[index]
        if self.archive is None:
            picture = open_image(entry, self.size)
        else:
            picture = open_image(io.BytesIO(self._archive().read(entry)), self.size, f"{self.archive}:{entry}")
        return image_array(picture, self.grey)

    def read_all(self) -> ImageData:
        """Return the whole data set decoded into memory."""
        images = torch.empty((len(self), *self.shape), dtype=torch.uint8)
        for index in range(len(self)):
            images[index] = torch.from_numpy(self.read(index))
        return ImageData(self.name, images, self.labels, self.num_classes, self.class_names)

    def _archive(self) -> zipfile.ZipFile:
        # One handle per process: a DataLoader worker forked from a process with an open handle would
        # share its file offset with the parent.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.archive)
            self._zip_pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, -1
        return state


def _header(opened) -> tuple[tuple[int, int] | None, bool]:
    """Return an image's (size, grey) from its header alone (nothing decoded); (None, False) when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(opened) as picture:
            return picture.size, picture.mode in GREY_MODES
    except (UnidentifiedImageError, OSError):
        return None, False  # decoding it later raises the ValueError that names the file


def folder_files(path: str | os.PathLike, image_size: int = 0) -> ImageFiles:
    """Return the image folder `path` as ImageFiles (sub-folders are classes); DatasetNotFound when there is none."""
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
    labels, class_names = subfolder_labels([f.relative_to(folder).parts for f in files])
    grey = all(_header(f)[1] for f in files)
    return ImageFiles(f"{FOLDER_PREFIX}{folder}", [str(f) for f in files], image_size or FOLDER_IMAGE_SIZE, grey,
                      labels, class_names)  # fmt: skip


def subfolder_labels(parts: list[tuple[str, ...]]) -> tuple[torch.Tensor | None, list[str] | None]:
    """Return (labels, class names) from the files' relative path parts: first-level sub-folders are classes."""
    if any(len(p) < 2 for p in parts):
        return None, None
    classes = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64), classes


def zip_members(archive: zipfile.ZipFile) -> list[str]:
    """Return the image members of an archive, sorted by name (directories and other files left out)."""
    return sorted(
        info.filename for info in archive.infolist()
        if not info.is_dir() and os.path.splitext(info.filename)[1].lower() in IMAGE_SUFFIXES
    )  # fmt: skip


def count_zip_images(path: str | os.PathLike) -> int:
    """Return how many images the ZIP archive `path` holds (its directory only: nothing is decompressed)."""
    with zipfile.ZipFile(path) as archive:
        return len(zip_members(archive))


def zip_files(path: str | os.PathLike, image_size: int = 0) -> ImageFiles:
    """Return the ZIP archive `path` as ImageFiles, with the labels of its dataset.json when it has some.

    Images keep their own size when image_size is 0 and they all share one square size (dataset_tool's
    archives); else they are resized to image_size (0: 64).
    """
    shown = str(path)
    if not paths.is_file(Path(path)):
        raise DatasetNotFound(f"ZIP archive {shown!r} does not exist: pass an existing .zip file of images")
    try:
        with zipfile.ZipFile(path) as archive:
            members = zip_members(archive)
            if not members:
                raise DatasetNotFound(f"ZIP archive {shown!r} holds no images (png, jpg, bmp, webp, gif, tif)")
            labels, class_names = _zip_labels(archive, members, shown)
            sizes, grey = set(), True
            for member in members:
                with archive.open(member) as stream:
                    found, member_grey = _header(stream)
                sizes.add(found)
                grey = grey and member_grey
    except zipfile.BadZipFile as error:
        raise DatasetNotFound(f"{shown!r} is not a ZIP archive ({error})") from None
    size = image_size
    if not size:
        first = next(iter(sizes))
        size = first[0] if len(sizes) == 1 and first is not None and first[0] == first[1] else FOLDER_IMAGE_SIZE
    return ImageFiles(f"{ZIP_PREFIX}{path}", members, size, grey, labels, class_names, archive=str(path))


def _zip_labels(archive: zipfile.ZipFile, members: list[str], shown: str):
    """Return (labels int64 [N] aligned with members, class names) from dataset.json, or (None, None)."""
    try:
        raw = archive.read(ZIP_LABELS)
    except KeyError:
        return None, None
    try:
        listed = json.loads(raw).get("labels")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{shown}:{ZIP_LABELS}: not a JSON object with 'labels' ({error})") from None
    if listed is None:
        return None, None
    try:
        by_name = {str(name): label for name, label in listed}
    except (TypeError, ValueError):
        raise ValueError(f"{shown}:{ZIP_LABELS}: 'labels' must be a list of [file name, class] pairs") from None
    missing = [m for m in members if m not in by_name]
    if missing:
        raise ValueError(f"{shown}:{ZIP_LABELS}: no label for {len(missing)} image(s), e.g. {missing[0]!r}")
    values = [by_name[m] for m in members]
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None:
        raise ValueError(f"{shown}:{ZIP_LABELS}: labels must be class indices (integers >= 0), got {bad!r}")
    labels = torch.tensor(values, dtype=torch.int64)
    return labels, [str(i) for i in range(int(labels.max()) + 1)]

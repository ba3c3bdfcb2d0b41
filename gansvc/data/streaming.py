"""The training data of a run, held in memory or streamed from disk, and the memory budget that decides.

`open_training_data` returns ImageData / PointData (in memory: the trainer's DeviceBatches) or
StreamedData (a map-style Dataset read through a DataLoader: StreamedBatches) for:
- built-in data sets (always in memory: they are small),
- `folder:PATH` and `zip:PATH` (gansvc.data.sources): in memory when the decoded images fit the budget,
  else streamed,
- installed plugins (entry point group `gansvc.datasets`, docs/plugins.md): a factory returning an object
  with `images` / `labels` / `class_names` is in memory; one returning a map-style Dataset is streamed
  when it is larger than the budget, else read into memory once.
Whatever the path, the samples, their labels and their order are the same (gansvc.train.batches).
A streamed set's labels are small and held in memory (`StreamedData.labels`: conditional training, per-class
reference statistics); `read_chunks` reads its samples in order, a chunk at a time, through the same loader
(the reference statistics of FID, gansvc.metrics.reference).

The budget is an operator's setting: `gansvc serve --max-dataset-memory` / `gansvc train
--max-dataset-memory` (sizes like 4G, 512M), carried to the trainer in GANSVC_MAX_DATASET_MEMORY;
default a quarter of the machine's RAM.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

import torch

from gansvc.data.datasets import ImageData
from gansvc.data.sources import UNLABELLED, ImageFiles, folder_files, zip_files
from gansvc.runtime import registry
from gansvc.runtime.console import parse_size
from gansvc.runtime.plugins import PluginError, load_factory
from gansvc.train.spec import SpecError

MEMORY_ENV = registry.DATASET_MEMORY_ENV
WORKERS_ENV = "GANSVC_DATA_WORKERS"
READ_CHUNK = 256  # samples per loader batch when a streamed set is read in order (read_chunks)


def total_memory() -> int:
    """Return the machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget() -> int:
    """Return the bytes a data set may take in memory: GANSVC_MAX_DATASET_MEMORY, else a quarter of RAM."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            return parse_size(text)
        except ValueError as error:
            raise SpecError("dataset", f"{MEMORY_ENV}: {error}") from None
    return total_memory() // 4


def data_workers() -> int:
    """Return how many DataLoader worker processes a streamed data set gets (GANSVC_DATA_WORKERS, else by cores)."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text.isdigit():
        return int(text)
    return min(8, max(1, (os.cpu_count() or 2) // 2))


@dataclass
class StreamedData:
    """A data set read from disk one sample at a time: a map-style Dataset of (uint8 [C, H, W], int label)."""

    name: str
    dataset: torch.utils.data.Dataset
    shape: tuple[int, ...]
    labelled: bool
    num_classes: int | None
    class_names: list[str] | None
    plugin: str | None = None  # the plugin's name, for errors that name it

    def __len__(self) -> int:
        return len(self.dataset)

    @functools.cached_property
    def labels(self) -> torch.Tensor | None:
        """The int64 class of every sample [N] (None when unlabelled), held in memory while the images stream.

        Labels are small (8 bytes a sample): a folder's or an archive's come from their names and dataset.json;
        a plugin Dataset's are read once, through the loader (its images dropped chunk by chunk).
        """
        if not self.labelled:
            return None
        known = getattr(self.dataset, "labels", None)
        if isinstance(known, torch.Tensor):
            return known
        return torch.cat([labels for _, labels in read_chunks(self)])

    def describe_error(self, error: BaseException) -> Exception:
        """Return the error a run fails with when reading a sample raised `error` (maybe in a worker)."""
        message = _last_line(error)
        if self.plugin is not None:
            named = str(PluginError("datasets", self.plugin, ""))  # a CheckedDataset's own error names it already
            if message.startswith(named):
                return PluginError("datasets", self.plugin, message[len(named) :])
            return PluginError("datasets", self.plugin, f"reading a sample failed: {message}")
        return SpecError("dataset", f"{self.name}: reading a sample failed: {message}")


def _last_line(error: BaseException) -> str:
    """Return the error's own message (a worker's error arrives wrapped with its traceback: its last line)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # "Caught ValueError in DataLoader worker process 0. Original Traceback ... module.Class: message"
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", lines[-1].strip()) if len(lines) > 1 else lines[0]


def open_training_data(name: str, split: str = "train", root=None, image_size: int = 0, download: bool = False,
                       dataset_args: dict | None = None, budget: int | None = None):  # fmt: skip
    """Return the data set `name` as ImageData / PointData (in memory) or StreamedData (larger than `budget`).

    budget: bytes (None: memory_budget()). dataset_args go to a plugin's factory only.
    """
    from gansvc.data import load_dataset

    files = _image_files(name, image_size)
    if files is not None:
        return _in_memory_or_streamed(files, budget)
    if registry.dataset_info(name) is not None and not registry.is_plugin("datasets", name):
        return load_dataset(name, split, root, image_size, download)
    return open_plugin_dataset(name, split=split, root=root, image_size=image_size, dataset_args=dataset_args or {},
                               budget=budget)  # fmt: skip


def _image_files(name: str, image_size: int) -> ImageFiles | None:
    if registry.is_folder_dataset(name):
        return folder_files(registry.folder_path(name), image_size)
    if registry.is_zip_dataset(name):
        return zip_files(registry.zip_path(name), image_size)
    return None


def _in_memory_or_streamed(files: ImageFiles, budget: int | None):
    if files.nbytes() <= (memory_budget() if budget is None else budget):
        return files.read_all()
    return StreamedData(files.name, files, files.shape, files.labels is not None, files.num_classes, files.class_names)


# ---------------------------------------------------------------------- plugins
def call_factory(name: str, factory, args: dict, **fixed):
    """Call a data set plugin's factory (gansvc.runtime.plugins.call_factory: the arguments bound to its
    signature first); a refusal of its args is a SpecError naming `dataset_args.<key>`, anything else a
    PluginError naming the plugin."""
    from gansvc.runtime.plugins import PluginArgumentError
    from gansvc.runtime.plugins import call_factory as call_plugin

    try:
        return call_plugin("datasets", name, factory, fixed, dict(args), "dataset_args", "dataset")
    except PluginArgumentError as error:
        raise SpecError(error.field, error.message) from None


def open_plugin_dataset(name: str, *, split: str, root, image_size: int, dataset_args: dict, budget: int | None = None):
    """Return plugin `name`'s data set, checked: ImageData (in memory) or StreamedData (a Dataset over budget)."""
    factory = load_factory("datasets", name)
    made = call_factory(name, factory, dataset_args, split=split, root=root, image_size=image_size)
    if isinstance(made, torch.utils.data.Dataset) and not hasattr(made, "images"):
        checked = CheckedDataset.of(name, made, image_size)
        data = StreamedData(f"{name}", checked, checked.shape, checked.labelled, checked.num_classes,
                            checked.class_names, plugin=name)  # fmt: skip
        nbytes = len(checked) * int(torch.Size(checked.shape).numel())
        if nbytes <= (memory_budget() if budget is None else budget):
            return read_into_memory(data)
        return data
    return check_in_memory(name, made, image_size)


def _error(name: str, message: str) -> PluginError:
    return PluginError("datasets", name, message)


def _check_labels(name: str, labels, count: int, class_names) -> tuple[torch.Tensor | None, list[str] | None]:
    """Return (int64 labels [count] or None, class names): labels checked against the class names."""
    if class_names is not None:
        if not isinstance(class_names, (list, tuple)) or not class_names:
            raise _error(name, f"class_names must be a non-empty list of names or None, got {class_names!r}")
        class_names = [str(c) for c in class_names]
    if labels is None:
        return None, class_names
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise _error(name, f"labels must be int64, got {labels.dtype}")
    if labels.shape != (count,):
        raise _error(name, f"labels must be [N] = [{count}], one per image; got {list(labels.shape)}")
    labels = labels.to(torch.int64)
    low, high = int(labels.min()), int(labels.max())
    limit = len(class_names) if class_names is not None else None
    if low < 0 or (limit is not None and high >= limit):
        raise _error(name, f"labels must be class indices in [0, {limit or 'N'}), got values in [{low}, {high}]")
    return labels, class_names or [str(i) for i in range(high + 1)]


def check_in_memory(name: str, made, image_size: int) -> ImageData:
    """Return a plugin's in-memory data set (images, labels, class_names) as ImageData; PluginError if malformed."""
    from gansvc.data import resize_images

    if not hasattr(made, "images"):
        raise _error(name, f"the factory returned {type(made).__name__}: expected an object with images, labels and "
                     "class_names, or a map-style torch.utils.data.Dataset")  # fmt: skip
    images = made.images
    if not isinstance(images, torch.Tensor):
        raise _error(name, f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise _error(name, f"images must be uint8 (0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[1] not in (1, 3) or min(images.shape[2:]) < 1:
        raise _error(name, f"images must be [N, C, H, W] with N >= 1 and C 1 or 3, got {list(images.shape)}")
    labels, class_names = _check_labels(name, getattr(made, "labels", None), images.shape[0],
                                        getattr(made, "class_names", None))  # fmt: skip
    if image_size and tuple(images.shape[2:]) != (image_size, image_size):
        images = resize_images(images.contiguous(), image_size)
    num_classes = None if labels is None else len(class_names)
    return ImageData(name, images.contiguous(), labels, num_classes, class_names if labels is not None else None)


class CheckedDataset(torch.utils.data.Dataset):
    """A plugin's map-style Dataset with every sample checked: (uint8 [C, H, W] tensor, int label or -1).

    Made with `of`, which reads sample 0 to learn the shape and whether samples carry labels; each later
    sample must agree (a PluginError naming the plugin and the index otherwise).
    """

    def __init__(self, name: str, dataset, shape, labelled: bool, class_names, image_size: int):
        self.name, self.dataset, self.shape, self.labelled = name, dataset, tuple(shape), labelled
        self.class_names = class_names
        self.num_classes = None if class_names is None else len(class_names)
        self.image_size = image_size

    @classmethod
    def of(cls, name: str, dataset, image_size: int) -> CheckedDataset:
        """Return the checked view of plugin `name`'s Dataset (PluginError when it is empty or malformed)."""
        try:
            count = len(dataset)
        except Exception as error:  # noqa: BLE001
            raise _error(name, f"the Dataset has no usable __len__ ({type(error).__name__}: {error})") from None
        if not isinstance(count, int) or count < 1:
            raise _error(name, f"the Dataset must hold at least one sample, len() gave {count!r}")
        class_names = getattr(dataset, "class_names", None)
        if class_names is None and getattr(dataset, "num_classes", None):
            class_names = [str(i) for i in range(int(dataset.num_classes))]
        probe = cls(name, dataset, (), True, None, image_size)
        image, label = probe._sample(0)
        _, class_names = _check_labels(name, None, count, class_names)
        return cls(name, dataset, image.shape, label is not None, class_names, image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample(self, index: int) -> tuple[torch.Tensor, int | None]:
        try:
            sample = self.dataset[index]
        except Exception as error:  # noqa: BLE001 - a third party's code: any failure is the plugin's
            raise _error(self.name, f"sample {index} raised {type(error).__name__}: {error}") from None
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise _error(self.name, f"sample {index} must be (image, label), got {type(sample).__name__}")
        image, label = sample
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
            kind = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
            raise _error(self.name, f"sample {index}: the image must be a uint8 torch.Tensor, got {kind}")
        if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
            raise _error(self.name, f"sample {index}: the image must be [C, H, W] with C 1 or 3, got "
                         f"{list(image.shape)}")  # fmt: skip
        if self.image_size and tuple(image.shape[1:]) != (self.image_size, self.image_size):
            from gansvc.data import resize_images

            image = resize_images(image[None].contiguous(), self.image_size)[0]
        if label is not None:
            if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.dtype.is_floating_point:
                label = int(label)
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise _error(self.name, f"sample {index}: the label must be a class index >= 0 or None, got {label!r}")
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self._sample(index)
        if tuple(image.shape) != self.shape:
            raise _error(self.name, f"sample {index} has shape {list(image.shape)}, sample 0 {list(self.shape)}")
        if (label is not None) != self.labelled:
            raise _error(self.name, f"sample {index} {'has no' if label is None else 'has a'} label, sample 0 "
                         f"{'had one' if self.labelled else 'had none'}")  # fmt: skip
        if label is not None and self.num_classes is not None and label >= self.num_classes:
            raise _error(self.name, f"sample {index}: label {label} is not below the {self.num_classes} classes")
        return image.contiguous(), UNLABELLED if label is None else label


def read_chunks(data: StreamedData, rows: torch.Tensor | None = None, chunk: int = READ_CHUNK,
                workers: int | None = None):  # fmt: skip
    """Yield (uint8 images [n, C, H, W], int64 labels [n]) of `rows` (default all, in index order), `chunk` at a time.

    One DataLoader with the data set's worker processes reads them; at most a few chunks are in memory at once
    (the one yielded and the workers' read-ahead). A sample that cannot be read raises data.describe_error's error.
    """
    from gansvc.train.batches import collate_samples

    order = torch.arange(len(data)) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
    batches = [part.tolist() for part in order.split(chunk)]
    workers = data_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        data.dataset, batch_sampler=batches, num_workers=workers if len(batches) > 1 else 0,
        collate_fn=collate_samples,
    )  # fmt: skip
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - reading a sample failed (maybe in a worker): say which
            raise data.describe_error(error) from error
        yield batch


def read_into_memory(data: StreamedData, workers: int | None = None) -> ImageData:
    """Return a streamed data set read whole into memory (in index order, with the loader's worker processes)."""
    count = len(data)
    images = torch.empty((count, *data.shape), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    start = 0
    for batch_images, batch_labels in read_chunks(data, workers=workers):
        images[start : start + batch_images.shape[0]] = batch_images
        labels[start : start + batch_images.shape[0]] = batch_labels
        start += batch_images.shape[0]
    if not data.labelled:
        return ImageData(data.name, images, None, None, None)
    class_names = data.class_names or [str(i) for i in range(int(labels.max()) + 1)]
    return ImageData(data.name, images, labels, len(class_names), class_names)


def make_batches(data, batch_size: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 balance_labels: torch.Tensor | None = None):
    """Return the training batches of `data`: DeviceBatches for data in memory, StreamedBatches when streamed.

    `balance_labels` (the data's labels, [N]) makes every batch class-balanced (see gansvc.train.batches.BatchOrder).
    """
    from gansvc.train.batches import DeviceBatches, StreamedBatches

    if isinstance(data, StreamedData):
        return StreamedBatches(data.dataset, batch_size, seed, device, rank, world_size, workers=data_workers(),
                               labelled=data.labelled, describe_error=data.describe_error,
                               balance_labels=balance_labels)  # fmt: skip
    if hasattr(data, "points"):  # 2-D points: their labels are the mode each came from
        return DeviceBatches(data.points, batch_size, seed, device, rank, world_size, labels=data.labels,
                             balance_labels=balance_labels)  # fmt: skip
    return DeviceBatches(data.images, batch_size, seed, device, rank, world_size, labels=data.labels,
                         balance_labels=balance_labels)  # fmt: skip


def sample_shape(data) -> tuple[int, ...]:
    """Return one sample's shape: (C, H, W) for images, (2,) for points, in memory or streamed."""
    if isinstance(data, StreamedData):
        return tuple(data.shape)
    return tuple((data.points if hasattr(data, "points") else data.images).shape[1:])

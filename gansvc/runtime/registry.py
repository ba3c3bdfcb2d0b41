"""One registry of names and defaults: data sets, models, losses, extractors, job states, server defaults.

Everything that lists or checks a name reads it from here (the spec, service validation, the CLIs,
the servicer), through functions such as `dataset_names()`: installed plugins (issue 11: entry
points `gansvc.models`, `gansvc.datasets`, `gansvc.extractors`) join the built-ins through
`register_*`, so callers never change when a name is added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# ---------------------------------------------------------------------- data sets
FOLDER_PREFIX = "folder:"  # folder:PATH names an image folder
ZIP_PREFIX = "zip:"  # zip:PATH names a ZIP archive of images (dataset_tool.py's layout)
SPLITS = ("train", "test")
FOLDER_IMAGE_SIZE = 64  # folder images are resized to this when the spec's image_size is 0


@dataclass(frozen=True)
class DatasetInfo:
    """A named data set: what it holds, its shape, its sizes per split, its classes (None = unknown)."""

    name: str
    kind: str  # "images" | "points"
    shape: tuple[int, ...]  # one sample: (C, H, W) for images, (2,) for points; () = unknown (a plugin's)
    sizes: dict[str, int] = field(default_factory=dict)  # split -> samples
    num_classes: int | None = None
    description: str = ""
    plugin: str = ""  # the distribution ('package version') of an installed plugin; '' for a built-in

    def size(self, split: str = "train") -> int | None:
        """Return the number of samples in `split`, or None when unknown."""
        return self.sizes.get(split)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a data set (a built-in or a plugin's); return it. A name already taken is a ValueError."""
    if info.name in _DATASETS or info.name.startswith((FOLDER_PREFIX, ZIP_PREFIX)):
        raise ValueError(f"data set name {info.name!r} is taken")
    _DATASETS[info.name] = info
    return info


register_dataset(DatasetInfo("fashion-mnist", "images", (1, 28, 28), {"train": 60000, "test": 10000}, 10,
                             "Zalando's clothing images"))  # fmt: skip
register_dataset(DatasetInfo("mnist", "images", (1, 28, 28), {"train": 60000, "test": 10000}, 10, "handwritten digits"))
register_dataset(DatasetInfo("cifar10", "images", (3, 32, 32), {"train": 50000, "test": 10000}, 10, "CIFAR-10"))
register_dataset(DatasetInfo("gaussian-mixture", "points", (2,), {"train": 64000, "test": 10000}, 8,
                             "eight 2-D Gaussians on a ring"))  # fmt: skip


def dataset_names() -> tuple[str, ...]:
    """Return the named data sets (folder:PATH and zip:PATH come on top of these)."""
    return tuple(_DATASETS)


def image_dataset_names() -> tuple[str, ...]:
    """Return the named data sets that hold images (the ones FID can use as the real side)."""
    return tuple(name for name, info in _DATASETS.items() if info.kind == "images")


def dataset_info(name: str) -> DatasetInfo | None:
    """Return what is known of data set `name` (None for folder:PATH, zip:PATH and unknown names)."""
    return _DATASETS.get(name)


def is_folder_dataset(name: str) -> bool:
    """Return whether `name` is folder:PATH."""
    return name.startswith(FOLDER_PREFIX)


def folder_path(name: str) -> str | None:
    """Return the PATH of folder:PATH, else None."""
    return name[len(FOLDER_PREFIX) :] if is_folder_dataset(name) else None


def is_zip_dataset(name: str) -> bool:
    """Return whether `name` is zip:PATH."""
    return name.startswith(ZIP_PREFIX)


def zip_path(name: str) -> str | None:
    """Return the PATH of zip:PATH, else None."""
    return name[len(ZIP_PREFIX) :] if is_zip_dataset(name) else None


def dataset_choices_text() -> str:
    """Return the data set names as a user reads them: 'fashion-mnist | ... | folder:PATH | zip:PATH'."""
    return " | ".join((*dataset_names(), "folder:PATH", "zip:PATH"))


# ---------------------------------------------------------------------- the real side of FID
ARRAY_SUFFIXES = (".npz", ".npy", ".pt", ".pth")  # files of images, or a statistics .npz


@dataclass(frozen=True)
class RealSource:
    """A parsed 'real' argument: a named data set split, an image folder data set, or a file / folder path."""

    kind: str  # "dataset" | "folder" | "zip" | "path"
    name: str  # the data set name ("folder:PATH" / "zip:PATH"), or the path as given
    split: str = "train"
    path: str = ""  # for "folder", "zip" and "path"


def parse_real(text: str, is_path=None) -> RealSource:
    """Return the RealSource a 'real' argument names; ValueError saying what was expected.

    'folder:PATH' is an image folder data set; text with a path separator or an array/statistics
    suffix is a file or folder; otherwise NAME[:SPLIT] with NAME an image data set and SPLIT train|test
    (default train). `is_path(text)`, where given, lets an existing bare name be a path (the CLI).
    """
    if not text:
        raise ValueError("is empty")
    if is_folder_dataset(text):
        path = folder_path(text)
        if not path.strip():
            raise ValueError("folder:PATH needs a path, e.g. 'folder:/data/faces'")
        return RealSource("folder", text, "train", path)
    if is_zip_dataset(text):
        path = zip_path(text)
        if not path.strip():
            raise ValueError("zip:PATH needs a path, e.g. 'zip:/data/faces.zip'")
        return RealSource("zip", text, "train", path)
    looks_like_path = "/" in text or os.sep in text or text.lower().endswith(ARRAY_SUFFIXES)
    name, _, split = text.partition(":")
    if not looks_like_path and name not in image_dataset_names() and is_path is not None and is_path(text):
        looks_like_path = True
    if looks_like_path:
        return RealSource("path", text, "train", text)
    if name not in image_dataset_names():
        raise ValueError(
            f"unknown dataset {name!r}: expected DATASET[:SPLIT] with DATASET one of "
            f"{', '.join(image_dataset_names())}, folder:PATH, zip:PATH, or a file or folder of images / a "
            "statistics .npz"
        )
    split = split or "train"
    if split not in SPLITS:
        raise ValueError(f"got {text!r}: the split must be one of {', '.join(SPLITS)}")
    return RealSource("dataset", name, split)


# ---------------------------------------------------------------------- models, losses, precisions
@dataclass(frozen=True)
class ModelInfo:
    """A GAN architecture: the image sizes it builds (None = any) and whether it takes 2-D points."""

    name: str
    image_sizes: tuple[int, ...] | None = None
    points: bool = False
    description: str = ""
    plugin: str = ""  # the distribution ('package version') of an installed plugin; '' for a built-in
    default_loss: str = "bce"  # the loss a spec that names none gets (TrainSpec.loss "")
    # optimiser settings a spec that leaves them out gets instead of TrainSpec's (lr_g, lr_d, beta1, beta2)
    optimizer: tuple[tuple[str, float], ...] = ()


_MODELS: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    """Add a model (a built-in or a plugin's); return it. A name already taken is a ValueError."""
    if info.name in _MODELS:
        raise ValueError(f"model name {info.name!r} is taken")
    _MODELS[info.name] = info
    return info


register_model(ModelInfo("mlp", None, True, "the seeds' MLP GAN"))
register_model(ModelInfo("dcgan", (28, 32, 64, 128), False, "DCGAN (Radford et al., 2016)"))
# the spectrally normalised residual D learns nothing under the DCGAN's G-heavy rates (measured at width 16 on
# Fashion-MNIST: hinge loss stuck at 2, FID 309 after 3 epochs); SNGAN's equal rates and betas (0, 0.9) gave 128,
# SAGAN's two time scales (G 1e-4 / D 4e-4) 239 (README, "Quality of the recipes")
register_model(ModelInfo("resnet", (28, 32, 64, 128), False, "SNGAN-style residual G and D (Miyato et al., 2018)",
                         default_loss="hinge",
                         optimizer=(("lr_g", 2e-4), ("lr_d", 2e-4), ("beta1", 0.0), ("beta2", 0.9))))  # fmt: skip


def model_optimizer_note(key: str) -> str:
    """Return ' (MODEL's own: VALUE, ...)' for the models that bring their own `key` (an optimiser setting), else ''."""
    own = [f"{info.name} {value:g}" for info in _MODELS.values() for name, value in info.optimizer if name == key]
    return f" (a model's own default: {', '.join(own)})" if own else ""


def model_names() -> tuple[str, ...]:
    """Return the model names."""
    return tuple(_MODELS)


def model_info(name: str) -> ModelInfo | None:
    """Return what is known of model `name`, or None."""
    return _MODELS.get(name)


LOSSES = ("bce", "hinge", "wasserstein")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: CUDA only (gansvc.train.precision)


def loss_names() -> tuple[str, ...]:
    """Return the loss families."""
    return LOSSES


def precision_names() -> tuple[str, ...]:
    """Return the training precisions."""
    return PRECISIONS


# ---------------------------------------------------------------------- feature extractors
@dataclass(frozen=True)
class ExtractorInfo:
    """A feature network for FID / IS / KID."""

    name: str
    description: str = ""
    plugin: str = ""  # the distribution ('package version') of an installed plugin; '' for a built-in


_EXTRACTORS: dict[str, ExtractorInfo] = {}


def register_extractor(info: ExtractorInfo) -> ExtractorInfo:
    """Add a feature extractor; return it. A name already taken is a ValueError."""
    if info.name in _EXTRACTORS:
        raise ValueError(f"extractor name {info.name!r} is taken")
    _EXTRACTORS[info.name] = info
    return info


register_extractor(ExtractorInfo("fmnist-cnn", "the shipped Fashion-MNIST classifier (1x28x28 images)"))
register_extractor(ExtractorInfo("inception-v3", "pytorch-fid's FID Inception-v3 (weights from a local file)"))
DEFAULT_EXTRACTOR = "fmnist-cnn"
# The FID Inception weights file the operator configures once (gansvc serve / train --inception-weights set it
# for the process and its workers); nothing is downloaded.
INCEPTION_WEIGHTS_ENV = "GANSVC_INCEPTION_WEIGHTS"


def extractor_names() -> tuple[str, ...]:
    """Return the feature extractor names."""
    return tuple(_EXTRACTORS)


def extractor_info(name: str) -> ExtractorInfo | None:
    """Return what is known of extractor `name`, or None."""
    return _EXTRACTORS.get(name)


# ---------------------------------------------------------------------- evaluation metrics
# The scores an evaluation job reports (its Metrics event, Job.latest_metrics; computed by gansvc.metrics),
# each with what adds it: "" always (IS needs an extractor with logits, KID real feature rows), else the
# EvaluationSpec field that asks for it, or "labels": a conditional checkpoint, or uploads with sample_labels.
EVALUATION_METRICS: dict[str, str] = {
    "fid": "", "is_mean": "", "is_std": "", "kid_mean": "", "kid_std": "",
    "precision": "precision_recall", "recall": "precision_recall", "density": "precision_recall",
    "coverage": "precision_recall",
    "fid_ci_low": "bootstrap", "fid_ci_high": "bootstrap",
    "intra_fid": "labels", "class_agreement": "labels",
}  # fmt: skip


# ---------------------------------------------------------------------- jobs and the server
JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
JOB_KINDS = ("training", "evaluation")

DEFAULT_ADDRESS = "127.0.0.1:50051"  # where the server listens and clients look
DEFAULT_REAL = "fashion-mnist:test"  # the real side of an evaluation job
DEFAULT_EVAL_SAMPLES = 5000
MAX_EVAL_SAMPLES = 100_000


@dataclass(frozen=True)
class ServerDefaults:
    """The defaults of `gansvc serve` (ServerConfig and the CLI read them from here)."""

    listen: str = DEFAULT_ADDRESS
    devices: str = "cpu"
    cpu_jobs: int = 1
    max_message_mb: int = 64
    max_watchers: int = 64
    shutdown_timeout: float = 60.0
    cancel_timeout: float = 120.0


SERVER_DEFAULTS = ServerDefaults()
# The memory budget of a training data set (bytes or 4G / 512M; default a quarter of RAM): `gansvc serve
# --max-dataset-memory` and `gansvc train --max-dataset-memory` put it here for the trainer (and its workers).
DATASET_MEMORY_ENV = "GANSVC_MAX_DATASET_MEMORY"


# ---------------------------------------------------------------------- installed plugins (issue 11)
# Plugins whose name a built-in (or an earlier plugin) already holds: (kind, name, distribution). They
# are left out (a built-in name always means the built-in) and GetServerInfo lists them.
PLUGIN_CONFLICTS: list[tuple[str, str, str]] = []


def is_plugin(kind: str, name: str) -> bool:
    """Return whether `name` is an installed plugin of `kind` ('models' | 'datasets' | 'extractors')."""
    info = {"models": _MODELS, "datasets": _DATASETS, "extractors": _EXTRACTORS}[kind].get(name)
    return info is not None and bool(info.plugin)


def register_plugins() -> None:
    """Add the installed plugins' names (entry points; nothing is imported) next to the built-ins.

    A plugin's data set shape, size and classes are unknown here (the factory is not called); its
    model is assumed to take any data (the factory says otherwise when it is built).
    """
    from gansvc.runtime import plugins

    registers = {
        "models": lambda name, dist: register_model(ModelInfo(name, None, True, "installed plugin", dist)),
        "datasets": lambda name, dist: register_dataset(DatasetInfo(name, "images", (), {}, None, "installed plugin",
                                                                    dist)),  # fmt: skip
        "extractors": lambda name, dist: register_extractor(ExtractorInfo(name, "installed plugin", dist)),
    }
    for kind, add in registers.items():
        for name in plugins.plugin_names(kind):
            dist = plugins.distribution_of(kind, name) or "unknown distribution"
            if not name or any(c in name for c in ":/\\") or name != name.strip():  # clashes with NAME:SPLIT, paths
                PLUGIN_CONFLICTS.append((kind, name, dist))
                continue
            try:
                add(name, dist)
            except ValueError:
                if is_plugin(kind, name):  # registered already (register_plugins called twice)
                    continue
                PLUGIN_CONFLICTS.append((kind, name, dist))


def refresh_plugins() -> None:
    """Forget the registered plugins and register the ones installed now (after sys.path changed, in tests)."""
    for table in (_MODELS, _DATASETS, _EXTRACTORS):
        for name in [name for name, info in table.items() if info.plugin]:
            del table[name]
    PLUGIN_CONFLICTS.clear()
    register_plugins()


register_plugins()

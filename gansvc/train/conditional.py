"""Class-conditional training (issue 12): the classes of a data set, the labels of generated samples, and the
per-class sample grid.

Labels of generated samples are drawn uniformly over the classes, or with the data's class frequencies
(`label_sampling: data`). In training they come from the run's noise stream (so a resume continues
exactly and N ranks draw what one would); outside training (`gansvc sample`, GetSamples, evaluation jobs)
from a generator seeded with the request's seed.
"""

from __future__ import annotations

import torch

from gansvc.train.spec import SpecError

# The class names of the named data sets, in label order.
# INTEGRATOR: the data helper's loaders carry `class_names`; `class_names()` prefers those and falls back here.
KNOWN_CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),  # fmt: skip
    "mnist": tuple(str(digit) for digit in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
GRID_COLUMNS = 8  # fixed noise vectors per row of a conditional sample grid (one row per class)
_LABEL_SEED_OFFSET = 0x1AB  # labels drawn outside training use seed + this, apart from the noise's seed


def data_classes(data, dataset: str) -> tuple[torch.Tensor, int, list[str]]:
    """Return (labels [N] int64, number of classes, class names) of loaded training data, in memory or streamed.

    Raises SpecError('conditional') when the data set has no labels (e.g. a folder without class sub-folders).
    """
    labels = getattr(data, "labels", None)
    if labels is None:
        raise SpecError("conditional", f"{dataset} has no class labels (a folder needs one sub-folder per class, "
                                       "a ZIP archive labels in its dataset.json)")  # fmt: skip
    labels = labels.long()
    count = int(getattr(data, "num_classes", None) or (int(labels.max()) + 1 if labels.numel() else 0))
    if count < 1:
        raise SpecError("conditional", f"{dataset} has no classes")
    return labels, count, class_names(data, dataset, count)


def class_names(data, dataset: str, count: int) -> list[str]:
    """Return the names of `count` classes: the data's own, a known data set's, else '0', '1', ..."""
    names = getattr(data, "class_names", None) or KNOWN_CLASS_NAMES.get(dataset)
    if names is None or len(names) != count:
        names = [str(k) for k in range(count)]
    return list(names)


def label_probabilities(labels: torch.Tensor, count: int, sampling: str) -> torch.Tensor | None:
    """Return the class probabilities of generated samples' labels: None for uniform, else the data's frequencies."""
    if sampling == "uniform":
        return None
    frequencies = torch.bincount(labels.long().cpu(), minlength=count).double()
    return frequencies / frequencies.sum()


def draw_labels(n: int, count: int, probs: torch.Tensor | None, generator: torch.Generator, device) -> torch.Tensor:
    """Return n class labels (int64 on `device`) drawn uniformly (probs None) or with probabilities `probs`."""
    if probs is None:
        return torch.randint(0, count, (n,), device=device, generator=generator)
    return torch.multinomial(probs.to(device), n, replacement=True, generator=generator)


def sample_labels(generator, n: int, seed: int, device="cpu") -> torch.Tensor | None:
    """Return labels for n samples of a loaded generator drawn as in its training (None: not conditional)."""
    count = getattr(generator, "num_classes", 0)
    if not count:
        return None
    rng = torch.Generator(device=device).manual_seed(seed + _LABEL_SEED_OFFSET)
    return draw_labels(n, count, getattr(generator, "label_probs", None), rng, device)


def seed_labels(generator, seeds) -> torch.Tensor | None:
    """Return one label per seed [len(seeds)] drawn as in training, each from its own generator (None: not
    conditional), so a seed's class does not depend on the other seeds drawn with it."""
    count = getattr(generator, "num_classes", 0)
    if not count:
        return None
    probs = getattr(generator, "label_probs", None)
    drawn = [draw_labels(1, count, probs, torch.Generator().manual_seed(int(seed) + _LABEL_SEED_OFFSET), "cpu")
             for seed in seeds]  # fmt: skip
    return torch.cat(drawn) if drawn else torch.empty(0, dtype=torch.int64)


def grid_inputs(fixed_noise: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (noise, labels) of a per-class grid: the same GRID_COLUMNS noise vectors in every row, row k class k."""
    columns = min(GRID_COLUMNS, fixed_noise.shape[0])
    noise = fixed_noise[:columns].repeat(count, 1)
    labels = torch.arange(count, device=fixed_noise.device).repeat_interleave(columns)
    return noise, labels


def check_class(label: int, count: int, field: str = "class") -> None:
    """Raise ValueError naming `field` unless `label` is a class index of a conditional generator."""
    if not count:
        raise ValueError(f"{field}: the generator is not class-conditional (trained without conditional)")
    if not 0 <= label < count:
        raise ValueError(f"{field}: got {label}, expected a class 0..{count - 1}")

"""Scores of class-conditional samples (issue 12): intra-class FID and the classifier's agreement.

- intra-class FID: each class's generated images against that class's real images (per-class reference
  statistics, cached like the others by gansvc.metrics.reference), and their mean over the classes; the real
  side is a labelled data set: a built-in, a plugin's, a folder of class sub-folders or a ZIP with labels;
- class agreement: the share of samples the shipped Fashion-MNIST classifier (fmnist-cnn) assigns to the
  class they were generated for; only where the real side is Fashion-MNIST, the classifier's classes.
"""

from __future__ import annotations

import os

import torch

from gansvc.metrics.features import extractor_fits
from gansvc.metrics.fid import fid_from_features
from gansvc.metrics.reference import LABELLED_SETS, NoClassLabels, real_image_size, real_reference
from gansvc.runtime.registry import parse_real

AGREEMENT_DATASETS = ("fashion-mnist",)  # the data sets whose classes fmnist-cnn predicts


@torch.no_grad()
def class_agreement(fake: torch.Tensor, labels: torch.Tensor, device: str | torch.device = "cpu") -> tuple[float, dict]:
    """Return (overall share, {class: share}) of `fake` [N, 1, 28, 28] that fmnist-cnn classifies as `labels` [N]."""
    from gansvc.metrics.evaluate import get_extractor

    _, logits = get_extractor("fmnist-cnn", device)(fake)
    hits = logits.argmax(1).cpu() == labels.cpu().long()
    per_class = {int(k): float(hits[labels.cpu() == k].double().mean()) for k in labels.unique().tolist()}
    return float(hits.double().mean()), per_class


def agreement_applies(real: str, image_shape) -> bool:
    """Return whether the classifier's agreement means something for samples of `image_shape` scored against `real`."""
    try:
        source = parse_real(real)
    except ValueError:
        return False
    return source.kind == "dataset" and source.name in AGREEMENT_DATASETS and extractor_fits("fmnist-cnn", image_shape)


def evaluate_per_class(
    fake: torch.Tensor,
    labels: torch.Tensor,
    real: str = "fashion-mnist:test",
    extractor: str = "fmnist-cnn",
    data_root: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    image_size: int = 0,
) -> dict:
    """Return intra-class FID (mean and per class) and, where it applies, the classifier's class agreement.

    fake: images [N, C, H, W] in [-1, 1] (or uint8); labels: the class each was generated for [N]. `real`
    must be a labelled data set: NAME[:SPLIT], folder:PATH with one sub-folder per class, or zip:PATH with
    dataset.json labels (streamed when larger than the memory budget); classes with fewer than 2 samples get
    no FID. A real side without labels raises NoClassLabels (a ValueError). `image_size` > 0 resizes the real
    images to that size first (as evaluate's).
    Keys: intra_fid, intra_fid_per_class {class: fid}, class_agreement, class_agreement_per_class (the last
    two None where the classifier's classes are not the data set's).
    """
    from gansvc.metrics.evaluate import get_extractor

    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (fake.shape[0],):
        raise ValueError(f"labels must hold one class per image ([{fake.shape[0]}]), got {list(labels.shape)}")
    if parse_real(real).kind == "path":
        raise NoClassLabels(f"real {real!r}: per-class scores need a labelled data set as the real side "
                            f"({LABELLED_SETS})")  # fmt: skip
    image_size = real_image_size(real, fake.shape, image_size)
    net = get_extractor(extractor, device, inception_weights)
    features, _ = net(fake, progress, desc="generated images")
    per_class = {}
    for k in labels.unique().tolist():
        rows = labels == k
        if int(rows.sum()) < 2:
            continue
        reference = real_reference(real, net, data_root, None, progress, image_size=image_size, label=int(k))
        per_class[int(k)] = fid_from_features(reference.stats, features[rows]).fid
    agreement, agreement_per_class = None, None
    if agreement_applies(real, fake.shape[1:]):
        agreement, agreement_per_class = class_agreement(fake, labels, device)
    return {
        "intra_fid": sum(per_class.values()) / len(per_class) if per_class else None,
        "intra_fid_per_class": per_class,
        "class_agreement": agreement,
        "class_agreement_per_class": agreement_per_class,
    }

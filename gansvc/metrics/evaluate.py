"""One call that scores generated images: FID, Inception Score and KID against a real set."""

from __future__ import annotations

import os

import torch

from gansvc.metrics.features import FeatureExtractor, extractor_fits, load_extractor
from gansvc.metrics.fid import fid_from_features, statistics_device, trace_report
from gansvc.metrics.inception_score import inception_score
from gansvc.metrics.kid import kernel_inception_distance
from gansvc.metrics.prdc import precision_recall_density_coverage
from gansvc.metrics.reference import real_image_size, real_reference
from gansvc.runtime import registry

_EXTRACTOR_CACHE: dict[tuple, FeatureExtractor] = {}


def get_extractor(name: str, device: str | torch.device = "cpu", inception_weights=None) -> FeatureExtractor:
    """Return the extractor `name` on `device`, loading its weights once per process."""
    if name == "inception-v3":
        from gansvc.metrics.inception import resolve_weights_path

        inception_weights = str(resolve_weights_path(inception_weights))
    key = (name, str(torch.device(device)), inception_weights if name == "inception-v3" else None)
    if key not in _EXTRACTOR_CACHE:
        _EXTRACTOR_CACHE[key] = load_extractor(name, device, inception_weights)
    return _EXTRACTOR_CACHE[key]


def evaluate(
    fake: torch.Tensor,
    real: str = "fashion-mnist:test",
    extractor: str = "fmnist-cnn",
    data_root: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    n_real: int | None = None,
    progress: bool = False,
    *,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    precision_recall: bool = False,
    prdc_k: int = 3,
    bootstrap: int = 0,
    image_size: int = 0,
) -> dict:
    """Return {fid, fid_trace, is_mean, is_std, kid_mean, kid_std, n_real, n_fake, extractor} for images `fake`.

    fid_trace says how FID's trace term was computed: {route, error_bound, iterations, fell_back, device}.

    `fake`: [N, C, H, W] float in [-1, 1] or uint8. `real`: a data set 'NAME[:SPLIT]', a file or folder
    of images, or a statistics .npz (see gansvc.metrics.reference); its statistics are cached.
    kid_* are None when the real side is a statistics file without feature rows. With
    precision_recall, precision / recall / density / coverage (k = prdc_k) of the generated features
    against the real feature rows are added (gansvc.metrics.prdc; None without real feature rows).
    With bootstrap > 0, fid_ci_low / fid_ci_high (95% percentile interval of that many resamples of the
    generated features, gansvc.metrics.bootstrap) and fid_bootstrap / fid_bootstrap_std are added.
    `image_size` > 0 resizes a named data set's real images to that size first (as a training run did).
    """
    if extractor not in registry.extractor_names():
        raise ValueError(f"unknown extractor {extractor!r}: expected one of {', '.join(registry.extractor_names())}")
    if not isinstance(fake, torch.Tensor) or fake.dim() != 4:
        shape = list(fake.shape) if isinstance(fake, torch.Tensor) else type(fake).__name__
        raise ValueError(f"fake must be an image tensor [N, C, H, W], got {shape}")
    if fake.shape[0] < 2:
        raise ValueError(f"fake needs at least 2 images to score, got {fake.shape[0]}")
    if not extractor_fits(extractor, fake.shape[1:]):
        hint = "; use the inception-v3 extractor" if extractor == "fmnist-cnn" else ""
        raise ValueError(f"the {extractor} extractor cannot take images of shape {list(fake.shape[1:])}{hint}")
    net = get_extractor(extractor, device, inception_weights)
    if not net.fits(fake.shape[1:]):  # a plugin's input_channels is known once it is loaded
        raise ValueError(f"the {extractor} extractor cannot take images of shape {list(fake.shape[1:])}")
    image_size = real_image_size(real, fake.shape, image_size)
    reference = real_reference(real, net, data_root, n_real, progress, image_size=image_size)
    # On a GPU with fast float64 the features stay there: statistics, trace term and KID run on the device.
    fake_features, fake_logits = net(fake, progress, desc="generated images",
                                     features_device=statistics_device(net.device))
    fid_result = fid_from_features(reference.stats, fake_features)
    is_mean = is_std = None  # an extractor without logits (a plugin's without a logits method) gives no IS
    if fake_logits.shape[1] > 0:
        is_mean, is_std = inception_score(fake_logits, splits=min(is_splits, fake.shape[0]))
    kid_mean = kid_std = None
    if reference.kid_features is not None:
        kid_mean, kid_std = kernel_inception_distance(
            reference.kid_features, fake_features, kid_subsets, kid_subset_size, seed
        )
    scores = {}
    if precision_recall:
        names = ("precision", "recall", "density", "coverage")
        scores = dict.fromkeys(names)
        if reference.kid_features is not None:
            found = precision_recall_density_coverage(reference.kid_features, fake_features.cpu(), k=prdc_k)
            scores = {name: found[name] for name in names}
    if bootstrap:
        from gansvc.metrics.bootstrap import fid_bootstrap

        scores.update(fid_bootstrap(reference.stats, fake_features, bootstrap, seed))
    return {
        **scores,
        "fid": fid_result.fid,
        "fid_trace": trace_report(fid_result),
        "is_mean": is_mean,
        "is_std": is_std,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_real": reference.count,
        "n_fake": int(fake.shape[0]),
        "extractor": extractor,
    }

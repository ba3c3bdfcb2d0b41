"""Metrics of generated images: FID, Inception Score and KID on a feature extractor.

`evaluate(fake, real="fashion-mnist:test", extractor="fmnist-cnn")` scores a set of generated images;
the pieces (FeatureStats, frechet_distance, inception_score, kernel_inception_distance, the
extractors) are importable on their own. The FID trace term runs on the gansvc extension.
"""

from gansvc.metrics.evaluate import evaluate, get_extractor
from gansvc.metrics.features import extractor_fits, load_extractor
from gansvc.metrics.fid import (
    FeatureStats,
    GaussianStatistics,
    fid_from_features,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from gansvc.metrics.inception_score import inception_score
from gansvc.metrics.kid import kernel_inception_distance

__all__ = [
    "FeatureStats",
    "GaussianStatistics",
    "evaluate",
    "extractor_fits",
    "fid_from_features",
    "frechet_distance",
    "get_extractor",
    "inception_score",
    "kernel_inception_distance",
    "load_extractor",
    "load_statistics",
    "save_statistics",
]

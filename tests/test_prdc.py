"""Precision/recall/density/coverage against a brute-force NumPy reference, and their argument order."""

from __future__ import annotations

import numpy as np
import pytest

from gansvc.metrics import prdc


def _reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Naeem et al.'s definitions, written out with full distance matrices (float64, no chunks)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    rr, ff, rf = dist(real, real), dist(fake, fake), dist(real, fake)
    real_radius = np.sort(rr, axis=1)[:, k]
    fake_radius = np.sort(ff, axis=1)[:, k]
    return {
        "precision": (rf < real_radius[:, None]).any(axis=0).mean(),
        "recall": (rf < fake_radius[None, :]).any(axis=1).mean(),
        "density": (rf < real_radius[:, None]).sum() / (k * fake.shape[0]),
        "coverage": (rf.min(axis=1) < real_radius).mean(),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_reference(k, seed, monkeypatch):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(loc=0.3, scale=1.2, size=(250, 16))
    expected = _reference(real, fake, k)
    monkeypatch.setattr(prdc, "CHUNK_BYTES", 8 * 250 * 7)  # chunks of 7 rows: the chunked path is the one tested
    result = prdc.precision_recall_density_coverage(real, fake, k=k)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert (result["n_real"], result["n_fake"], result["k"]) == (300, 250, k)


def test_real_against_real_is_near_one_and_noise_against_real_near_zero():
    # features of images lie near a low-dimensional set: a mixture of 10 classes on a 4-D subspace of R^32
    rng = np.random.default_rng(2)
    basis, centres = rng.normal(size=(4, 32)), rng.normal(scale=6.0, size=(10, 4))

    def draw(n):
        return (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, 4))) @ basis

    real = draw(3000)
    same = prdc.precision_recall_density_coverage(real, draw(3000))
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    assert same["coverage"] > 0.8  # 1 - 2^-k = 0.875 expected for identical distributions (Naeem et al.)
    assert 0.8 < same["density"] < 1.2  # 1 expected
    noise = rng.uniform(-20, 20, size=(3000, 32))
    bad = prdc.precision_recall_density_coverage(real, noise)
    assert bad["precision"] < 0.05 and bad["coverage"] < 0.05 and bad["density"] < 0.05


def test_argument_order_real_first():
    # generated samples collapsed onto one mode of the real data: faithful (precision high) but not
    # diverse (recall low). Swapping the arguments would report the opposite.
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(size=(500, 8)), rng.normal(loc=10.0, size=(500, 8))])
    collapsed = rng.normal(size=(500, 8))
    right = prdc.precision_recall_density_coverage(real, collapsed)
    swapped = prdc.precision_recall_density_coverage(collapsed, real)
    assert right["precision"] > 0.8 and right["recall"] < 0.6
    assert swapped["precision"] < 0.6 and swapped["recall"] > 0.8


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="fake"):
        prdc.precision_recall_density_coverage(np.zeros((5, 3)), np.zeros((5,)))
    with pytest.raises(ValueError, match="dimension"):
        prdc.precision_recall_density_coverage(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="k must be"):
        prdc.precision_recall_density_coverage(np.random.rand(3, 2), np.random.rand(3, 2), k=3)


def test_evaluate_reports_them_for_real_images_and_for_noise(fashion_mnist_root, tmp_path, monkeypatch):
    import torch

    from gansvc.data.datasets import load_idx_dataset
    from gansvc.metrics import evaluate

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path))
    train = load_idx_dataset("fashion-mnist", "train", fashion_mnist_root).images[:2000]
    real_scores = evaluate(train, real="fashion-mnist:test", data_root=fashion_mnist_root, precision_recall=True)
    assert real_scores["precision"] > 0.8 and real_scores["recall"] > 0.8 and 0.7 < real_scores["density"] < 1.3
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_scores = evaluate(noise, real="fashion-mnist:test", data_root=fashion_mnist_root, precision_recall=True)
    assert noise_scores["recall"] < 0.05 and noise_scores["coverage"] < 0.05 and noise_scores["density"] < 0.3
    # precision is the outlier-sensitive one (Naeem et al.'s point): uniform noise lands in the balls of a
    # few outlying real images (0.40 here), still far below real images' precision
    assert noise_scores["precision"] < real_scores["precision"] / 2
    # coverage grows with the number of generated samples (2 000 against 10 000 real rows here)
    assert real_scores["coverage"] > 10 * max(noise_scores["coverage"], 0.01)
    assert "precision" not in evaluate(noise, real="fashion-mnist:test", data_root=fashion_mnist_root)

"""Data sets: CIFAR-10 batches, image folders, the 8-Gaussians ring and its metric, resizing, errors."""

from __future__ import annotations

import math
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gansvc.data import DatasetNotFound, load_dataset, load_images, resize_images
from gansvc.data.mixture import NUM_MODES, RADIUS, STD, ring_centers, ring_quality, sample_ring


# ---------------------------------------------------------------------- CIFAR-10
def _fake_cifar(folder, per_batch=6, seed=0):
    """Write CIFAR-10-format batches (pickled dicts with bytes keys); return the expected arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {"train": ([], []), "test": ([], [])}
    for name, split in [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, f)
        expected[split][0].append(data)
        expected[split][1].extend(labels)
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in expected.items()}


@pytest.mark.parametrize("layout", ["flat", "nested", "archive"])
def test_cifar10_reads_batches_in_every_layout(tmp_path, layout):
    source = tmp_path / "src" / "cifar-10-batches-py"
    expected = _fake_cifar(source)
    if layout == "flat":
        root = source
    elif layout == "nested":
        root = source.parent
    else:
        root = tmp_path / "archive"
        root.mkdir()
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(source, arcname="cifar-10-batches-py")
    for split in ("train", "test"):
        data = load_images("cifar10", split, root)
        images, labels = expected[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 3, 32, 32)
        # CIFAR stores each row as 1024 red, 1024 green, 1024 blue values, row-major
        assert np.array_equal(data.images.numpy()[:, 1, 2, 5], images[:, 1024 + 2 * 32 + 5])
        assert np.array_equal(data.labels.numpy(), labels)
        assert data.num_classes == 10


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    _fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="builtins.print"):
        load_images("cifar10", "test", tmp_path)


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar-10-python.tar.gz") as info:
        load_images("cifar10", "train", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFound, match="--download"):
        load_images("mnist", "train", tmp_path)


# ---------------------------------------------------------------------- image folders
def _write_images(folder, specs):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    rng = np.random.default_rng(1)
    for name, (mode, size) in specs.items():
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode=mode).save(folder / name)
        arrays[name] = array
    return arrays


def test_folder_center_crops_and_resizes_like_pillow(tmp_path):
    arrays = _write_images(tmp_path, {"a.png": ("RGB", (40, 30)), "b.jpg": ("RGB", (16, 16)), "c.png": ("L", (20, 20))})
    data = load_images(f"folder:{tmp_path}", image_size=16)
    assert data.images.shape == (3, 3, 16, 16) and data.labels is None
    # independent: crop the centre 30x30 of the 40x30 image, resize with Pillow's LANCZOS
    reference = Image.fromarray(arrays["a.png"]).crop((5, 0, 35, 30)).resize((16, 16), Image.Resampling.LANCZOS)
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), np.asarray(reference))
    # the grey image becomes RGB with three equal channels (one colour image in the folder)
    grey = np.asarray(Image.fromarray(arrays["c.png"]).resize((16, 16), Image.Resampling.LANCZOS))
    assert all(np.array_equal(data.images[2, c].numpy(), grey) for c in range(3))


def test_folder_of_grey_images_keeps_one_channel_and_subfolders_are_classes(tmp_path):
    _write_images(tmp_path, {"cats/1.png": ("L", (8, 8)), "dogs/2.png": ("L", (8, 8)), "cats/3.png": ("L", (8, 8))})
    data = load_images(f"folder:{tmp_path}", image_size=8)
    assert data.images.shape == (3, 1, 8, 8)
    assert data.labels.tolist() == [0, 0, 1] and data.num_classes == 2  # sorted paths: cats/1, cats/3, dogs/2


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFound, match="holds no images"):
        load_images(f"folder:{tmp_path}")
    with pytest.raises(DatasetNotFound, match="does not exist"):
        load_images(f"folder:{tmp_path / 'nope'}")


def test_load_png_folder_matches_pillow(tmp_path):
    from gansvc.images import load_png_folder

    arrays = _write_images(tmp_path, {"x.png": ("RGB", (6, 5)), "y.png": ("RGB", (6, 5))})
    images = load_png_folder(tmp_path)
    assert images.shape == (2, 3, 5, 6) and images.dtype == torch.uint8
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), arrays["y.png"])
    _write_images(tmp_path, {"z.png": ("RGB", (7, 5))})
    with pytest.raises(ValueError, match="z.png"):
        load_png_folder(tmp_path)


# ---------------------------------------------------------------------- fashion-mnist and resizing
def test_fashion_mnist_is_one_uint8_tensor(fashion_mnist_root):
    data = load_images("fashion-mnist", "test", fashion_mnist_root)
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (10000,) and int(data.labels.max()) == 9


def test_resize_matches_interpolate_and_keeps_range(fashion_mnist_root):
    images = load_images("fashion-mnist", "test", fashion_mnist_root).images[:50]
    resized = resize_images(images, 32)
    reference = torch.nn.functional.interpolate(images.double(), size=(32, 32), mode="bilinear", antialias=True)
    assert resized.dtype == torch.uint8 and resized.shape == (50, 1, 32, 32)
    assert (resized.double() - reference.clamp(0, 255)).abs().max() <= 0.5 + 1e-6
    assert load_images("fashion-mnist", "test", fashion_mnist_root, image_size=32).images.shape[-1] == 32


# ---------------------------------------------------------------------- the 8-Gaussians ring
def test_ring_data_has_eight_modes_of_the_right_spread():
    data = load_dataset("gaussian-mixture")
    centers = np.array([[RADIUS * math.cos(2 * math.pi * k / 8), RADIUS * math.sin(2 * math.pi * k / 8)] for k in range(8)])
    points, labels = data.points.double().numpy(), data.labels.numpy()
    assert data.points.shape == (64000, 2) and data.num_classes == NUM_MODES
    np.testing.assert_allclose(ring_centers().numpy(), centers, atol=1e-12)
    for k in range(8):
        member = points[labels == k]
        assert abs(len(member) / len(points) - 1 / 8) < 0.01
        np.testing.assert_allclose(member.mean(0), centers[k], atol=5 * STD / math.sqrt(len(member)))
        np.testing.assert_allclose(member.std(0), [STD, STD], rtol=0.05)
    assert torch.equal(load_dataset("gaussian-mixture").points, data.points)  # fixed data set
    assert not torch.equal(load_dataset("gaussian-mixture", "test").points[:100], data.points[:100])


def _reference_quality(points: np.ndarray):
    """The metric as PacGAN states it, in NumPy: within 3 std of the nearest mean; >= 20 per 2500 to count."""
    centers = np.array([[2 * math.cos(math.pi * k / 4), 2 * math.sin(math.pi * k / 4)] for k in range(8)])
    distance = np.sqrt(((points[:, None, :] - centers[None]) ** 2).sum(-1))
    nearest, near = distance.argmin(1), distance.min(1)
    good = near <= 3 * 0.02
    counts = np.array([(good & (nearest == k)).sum() for k in range(8)])
    return int((counts >= 20 * len(points) / 2500).sum()), good.mean()


@pytest.mark.parametrize("case", ["true", "collapsed", "blurry", "partial"])
def test_ring_quality_matches_its_definition(case):
    points, labels = sample_ring(2500, seed=3)
    if case == "collapsed":
        points = points[labels < 2]
        points = torch.cat([points, points])[:2500]
    elif case == "blurry":
        points = points + torch.randn(points.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    elif case == "partial":  # one mode with only 19 of 2500 points: not covered
        keep = torch.cat([torch.nonzero(labels != 0).flatten(), torch.nonzero(labels == 0).flatten()[:19]])
        points = points[keep]
        points = torch.cat([points, torch.full((2500 - len(points), 2), 5.0)])
    result = ring_quality(points)
    modes, fraction = _reference_quality(points.double().numpy())
    assert result["modes_covered"] == modes and result["high_quality_fraction"] == pytest.approx(fraction)
    expected_modes = {"true": 8, "collapsed": 2, "partial": 7}
    if case in expected_modes:
        assert result["modes_covered"] == expected_modes[case]
    if case == "true":
        # within 3 std in 2-D: P = 1 - exp(-9/2) = 98.9 %; 4 binomial standard errors of slack
        share = 1 - math.exp(-4.5)
        assert abs(result["high_quality_fraction"] - share) < 4 * math.sqrt(share * (1 - share) / 2500)


def test_ring_quality_rejects_images():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        ring_quality(torch.zeros(4, 1, 28, 28))
    with pytest.raises(ValueError, match="points"):
        load_images("gaussian-mixture")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="fashion-mnist, mnist, cifar10"):
        load_images("imagenet")

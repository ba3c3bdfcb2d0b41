"""The feature extractors: the shipped fmnist-cnn (accuracy, size) and the FID Inception-v3 layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gansvc.metrics import extractor_fits
from gansvc.metrics.features import images_to_unit_range, load_extractor
from gansvc.images import uint8_to_unit_range
from gansvc.metrics.fmnist_cnn import WEIGHTS_PATH, load_classifier
from tests.test_fid_ops import one_thread


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """This module's computations on one thread (see tests/test_fid_ops.py: one_thread)."""
    with one_thread():
        yield


def test_shipped_classifier_is_small_and_accurate_on_the_test_set(fashion_mnist_root):
    from gansvc.data import load_images

    assert WEIGHTS_PATH.is_file() and WEIGHTS_PATH.stat().st_size < 2_000_000
    test = load_images("fashion-mnist", "test", fashion_mnist_root)
    model = load_classifier()
    with torch.inference_mode():
        batches = [test.images[i : i + 2000] for i in range(0, 10_000, 2000)]
        predictions = torch.cat([model(uint8_to_unit_range(batch)).argmax(1) for batch in batches])
    accuracy = (predictions == test.labels).double().mean().item()
    assert accuracy >= 0.90, accuracy
    stored = torch.load(WEIGHTS_PATH, weights_only=True)
    assert stored["test_accuracy"] == pytest.approx(accuracy, abs=2e-4)  # the script measured the same
    assert stored["train_config"]["seed"] == 0


def test_fmnist_extractor_gives_features_and_logits_of_one_pass():
    extractor = load_extractor("fmnist-cnn")
    images = torch.randint(0, 256, (7, 1, 28, 28), dtype=torch.uint8)
    features, logits = extractor(images)
    assert features.shape == (7, 128) and logits.shape == (7, 10)
    assert (features >= 0).all()  # post-ReLU penultimate layer
    model = load_classifier()
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(uint8_to_unit_range(images)))
        torch.testing.assert_close(features, model.features(images.float() / 127.5 - 1))
    # float input in [-1, 1] is the same picture as its uint8 version
    torch.testing.assert_close(extractor(images.float() / 127.5 - 1)[0], features)


def test_extractor_fits():
    assert extractor_fits("fmnist-cnn", (1, 28, 28))
    assert not extractor_fits("fmnist-cnn", (3, 28, 28)) and not extractor_fits("fmnist-cnn", (1, 32, 32))
    assert extractor_fits("inception-v3", (3, 32, 32)) and extractor_fits("inception-v3", (1, 28, 28))
    assert not extractor_fits("inception-v3", (4, 64, 64))
    with pytest.raises(ValueError, match="unknown extractor 'vgg'"):
        extractor_fits("vgg", (1, 28, 28))
    with pytest.raises(ValueError, match="cannot take images of shape"):
        load_extractor("fmnist-cnn")(torch.zeros(2, 3, 28, 28))


def test_images_to_unit_range():
    assert images_to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
    assert images_to_unit_range(torch.tensor([-1.0005, 1.0])).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\], got values in \[0, 255\]"):
        images_to_unit_range(torch.tensor([0.0, 255.0]))
    with pytest.raises(ValueError, match="must be in"):
        images_to_unit_range(torch.tensor([float("nan")]))


# ------------------------------------------------------------------ FID Inception-v3

inception = pytest.importorskip("gansvc.metrics.inception")

# Keys and shapes the TF-2015 graph port has (pytorch-fid's pt_inception-2015-12-05 file): the
# channel counts of pytorch-fid's fid_inception_v3() and the 1008-way classifier.
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_1.conv.weight": (48, 288, 1, 1),
    "Mixed_6b.branch7x7_1.conv.weight": (128, 768, 1, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """A randomly initialised FID Inception saved like pytorch-fid's file (no num_batches_tracked)."""
    torch.manual_seed(0)
    net = inception.build_fid_inception()
    for module in net.modules():  # convolutions keep PyTorch's default random init
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(state, path)
    return path, net.eval().requires_grad_(False)


def test_inception_state_dict_has_the_tf_2015_layout(random_inception_file):
    path, _ = random_inception_file
    state = torch.load(path, weights_only=True)
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert len([k for k in state if k.endswith(".conv.weight")]) == 94  # the graph's 94 convolutions


def test_inception_extractor_loads_a_weights_file_and_matches_the_network(random_inception_file, monkeypatch):
    path, net = random_inception_file
    monkeypatch.setenv("GANSVC_INCEPTION_WEIGHTS", str(path))
    extractor = load_extractor("inception-v3")  # the path comes from the environment
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)  # grey, small: resized to 299
    features, logits = extractor(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    # pytorch-fid's path, written out: [0, 1] RGB -> bilinear 299 -> [-1, 1] -> blocks -> avg pool.
    x = (images.float() / 255).repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    with torch.inference_mode():
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(net, name)(x)
        x = getattr(net, "Conv2d_4a_3x3")(getattr(net, "Conv2d_3b_1x1")(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(net, name)(x)
        pooled = x.mean((2, 3))
    torch.testing.assert_close(features, pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, pooled @ net.fc.weight.T, rtol=1e-4, atol=1e-4)


def test_folding_the_batch_norms_keeps_the_network_s_function(random_inception_file):
    import copy

    _, net = random_inception_file
    plain = inception.FIDInceptionV3(copy.deepcopy(net)).double()
    folded = inception.fold_batch_norms_(inception.FIDInceptionV3(copy.deepcopy(net)).double())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 94
    x = torch.rand(2, 1, 20, 20, dtype=torch.float64)  # grey: repeated to RGB inside, after resizing
    with torch.inference_mode():
        (f1, z1), (f2, z2) = plain(x.expand(-1, 3, -1, -1)), folded(x)
    torch.testing.assert_close(f2, f1, rtol=1e-10, atol=1e-12)  # float64: equal up to rounding
    torch.testing.assert_close(z2, z1, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="eval mode"):
        inception.fold_batch_norms_(copy.deepcopy(net).train())


@pytest.mark.skipif(inception._conv_relu_kernel() is None, reason="this torch has no oneDNN fused convolution")
def test_fused_conv_relus_compute_the_folded_network_s_function(random_inception_file):
    import copy

    _, net = random_inception_file
    folded = inception.fold_batch_norms_(inception.FIDInceptionV3(copy.deepcopy(net)))
    fused = inception.fuse_conv_relus_(copy.deepcopy(folded))
    assert sum(isinstance(m, inception._FusedConvReLU) for m in fused.modules()) == 94
    exact = copy.deepcopy(folded).double()  # float64: the eager pair, the reference
    folded, fused = (m.to(memory_format=torch.channels_last) for m in (folded, fused))
    x = torch.rand(3, 3, 24, 24).contiguous(memory_format=torch.channels_last)  # as the extractor passes them
    with torch.inference_mode():
        (f1, z1), (f2, z2), (f64, z64) = folded(x), fused(x), exact(x.double())
    # float32 rounding either way (oneDNN may sum in another order for the fused op), no further from the
    # float64 network than the eager pair is
    torch.testing.assert_close(f2, f1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z2, z1, rtol=1e-5, atol=1e-6)
    assert (f2.double() - f64).abs().max() <= 2 * (f1.double() - f64).abs().max() + 1e-7
    # float64 takes the eager pair: the same numbers
    with torch.inference_mode():
        assert torch.equal(fused.double()(x.double())[0], f64)
    # with autograd on, the eager pair too (the fused kernel has no backward): the weights get PyTorch's gradient
    first = fused.float().net.Conv2d_1a_3x3
    conv = first.conv.requires_grad_(True)
    first(x).square().sum().backward()
    weight = conv.weight.detach().clone().requires_grad_(True)
    F.relu(F.conv2d(x, weight, conv.bias.detach(), stride=conv.stride)).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, weight.grad)


def test_pools_moved_after_the_1x1_convolutions_compute_the_same_function(random_inception_file):
    import copy

    _, net = random_inception_file
    folded = inception.fold_batch_norms_(inception.FIDInceptionV3(copy.deepcopy(net)))
    moved = inception.pool_after_convolution_(copy.deepcopy(folded))
    swapped = [name for name, m in moved.named_modules() if isinstance(m, inception._ConvThenAveragePool)]
    # every average-pooling block (A, C and the first E); the last E block max-pools, which does not commute
    assert [name.split(".")[1] for name in swapped] == ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c",
                                                        "Mixed_6d", "Mixed_6e", "Mixed_7b"]
    assert not isinstance(moved.net.Mixed_7c.branch_pool, inception._ConvThenAveragePool)
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    with torch.inference_mode():
        (f1, z1), (f2, z2) = folded.double()(x), moved.double()(x)
        # float64: equal up to rounding
        torch.testing.assert_close(f2, f1, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(z2, z1, rtol=1e-10, atol=1e-13)
        # float32, channels-last and the ReLUs fused as the extractor runs it: no further from float64 than the
        # plain float32 network
        fast = inception.fuse_conv_relus_(copy.deepcopy(moved).float()).to(memory_format=torch.channels_last)
        plain = copy.deepcopy(folded).float().to(memory_format=torch.channels_last)
        x32 = x.float().contiguous(memory_format=torch.channels_last)
        err_fast = (fast(x32)[0].double() - f1).abs().max()
        err_plain = (plain(x32)[0].double() - f1).abs().max()
    assert err_fast <= 2 * err_plain + 1e-7 * f1.abs().max()


def test_fid_blocks_pool_as_tensorflow_does():
    from torchvision.models import inception as tv

    _, _, _, block_e2 = inception._fid_blocks()
    torch.manual_seed(1)
    patched = block_e2(64).eval()
    plain = tv.InceptionE(64).eval()
    plain.load_state_dict(patched.state_dict())
    x = torch.randn(1, 64, 9, 9)
    with torch.inference_mode():
        ours, theirs = patched(x), plain(x)
        # Same weights: the 1x1, 3x3 and double-3x3 branches agree, the pooling branch (last 192) differs.
        torch.testing.assert_close(ours[:, :-192], theirs[:, :-192])
        assert not torch.allclose(ours[:, -192:], theirs[:, -192:])
        torch.testing.assert_close(ours[:, -192:], patched.branch_pool(F.max_pool2d(x, 3, 1, 1)))


def test_inception_weights_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("GANSVC_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="--inception-weights PATH or set GANSVC_INCEPTION_WEIGHTS"):
        load_extractor("inception-v3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_extractor("inception-v3", inception_weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch weights file"):
        load_extractor("inception-v3", inception_weights=tmp_path / "junk.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception layout"):
        load_extractor("inception-v3", inception_weights=tmp_path / "other.pth")

"""D's minibatch standard-deviation feature (`minibatch_std`, issue 22), against a NumPy float64 computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gansvc.models import build_discriminator
from gansvc.models.dcgan import MinibatchStd
from gansvc.train import Trainer
from gansvc.train.spec import SpecError

from tests.test_train import losses, tiny


def numpy_spread(h: np.ndarray, group: int) -> np.ndarray:
    """Per image: the float64 standard deviation (1/n) of each feature over its group, averaged (ProGAN)."""
    n = h.shape[0]
    size = max(g for g in range(1, min(group, n) + 1) if n % g == 0)
    out = np.empty(n)
    for b in range(n // size):
        members = [b + k * (n // size) for k in range(size)]  # image i is in group i mod n / size
        std = np.sqrt(h[members].astype(np.float64).var(axis=0) + 1e-8)
        out[members] = std.mean()
    return out


@pytest.mark.parametrize("n, group", [(8, 4), (12, 4), (6, 4), (7, 4), (1, 4), (5, 1)])
def test_the_appended_channel_is_each_groups_mean_standard_deviation(n, group):
    h = torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(n)) * 2 + 1
    out = MinibatchStd(group)(h)
    assert out.shape == (n, 4, 5, 5)
    torch.testing.assert_close(out[:, :3], h, rtol=0, atol=0)  # the features pass unchanged
    channel = out[:, 3].double()
    assert (channel == channel[:, :1, :1]).all()  # constant over positions
    np.testing.assert_allclose(channel[:, 0, 0].numpy(), numpy_spread(h.numpy(), group), rtol=1e-5)


def test_identical_images_give_the_floor_and_varied_ones_more():
    same = torch.randn(1, 2, 3, 3).expand(8, 2, 3, 3).contiguous()
    varied = torch.randn(8, 2, 3, 3)
    floor = MinibatchStd(4)(same)[:, 2]
    assert torch.allclose(floor, torch.full_like(floor, 1e-4))  # sqrt(0 + 1e-8)
    assert (MinibatchStd(4)(varied)[:, 2] > 0.3).all()


def test_dcgan_discriminator_takes_it_before_its_last_convolution():
    spec = tiny(steps=1, minibatch_std=4)
    plain = build_discriminator(tiny(steps=1), (1, 28, 28))
    d = build_discriminator(spec, (1, 28, 28))
    assert d.minibatch_std is not None and plain.minibatch_std is None
    assert d.main[-1].in_channels == plain.main[-1].in_channels + 1
    x = torch.randn(8, 1, 28, 28, requires_grad=True)
    logits = d.eval()(x)  # eval: D's BatchNorm then mixes no images, only the channel does
    assert logits.shape == (8,)
    # the logit of one image depends on the other images of its group (through the channel), not on other groups
    (grad,) = torch.autograd.grad(logits[0], x)
    assert grad[4].abs().sum() > 0 and grad[1].abs().sum() == 0  # groups of 4 over 8 images: {0, 2, 4, 6}, {1, 3, 5, 7}
    assert set(d.state_dict()) == set(plain.state_dict())  # no parameters of its own


def test_conditional_discriminator_with_it(tmp_path):
    spec = tiny(steps=1, minibatch_std=2, conditional=True)
    d = build_discriminator(spec, (1, 28, 28), num_classes=10)
    labels = torch.arange(6) % 10
    logits, classes = d(torch.randn(6, 1, 28, 28), labels, classes=True)
    assert logits.shape == (6,) and classes.shape == (6, 10)


def test_a_run_with_it_trains_and_is_reproducible(tmp_path):
    spec = tiny(steps=4, minibatch_std=4)
    Trainer(spec, tmp_path / "a").run()
    Trainer(spec, tmp_path / "b").run()
    assert len(losses(tmp_path / "a")) == 4 and losses(tmp_path / "a") == losses(tmp_path / "b")
    assert all(np.isfinite([d, g]).all() for _, d, g in losses(tmp_path / "a"))


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_other_models_refuse_it_naming_the_field(model):
    with pytest.raises(SpecError) as error:
        tiny(steps=1, model=model, minibatch_std=4)
    assert error.value.field == "minibatch_std"

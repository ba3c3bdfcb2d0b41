"""G's upsampling layers (`g_upsample`, issue 22): nearest-neighbour doubling + a 3 x 3 convolution in place of
each 4 x 4 stride-2 transposed convolution, checked against torch.nn.functional run by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gansvc.models import build_discriminator, build_generator
from gansvc.train import Trainer
from gansvc.train.spec import SpecError

from tests.test_train import losses, tiny


def layers(model: nn.Module, kind) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_the_generator_upsamples_then_convolves():
    g = build_generator(tiny(steps=1, width=8, g_width=12, g_upsample=True), (1, 28, 28))
    # the first layer still maps the noise to the 7 x 7 base map; every doubling after it is upsample + 3 x 3
    assert len(layers(g, nn.ConvTranspose2d)) == 1
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in layers(g, nn.Conv2d)] == [
        (24, 12, (3, 3), (1, 1)), (12, 1, (3, 3), (1, 1))]  # fmt: skip
    assert len(layers(g, nn.Upsample)) == 2
    assert g(torch.randn(3, 100)).shape == (3, 1, 28, 28)
    # D is untouched
    plain = build_discriminator(tiny(steps=1, width=8), (1, 28, 28))
    d = build_discriminator(tiny(steps=1, width=8, g_upsample=True), (1, 28, 28))
    assert {k: v.shape for k, v in d.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("size", [28, 32])
def test_the_output_is_the_layers_run_by_hand(size):
    torch.manual_seed(0)
    g = build_generator(tiny(steps=1, width=4, g_width=6, g_upsample=True), (1, size, size)).double()
    g.eval()  # BatchNorm from its running statistics: a per-sample function to compare against
    z = torch.randn(2, 100, dtype=torch.float64)
    main = list(g.main)
    x = F.conv_transpose2d(z.view(2, -1, 1, 1), main[0].weight)
    for layer in main[1:]:
        if isinstance(layer, nn.BatchNorm2d):
            x = (x - layer.running_mean[:, None, None]) / torch.sqrt(layer.running_var[:, None, None] + layer.eps)
            x = x * layer.weight[:, None, None] + layer.bias[:, None, None]
        elif isinstance(layer, nn.Upsample):
            x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # each pixel copied into a 2 x 2 block
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, layer.weight, layer.bias, padding=1)
        elif isinstance(layer, nn.ReLU):
            x = x.clamp_min(0)
        elif isinstance(layer, nn.Tanh):
            x = torch.tanh(x)
        else:
            raise AssertionError(f"unexpected layer {layer}")
    assert x.shape == (2, 1, size, size)
    torch.testing.assert_close(g(z), x, rtol=1e-12, atol=1e-12)


def test_the_conditional_generator_takes_it():
    spec = tiny(steps=1, width=8, g_upsample=True, conditional=True)
    g = build_generator(spec, (1, 28, 28), num_classes=10)
    assert len(layers(g, nn.Upsample)) == 2
    assert g(torch.randn(4, 100), torch.arange(4)).shape == (4, 1, 28, 28)


def test_a_run_with_it_trains_and_is_reproducible(tmp_path):
    spec = tiny(steps=4, g_upsample=True)
    Trainer(spec, tmp_path / "a").run()
    Trainer(spec, tmp_path / "b").run()
    assert len(losses(tmp_path / "a")) == 4 and losses(tmp_path / "a") == losses(tmp_path / "b")
    assert all(np.isfinite([d, g]).all() for _, d, g in losses(tmp_path / "a"))


def test_off_by_default_and_refused_by_other_models_naming_the_field():
    assert not tiny(steps=1).g_upsample
    for model in ("mlp", "resnet"):
        with pytest.raises(SpecError) as error:
            tiny(steps=1, model=model, g_upsample=True)
        assert error.value.field == "g_upsample"

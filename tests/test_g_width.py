"""G's own width (`g_width`, issue 22): the DCGAN G gets its channels from it, D keeps `width`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gansvc.models import build_discriminator, build_generator
from gansvc.models.dcgan import DCGANGenerator
from gansvc.train import Trainer
from gansvc.train.spec import SpecError, TrainSpec

from tests.test_train import losses, tiny


def channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_g_takes_g_width_and_d_keeps_width():
    spec = tiny(steps=1, width=8, g_width=12)
    g, d = build_generator(spec, (1, 28, 28)), build_discriminator(spec, (1, 28, 28))
    # 28 px = 7 * 2**2: G's layers carry 2 * g_width, then g_width channels, then the image's one
    assert channels(g) == [24, 12, 1]
    assert channels(d) == channels(build_discriminator(tiny(steps=1, width=8), (1, 28, 28)))
    # the same network, parameter for parameter, as the generator built at width 12 directly
    direct = DCGANGenerator(spec.z_dim, 1, 28, 12)
    assert {k: v.shape for k, v in g.state_dict().items()} == {k: v.shape for k, v in direct.state_dict().items()}
    assert g(torch.randn(3, spec.z_dim)).shape == (3, 1, 28, 28)


def test_zero_means_width_so_older_specs_build_the_same_generator():
    assert TrainSpec.g_width == 0
    plain = build_generator(tiny(steps=1, width=8), (1, 28, 28))
    same = build_generator(tiny(steps=1, width=8, g_width=8), (1, 28, 28))
    assert channels(plain) == channels(same) == [16, 8, 1]


def test_a_run_with_it_trains_and_is_reproducible(tmp_path):
    spec = tiny(steps=3, width=8, g_width=16)
    Trainer(spec, tmp_path / "a").run()
    Trainer(spec, tmp_path / "b").run()
    assert len(losses(tmp_path / "a")) == 3 and losses(tmp_path / "a") == losses(tmp_path / "b")


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_other_models_refuse_it_naming_the_field(model):
    with pytest.raises(SpecError) as error:
        tiny(steps=1, model=model, g_width=32)
    assert error.value.field == "g_width"

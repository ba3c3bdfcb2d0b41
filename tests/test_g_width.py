"""G's own width (`g_width`, issue 22): the DCGAN G gets its channels from it, D keeps `width`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gansvc.models import build_discriminator, build_generator
from gansvc.models.dcgan import DCGANGenerator
from gansvc.train import Trainer
from gansvc.train.spec import SpecError, TrainSpec

from tests.test_train import forget_settings, losses, tiny


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


def test_zero_means_width():
    assert TrainSpec.g_width == 0
    same = build_generator(tiny(steps=1, width=8, g_width=0), (1, 28, 28))
    assert channels(same) == [16, 8, 1]


def test_left_out_the_unconditional_dcgan_g_is_one_and_a_half_times_wider():
    assert tiny(steps=1, width=8).g_width == 12
    assert TrainSpec.from_dict({"steps": 1}).g_width == 96  # the recipe a user who brings nothing gets
    assert TrainSpec.from_dict({"steps": 1, "width": 1024}).g_width == 1024  # held within the field's bounds
    assert tiny(steps=1, width=8, g_width=8).g_width == 8  # a given value wins, 0 included
    assert tiny(steps=1, width=8, g_width=0).g_width == 0
    assert tiny(steps=1, model="mlp").g_width == 0
    assert tiny(steps=1, model="resnet").g_width == 0


def test_left_out_the_conditional_dcgan_d_is_48_wide_and_g_twice_that():
    spec = TrainSpec.from_dict({"steps": 1, "conditional": True})  # what `gansvc train --conditional` trains
    assert (spec.width, spec.g_width) == (48, 96)
    g = build_generator(spec, (1, 28, 28), num_classes=10)
    d = build_discriminator(spec, (1, 28, 28), num_classes=10)
    assert channels(g) == [192, 96, 1]
    assert channels(d)[:2] == [48, 96]  # D's convolutions at the narrower width
    assert tiny(steps=1, width=8, conditional=True).g_width == 16  # a given width: G twice it
    assert tiny(steps=1, width=8, g_width=0, conditional=True).g_width == 0  # a given g_width wins
    assert TrainSpec.from_dict({"steps": 1, "conditional": True, "width": 64}).width == 64
    resnet = TrainSpec.from_dict({"steps": 1, "conditional": True, "model": "resnet"})
    assert resnet.width == TrainSpec.width and resnet.g_width == 0  # the residual model is untouched


def test_resuming_a_checkpoint_from_before_the_option_is_refused_naming_it(tmp_path):
    spec = tiny(steps=2, width=8, g_width=0)
    Trainer(spec, tmp_path).run()
    forget_settings(tmp_path, "g_width")  # as written before g_width existed
    with pytest.raises(SpecError) as error:
        Trainer(tiny(steps=4, width=8), tmp_path).run()
    assert error.value.field == "g_width"
    Trainer(tiny(steps=4, width=8, g_width=0), tmp_path).run()  # the old G's width given: it resumes
    assert [step for step, _, _ in losses(tmp_path)][-1] == 4


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

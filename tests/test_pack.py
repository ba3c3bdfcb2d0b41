"""PacGAN's packed D (`pack`, issue 22): D judges `pack` consecutive images stacked on the channels, one logit per
pack, checked against the same network run on stacks made by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gansvc.models import build_discriminator
from gansvc.models.dcgan import DCGANDiscriminator
from gansvc.train import Trainer
from gansvc.train.spec import SpecError

from tests.test_train import losses, tiny


@pytest.mark.parametrize("pack", [2, 3])
def test_one_logit_per_pack_of_consecutive_images(pack):
    torch.manual_seed(0)
    d = build_discriminator(tiny(steps=1, width=8, pack=pack, batch_size=8 * pack), (1, 28, 28)).eval()
    assert d.main[0].in_channels == pack  # the first convolution sees the pack's images as channels
    x = torch.randn(4 * pack, 1, 28, 28, requires_grad=True)
    logits = d(x)
    assert logits.shape == (4,)
    # the same weights in an unpacked D of pack input channels, given the stacks made by hand
    single = DCGANDiscriminator(channels=pack, image_size=28, width=8).eval()
    single.load_state_dict(d.state_dict())
    stacks = torch.stack([torch.cat([x[i * pack + k] for k in range(pack)]) for i in range(4)])
    torch.testing.assert_close(logits, single(stacks).view(-1), rtol=0, atol=0)
    # pack i's logit depends on its own images and on no other
    (grad,) = torch.autograd.grad(logits[1], x)
    per_image = grad.abs().sum(dim=(1, 2, 3))
    assert (per_image[pack : 2 * pack] > 0).all() and per_image[:pack].sum() == 0 and per_image[2 * pack :].sum() == 0


def test_a_batch_that_does_not_split_into_packs_is_refused():
    d = build_discriminator(tiny(steps=1, width=8, pack=2), (1, 28, 28))
    with pytest.raises(ValueError, match="pack"):
        d(torch.randn(3, 1, 28, 28))


@pytest.mark.parametrize("extra", [{}, {"r1_gamma": 1.0}], ids=["batchnorm", "r1-joint-d"])
def test_a_run_with_it_trains_and_is_reproducible(tmp_path, extra):
    # with R1, D has no BatchNorm and sees reals and fakes in one call: its logits split per pack, not per image
    spec = tiny(steps=4, pack=2, **extra)
    Trainer(spec, tmp_path / "a").run()
    Trainer(spec, tmp_path / "b").run()
    assert len(losses(tmp_path / "a")) == 4 and losses(tmp_path / "a") == losses(tmp_path / "b")
    assert all(np.isfinite([d, g]).all() for _, d, g in losses(tmp_path / "a"))


def test_the_joint_d_call_splits_its_logits_per_pack(tmp_path, monkeypatch):
    """Without BatchNorm (R1 here) D scores reals and fakes in one call: the first step's logged D loss and D(x),
    recomputed in float64 from that call's logits split per pack (reals first), match."""
    seen = []
    forward = DCGANDiscriminator.forward

    def recording(self, x, *args, **kwargs):
        out = forward(self, x, *args, **kwargs)
        seen.append((x.shape[0], out.detach().double().clone()))
        return out

    monkeypatch.setattr(DCGANDiscriminator, "forward", recording)
    spec = tiny(steps=1, pack=2, r1_gamma=1.0)
    Trainer(spec, tmp_path).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["kind"] == "train")
    n, logits = seen[0]
    assert n == 2 * spec.batch_size and logits.shape == (spec.batch_size,)  # reals + fakes in one call, in pairs
    real, fake = logits.split(spec.batch_size // 2)
    assert record["d_loss"] == pytest.approx((F.softplus(-real).mean() + F.softplus(fake).mean()).item(), rel=1e-6)
    assert record["d_real"] == pytest.approx(torch.sigmoid(real).mean().item(), rel=1e-6)


def test_off_by_default_and_refused_where_it_does_not_apply():
    assert tiny(steps=1).pack == 1
    for kw in ({"model": "mlp"}, {"model": "resnet"}, {"conditional": True}, {"batch_size": 15}):
        with pytest.raises(SpecError) as error:
            tiny(steps=1, pack=2, **kw)
        assert error.value.field == "pack", kw
    # the micro-batch (16 / accumulate 2 = 8) splits into packs of 4, but not of 8 with accumulate 4
    assert tiny(steps=1, pack=4, batch_size=16, accumulate=2).pack == 4
    with pytest.raises(SpecError) as error:
        tiny(steps=1, pack=8, batch_size=16, accumulate=4)
    assert error.value.field == "pack"

"""The relativistic average loss (RaGAN, `relativistic`) against a float64 computation of its formulas.

Jolicoeur-Martineau (2018): D scores C(x_r) - mean C(x_f) as real and C(x_f) - mean C(x_r) as fake; G's
loss is the same with the roles swapped. The reference below is written out with torch's own softplus /
relu in float64 and differentiated by autograd, independent of gansvc's fused kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gansvc.losses import discriminator_loss, relativistic_logits
from gansvc.train import Trainer, TrainSpec
from gansvc.train.spec import SpecError


def _rasgan_d(r, f, kind):
    r_rel, f_rel = r - f.mean(), f - r.mean()
    if kind == "bce":
        return F.softplus(-r_rel).mean() + F.softplus(f_rel).mean()
    return F.relu(1 - r_rel).mean() + F.relu(1 + f_rel).mean()


def _rasgan_g(r, f, kind):
    r_rel, f_rel = r - f.mean(), f - r.mean()
    if kind == "bce":
        return F.softplus(-f_rel).mean() + F.softplus(r_rel).mean()
    return F.relu(1 - f_rel).mean() + F.relu(1 + r_rel).mean()


def _loss_and_grads(fn, r, f):
    r, f = r.clone().requires_grad_(True), f.clone().requires_grad_(True)
    loss = fn(r, f)
    loss.backward()
    return loss.detach(), r.grad, f.grad


@pytest.mark.parametrize("kind", ["bce", "hinge"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_d_and_g_losses_are_rasgans(kind, dtype):
    gen = torch.Generator().manual_seed(3)
    r = (torch.randn(37, generator=gen) * 3 + 1).to(dtype)
    f = (torch.randn(29, generator=gen) * 3 - 1).to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}

    want_d = _loss_and_grads(lambda a, b: _rasgan_d(a, b, kind), r.double(), f.double())
    got_d = _loss_and_grads(lambda a, b: discriminator_loss(*relativistic_logits(a, b), kind).loss, r, f)
    # G: the fakes scored as real, the reals as fake
    want_g = _loss_and_grads(lambda a, b: _rasgan_g(a, b, kind), r.double(), f.double())
    got_g = _loss_and_grads(lambda a, b: discriminator_loss(*reversed(relativistic_logits(a, b)), kind).loss, r, f)
    for got, want in ((got_d, want_d), (got_g, want_g)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, **tol)
    # and it is not the plain loss: the other side's mean moves every gradient
    plain = _loss_and_grads(lambda a, b: discriminator_loss(a, b, kind).loss, r, f)
    assert not torch.allclose(plain[1], got_d[1])


def test_relative_logits_are_each_side_less_the_others_mean():
    r = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    f = torch.tensor([-2.0, 0.0], dtype=torch.float64)
    r_rel, f_rel = relativistic_logits(r, f)
    assert r_rel.tolist() == [2.0, 3.0, 7.0]  # less mean(f) = -1
    assert f_rel.tolist() == [-5.0, -3.0]  # less mean(r) = 3


# class_entropy 0: the trainer's losses below are RaGAN's alone
TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1, "steps": 3, "class_entropy": 0.0}  # fmt: skip


@pytest.mark.parametrize("kind", ["bce", "hinge"])
def test_the_trainer_steps_on_rasgans_losses_of_ds_own_outputs(tmp_path, monkeypatch, kind):
    """The first step's logged D and G losses and D(x), recomputed in float64 from what D returned: the D step's
    real and fake logits, then G's step on its fakes against the D step's real logits (no second D forward)."""
    import json

    from gansvc.models.dcgan import DCGANDiscriminator

    seen = []
    forward = DCGANDiscriminator.forward

    def recording(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append(out.detach().double().clone())
        return out

    monkeypatch.setattr(DCGANDiscriminator, "forward", recording)
    Trainer(TrainSpec.from_dict({**TINY, "steps": 1, "loss": kind, "relativistic": True}), tmp_path).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["kind"] == "train")
    assert len(seen) == 3  # D(real), D(fake) in D's step, D(fake) in G's: BatchNorm's D runs each side alone
    real, fake, fake_in_g = seen
    assert record["d_loss"] == pytest.approx(_rasgan_d(real, fake, kind).item(), rel=1e-6)
    assert record["g_loss"] == pytest.approx(_rasgan_g(real, fake_in_g, kind).item(), rel=1e-6)
    relative_real = real - fake.mean()  # the statistics are of the relative logits
    want_d_real = torch.sigmoid(relative_real).mean() if kind == "bce" else relative_real.mean()
    assert record["d_real"] == pytest.approx(want_d_real.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("extra, field", [
    ({"loss": "wasserstein", "relativistic": True}, "relativistic"),
    ({"loss": "bce", "g_saturating": True, "relativistic": True}, "relativistic"),
])  # fmt: skip
def test_settings_the_relativistic_loss_has_no_meaning_for_are_refused(extra, field):
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({**TINY, **extra})
    assert err.value.field == field
    assert "relativistic" in str(err.value)

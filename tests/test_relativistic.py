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


TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1, "steps": 3}  # fmt: skip


def test_relativistic_training_differs_from_plain_and_reports_relative_statistics(tmp_path):
    import json

    runs = {}
    for name, extra in (("plain", {}), ("ra", {"relativistic": True})):
        trainer = Trainer(TrainSpec.from_dict({**TINY, **extra}), tmp_path / name)
        trainer.run()
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (trainer, [r for r in records if r["kind"] == "train"])
    (plain, plain_records), (ra, ra_records) = runs["plain"], runs["ra"]
    # the first D step sees the same batches and weights: only the loss differs
    assert plain_records[0]["d_loss"] != pytest.approx(ra_records[0]["d_loss"], rel=1e-6)
    g_plain = dict(plain.G.named_parameters())
    assert any(not torch.allclose(p, g_plain[n]) for n, p in ra.G.named_parameters())
    # the G loss column is RaGAN's two-sided G loss: about 2 log 2 when D cannot tell the sides apart
    assert all(0.5 < r["g_loss"] < 3.0 for r in ra_records)
    assert all(torch.isfinite(torch.tensor(r["d_loss"])) for r in ra_records)


@pytest.mark.parametrize("extra, field", [
    ({"loss": "wasserstein", "relativistic": True}, "relativistic"),
    ({"loss": "bce", "g_saturating": True, "relativistic": True}, "relativistic"),
])  # fmt: skip
def test_settings_the_relativistic_loss_has_no_meaning_for_are_refused(extra, field):
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({**TINY, **extra})
    assert err.value.field == field
    assert "relativistic" in str(err.value)

"""CatGAN's class-entropy term for unconditional runs on labelled data (`class_entropy`, issue 22): D learns the
data's classes on the real images, G's loss adds the entropy of D's prediction per fake less the entropy of the
batch's mean prediction. Checked against a NumPy float64 computation and against the trainer's logged losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gansvc.models import build_discriminator, build_generator
from gansvc.models.dcgan import DCGANDiscriminator
from gansvc.train import Trainer
from gansvc.train.spec import SpecError
from gansvc.train.step import class_entropy_term

from tests.test_train import forget_settings, losses, tiny, unlabelled_image_folder


def numpy_term(logits: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_sample = -(p * np.log(p)).sum(1).mean()
    mean = p.mean(0)
    return float(per_sample + (mean * np.log(mean)).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_term_is_catgans_entropies(dtype):
    logits = torch.randn(37, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    got = class_entropy_term(logits.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert got.item() == pytest.approx(numpy_term(logits.numpy()), rel=tol, abs=tol)
    # its gradient: central differences of the float64 formula
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(class_entropy_term(x), x)
    h, (i, j) = 1e-6, (3, 7)
    up, down = logits.numpy().copy(), logits.numpy().copy()
    up[i, j] += h
    down[i, j] -= h
    assert grad[i, j].item() == pytest.approx((numpy_term(up) - numpy_term(down)) / (2 * h), rel=1e-5, abs=1e-9)


def test_its_bounds_reward_clear_and_balanced_classes():
    k = 10
    confident = torch.full((20, k), -30.0, dtype=torch.float64)
    confident[torch.arange(20), torch.arange(20) % k] = 30.0  # each fake one class, every class twice
    assert class_entropy_term(confident).item() == pytest.approx(-math.log(k), abs=1e-9)  # the minimum
    collapsed = torch.full((20, k), -30.0, dtype=torch.float64)
    collapsed[:, 3] = 30.0  # every fake the same clear class
    assert class_entropy_term(collapsed).item() == pytest.approx(0.0, abs=1e-9)
    unsure = torch.zeros(20, k, dtype=torch.float64)  # no fake any class
    assert class_entropy_term(unsure).item() == pytest.approx(0.0, abs=1e-12)


def test_the_discriminator_classifies_without_a_projection():
    spec = tiny(steps=1, width=8, class_entropy=1.0)
    d = build_discriminator(spec, (1, 28, 28), label_classes=10)
    assert d.embed is None and d.classifier.out_features == 10
    x = torch.randn(6, 1, 28, 28)
    logits, classes = d.eval()(x, classes=True)
    assert logits.shape == (6,) and classes.shape == (6, 10)
    torch.testing.assert_close(logits, d(x), rtol=0, atol=0)  # the logit is the plain D's, with or without classes
    plain = build_discriminator(tiny(steps=1, width=8), (1, 28, 28))
    assert set(d.state_dict()) - set(plain.state_dict()) == {"classifier.weight", "classifier.bias"}
    # G is the unconditional one
    g = build_generator(spec, (1, 28, 28))
    assert g.num_classes == 0


def test_the_trainers_losses_are_the_terms_of_ds_own_outputs(tmp_path, monkeypatch):
    """The first step's logged classifier loss and G loss, recomputed in float64 from what D returned: the
    cross-entropy of its class logits on the real batch's labels, and G's non-saturating loss plus the weight times
    the entropy term of its class logits on G's fakes."""
    seen = []
    forward = DCGANDiscriminator.forward

    def recording(self, x, *args, **kwargs):
        out = forward(self, x, *args, **kwargs)
        seen.append(tuple(o.detach().double().clone() for o in out) if isinstance(out, tuple) else out.detach())
        return out

    labels = []
    monkeypatch.setattr(DCGANDiscriminator, "forward", recording)
    spec = tiny(steps=1, class_entropy=0.7)
    trainer = Trainer(spec, tmp_path)
    import gansvc.train.step as step

    original = step.TrainerStep._d_step

    def keep_labels(self, *args, **kwargs):
        labels.append(self.batches.last_labels.clone())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(step.TrainerStep, "_d_step", keep_labels)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["kind"] == "train")
    assert len(seen) == 3  # D(real) with classes, D(fake), D(fake) with classes in G's step
    (_, real_classes), _, (fake_logits, fake_classes) = seen
    assert record["ac_loss"] == pytest.approx(F.cross_entropy(real_classes, labels[0]).item(), rel=1e-5)
    want_g = F.softplus(-fake_logits).mean() + 0.7 * numpy_term(fake_classes.numpy())
    assert record["g_loss"] == pytest.approx(want_g.item(), rel=1e-5)


def test_left_out_an_unconditional_dcgan_on_a_labelled_built_in_data_set_takes_it():
    from gansvc.train.spec import DCGAN_CLASS_ENTROPY, TrainSpec

    assert TrainSpec.class_entropy == 0.0
    assert TrainSpec.from_dict({"steps": 1}).class_entropy == DCGAN_CLASS_ENTROPY == 1.0  # what `gansvc train` trains
    assert TrainSpec.from_dict({"steps": 1, "dataset": "mnist"}).class_entropy == 1.0
    assert tiny(steps=1, class_entropy=0.0).class_entropy == 0.0  # a given value wins, 0 included
    assert tiny(steps=1, class_entropy=2.5).class_entropy == 2.5
    for settings in ({"conditional": True}, {"model": "mlp"}, {"model": "resnet"}, {"pack": 2},
                     {"accumulate": 2}, {"dataset": "folder:/data/faces", "image_size": 32},
                     {"dataset": "gaussian-mixture", "model": "mlp"}):  # fmt: skip
        assert tiny(steps=1, **settings).class_entropy == 0.0, settings


@pytest.mark.parametrize("settings", [{"model": "mlp"}, {"model": "resnet"}, {"conditional": True}, {"pack": 2},
                                      {"accumulate": 2}])  # fmt: skip
def test_settings_it_does_not_apply_to_are_refused_naming_it(settings):
    with pytest.raises(SpecError) as caught:
        tiny(steps=1, class_entropy=1.0, **settings)
    assert caught.value.field == "class_entropy"


def test_a_data_set_without_labels_is_refused_naming_it(tmp_path):
    folder = unlabelled_image_folder(tmp_path / "images", 16)
    with pytest.raises(SpecError) as caught:
        Trainer(tiny(steps=1, dataset=f"folder:{folder}", image_size=32, class_entropy=1.0), tmp_path / "run").run()
    assert caught.value.field == "class_entropy"


def test_resuming_a_checkpoint_from_before_the_option_is_refused_naming_it(tmp_path):
    Trainer(tiny(steps=2, class_entropy=0.0), tmp_path).run()
    forget_settings(tmp_path, "class_entropy")  # as written before class_entropy existed (a D without classes)
    with pytest.raises(SpecError) as error:
        Trainer(tiny(steps=4), tmp_path).run()  # the default now takes the term
    assert error.value.field == "class_entropy"
    Trainer(tiny(steps=4, class_entropy=0.0), tmp_path).run()  # the old setting given: it resumes
    assert [step for step, _, _ in losses(tmp_path)][-1] == 4

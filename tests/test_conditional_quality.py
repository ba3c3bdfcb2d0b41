"""The conditional recipe's options of issue 22: AC-GAN's auxiliary classifier term on D (`ac_weight`) and
class-balanced batches (`balanced_classes`), each checked against an independent computation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from gansvc.losses import discriminator_loss, generator_loss
from gansvc.train import Trainer
from gansvc.train import step as step_module
from gansvc.train.batches import BatchOrder, DeviceBatches
from gansvc.train.spec import SpecError

from tests.test_train import forget_settings, tiny  # the trainer tests' tiny runs


def one_step(spec, run_dir, monkeypatch):
    """Run one training step of `spec`; return (trainer, D before the step, the real batch and labels, the fake
    batch and labels G made, the losses handed to backward in order)."""
    trainer = Trainer(spec, run_dir)
    trainer._setup()
    d_before = copy.deepcopy(trainer.D)
    losses, made = [], []
    original_backward = step_module.backward

    def record_backward(loss, scaler):
        losses.append(loss.detach().clone())
        return original_backward(loss, scaler)

    monkeypatch.setattr(step_module, "backward", record_backward)
    generate = trainer.G_train

    def record_generator(z, labels):
        fake = generate(z, labels)
        made.append((fake.detach().clone(), labels.clone()))
        return fake

    trainer.G_train = record_generator
    real, real_labels = trainer.batches.next_labelled()
    trainer.batches.order.load_state_dict({**trainer.batches.state_dict(), "position": 0, "batches_served": 0})
    trainer._train_step()
    return trainer, d_before, (real, real_labels), made[0], losses


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_ac_term_is_the_cross_entropy_of_ds_class_logits_times_the_weight(tmp_path, monkeypatch, weight):
    spec = tiny(steps=1, conditional=True, ac_weight=weight)
    trainer, d_before, (real, real_labels), (fake, fake_labels), losses = one_step(spec, tmp_path, monkeypatch)
    assert trainer.D.classifier is not None and len(losses) == 2  # D's loss, then G's: both on the autograd path
    # D's loss: the adversarial loss plus the weight times the cross-entropy on the *real* images' labels
    real_logits, real_classes = d_before(real, real_labels, classes=True)
    fake_logits = d_before(fake, fake_labels)
    adversarial = discriminator_loss(real_logits, fake_logits, "bce").loss
    expected_d = adversarial + weight * F.cross_entropy(real_classes, real_labels)
    torch.testing.assert_close(losses[0], expected_d.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(losses[0], adversarial.detach(), atol=1e-3)  # the term is there, not negligible
    # G's loss, with D as the D step left it: the weight times the cross-entropy on the labels G was asked for
    logits, classes = trainer.D(fake, fake_labels, classes=True)
    expected_g = generator_loss(logits, "bce").loss + weight * F.cross_entropy(classes, fake_labels)
    torch.testing.assert_close(losses[1], expected_g.detach(), rtol=1e-5, atol=1e-5)


def test_with_ac_weight_0_d_has_no_classifier_and_asking_for_classes_fails(tmp_path):
    trainer = Trainer(tiny(steps=1, conditional=True, ac_weight=0.0), tmp_path)
    trainer.run()
    assert trainer.D.classifier is None and not trainer.ac_term
    with pytest.raises(ValueError, match="classes"):
        trainer.D(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64), classes=True)


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_every_built_in_model_gets_the_classifier(tmp_path, model):
    trainer = Trainer(tiny(steps=2, conditional=True, ac_weight=1.0, model=model), tmp_path)
    summary = trainer.run()
    logits, classes = trainer.D(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1, 2]), classes=True)
    assert logits.shape == (3,) and classes.shape == (3, 10)
    assert summary["final"]["ac_loss"] > 0  # reported beside D's loss


def test_balanced_batches_hold_every_class_equally_and_visit_every_sample():
    labels = torch.arange(10).repeat_interleave(32)[torch.randperm(320, generator=torch.Generator().manual_seed(1))]
    order = BatchOrder(320, 20, seed=3, device=torch.device("cpu"), balance_labels=labels)
    for _ in range(2):  # two epochs, each a fresh order
        epoch = [order.next_index() for _ in range(order.batches_per_epoch)]
        for index in epoch:
            assert torch.bincount(labels[index], minlength=10).tolist() == [2] * 10
        assert sorted(torch.cat(epoch).tolist()) == list(range(320))  # every sample once
    assert not torch.equal(labels[epoch[0]], labels[epoch[0]].sort().values)  # classes mixed within a batch


def test_balanced_batches_share_the_remainder_in_turn():
    labels = torch.arange(10).repeat_interleave(50)
    order = BatchOrder(500, 23, seed=0, device=torch.device("cpu"), balance_labels=labels)  # 2 each + 3 left over
    epoch = [torch.bincount(labels[order.next_index()], minlength=10) for _ in range(20)]
    assert all(sorted(set(c.tolist())) == [2, 3] and int(c.sum()) == 23 for c in epoch)
    for start in (0, 10):  # every 10 batches: each class 2 x 10 + 3 of the 30 left-over places
        assert torch.stack(epoch[start : start + 10]).sum(0).tolist() == [23] * 10


def test_balanced_batches_repeat_a_small_class_and_resume_exactly():
    labels = torch.tensor([0] * 100 + [1] * 10)
    order = BatchOrder(110, 10, seed=5, device=torch.device("cpu"), balance_labels=labels)
    first = [order.next_index() for _ in range(4)]
    state = copy.deepcopy(order.state_dict())
    rest = [order.next_index() for _ in range(20)]
    assert all(torch.bincount(labels[i], minlength=2).tolist() == [5, 5] for i in first + rest)
    small = torch.cat([i[labels[i] == 1] for i in first + rest])
    assert set(small.tolist()) == set(range(100, 110))  # the small class comes round again and again
    again = BatchOrder(110, 10, seed=0, device=torch.device("cpu"), balance_labels=labels)
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next_index()) for a in rest)


def test_the_trainer_reads_balanced_batches(tmp_path, monkeypatch):
    counts = []
    original = DeviceBatches.next_labelled

    def spy(self):
        batch, labels = original(self)
        counts.append(torch.bincount(labels, minlength=10))
        return batch, labels

    monkeypatch.setattr(DeviceBatches, "next_labelled", spy)
    Trainer(tiny(steps=3, batch_size=20, conditional=True, balanced_classes=True), tmp_path).run()
    assert len(counts) == 3 and all(c.tolist() == [2] * 10 for c in counts)


@pytest.mark.parametrize(("settings", "field"), [
    ({"ac_weight": 1.0}, "ac_weight"),  # conditional runs only
    ({"balanced_classes": True}, "balanced_classes"),
    ({"ac_weight": -1.0, "conditional": True}, "ac_weight"),
])  # fmt: skip
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(SpecError) as caught:
        tiny(steps=1, **settings)
    assert caught.value.field == field


def test_the_conditional_recipe_takes_the_classifier_unless_ac_weight_is_given():
    from gansvc.train.spec import CONDITIONAL_AC_WEIGHT, TrainSpec

    assert CONDITIONAL_AC_WEIGHT > 0
    assert tiny(steps=1, conditional=True).ac_weight == CONDITIONAL_AC_WEIGHT
    assert tiny(steps=1, conditional=True, ac_weight=0.0).ac_weight == 0.0
    assert tiny(steps=1, conditional=True, ac_weight=2.5).ac_weight == 2.5
    assert tiny(steps=1).ac_weight == 0.0  # unconditional: nothing to classify
    # a resolved spec keeps its value through to_dict (what the service stores and the worker reads)
    spec = tiny(steps=1, conditional=True, ac_weight=0.0)
    assert TrainSpec.from_dict(spec.to_dict()).ac_weight == 0.0


def test_a_plugin_model_is_not_given_the_classifier(monkeypatch):
    """The classifier is built into gansvc's models: a conditional plugin model keeps ac_weight 0 (and is not
    refused for a setting its user never gave)."""
    import dataclasses

    from gansvc.runtime import registry

    info = registry.model_info("dcgan")
    monkeypatch.setitem(registry._MODELS, "dcgan", dataclasses.replace(info, plugin="someone-elses-gans 1.0"))
    assert tiny(steps=1, conditional=True).ac_weight == 0.0
    with pytest.raises(SpecError) as caught:
        tiny(steps=1, conditional=True, ac_weight=1.0)
    assert caught.value.field == "ac_weight"


def test_command_line_options_join_the_spec_files_settings_not_its_resolved_defaults(tmp_path):
    """`--spec file --conditional` is the file plus --conditional: the file's left-out ac_weight takes the
    conditional recipe's value, as `gansvc train --conditional` alone does; the file's own ac_weight wins."""
    import argparse

    from gansvc.train import cli
    from gansvc.train.spec import CONDITIONAL_AC_WEIGHT

    parser = argparse.ArgumentParser()
    cli.add_arguments("train", parser)
    plain = tmp_path / "plain.toml"
    plain.write_text('model = "mlp"\nsteps = 2\n')
    args = parser.parse_args(["--spec", str(plain), "--conditional"])
    assert cli.spec_from_args(args).ac_weight == CONDITIONAL_AC_WEIGHT
    off = tmp_path / "off.toml"
    off.write_text('model = "mlp"\nsteps = 2\nconditional = true\nac_weight = 0.0\n')
    assert cli.spec_from_args(parser.parse_args(["--spec", str(off)])).ac_weight == 0.0


def test_resuming_a_checkpoint_from_before_ac_weight_names_the_setting(tmp_path):
    """A conditional checkpoint written before ac_weight existed trained without the classifier: resuming it
    with the recipe's classifier is refused naming ac_weight; with ac_weight 0 it resumes."""
    old = tiny(steps=2, conditional=True, ac_weight=0.0)
    Trainer(old, tmp_path).run()
    forget_settings(tmp_path, "ac_weight", "balanced_classes")  # as the code before issue 22 wrote it
    with pytest.raises(SpecError) as caught:
        Trainer(tiny(steps=4, conditional=True), tmp_path).run()
    assert caught.value.field == "ac_weight"
    assert Trainer(tiny(steps=4, conditional=True, ac_weight=0.0), tmp_path).run()["resumed_from"] == 2

"""Augmentation wired into training (issue 12): everything D sees goes through the Augmenter, p is a metric,
and a resumed run with augmentation (fixed p or ADA) continues exactly."""

from __future__ import annotations

import json

import pytest
import torch

from gansvc.train import Trainer, TrainSpec
from gansvc.train.augment import Augmenter
from gansvc.train.spec import SpecError

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


RECIPES = {
    "fixed-p": {"augment": "translation,cutout,color", "augment_p": 0.5},
    # a tiny ada_images makes p move a visible amount within a few steps
    "ada-conditional-hinge-sn": {"augment": "translation,color", "ada_target": 0.05, "conditional": True,
                                 "loss": "hinge", "spectral_norm": True},
    "r1": {"augment": "cutout", "r1_gamma": 1.0},
}


@pytest.fixture
def fast_ada(monkeypatch):
    original = Augmenter.__init__

    def init(self, *args, **kw):
        original(self, *args, **{**kw, "ada_images": 256, "interval": 1})

    monkeypatch.setattr(Augmenter, "__init__", init)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_resume_is_exact_with_augmentation(tmp_path, recipe, fast_ada):
    straight = tiny(steps=10, **RECIPES[recipe])
    Trainer(straight, tmp_path / "straight").run()
    Trainer(straight.with_overrides(steps=5), tmp_path / "split").run()
    assert Trainer(straight, tmp_path / "split").run()["resumed_from"] == 5
    key = lambda r: (r["step"], r["d_loss"], r["g_loss"], r["augment_p"])  # noqa: E731
    a_records = [key(r) for r in records(tmp_path / "straight") if r["kind"] == "train"]
    assert a_records == [key(r) for r in records(tmp_path / "split") if r["kind"] == "train"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    for name in a["D"]:
        assert torch.equal(a["D"][name], b["D"][name]), name
    assert a["augment"]["p"] == b["augment"]["p"]
    assert torch.equal(a["augment"]["generator"], b["augment"]["generator"])
    if "ada_target" in RECIPES[recipe]:
        assert a["augment"]["p"] > 0  # ADA moved p off its start; the same in both runs
    else:
        assert {r[3] for r in a_records} == {RECIPES[recipe].get("augment_p", 1.0)}


def test_everything_d_sees_is_augmented(tmp_path, monkeypatch):
    """Per step: real and fake in the D step and fake in the G step pass the Augmenter, and nothing reaches D
    that did not (D's inputs are exactly the augmenter's outputs)."""
    outputs = []
    original = Augmenter.__call__

    def spy(self, x):
        out = original(self, x)
        outputs.append(out)
        return out

    monkeypatch.setattr(Augmenter, "__call__", spy)
    trainer = Trainer(tiny(steps=3, augment="translation,cutout", spectral_norm=True), tmp_path)
    inputs = []
    original_setup = trainer._setup

    def setup():
        original_setup()
        trainer.D.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))

    trainer._setup = setup
    trainer.run()
    assert len(outputs) == 3 * 3  # real, fake (D step), fake (G step) per step
    # a joint D forward sees [real; fake] as one batch: each D input is made of augmenter outputs
    produced = [o.detach() for o in outputs]
    for x in inputs:
        parts = x.detach().split(16)
        assert all(any(p.shape == o.shape and torch.equal(p, o) for o in produced) for p in parts)
    assert not torch.equal(produced[0], trainer.batches.data[:16].float())


def test_augmentation_changes_training_and_p_is_reported(tmp_path):
    events = []
    Trainer(tiny(steps=3, augment="color"), tmp_path / "aug", on_event=events.append).run()
    Trainer(tiny(steps=3), tmp_path / "plain").run()
    metrics = [e for e in events if type(e).__name__ == "Metrics" and "augment_p" in e.values]
    assert metrics and all(e.values["augment_p"] == 1.0 for e in metrics)
    aug = [r["d_loss"] for r in records(tmp_path / "aug") if r["kind"] == "train"]
    plain = [r["d_loss"] for r in records(tmp_path / "plain") if r["kind"] == "train"]
    assert aug != plain
    assert "augment_p" not in records(tmp_path / "plain")[0]


@pytest.mark.parametrize(("settings", "field"), [
    ({"augment": "rotate"}, "augment"),
    ({"ada_target": 0.6}, "ada_target"),
    ({"augment_p": 0.5}, "augment_p"),
    ({"augment": "color", "ada_target": 0.6, "augment_p": 0.3}, "augment_p"),
    ({"augment": "color", "dataset": "gaussian-mixture", "model": "mlp"}, "augment"),
])  # fmt: skip
def test_bad_augmentation_settings_name_the_field(settings, field):
    with pytest.raises(SpecError) as caught:
        tiny(steps=1, **settings)
    assert caught.value.field == field

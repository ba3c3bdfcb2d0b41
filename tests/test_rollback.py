"""Rollback on divergence: NaN weights injected once send the run back to its last checkpoint with halved
learning rates, it finishes, and a run stopped and resumed after the rollback ends bit for bit as the
uninterrupted one; persisting failure signs roll back too, until the rollbacks are spent."""

from __future__ import annotations

import json

import pytest
import torch

from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainSpec
from gansvc.train.monitor import FailureWatch

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 4, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


def poison_d_once(monkeypatch, after_call: int) -> list:
    """Make D's first weight NaN right after training step number `after_call` (counted over every Trainer of the
    test), once: the next step's losses are NaN."""
    calls = []
    original = Trainer._train_step

    def step(self):
        stats = original(self)
        calls.append(1)
        if len(calls) == after_call:
            with torch.no_grad():
                next(self.D.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(Trainer, "_train_step", step)
    return calls


def train_records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_nan_rolls_back_to_the_last_checkpoint_with_halved_learning_rates_and_finishes(tmp_path, monkeypatch):
    poison_d_once(monkeypatch, after_call=6)
    events = []
    spec = tiny(steps=12)
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    assert summary["status"] == "completed" and summary["step"] == 12
    rollbacks = [e for e in events if isinstance(e, ev.Rollback)]
    assert len(rollbacks) == 1
    rollback = rollbacks[0]
    # step 7's losses are the first NaN ones; the newest checkpoint then is step 4's
    assert (rollback.step, rollback.to_step, rollback.rollback, rollback.max_rollbacks) == (7, 4, 1, 3)
    assert rollback.lr_g == spec.lr_g * 0.5 and rollback.lr_d == spec.lr_d * 0.5 and "NaN" in rollback.reason
    assert [e.code for e in events if isinstance(e, ev.Warning)] == ["diverged"]
    # the checkpoint keeps the scaled rates (in the optimisers' state) and the rollback
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["opt_g"]["param_groups"][0]["lr"] == spec.lr_g * 0.5
    assert state["opt_d"]["param_groups"][0]["lr"] == spec.lr_d * 0.5
    assert len(state["selection"]["rollbacks"]) == 1 and state["selection"]["rollbacks"][0]["to_step"] == 4
    assert all(torch.isfinite(t).all() for t in state["D"].values() if t.is_floating_point())
    assert summary["rollbacks"] == [{"step": 7, "to_step": 4, "lr_g": spec.lr_g * 0.5, "lr_d": spec.lr_d * 0.5,
                                     "reason": rollback.reason}]  # fmt: skip
    # the steps after step 4 were trained again: metrics.jsonl holds each step once, in order, all finite
    steps = [r["step"] for r in train_records(tmp_path)]
    assert steps == list(range(1, 13))
    assert all(r["d_loss"] == r["d_loss"] for r in train_records(tmp_path))


def test_rollback_resume_is_exact(tmp_path, monkeypatch):
    """A run stopped after its rollback and resumed ends exactly as the run that was never interrupted."""
    spec = tiny(steps=14)
    poison_d_once(monkeypatch, after_call=6)
    straight = Trainer(spec, tmp_path / "straight").run()
    assert len(straight["rollbacks"]) == 1
    calls = poison_d_once(monkeypatch, after_call=6)
    # should_stop is asked before every step: stop 3 steps after the rollback (at step 7 -> 4), at step 7
    asked = []
    first = Trainer(spec, tmp_path / "split", should_stop=lambda: len(asked) >= 10 or asked.append(1)).run()
    assert first["status"] == "stopped" and len(first["rollbacks"]) == 1 and first["step"] == 7
    assert len(calls) == 10  # the injection is spent: the resumed run trains cleanly, as the straight one did
    second = Trainer(spec, tmp_path / "split").run()
    assert second["resumed_from"] == 7 and second["step"] == 14 and second["rollbacks"] == straight["rollbacks"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("G", "D"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert a["opt_g"]["param_groups"][0]["lr"] == b["opt_g"]["param_groups"][0]["lr"] == spec.lr_g * 0.5
    strip = lambda records: [(r["step"], r["d_loss"], r["g_loss"]) for r in records]  # noqa: E731
    assert strip(train_records(tmp_path / "straight")) == strip(train_records(tmp_path / "split"))


def test_persisting_failure_signs_roll_back_until_the_rollbacks_are_spent(tmp_path, monkeypatch):
    """D overpowering G that does not go away rolls the run back to a checkpoint from before the sign; once
    max_rollbacks are spent the run goes on (the sign stays a warning)."""

    def always_overpowering(self, values):
        self.history.append(values)
        return self._episode("d_overpowering", True, "D overpowers G (test)")

    monkeypatch.setattr(FailureWatch, "check_train", always_overpowering)
    events = []
    spec = tiny(steps=30, max_rollbacks=2, rollback_factor=0.25)
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    assert summary["status"] == "completed" and summary["step"] == 30
    rollbacks = [e for e in events if isinstance(e, ev.Rollback)]
    assert [r.rollback for r in rollbacks] == [1, 2]
    # flagged from step 1 on, held for more than a window (5 log points) after: step 6. No checkpoint is older
    # than the sign, so the newest one (step 4) is gone back to; from there it holds again until step 10 (the
    # checkpoint of step 8 written meanwhile is the newest then)
    assert [(r.step, r.to_step) for r in rollbacks] == [(6, 4), (10, 8)]
    assert all("d_overpowering persisted" in r.reason for r in rollbacks)
    assert (rollbacks[0].lr_g, rollbacks[1].lr_g) == (spec.lr_g * 0.25, spec.lr_g * 0.25**2)
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["opt_d"]["param_groups"][0]["lr"] == spec.lr_d * 0.25**2


def test_rollback_settings_are_checked():
    from gansvc.train.spec import SpecError

    with pytest.raises(SpecError) as caught:
        tiny(steps=2, rollback_factor=1.0)
    assert caught.value.field == "rollback_factor"
    assert tiny(steps=2, rollback_factor=1.0, max_rollbacks=0).max_rollbacks == 0


def test_a_run_without_a_checkpoint_yet_goes_back_to_its_first_step(tmp_path, monkeypatch):
    """Before the first checkpoint the run goes back to its first state (kept in memory): the same as a fresh run
    with the scaled learning rates from the start."""
    poison_d_once(monkeypatch, after_call=2)
    events = []
    spec = tiny(steps=5, checkpoint_every=0)
    summary = Trainer(spec, tmp_path / "rolled", on_event=events.append).run()
    rollback = next(e for e in events if isinstance(e, ev.Rollback))
    assert (rollback.step, rollback.to_step) == (3, 0) and summary["step"] == 5
    monkeypatch.undo()
    # the reference: a run with halved rates from step 0 (the initial weights, noise and batches are the seed's)
    reference = Trainer(spec.with_overrides(lr_g=spec.lr_g * 0.5, lr_d=spec.lr_d * 0.5), tmp_path / "halved").run()
    strip = lambda records: [(r["step"], r["d_loss"], r["g_loss"]) for r in records]  # noqa: E731
    assert strip(train_records(tmp_path / "rolled")) == strip(train_records(tmp_path / "halved"))
    assert reference["step"] == 5

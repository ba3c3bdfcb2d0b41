"""Model selection during training (issue 13): the best checkpoint (`keep_best`) and early stopping. A part of
the Trainer.

After every evaluation the spec's `keep_best` metric (default fid) is compared with the best so far:
better by more than `early_stop_min_delta` (lower for fid / kid, higher for the other metrics unless
`keep_best_mode` says otherwise) writes checkpoints/best.pt (the full state, as a step checkpoint) and
generator_best.pt, and a Best event; `early_stop_patience` evaluations in a row without such an
improvement end the run with status "early_stopped" and an EarlyStopped event. The state of all this
(and of the rollbacks, gansvc.train.rollback) is the `selection` entry of every checkpoint, so a
resumed run decides exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from gansvc.atomic import atomic_torch_save
from gansvc.runtime.events import Best, EarlyStopped, Log
from gansvc.runtime.rundir import BEST_GENERATOR_FILE, best_checkpoint_path, best_generator_path
from gansvc.train.sampling import export_generator

# Metrics whose lower values are better (a distance); every other metric (IS, precision, recall, modes
# covered, ...) is better higher.
LOWER_IS_BETTER = ("fid", "kid_mean", "kid_std", "is_std")


def lower_is_better(metric: str, mode: str = "auto") -> bool:
    """Return whether a lower `metric` is better: mode 'min' / 'max', or 'auto' (by the metric's name)."""
    if mode in ("min", "max"):
        return mode == "min"
    return metric in LOWER_IS_BETTER or metric.startswith(("fid", "kid"))


@dataclass
class SelectionState:
    """What model selection remembers across evaluations, rollbacks and resumes (saved in every checkpoint)."""

    metric: str = ""  # the keep_best metric these values are of
    best_step: int | None = None
    best_value: float | None = None
    since_best: int = 0  # evaluations since the best one
    rollbacks: list[dict] = field(default_factory=list)  # one record per rollback (gansvc.train.rollback)
    sign_streak: dict[str, list[int]] = field(default_factory=dict)  # failure sign -> [first step, log points]

    @classmethod
    def from_dict(cls, data: dict | None, spec) -> SelectionState:
        """Return the state a checkpoint saved (a fresh one for older checkpoints); the best is forgotten when the
        resumed spec keeps another metric."""
        state = cls(metric=spec.keep_best)
        if not data:
            return state
        state.rollbacks = [dict(r) for r in data.get("rollbacks", [])]
        state.sign_streak = {str(k): [int(v[0]), int(v[1])] for k, v in data.get("sign_streak", {}).items()}
        if data.get("metric") == spec.keep_best:
            state.best_step, state.best_value = data.get("best_step"), data.get("best_value")
            state.since_best = int(data.get("since_best", 0))
        return state

    def to_dict(self) -> dict:
        """Return the state as plain data (for the checkpoint)."""
        return asdict(self)

    def improves(self, value: float, mode: str, min_delta: float) -> bool:
        """Return whether `value` beats the best so far by more than min_delta (the first value always does)."""
        if self.best_value is None:
            return True
        if lower_is_better(self.metric, mode):
            return value < self.best_value - min_delta
        return value > self.best_value + min_delta

    def patience_spent(self, spec) -> bool:
        """Return whether early stopping ends the run now."""
        return bool(spec.early_stop_patience and self.best_step is not None
                    and self.since_best >= spec.early_stop_patience)  # fmt: skip

    def summary(self) -> dict:
        """Return the summary.json entries: the best checkpoint (None without one) and the rollbacks."""
        best = None
        if self.best_step is not None:
            best = {"metric": self.metric, "step": self.best_step, "value": self.best_value,
                    "checkpoint": "checkpoints/best.pt", "generator": BEST_GENERATOR_FILE}  # fmt: skip
        return {"best": best, "rollbacks": [dict(r) for r in self.rollbacks]}


class TrainerSelection:
    """The Trainer's best checkpoint and early stopping (a part of gansvc.train.trainer.Trainer)."""

    def _select(self, values: dict) -> None:
        """Keep the best checkpoint and count evaluations without improvement, after an evaluation at self.step."""
        spec, state = self.spec, self.selection
        if not spec.keep_best:
            return
        value = values.get(spec.keep_best)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            if not getattr(self, "_keep_best_missing_said", False):
                self._keep_best_missing_said = True
                self._event(Log(level="warning", message=(
                    f"keep_best: this run's evaluations give no {spec.keep_best!r} (they give "
                    f"{', '.join(sorted(values)) or 'nothing'}): no best checkpoint is kept"
                )))  # fmt: skip
            return
        if state.improves(float(value), spec.keep_best_mode, spec.early_stop_min_delta):
            state.best_step, state.best_value, state.since_best = self.step, float(value), 0
            if self.is_main:
                self._save_best(float(value))
            return
        state.since_best += 1
        if state.patience_spent(spec):
            self._event(EarlyStopped(step=self.step, metric=spec.keep_best, best_step=state.best_step,
                                     best_value=state.best_value, evaluations=state.since_best))  # fmt: skip

    def _save_best(self, value: float) -> None:
        """Write checkpoints/best.pt (the full state of this step) and generator_best.pt; say so with a Best event."""
        path = best_checkpoint_path(self.run_dir)
        atomic_torch_save(self._checkpoint_state(self.session_start), path)
        generator = best_generator_path(self.run_dir)
        export_generator(self._sampler(), self.spec, self.data_shape, self.step, self.ema is not None, generator,
                         **self._class_record())
        self._event(Best(step=self.step, metric=self.spec.keep_best, value=value,
                         path=path.relative_to(self.run_dir).as_posix(), generator=generator.name))  # fmt: skip

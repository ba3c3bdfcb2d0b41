"""Rollback on divergence (issue 13): when a run diverges, go back to its last good checkpoint with both learning
rates scaled by the spec's `rollback_factor`, and go on; at most `max_rollbacks` times. A part of the Trainer.

What counts as diverging:
- a loss or statistic became NaN or infinite (TrainingDiverged; the checkpoint is latest.pt, which is
  written only after the same finiteness check);
- D overpowering G (the monitor's d_overpowering sign, checked at every log point) persisting for
  PERSIST_WINDOWS more windows after it was flagged; the checkpoint is the newest step checkpoint from
  before the sign was first seen (else latest.pt). Mode collapse is reported, not rolled back: its checks
  run at evaluations only, too rarely to call a sign persisting between them.
A run with no checkpoint yet goes back to its first step (a copy of that state is kept in memory).

Each rollback is a Rollback event and a record in summary.json; the scaled learning rates (the full rates
a learning-rate schedule scales) live in the optimisers' state and the rollbacks in the checkpoint's
`selection` entry, so a run resumed after a rollback continues exactly as the uninterrupted one.
metrics.jsonl and TensorBoard drop the records after the step gone back to, as a resume does: the steps
are trained again. Once no rollback is left, NaN fails the run as before (TrainingDiverged) and
persisting signs stay warnings.
"""

from __future__ import annotations

import io

import torch

from gansvc.runtime.events import Rollback
from gansvc.train import checkpoints
from gansvc.train.errors import TrainingDiverged
from gansvc.train.monitor import MetricsLog, TensorBoard
from gansvc.runtime.rundir import checkpoint_steps
from gansvc.train.schedule import full_rate, set_full_rates

ROLLBACK_SIGNS = ("d_overpowering",)  # failure signs that roll a run back when they persist
PERSIST_WINDOWS = 1  # windows of log points a sign must still hold after the monitor flagged it


class TrainerRollback:
    """The Trainer's rollbacks (a part of gansvc.train.trainer.Trainer)."""

    def _prepare_rollback(self) -> None:
        """Keep, in memory, the state to go back to before the first checkpoint (only when there is none yet)."""
        self._first_state = None
        if self.spec.max_rollbacks and self.checkpointed_step < 0:
            buffer = io.BytesIO()  # a copy: state_dict() tensors share the live parameters' storage
            torch.save(self._checkpoint_state(self.session_start), buffer)
            self._first_state = buffer.getvalue()

    def _rollbacks_left(self) -> int:
        return self.spec.max_rollbacks - len(self.selection.rollbacks)

    def _persisting_sign(self) -> tuple[str, int] | None:
        """Count the log points each rollback sign has held; return (reason, the step it was first seen) when one
        has persisted long enough and a rollback is left, else None. Called after every log point."""
        streak = self.selection.sign_streak
        for key in ROLLBACK_SIGNS:
            if key not in self.watch.active:
                streak.pop(key, None)
                continue
            # the monitor flags a sign after a full window of log points: it was first seen that many earlier
            first, count = streak.get(key, [max(0, self.step - self.spec.log_every * self.watch.window), 0])
            streak[key] = [first, count + 1]
            if count + 1 > PERSIST_WINDOWS * self.watch.window and self._rollbacks_left() > 0:
                return f"{key} persisted over {count + 1} log points", first
        return None

    def _roll_back(self, reason: str, before_step: int | None = None, error: TrainingDiverged | None = None) -> None:
        """Go back to the last good checkpoint (the newest from before `before_step` when given) with both learning
        rates scaled by rollback_factor; re-raise `error` when no rollback is left."""
        spec = self.spec
        if self._rollbacks_left() <= 0:
            if error is None:
                return
            done = len(self.selection.rollbacks)
            suffix = f" (after {done} rollback{'s' * (done != 1)})" if done else ""
            raise TrainingDiverged(f"{error}{suffix}") from None
        diverged_at = self.step
        # the full rates (what a learning-rate schedule scales), before the checkpoint's replace them
        lr_g = full_rate(self.opt_g) * spec.rollback_factor
        lr_d = full_rate(self.opt_d) * spec.rollback_factor
        path, state = self._rollback_source(before_step)
        kept = (self.selection, self.wall_before, self.train_seconds, self.warnings)
        self.watch.history.clear()  # the checkpoint's history replaces this one
        self._resume(path, state)
        # the best so far and the rollbacks stay what they are now; time counters keep counting
        self.selection, self.wall_before, self.train_seconds, self.warnings = kept
        self.selection.sign_streak = {}
        set_full_rates((self.opt_g, self.opt_d), (lr_g, lr_d))
        record = {"step": diverged_at, "to_step": self.step, "lr_g": lr_g, "lr_d": lr_d, "reason": reason}
        self.selection.rollbacks.append(record)
        self.checkpointed_step = self.step if path is not None else -1
        self._sampler_cache = None  # keyed by step: the same step now has other weights
        self._evaluated_step = None
        if self.is_main:  # the steps after the checkpoint are trained again: their records go, as on a resume
            self.metrics.close()
            self.metrics = MetricsLog(self.metrics.path, self.step)
            self.tensorboard.close()
            self.tensorboard = TensorBoard(self.run_dir / "tensorboard", spec.tensorboard, self.step + 1)
        if self.bar is not None:
            self.bar.reset(total=self.total_steps)
            self.bar.update(self.step)
        self._event(Rollback(step=diverged_at, to_step=self.step, lr_g=lr_g, lr_d=lr_d, reason=reason,
                             rollback=len(self.selection.rollbacks), max_rollbacks=spec.max_rollbacks))  # fmt: skip

    def _rollback_source(self, before_step: int | None):
        """Return (path, checkpoint state) to go back to (path None: the run's first state, kept in memory)."""
        path = None
        if self.is_main:
            path = checkpoints.latest_checkpoint(self.run_dir)
            if before_step is not None:
                earlier = {s: p for s, p in checkpoint_steps(self.run_dir).items() if s <= before_step}
                path = earlier[max(earlier)] if earlier else path
        state = checkpoints.load_checkpoint(path, map_location="cpu") if path is not None else None
        path, state = self.dist.broadcast_object((path, state))
        if state is None:
            if self._first_state is None:  # cannot happen: no checkpoint means the first state was kept
                raise TrainingDiverged("no checkpoint to roll back to")
            state = torch.load(io.BytesIO(self._first_state), map_location="cpu", weights_only=True)
        return path, state

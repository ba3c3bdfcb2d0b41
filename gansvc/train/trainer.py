"""The training loop: `Trainer(spec, run_dir).run()` trains a GAN and writes everything a user watches.

Run directory (see CONTRACT): spec.json, metrics.jsonl, warnings.jsonl, summary.json,
samples/step_NNNNNNN.png + samples/latest.png, checkpoints/step_NNNNNNN.pt + checkpoints/latest.pt,
generator.pt, loss_curve.png, tensorboard/; with keep_best, checkpoints/best.pt + generator_best.pt.

The Trainer is assembled from its parts, one idea each: set-up (gansvc.train.build), the step
(gansvc.train.step), logging, events and warnings (gansvc.train.reporting), sampling and evaluation
(gansvc.train.evaluation), checkpoint, resume and summary (gansvc.train.state). This module holds the
loop that drives them. `on_event` receives gansvc.runtime.events objects, on rank 0 only: after a
resume, first a Log with resume_step; then Progress, Metrics, Samples, Checkpoint, Warning and Log, and the
model-selection events Best, EarlyStopped and Rollback (gansvc.train.selection, gansvc.train.rollback).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from gansvc.runtime.events import Event
from gansvc.train import distributed
from gansvc.train.build import TrainerSetup
from gansvc.train.devices import cpu_threads, resolve_device
from gansvc.train.errors import TrainingDiverged
from gansvc.train.evaluation import COLLAPSE_CHECKS_FROM, FIXED_NOISE, POINT_SAMPLES, TrainerEvaluation
from gansvc.train.init_from import TrainerInit
from gansvc.train.monitor import plot_loss_curve
from gansvc.train.reporting import TrainerReporting
from gansvc.train.rollback import TrainerRollback
from gansvc.train.selection import TrainerSelection
from gansvc.train.spec import TrainSpec
from gansvc.train.state import RESUMABLE_CHANGES, TrainerState, spec_seed_for_step
from gansvc.train.step import TrainerStep

__all__ = [
    "COLLAPSE_CHECKS_FROM", "FIXED_NOISE", "POINT_SAMPLES", "RESUMABLE_CHANGES", "Trainer", "TrainingDiverged",
    "cpu_threads", "resolve_device", "spec_seed_for_step",
]  # fmt: skip


class Trainer(
    TrainerSetup, TrainerStep, TrainerReporting, TrainerEvaluation, TrainerState, TrainerSelection, TrainerRollback,
    TrainerInit,
):
    """Trains the GAN `spec` describes into `run_dir`, resuming from run_dir/checkpoints/latest.pt if present."""

    def __init__(
        self,
        spec: TrainSpec,
        run_dir: str | os.PathLike,
        on_event: Callable[[Event], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
        download: bool = False,
    ):
        self.spec = spec.validate()
        self.run_dir = Path(run_dir)
        self.on_event = on_event
        self.should_stop = should_stop
        self.progress = progress
        self.download = download
        self.warnings: list[dict] = []  # warnings.jsonl's records: step, code, message
        self.bar = None

    def run(self) -> dict:
        """Train to the end (or until should_stop / max_minutes); return the summary also written to summary.json."""
        started = time.perf_counter()
        threads_before = torch.get_num_threads()
        try:
            self._setup()
        except BaseException:
            torch.set_num_threads(threads_before)
            if getattr(self, "dist", None) is not None:
                self.dist.close()
            raise
        self.setup_seconds = time.perf_counter() - started  # data decoding, models, resume
        bar = None
        try:
            if self.progress and self.is_main:
                from tqdm import tqdm

                bar = tqdm(
                    total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                    desc=f"{self.spec.model} {self.spec.loss}",
                )  # fmt: skip
            self.bar = bar
            return self._loop()
        finally:
            torch.set_num_threads(threads_before)  # the thread count is process-wide: give it back
            if bar is not None:
                bar.close()
            self.metrics.close()
            self.warning_log.close()
            self.tensorboard.close()
            self.dist.close()

    def _loop(self) -> dict:
        spec = self.spec
        session_start = self.session_start = time.monotonic()
        for log in self._startup_logs:  # a resume first: the service reads it as where training continues from
            self._event(log)
        self._announce_scoring()
        self._event(self._progress_fields(0.0))
        self._check_cpu_load()
        self._evaluated_step = None
        self._prepare_rollback()
        while True:
            try:
                ended_by = self._train(session_start)
                self._finish(ended_by, session_start)
                break
            except TrainingDiverged as error:  # NaN / Inf: back to the last good checkpoint while rollbacks last
                self._roll_back(str(error), error=error)
        if self.is_main:
            plot_loss_curve(self.metrics.records, self.run_dir / "loss_curve.png", f"{spec.model} / {spec.loss}")
        return self._summary(ended_by, session_start)

    def _train(self, session_start: float) -> str:
        """Train until the last step or a stop; return how it ended (completed | stopped | max_minutes |
        early_stopped)."""
        spec = self.spec
        budget = spec.max_minutes * 60.0
        check_every_step = self.device.type == "cpu"  # a per-step finiteness check costs a GPU sync elsewhere
        while self.step < self.total_steps:
            if self.selection.patience_spent(spec):  # also a resumed run that had stopped early
                return "early_stopped"
            # the step's time includes agreeing on a stop: with several ranks that is a collective too
            started, cpu_started = time.perf_counter(), time.process_time()
            stop = distributed.STOP_NONE
            if self.should_stop is not None and self.should_stop():
                stop = distributed.STOP_REQUESTED
            elif budget and self.wall_before + time.monotonic() - session_start >= budget:
                stop = distributed.STOP_BUDGET
            stop = self.dist.agree_stop(stop)  # every rank stops at the same step
            if stop == distributed.STOP_REQUESTED:
                return "stopped"
            if stop == distributed.STOP_BUDGET:
                return "max_minutes"
            stats = self.dist.all_reduce_mean(self._train_step())  # the global batch's statistics
            self.window_sum += stats
            elapsed = time.perf_counter() - started
            self.window_seconds += elapsed
            self.train_seconds += elapsed
            self.train_cpu_seconds += time.process_time() - cpu_started
            self.window_steps += 1
            self.step += 1
            if check_every_step:
                self._check_finite()
            if self.bar is not None:
                self.bar.update(1)
            step = self.step
            if step % spec.log_every == 0 or step == self.total_steps:
                self._log(session_start)
                persisting = self._persisting_sign()
                if persisting is not None:
                    self._roll_back(persisting[0], before_step=persisting[1])
                    continue
            if spec.sample_every and step % spec.sample_every == 0 and self.is_main:
                self._samples()
            if spec.eval_every and step % spec.eval_every == 0 and step != self.total_steps:
                self._evaluate()
            if spec.checkpoint_every and step % spec.checkpoint_every == 0 and self.is_main:
                self._checkpoint(session_start)
        return "early_stopped" if self.selection.patience_spent(spec) else "completed"

    def _finish(self, ended_by: str, session_start: float) -> None:
        """The end of a session: the last log, samples, evaluation and checkpoint."""
        spec = self.spec
        if ended_by == "stopped":
            if self.checkpointed_step != self.step and self.is_main:
                self._checkpoint(session_start)
            return
        if self.window_steps:
            self._log(session_start)
        if (not (spec.sample_every and self.step % spec.sample_every == 0) or self.step == 0) and self.is_main:
            self._samples()
        if spec.eval_samples and self._evaluated_step != self.step:
            self._evaluate()
        if self.checkpointed_step != self.step and self.is_main:
            self._checkpoint(session_start)

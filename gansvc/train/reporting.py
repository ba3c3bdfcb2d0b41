"""What the user watches during training: metrics records, progress and warning events, the progress bar,
and the checks that end or flag a run (divergence, a busy CPU). A part of the Trainer.

Events are gansvc.runtime.events classes, handed to the Trainer's on_event on rank 0 only.
"""

from __future__ import annotations

import math
import time

import torch

from gansvc.ops import selftest
from gansvc.runtime.events import Event, Metrics, Progress, Warning
from gansvc.train.devices import cpu_threads, system_load
from gansvc.train.errors import TrainingDiverged

TRAIN_STATS = ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy")


def stat_names(spec) -> list[str]:
    """Return the names of a step's statistics, in the order of the step's statistics tensor."""
    names = list(TRAIN_STATS)
    if spec.gradient_penalty > 0:
        names.append("gradient_penalty")
    if spec.r1_gamma > 0:
        names.append("r1_penalty")
    if (spec.conditional and getattr(spec, "ac_weight", 0.0) > 0) or getattr(spec, "class_entropy", 0.0) > 0:
        names.append("ac_loss")  # the auxiliary classifier's cross-entropy on the real images (unweighted)
    if getattr(spec, "augment", ""):
        names.append("augment_p")  # the augmentation probability (ADA's adapts)
    return names


class TrainerReporting:
    """The Trainer's logging, events and warnings (a part of gansvc.train.trainer.Trainer)."""

    def _event(self, event: Event) -> None:
        if self.on_event is not None and self.is_main:
            self.on_event(event)

    def _warn(self, code: str, message: str) -> None:
        record = {"step": self.step, "code": code, "message": message}
        self.warnings.append(record)
        self.warning_log.append(record)
        self._event(Warning(step=self.step, code=code, message=message))
        if self.bar is not None:
            self.bar.write(f"warning [{code}] step {self.step}: {message}")

    def _progress_fields(self, images_per_sec: float) -> Progress:
        """Return the Progress event of where training stands now."""
        done_this_session = self.step - (self.resumed_from or 0)
        per_step = self.train_seconds_session / done_this_session if done_this_session else 0.0
        return Progress(
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.batches.epoch,
            images_per_sec=images_per_sec,
            eta_seconds=per_step * (self.total_steps - self.step),
            d_loss=self.last_train.get("d_loss", math.nan),
            g_loss=self.last_train.get("g_loss", math.nan),
        )

    @property
    def train_seconds_session(self) -> float:
        """Return the seconds inside training steps in this session (not counting earlier ones)."""
        return self.train_seconds - self._train_seconds_at_start

    def _log(self, session_start: float) -> None:
        self._check_finite()
        self._check_kernels()
        spec = self.spec
        means = (self.window_sum / max(1, self.window_steps)).tolist()
        values = dict(zip(stat_names(self.spec), means))
        images = self.window_steps * spec.batch_size * spec.n_critic
        values["images_per_sec"] = images / self.window_seconds if self.window_seconds > 0 else 0.0
        values["g_grad_norm"] = _grad_norm(self.G)
        values["d_grad_norm"] = _grad_norm(self.D)
        if self.lr_scheduled:  # the learning rates of the window's last step
            values["lr_g"] = self.opt_g.param_groups[0]["lr"]
            values["lr_d"] = self.opt_d.param_groups[0]["lr"]
        self.last_train = values
        record = {
            "step": self.step, "kind": "train", "epoch": round(self.batches.epoch, 4),
            "time": round(self.wall_before + time.monotonic() - session_start, 3), **values,
        }  # fmt: skip
        self.metrics.append(record)
        self.tensorboard.scalars("train", values, self.step)
        self._event(Metrics(step=self.step, values=dict(values)))
        self._event(self._progress_fields(values["images_per_sec"]))
        if self.bar is not None:
            self.bar.set_postfix(
                d=f"{values['d_loss']:.3f}", g=f"{values['g_loss']:.3f}", img_s=f"{values['images_per_sec']:.0f}",
                refresh=False,
            )  # fmt: skip
        for code, message in self.watch.check_train(values):
            self._warn(code, message)
        self._reset_window()

    def _check_cpu_load(self) -> None:
        """Warn when other processes already keep the cores busy: then each of torch's parallel regions waits
        for a descheduled thread, and training with several threads can be many times slower than with one."""
        if self.device.type != "cpu" or self.threads < 2:
            return
        # the measure threads = 0 chose by (the cores in use at start), else measured now
        load = self.start_load if self.start_load is not None else system_load()
        cores = cpu_threads()
        if load is not None and load + self.threads > cores + 0.5:
            self._warn(
                "cpu_oversubscribed",
                f"the CPU is busy ({load:.1f} of {cores} cores in use) and training uses {self.threads} threads; "
                "threads=1 (--threads 1) may be much faster here (results are bit-identical only between runs "
                "with the same thread count)",
            )

    def _check_kernels(self) -> None:
        # The kernels' first-use self-test (gansvc.ops.selftest) may have switched this process to the
        # reference kernels: say so once in the job's events.
        message = selftest.failure_message()
        if message and not getattr(self, "_kernel_warning_sent", False):
            self._kernel_warning_sent = True
            self._warn("kernel_selftest_failed", message)

    def _check_finite(self) -> None:
        if not bool(torch.isfinite(self.window_sum).all()):
            names = stat_names(self.spec)
            bad = [n for n, v in zip(names, self.window_sum.tolist()) if not math.isfinite(v)]
            message = (
                f"training diverged at step {self.step}: {', '.join(bad)} became NaN/Inf; try lower learning "
                "rates, spectral_norm or a gradient penalty"
            )
            self._warn("diverged", message)
            raise TrainingDiverged(message)


def _grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


class NoLog:
    """Stands in for a MetricsLog on ranks other than 0, which write nothing."""

    records: list = []

    def append(self, record: dict) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to close."""

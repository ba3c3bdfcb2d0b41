"""A run's state across sessions: the checkpoint (everything a resume needs to continue bit for bit), the
resume and its checks, and the summary of a session. A part of the Trainer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from gansvc.atomic import atomic_write_text
from gansvc.runtime.events import Checkpoint
from gansvc.train import checkpoints
from gansvc.train.sampling import export_generator
from gansvc.train.schedule import keep_full_rates
from gansvc.train.selection import SelectionState
from gansvc.train.spec import SpecError

# Settings that may change between a checkpoint and its resume (how long, how often, where);
# any other difference would make the resumed run a different experiment.
# Settings whose default is not "off" for every run, as a checkpoint that predates them trained: a conditional
# spec that leaves ac_weight out now takes CONDITIONAL_AC_WEIGHT, and resuming such a checkpoint with it must
# be refused by name (its D has no classifier), not fail on D's weights; likewise a DCGAN spec that leaves g_width
# out now takes 1.5 x width, conditional 2 x (its checkpoint's G has width channels; a conditional one's stored
# width 64 is then refused by name too, where the recipe now leaves D at 48).
# So does class_entropy: an unconditional DCGAN spec on a labelled built-in data set takes DCGAN_CLASS_ENTROPY (its
# checkpoint's D has no classifier). The other options below are off by default; listed so that turning one on
# for a resume of a checkpoint from before it is refused by name too.
SETTINGS_OFF_BEFORE_THEY_EXISTED = {"ac_weight": 0.0, "balanced_classes": False, "g_width": 0, "class_entropy": 0.0,
                                    "g_upsample": False, "pack": 1}  # fmt: skip

RESUMABLE_CHANGES = {
    "epochs", "steps", "max_minutes", "log_every", "sample_every", "eval_every", "eval_samples",
    "checkpoint_every", "keep_checkpoints", "tensorboard", "threads", "device", "data_root",
    "nproc",  # a checkpoint holds no per-rank state: N ranks' checkpoint resumes on M
    # which checkpoint is kept as the best and when to stop: training itself is the same
    "eval_extractor", "keep_best", "keep_best_mode", "early_stop_patience", "early_stop_min_delta",
    # where a run started from (issue 21) is read once, at step 0: a resume continues from its own checkpoint
    "init_from", "init_parts",
}  # fmt: skip


def spec_seed_for_step(seed: int, step: int) -> int:
    """Return the noise seed used when a run resumes on a device whose RNG state cannot be restored."""
    return (seed * 1_000_003 + step) % 2**63


class TrainerState:
    """The Trainer's checkpoint, resume and summary (a part of gansvc.train.trainer.Trainer)."""

    def _checkpoint(self, session_start: float) -> None:
        state = self._checkpoint_state(session_start)
        path = checkpoints.save_checkpoint(state, self.run_dir, self.step, self.spec.keep_checkpoints)
        export_generator(
            self._sampler(), self.spec, self.data_shape, self.step, self.ema is not None, self.run_dir / "generator.pt",
            **self._class_record(),
        )
        self.checkpointed_step = self.step
        self._event(Checkpoint(step=self.step, path=str(path.relative_to(self.run_dir))))

    def _checkpoint_state(self, session_start: float) -> dict:
        """Return everything a resume needs to continue bit for bit (an error if the run has diverged)."""
        self._check_finite()
        return {
            "format": checkpoints.CHECKPOINT_FORMAT,
            "version": 1,
            "step": self.step,
            "spec": self.spec.to_dict(),
            "data_shape": list(self.data_shape),
            "world_size": self.dist.world.world_size,  # for the record: nothing below depends on it
            "G": self.G.state_dict(),  # the plain modules: no DDP "module." prefixes
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "batches": self.batches.state_dict(),
            "augment": self.augmenter.state_dict() if self.augmenter is not None else None,
            # fp16's loss scales and their growth counters; the learning-rate schedule is a function of the step
            # (its full rates are in the optimisers' state), given the run length it decays over
            "scalers": None if self.scaler_d is None else {
                "d": self.scaler_d.state_dict(), "g": self.scaler_g.state_dict()},
            "lr_schedule": {"total_steps": self.total_steps},
            **self._class_record(),
            "rng": {
                "noise": self.noise.get_state(),
                "torch": torch.get_rng_state(),
                # this rank's device only: a resume may see a different number of GPUs
                "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [],
            },
            "window": {"sum": self.window_sum.cpu(), "steps": self.window_steps, "seconds": self.window_seconds},
            "watch": {"history": list(self.watch.history), "active": sorted(self.watch.active)},
            "wall_seconds": self.wall_before + time.monotonic() - session_start,
            "train_seconds": self.train_seconds,
            "last_train": self.last_train,
            "last_eval": self.last_eval,
            "selection": self.selection.to_dict(),  # the best so far, evaluations since, rollbacks (issue 13)
        }

    def _resume(self, path: Path, state: dict) -> None:
        # a checkpoint written before a setting existed trained as its off value
        saved = {**SETTINGS_OFF_BEFORE_THEY_EXISTED, **state["spec"]}
        for name, value in self.spec.to_dict().items():
            if name not in RESUMABLE_CHANGES and name in saved and saved[name] != value:
                raise SpecError(
                    name,
                    f"{value!r} differs from {saved[name]!r} in the checkpoint {path} being resumed; use a new "
                    "run directory for a different experiment",
                )
        if tuple(state["data_shape"]) != self.data_shape:
            raise SpecError("dataset", f"data shape {self.data_shape} differs from the checkpoint's {state['data_shape']}")
        horizon = (state.get("lr_schedule") or {}).get("total_steps")
        if self.spec.lr_schedule != "constant" and horizon is not None and horizon != self.total_steps:
            raise SpecError(
                "steps" if self.spec.steps else "epochs",
                f"the {self.spec.lr_schedule} learning-rate schedule of the checkpoint {path} decays over "
                f"{horizon} steps; resuming it for {self.total_steps} would change its rates from here on: keep the "
                "run's length, or use a new run directory",
            )  # fmt: skip
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        keep_full_rates((self.opt_g, self.opt_d))  # a checkpoint from before schedules: its rates are the full ones
        if self.scaler_d is not None and state.get("scalers") is not None:
            self.scaler_d.load_state_dict(state["scalers"]["d"])
            self.scaler_g.load_state_dict(state["scalers"]["g"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["batches"])
        if self.augmenter is not None and state.get("augment") is not None:
            self.augmenter.load_state_dict(state["augment"])  # p, ADA's sums and the augmenter's RNG
        try:
            self.noise.set_state(state["rng"]["noise"])
        except RuntimeError:  # saved on another kind of device: continue reproducibly, if not bit-exactly
            self.noise.manual_seed(spec_seed_for_step(self.spec.seed, state["step"]))
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        self.window_sum = state["window"]["sum"].to(self.device)
        self.window_steps = state["window"]["steps"]
        self.window_seconds = state["window"]["seconds"]
        self.watch.history.extend(state["watch"]["history"])
        self.watch.active = set(state["watch"]["active"])
        self.step = state["step"]
        self.wall_before = state["wall_seconds"]
        self.train_seconds = state["train_seconds"]
        self.last_train = state["last_train"]
        self.last_eval = state["last_eval"]
        self.selection = SelectionState.from_dict(state.get("selection"), self.spec)
        self.checkpointed_step = self.step

    def _class_record(self) -> dict:
        """Return what a sampler needs of a conditional run's classes (empty for an unconditional run)."""
        if not self.num_classes:
            return {}
        probs = None if self.label_probs is None else self.label_probs.tolist()
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "label_probs": probs}

    def _summary(self, ended_by: str, session_start: float) -> dict:
        session_steps = self.step - (self.resumed_from or 0)
        images = session_steps * self.spec.batch_size * self.spec.n_critic
        summary = {
            "status": ended_by,  # completed | max_minutes | stopped | early_stopped
            "stopped": ended_by == "stopped",
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.batches.epoch, 4),
            "elapsed_seconds": round(self.wall_before + time.monotonic() - session_start, 3),
            "train_seconds": round(self.train_seconds, 3),
            "train_cpu_seconds": round(self.train_cpu_seconds, 3),  # this session's
            "images_per_sec": images / self.train_seconds_session if self.train_seconds_session > 0 else 0.0,
            "resumed_from": self.resumed_from,
            "final": self.last_train,
            "eval": self.last_eval,
            "warnings": [w["code"] for w in self.warnings],
            "device": str(self.device),
            "world_size": self.dist.world.world_size,  # processes; images_per_sec counts all of them
            "threads": self.threads if self.device.type == "cpu" else None,
            "generator": "generator.pt",
            "run_dir": str(self.run_dir),
            **self.selection.summary(),  # best, early_stopped, rollbacks, lr_g, lr_d
        }
        if self.num_classes:
            summary["class_names"] = list(self.class_names)
        if self.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

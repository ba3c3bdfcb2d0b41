"""The GAN trainer: `Trainer(spec, run_dir).run()` writes a run directory (see gansvc.train.trainer)."""

from __future__ import annotations

from gansvc.train.errors import DistributedRunFailed, FailureKind, TrainingDiverged
from gansvc.train.spec import SpecError, TrainSpec

__all__ = ["DistributedRunFailed", "FailureKind", "SpecError", "Trainer", "TrainSpec", "TrainingDiverged"]


def __getattr__(name: str):
    # The trainer pulls in torch, models, data and losses; importing the spec and the errors alone stays light.
    if name == "Trainer":
        from gansvc.train.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'gansvc.train' has no attribute {name!r}")

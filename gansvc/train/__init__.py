"""The GAN trainer: `Trainer(spec, run_dir).run()` writes a run directory (see gansvc.train.trainer)."""

from __future__ import annotations

from gansvc.train.spec import SpecError, TrainSpec

__all__ = ["SpecError", "Trainer", "TrainSpec", "TrainingDiverged"]


def __getattr__(name: str):
    # The trainer pulls in models, data and losses; importing the spec alone stays light.
    if name in ("Trainer", "TrainingDiverged"):
        from gansvc.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'gansvc.train' has no attribute {name!r}")

"""What a submitted init_from names (issue 21), resolved at submit into a checkpoint file the worker reads.

- job:ID, job:ID:best, job:ID:step:N: the job must exist, be a training job and hold that checkpoint
  (NOT_FOUND naming init_from otherwise). The file is snapshotted into the upload store, and the spec the job
  keeps says upload:SHA256: it starts from what was named at submit, whatever the source job does next.
- upload:SHA256: a complete UploadCheckpoint (NOT_FOUND otherwise).
- a run directory or checkpoint file: only under a --data-root (as every path a client names).

Where the data's shape is known before the job runs (the built-in data sets), the models are built on the meta
device and the checkpoint is fitted to them here, so a checkpoint that does not fit is INVALID_ARGUMENT at submit
naming every misfit, not a job that fails when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gansvc.runtime import registry
from gansvc.runtime.rundir import best_checkpoint_path, checkpoint_path, checkpoint_steps, latest_checkpoint
from gansvc.service.artifacts import latest_checkpoint_step
from gansvc.service.errors import InvalidField, MissingReference
from gansvc.service.uploads import REFERENCE_PREFIX, CheckpointUploads

FIELD = "init_from"


@dataclass(frozen=True)
class InitSources:
    """Where init_from references point: the jobs (their store and run directories) and the upload store."""

    store: object  # gansvc.service.store.JobStore
    jobs_dir: Path
    uploads: CheckpointUploads

    def resolve(self, spec, roots) -> tuple[str, Path]:
        """Return (the init_from to keep in the job's spec, the checkpoint file) for a validated TrainSpec.

        Raises InvalidField or MissingReference naming init_from.
        """
        from gansvc.train.spec import parse_init_from

        reference = parse_init_from(spec.init_from)  # TrainSpec.validate has checked its form
        if reference.kind == "upload":
            path = self.uploads.path(reference.sha256)
            if not path.is_file():
                raise MissingReference(FIELD, f"no complete upload {reference.sha256} on this server (upload it "
                                       "with `gansvc upload FILE`)")  # fmt: skip
            return reference.text, path
        if reference.kind == "path":
            found = Path(roots.confine(FIELD, reference.text, "any"))
            if found.is_dir():
                latest = latest_checkpoint(found)
                if latest is None:
                    raise InvalidField(FIELD, f"the run directory {str(found)!r} has no checkpoints/latest.pt")
                return str(found), latest
            return str(found), found
        source = self._job_checkpoint(reference)
        sha256 = self.uploads.snapshot(source)
        return REFERENCE_PREFIX + sha256, self.uploads.path(sha256)

    def _job_checkpoint(self, reference) -> Path:
        """Return the checkpoint file of a job reference; MissingReference / InvalidField naming init_from."""
        job = self.store.get_job(reference.job_id)
        if job is None:
            raise MissingReference(FIELD, f"job {reference.job_id!r} not found")
        if job.kind != "training":
            raise InvalidField(FIELD, f"{reference.text!r}: job {job.id} is of kind {job.kind!r}; name a training job")
        run_dir = self.jobs_dir / job.id
        if reference.which == "best":
            path = best_checkpoint_path(run_dir)
            if not path.is_file():
                raise MissingReference(FIELD, f"job {job.id} has no best checkpoint yet (kept at evaluations with "
                                       "its keep_best)")  # fmt: skip
            return path
        steps = checkpoint_steps(run_dir)
        step = reference.step if reference.which == "step" else latest_checkpoint_step(run_dir)
        if step is None or step not in steps:
            known = ", ".join(map(str, sorted(steps))) or "none yet"
            what = f"at step {step}" if reference.which == "step" else "yet"
            raise MissingReference(FIELD, f"job {job.id} has no checkpoint {what} (steps kept: {known})")
        return checkpoint_path(run_dir, step)


def check_fit(spec, path: Path) -> None:
    """Fit the checkpoint at `path` to the models `spec` builds, where its data's shape is known here.

    Raises InvalidField naming the field (init_from, init_parts, freeze_d_layers) of what does not fit.
    """
    from gansvc.models.plugin import known_data_shape

    info = registry.dataset_info(spec.dataset)
    shape = known_data_shape(spec)
    if shape is None or registry.is_plugin("models", spec.model) or info is None:
        return  # the trainer fits it when the job starts
    import torch

    from gansvc.models import build_models, freeze_blocks
    from gansvc.train import init_from
    from gansvc.train.ema import EMA
    from gansvc.train.spec import SpecError

    try:
        state = init_from.read_checkpoint(path, mmap=True)
    except ValueError as error:
        raise InvalidField(FIELD, f"{spec.init_from}: {error}") from None
    classes = (info.num_classes or 0) if spec.conditional else 0
    label_classes = (info.num_classes or 0) if spec.class_entropy > 0 else 0  # the unconditional D's classifier
    with torch.device("meta"):
        generator, discriminator = build_models(spec, shape, classes, label_classes)
        modules = {"G": generator, "D": discriminator}
        if spec.ema_decay > 0:
            modules["ema"] = EMA(generator, spec.ema_decay).model
        try:
            frozen = freeze_blocks(discriminator, spec.freeze_d_layers)
        except ValueError as error:
            raise InvalidField("freeze_d_layers", str(error)) from None
        optimizers = {
            "opt_g": torch.optim.Adam(generator.parameters()),
            "opt_d": torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad]),
        }
        try:
            init_from.check_frozen_loaded(discriminator, frozen, init_from.plan(spec, state, modules, optimizers))
        except SpecError as error:
            raise InvalidField(error.field, error.message) from None

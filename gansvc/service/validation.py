"""Checks of everything a client sends, before a job exists: each failure names the field and the value.

Paths a client names (data_root, folder:PATH and zip:PATH data sets, weights files) must lie under one of the
server's --data-root folders after symlinks are resolved; `..` is refused outright.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gansvc.runtime import paths as _paths
from gansvc.runtime import registry
from gansvc.service.artifacts import best_file, checkpoint_file
from gansvc.service.devices import DevicePool
from gansvc.service.errors import InvalidField, MissingReference
from gansvc.service.messages import pb, training_spec_to_dict

MAX_REQUEST_ID = 128
# Kept importable; the values live in gansvc.runtime.registry.
MAX_EVAL_SAMPLES = registry.MAX_EVAL_SAMPLES
DEFAULT_EVAL_SAMPLES = registry.DEFAULT_EVAL_SAMPLES
DEFAULT_REAL = registry.DEFAULT_REAL
SPLITS = registry.SPLITS
MAX_BOOTSTRAP = 10_000  # FID bootstrap resamples of an evaluation job


@dataclass(frozen=True)
class DataRoots:
    """The folders client-named paths must lie in (resolved, symlinks followed)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, folders) -> DataRoots:
        """Return the data roots for a list of folders (each must exist)."""
        resolved = []
        for path in folders:
            real = Path(path).expanduser().resolve()
            if not _paths.is_dir(real):
                raise ValueError(f"--data-root {str(path)!r} is not a folder")
            resolved.append(real)
        return cls(tuple(resolved))

    def confine(self, field: str, value: str, expect: str = "dir") -> str:
        """Return `value` as a resolved absolute path under a data root; raise InvalidField otherwise.

        Relative paths are taken relative to each root in turn (the first that exists wins).
        `expect` is 'dir', 'file' or 'any': the path must exist (and be one).
        """
        shown = _paths.short_repr(value)
        if "\x00" in value:
            raise InvalidField(field, f"{shown} contains a NUL character")
        path = Path(value)
        if ".." in path.parts:
            raise InvalidField(field, f"{shown}: '..' is not allowed in paths")
        if not self.roots:
            raise InvalidField(field, f"{shown} is not allowed: this server was started without --data-root")
        roots = ", ".join(str(r) for r in self.roots)
        if path.is_absolute():
            candidates = [path]
        else:  # relative to each root in turn; a name that exists in none is reported as missing below
            candidates = [root / path for root in self.roots if os.path.lexists(root / path)] or [self.roots[0] / path]
        kind = {"dir": "folder", "file": "file"}.get(expect, "file or folder")
        for candidate in candidates:
            try:
                real = candidate.resolve()  # follows every symlink, so a link out of a root is caught here
            except (OSError, RuntimeError) as error:  # a symlink loop, ...
                raise InvalidField(field, f"{shown}: cannot be resolved ({error})") from None
            if not any(real == root or root in real.parents for root in self.roots):
                raise InvalidField(field, f"{shown} is outside the server's data roots ({roots})")
            check = _paths.check_path(real)  # never raises: too long, no permission, ... come back as a problem
            if check.refused:
                raise InvalidField(field, f"{shown}: cannot be used as a {kind} ({check.problem})")
            if check.kind == expect or (expect == "any" and check.kind is not None):
                return str(real)
        raise InvalidField(field, f"{shown}: no such {kind} under the server's data roots ({roots})")


def check_request_id(field: str, value: str) -> str | None:
    """Return the request id (None when empty) or raise InvalidField."""
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID or not value.isprintable() or not value.isascii():
        raise InvalidField(field, f"{value[:40]!r}... must be 1..{MAX_REQUEST_ID} printable ASCII characters")
    return value


def request_hash(payload: dict, extra: bytes = b"") -> str:
    """Return a digest of a request, to tell a retry from a different request with the same id."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    digest.update(extra)
    return digest.hexdigest()


def _device(pool: DevicePool, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> None:
    """Refuse a device request the pool can never hold: INVALID_ARGUMENT naming the field (a Ray pool raises
    WrongState itself for a job no node of its cluster can hold: FAILED_PRECONDITION)."""
    try:
        problem = pool.check(device, nproc, nnodes=nnodes, threads=threads)
    except ValueError as error:
        raise InvalidField("device", str(error)) from None
    if problem:
        field = next((name for name in ("nproc", "nnodes") if problem.startswith(name)), "device")
        raise InvalidField(field, problem)


def training_spec(message: pb.TrainingSpec, roots: DataRoots, pool: DevicePool, init_sources=None,
                  default_track: str = "") -> dict:  # fmt: skip
    """Return the validated, complete TrainSpec dict for a TrainingSpec message, or raise InvalidField.

    init_sources (gansvc.service.init_sources.InitSources) resolves init_from; without it init_from is refused.
    default_track: the `track` of a spec that sets none or "" (gansvc serve --mlflow-uri); "off" stays off.
    """
    from gansvc.train.spec import SpecError, TrainSpec, check_precision_device

    settings = training_spec_to_dict(message)
    if not str(settings.get("track", "")).strip():  # resolved now: a later --mlflow-uri does not change the job
        settings["track"] = default_track
    if settings.get("data_root"):
        settings["data_root"] = roots.confine("data_root", settings["data_root"], "dir")
    folder = registry.folder_path(settings.get("dataset", ""))
    if folder is not None and folder.strip():
        settings["dataset"] = registry.FOLDER_PREFIX + roots.confine("dataset", folder, "dir")
    archive = registry.zip_path(settings.get("dataset", ""))
    if archive is not None and archive.strip():
        settings["dataset"] = registry.ZIP_PREFIX + roots.confine("dataset", archive, "file")
    try:
        spec = TrainSpec.from_dict(settings)
        if spec.folder_path is not None:  # what the trainer would find: refuse a batch the folder cannot fill
            from gansvc.images import count_images

            spec.check_dataset_size(count_images(spec.folder_path, stop_at=spec.batch_size))
        if spec.zip_path is not None:  # the same for an archive: its directory lists the images
            spec.check_dataset_size(_zip_images(spec.zip_path))
        _plugin_arguments(spec)
    except SpecError as error:
        message = error.message
        if error.field in settings and error.field != "track":  # every refusal names the value, also for a bad
            # combination (track's own message does, without the credentials a URI may hold)
            value = settings[error.field]
            if str(value) not in message and repr(value) not in message:
                message += f" (got {error.field}={value!r})"
        raise InvalidField(error.field, message) from None
    _device(pool, spec.device, spec.nproc, spec.nnodes, spec.threads)
    if spec.track:
        from gansvc.service.tracking import check_mlflow_installed

        check_mlflow_installed("track")
    try:  # device "auto" runs on the CPU of a server without GPUs: refuse fp16 now, not when the job starts
        check_precision_device(spec.precision, pool.kind(spec.device))
    except SpecError as error:
        raise InvalidField(error.field, error.message) from None
    if spec.init_from:  # issue 21: the checkpoint exists, is one, and fits (where the data's shape is known)
        if init_sources is None:
            raise InvalidField("init_from", "needs the server's checkpoint store, which this check was not given")
        from gansvc.service.init_sources import check_fit

        spec.init_from, path = init_sources.resolve(spec, roots)
        check_fit(spec, path)
    return spec.to_dict()


def _zip_images(path: str) -> int:
    """Return the number of images in a ZIP archive; a file that is no archive is a SpecError on dataset."""
    import zipfile

    from gansvc.data.sources import count_zip_images
    from gansvc.train.spec import SpecError

    try:
        return count_zip_images(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SpecError("dataset", f"{_paths.short_repr(path)} is not a readable ZIP archive ({error})") from None


def _plugin_arguments(spec) -> None:
    """Refuse plugin arguments the factory would refuse (gansvc.models.plugin.check_plugin_spec): a SpecError.

    A plugin model is built on the meta device when the data's shape is known: a built-in data set's, or a
    plugin data set's as its factory showed it (gansvc.service.dataset_probe: once per installed version).
    """
    if not (registry.is_plugin("models", spec.model) or registry.is_plugin("datasets", spec.dataset)):
        return
    from gansvc.models.plugin import check_plugin_spec, known_data_shape
    from gansvc.runtime.plugins import PluginArgumentError
    from gansvc.service.dataset_probe import probe_dataset
    from gansvc.train.spec import SpecError

    info = registry.dataset_info(spec.dataset)
    shape, classes = known_data_shape(spec), info.num_classes if info is not None else None
    if shape is None and registry.is_plugin("models", spec.model) and registry.is_plugin("datasets", spec.dataset):
        found = probe_dataset(spec.dataset)  # {"problem": ...} when the factory fails: its job will say so
        shape, classes = known_data_shape(spec, found.get("shape")), found.get("num_classes")
    if spec.conditional and not (classes or 0) > 0:
        shape = None  # the classes the trainer will find are unknown here: the model is built when the job runs
    try:
        check_plugin_spec(spec, shape, classes if spec.conditional else 0)
    except PluginArgumentError as error:
        raise SpecError(error.field, error.message) from None


@dataclass
class EvaluationRequest:
    """A validated evaluation: the spec to store, and the uploaded images (or None)."""

    spec: dict
    samples: np.ndarray | None
    hash: str


def evaluation_spec(message: pb.EvaluationSpec, roots: DataRoots, pool: DevicePool, store, jobs_dir: Path):
    """Return the EvaluationRequest for an EvaluationSpec message; raise InvalidField or MissingReference."""
    spec: dict = {}
    samples = None
    source = message.WhichOneof("source")
    if source is None:
        raise InvalidField("source", "set checkpoint (a training job's checkpoint) or samples (images)")
    if source == "checkpoint":
        job_id = message.checkpoint.job_id
        if not job_id:
            raise InvalidField("checkpoint.job_id", "is empty")
        job = store.get_job(job_id)
        if job is None:
            raise MissingReference("checkpoint.job_id", f"job {job_id!r} not found")
        if job.kind != "training":
            raise InvalidField("checkpoint.job_id", f"{job_id!r} is a job of kind {job.kind!r}; name a training job")
        step = message.checkpoint.step
        if step < 0:
            raise InvalidField("checkpoint.step", f"got {step}, expected 0 (latest) or a checkpoint step")
        if message.best:
            if step:
                raise InvalidField("checkpoint.step", f"got {step} with best: name the best checkpoint or a step")
            best_file(jobs_dir / job_id)  # raises MissingReference when the job kept none yet
        else:
            checkpoint_file(jobs_dir / job_id, step)  # raises MissingReference when there is none yet
        num_samples = message.num_samples if message.HasField("num_samples") else DEFAULT_EVAL_SAMPLES
        if not 2 <= num_samples <= MAX_EVAL_SAMPLES:
            raise InvalidField("num_samples", f"got {num_samples}, expected 2..{MAX_EVAL_SAMPLES}")
        spec.update(source="checkpoint", job_id=job_id, step=int(step), num_samples=int(num_samples))
        if message.best:
            spec["best"] = True
        if message.class_labels:
            spec["class_labels"] = _class_labels(message.class_labels, job)
    else:
        if message.best:
            raise InvalidField("best", "names a training job's best checkpoint: set checkpoint.job_id, not samples")
        samples = _samples(message.samples)
        spec.update(source="samples", samples_shape=list(samples.shape), samples_dtype=str(samples.dtype))
        if message.sample_labels:
            spec["sample_labels"] = _sample_labels(message.sample_labels, samples.shape[0])
    if message.class_labels and source != "checkpoint":
        raise InvalidField("class_labels", "applies to a checkpoint's samples; label uploaded ones with sample_labels")
    if message.sample_labels and source != "samples":
        raise InvalidField("sample_labels", "applies to uploaded samples; choose a checkpoint's classes with "
                           "class_labels")  # fmt: skip
    spec.update(_reference(message, roots))
    if message.HasField("seed") and message.seed < 0:
        raise InvalidField("seed", f"got {message.seed}, expected >= 0")
    spec["seed"] = int(message.seed)
    if message.HasField("num_real"):
        if message.num_real < 2:
            raise InvalidField("num_real", f"got {message.num_real}, expected >= 2")
        spec["num_real"] = int(message.num_real)
    if not 0 <= message.bootstrap <= MAX_BOOTSTRAP:
        raise InvalidField("bootstrap", f"got {message.bootstrap}, expected 0 (none) to {MAX_BOOTSTRAP} resamples")
    for name in ("precision_recall", "bootstrap"):  # only when set: older requests keep their hash
        if getattr(message, name):
            spec[name] = getattr(message, name)
    device = message.device or "auto"
    _device(pool, device)
    spec["device"] = device
    digest = request_hash(spec, samples.tobytes() if samples is not None else b"")
    return EvaluationRequest(spec, samples, digest)


def _class_labels(values, job) -> list[int]:
    """Return the classes to generate from a training job's checkpoint, checked against its spec (issue 12)."""
    if not job.spec.get("conditional"):
        raise InvalidField("class_labels", f"job {job.id} was trained without conditional: it has no classes")
    info = registry.dataset_info(job.spec.get("dataset", ""))
    count = info.num_classes if info is not None else None
    for value in values:
        if value < 0 or (count is not None and value >= count):
            expected = f"0..{count - 1}" if count is not None else ">= 0"
            raise InvalidField("class_labels", f"got {value}, expected a class {expected} of {job.spec.get('dataset')}")
    return [int(v) for v in values]


def _sample_labels(values, count: int) -> list[int]:
    """Return the classes of uploaded images: one per image, each >= 0 (issue 12)."""
    if len(values) != count:
        raise InvalidField("sample_labels", f"holds {len(values)} labels for {count} images: give one per image")
    if min(values) < 0:
        raise InvalidField("sample_labels", f"got {min(values)}, expected class indices >= 0")
    return [int(v) for v in values]


def _reference(message: pb.EvaluationSpec, roots: DataRoots) -> dict:
    """Return real / data_root / extractor / inception_weights, checked."""
    real = message.real or registry.DEFAULT_REAL
    try:
        source = registry.parse_real(real)
    except ValueError as error:
        raise InvalidField("real", f"{_paths.short_repr(real)}: {error}") from None
    if source.kind == "folder":
        real = registry.FOLDER_PREFIX + roots.confine("real", source.path, "dir")
    elif source.kind == "zip":
        real = registry.ZIP_PREFIX + roots.confine("real", source.path, "file")
    elif source.kind == "path":  # a file or folder of images, or a statistics .npz
        real = roots.confine("real", source.path, "any")
    data_root = roots.confine("data_root", message.data_root, "dir") if message.data_root else ""
    extractor = message.extractor or registry.DEFAULT_EXTRACTOR
    if extractor not in registry.extractor_names():
        raise InvalidField(
            "extractor", f"got {_paths.short_repr(extractor)}, expected one of {', '.join(registry.extractor_names())}"
        )
    weights = ""
    if extractor == "inception-v3":
        if message.inception_weights:
            weights = roots.confine("inception_weights", message.inception_weights, "file")
        elif not os.environ.get(registry.INCEPTION_WEIGHTS_ENV):
            raise InvalidField(
                "inception_weights", "extractor 'inception-v3' needs a weights file under a data root (this server "
                "has no default: gansvc serve --inception-weights)",
            )  # fmt: skip
    elif message.inception_weights:
        raise InvalidField("inception_weights", f"set only with extractor 'inception-v3', not {extractor!r}")
    return {"real": real, "data_root": data_root, "extractor": extractor, "inception_weights": weights}


def _samples(tensor: pb.Tensor) -> np.ndarray:
    """Return uploaded images as a NumPy array [N, C, H, W], checked."""
    shape = tuple(tensor.shape)
    if len(shape) != 4 or any(d < 1 for d in shape):
        raise InvalidField("samples.shape", f"got {list(shape)}, expected [N, C, H, W] with every size >= 1")
    if shape[0] < 2:
        raise InvalidField("samples.shape", f"got N = {shape[0]} images, expected at least 2")
    if shape[1] not in (1, 3):
        raise InvalidField("samples.shape", f"got C = {shape[1]} channels, expected 1 or 3")
    dtypes = {pb.DTYPE_UINT8: np.dtype(np.uint8), pb.DTYPE_FLOAT32: np.dtype("<f4")}
    if tensor.dtype not in dtypes:
        name = pb.DType.Name(tensor.dtype) if tensor.dtype in pb.DType.values() else str(tensor.dtype)
        raise InvalidField("samples.dtype", f"got {name}, expected DTYPE_UINT8 or DTYPE_FLOAT32")
    dtype = dtypes[tensor.dtype]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidField(
            "samples.data", f"holds {len(tensor.data)} bytes, expected {expected} for {list(shape)} {dtype.name}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InvalidField("samples.data", "holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
            raise InvalidField(
                "samples.data", f"float images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]"
            )
    return array.astype(np.float32) if dtype.kind == "f" else array

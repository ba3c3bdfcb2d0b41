"""The generated gRPC messages, and conversions between them and the store's plain records.

The stubs are generated from protos/gansvc/v1/gansvc.proto by the build (setup.py) into
gansvc/_proto; they are never edited or committed.
"""

from __future__ import annotations

import math

from google.protobuf import struct_pb2, timestamp_pb2

try:
    from gansvc._proto.v1 import gansvc_pb2 as pb
    from gansvc._proto.v1 import gansvc_pb2_grpc as pb_grpc
except ImportError as _error:  # pragma: no cover - only before the first build
    raise ImportError(
        f"gansvc's gRPC stubs are missing ({_error}): run `bash scripts/setup.sh`, which generates them"
    ) from None

from gansvc.service.store import Event, JobRecord

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GanService"].full_name  # "gansvc.v1.GanService"
KIND_TO_PROTO = {"training": pb.JOB_KIND_TRAINING, "evaluation": pb.JOB_KIND_EVALUATION}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}
__all__ = ["SERVICE_NAME", "event_to_proto", "job_to_proto", "pb", "pb_grpc", "state_name", "state_to_proto"]
# Fields of TrainingSpec that are not TrainSpec settings.
TRAINING_SPEC_EXTRA_FIELDS = ("request_id",)


def state_to_proto(state: str) -> int:
    """Return the JobState enum value for a store state name ('QUEUED' -> JOB_STATE_QUEUED)."""
    return pb.JobState.Value(f"JOB_STATE_{state}")


def state_name(value: int) -> str:
    """Return the store state name of a JobState enum value (JOB_STATE_QUEUED -> 'QUEUED')."""
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """Return a Timestamp for UNIX seconds (None stays None)."""
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def training_spec_fields() -> dict[str, object]:
    """Return TrainingSpec's settings fields by name (the descriptors), without request_id."""
    return {f.name: f for f in pb.TrainingSpec.DESCRIPTOR.fields if f.name not in TRAINING_SPEC_EXTRA_FIELDS}


def training_spec_to_dict(message: pb.TrainingSpec) -> dict:
    """Return the settings a TrainingSpec sets explicitly, as a dict of TrainSpec field names."""
    return {name: getattr(message, name) for name in training_spec_fields() if message.HasField(name)}


def training_spec_from_dict(settings: dict, request_id: str = "") -> pb.TrainingSpec:
    """Return a TrainingSpec with the given settings (TrainSpec names); a ValueError names a bad key or value."""
    fields = training_spec_fields()
    message = pb.TrainingSpec(request_id=request_id or "")
    for name, value in settings.items():
        if name not in fields:
            raise ValueError(f"{name}: unknown training setting (known: {', '.join(fields)})")
        try:
            setattr(message, name, value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: bad value {value!r} ({error})") from None
    return message


def progress_to_proto(progress: dict | None) -> pb.Progress:
    """Return a Progress message from a progress event's fields."""
    progress = progress or {}
    return pb.Progress(
        step=int(progress.get("step", 0)),
        total_steps=int(progress.get("total_steps", 0)),
        epoch=float(progress.get("epoch", 0.0)),
        images_per_sec=float(progress.get("images_per_sec", 0.0)),
        eta_seconds=float(progress.get("eta_seconds", 0.0)),
        d_loss=float(progress.get("d_loss", math.nan)),
        g_loss=float(progress.get("g_loss", math.nan)),
    )


def evaluation_spec_to_proto(spec: dict) -> pb.EvaluationSpec:
    """Return the EvaluationSpec of a stored evaluation job (uploaded sample bytes left out)."""
    message = pb.EvaluationSpec(
        real=spec.get("real", ""),
        data_root=spec.get("data_root", ""),
        extractor=spec.get("extractor", ""),
        inception_weights=spec.get("inception_weights", ""),
        device=spec.get("device", ""),
        seed=int(spec.get("seed", 0)),
    )
    if spec.get("source") == "checkpoint":
        message.checkpoint.job_id = spec["job_id"]
        message.checkpoint.step = int(spec.get("step", 0))
        message.num_samples = int(spec["num_samples"])
    else:
        message.samples.shape.extend(spec.get("samples_shape", []))
        message.samples.dtype = pb.DType.Value(f"DTYPE_{spec.get('samples_dtype', 'uint8').upper()}")
    if spec.get("num_real"):
        message.num_real = int(spec["num_real"])
    return message


def job_to_proto(job: JobRecord) -> pb.Job:
    """Return the Job message for a stored job."""
    message = pb.Job(
        id=job.id,
        kind=KIND_TO_PROTO[job.kind],
        state=state_to_proto(job.state),
        request_id=job.request_id or "",
        message=job.message,
        device=job.device,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        last_sequence=job.last_sequence,
        worker_pid=job.worker_pid if job.state == "RUNNING" else 0,
    )
    if job.kind == "training":
        message.training.CopyFrom(training_spec_from_dict(job.spec, job.request_id or ""))
    else:
        message.evaluation.CopyFrom(evaluation_spec_to_proto(job.spec))
        message.evaluation.request_id = job.request_id or ""
    for name, seconds in (("created_at", job.created_at), ("started_at", job.started_at),
                          ("finished_at", job.finished_at)):  # fmt: skip
        if seconds is not None:
            getattr(message, name).CopyFrom(timestamp(seconds))
    if job.progress:
        message.progress.CopyFrom(progress_to_proto(job.progress))
    for name, value in job.latest_metrics.items():
        if isinstance(value, (int, float)):
            message.latest_metrics[name] = float(value)
    if job.summary:
        message.summary.CopyFrom(_struct(job.summary))
    return message


def _struct(data: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_plain(data))
    return struct


def _plain(value):
    """Return value with non-finite floats as strings (Struct has no NaN) and other odd values as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def event_to_proto(event: Event) -> pb.JobEvent:
    """Return the JobEvent message for a stored event (unknown types become log lines)."""
    message = pb.JobEvent(job_id=event.job_id, sequence=event.sequence, time=timestamp(event.time))
    p = event.payload
    if event.type == "state":
        message.state.CopyFrom(
            pb.StateChange(
                state=state_to_proto(p["state"]),
                reason=p.get("reason", ""),
                attempt=int(p.get("attempt", 0)),
                device=p.get("device", ""),
                resume_step=int(p.get("resume_step", 0)),
            )
        )
    elif event.type == "progress":
        message.progress.CopyFrom(progress_to_proto(p))
    elif event.type == "metrics":
        message.metrics.step = int(p.get("step", 0))
        message.metrics.time.CopyFrom(timestamp(event.time))
        for name, value in p.get("values", {}).items():
            message.metrics.values[name] = float(value)
    elif event.type == "samples":
        message.samples.CopyFrom(pb.SamplesReady(step=int(p.get("step", 0)), artifact=p.get("path", "")))
    elif event.type == "checkpoint":
        message.checkpoint.CopyFrom(pb.CheckpointSaved(step=int(p.get("step", 0)), artifact=p.get("path", "")))
    elif event.type == "warning":
        message.warning.CopyFrom(
            pb.Warning(step=int(p.get("step", 0)), code=p.get("code", ""), message=p.get("message", ""))
        )
    else:
        message.log.CopyFrom(pb.LogLine(level=p.get("level", "info"), message=p.get("message", str(p))))
    return message

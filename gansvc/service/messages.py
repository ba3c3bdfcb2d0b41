"""The server's conversions of stored jobs and events to messages (the store-free ones are in convert).

Everything a client needs (the stubs, state names, training settings) lives in
gansvc.api.convert, which knows nothing of the store; this module adds the two conversions that
read the store's records.
"""

from __future__ import annotations

from gansvc.api.convert import (
    KIND_TO_PROTO,
    PROTO_TO_KIND,
    SERVICE_NAME,
    evaluation_spec_to_proto,
    fill,
    job_event,
    pb,
    pb_grpc,
    state_name,
    state_to_proto,
    struct,
    timestamp,
    training_spec_fields,
    training_spec_from_dict,
    training_spec_to_dict,
)
from gansvc.service.store import JobRecord, StoredEvent

__all__ = [
    "KIND_TO_PROTO", "PROTO_TO_KIND", "SERVICE_NAME", "event_to_proto", "job_to_proto", "pb", "pb_grpc",
    "state_name", "state_to_proto", "timestamp", "training_spec_fields", "training_spec_from_dict",
    "training_spec_to_dict",
]  # fmt: skip


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
        nodes=list(job.nodes),
    )
    if job.kind == "training":
        message.training.CopyFrom(training_spec_from_dict(job.spec, job.request_id or ""))
        message.sweep_id, message.trial_number = job.sweep_id, job.trial_number
    elif job.kind == "sweep":
        from gansvc.sweep_spec import sweep_spec_to_proto

        message.sweep.CopyFrom(sweep_spec_to_proto(job.spec, job.request_id or ""))
    else:
        message.evaluation.CopyFrom(evaluation_spec_to_proto(job.spec))
        message.evaluation.request_id = job.request_id or ""
    for name, seconds in (("created_at", job.created_at), ("started_at", job.started_at),
                          ("finished_at", job.finished_at)):  # fmt: skip
        if seconds is not None:
            getattr(message, name).CopyFrom(timestamp(seconds))
    if job.progress:
        fill(message.progress, job.progress)
    for name, value in job.latest_metrics.items():
        if isinstance(value, (int, float)):
            message.latest_metrics[name] = float(value)
    if job.summary:
        message.summary.CopyFrom(struct(job.summary))
    return message


def event_to_proto(stored: StoredEvent) -> pb.JobEvent:
    """Return the JobEvent message for a stored event (a record of no known type becomes a log line)."""
    return job_event(stored.event, stored.job_id, stored.sequence, stored.time)

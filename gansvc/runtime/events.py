"""The job event schema: one definition of every event a job produces, and one codec for every pipe.

A producer (the trainer, an evaluation, the scheduler) builds typed events; the worker pipe, the
distributed side channel, the store and the CLI carry them as `encode`/`decode` lines or
`to_dict`/`from_dict` records without knowing their fields. The conversion to the proto lives with
the generated stubs (gansvc.api.convert), driven by each class's `PROTO` field name and `RENAME`.

Adding an event type: a dataclass here (TYPE, PROTO, fields with defaults), its producer, and the
proto message in protos/gansvc/v1/gansvc.proto. Nothing else.

Fields are coerced to their declared types when an event is built from a record (`from_dict`), so a
peer that sends "3" for a step or a NumPy scalar for a loss cannot put a wrong type into the store.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_type_hints

from gansvc.runtime.jsonable import jsonable

__all__ = [
    "Best", "Checkpoint", "EarlyStopped", "Event", "Failed", "Finished", "Hello", "Log", "Metrics", "Progress",
    "Rollback", "Samples", "State", "Warning", "decode", "encode", "event_types", "from_dict", "to_dict",
    "TrialStarted", "TrialReported", "TrialPruned", "TrialFinished", "SweepBest",
]  # fmt: skip


@dataclass(frozen=True)
class Event:
    """Base of every event. TYPE names it on the wire and in the store; PROTO is its JobEvent oneof
    field (None: a worker-protocol message that is never stored); RENAME maps field -> proto field."""

    TYPE: ClassVar[str] = ""
    PROTO: ClassVar[str | None] = None
    RENAME: ClassVar[dict[str, str]] = {}

    @property
    def stored(self) -> bool:
        """Whether the event belongs in the job's history (protocol messages do not)."""
        return self.PROTO is not None


@dataclass(frozen=True)
class Progress(Event):
    """Where training stands: steps, epoch, throughput, time left, the last losses."""

    TYPE: ClassVar[str] = "progress"
    PROTO: ClassVar[str | None] = "progress"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    images_per_sec: float = 0.0
    eta_seconds: float = 0.0
    d_loss: float = math.nan
    g_loss: float = math.nan


@dataclass(frozen=True)
class Metrics(Event):
    """Metric values (losses, D statistics, FID, ...) at a step."""

    TYPE: ClassVar[str] = "metrics"
    PROTO: ClassVar[str | None] = "metrics"
    step: int = 0
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Samples(Event):
    """A sample grid was written (path relative to the run directory)."""

    TYPE: ClassVar[str] = "samples"
    PROTO: ClassVar[str | None] = "samples"
    RENAME: ClassVar[dict[str, str]] = {"path": "artifact"}
    step: int = 0
    path: str = ""


@dataclass(frozen=True)
class Checkpoint(Event):
    """A checkpoint was written (path relative to the run directory)."""

    TYPE: ClassVar[str] = "checkpoint"
    PROTO: ClassVar[str | None] = "checkpoint"
    RENAME: ClassVar[dict[str, str]] = {"path": "artifact"}
    step: int = 0
    path: str = ""


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the proto's name for it
    """A failure sign the monitor saw (code: d_overpowering, mode_collapse, ...)."""

    TYPE: ClassVar[str] = "warning"
    PROTO: ClassVar[str | None] = "warning"
    step: int = 0
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class Log(Event):
    """A line for the user (level info | warning | error); resume_step when it announces a resume."""

    TYPE: ClassVar[str] = "log"
    PROTO: ClassVar[str | None] = "log"
    level: str = "info"
    message: str = ""
    resume_step: int | None = None


@dataclass(frozen=True)
class State(Event):
    """The job moved to another state (written by the store, with the job row, in one transaction)."""

    TYPE: ClassVar[str] = "state"
    PROTO: ClassVar[str | None] = "state"
    state: str = ""
    reason: str = ""
    attempt: int = 0
    device: str = ""
    resume_step: int = 0
    node: str = ""  # RUNNING: the address of the node(s) the attempt runs on, comma-separated


@dataclass(frozen=True)
class Hello(Event):
    """Worker protocol: the worker process is up (its pid)."""

    TYPE: ClassVar[str] = "hello"
    pid: int = 0


@dataclass(frozen=True)
class Finished(Event):
    """Worker protocol: the job's work ended; stopped when it stopped because it was asked to."""

    TYPE: ClassVar[str] = "finished"
    stopped: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed(Event):
    """Worker protocol: the job failed; reason in a user's words, error the exception's class name.

    died: a process of the job was killed (a rank of a distributed run, by a signal) rather than the job
    failing by itself; the scheduler retries it from the last checkpoint like a worker that died.
    """

    TYPE: ClassVar[str] = "failed"
    reason: str = ""
    error: str = ""
    died: bool = False


# ---------------------------------------------------------------------- model selection (issue 13)
@dataclass(frozen=True)
class Best(Event):
    """An evaluation found the best `metric` so far: checkpoints/best.pt and generator_best.pt hold this step."""

    TYPE: ClassVar[str] = "best"
    PROTO: ClassVar[str | None] = "best"
    RENAME: ClassVar[dict[str, str]] = {"path": "artifact"}
    step: int = 0
    metric: str = ""
    value: float = math.nan
    path: str = ""  # the best checkpoint, relative to the run directory
    generator: str = ""  # the best exported generator


@dataclass(frozen=True)
class EarlyStopped(Event):
    """Training stopped: `evaluations` evaluations in a row brought no better `metric` than best_value at best_step."""

    TYPE: ClassVar[str] = "early_stopped"
    PROTO: ClassVar[str | None] = "early_stopped"
    step: int = 0
    metric: str = ""
    best_step: int = 0
    best_value: float = math.nan
    evaluations: int = 0


@dataclass(frozen=True)
class Rollback(Event):
    """The run diverged at `step` (reason): it went back to the checkpoint of `to_step` with these learning rates."""

    TYPE: ClassVar[str] = "rollback"
    PROTO: ClassVar[str | None] = "rollback"
    step: int = 0
    to_step: int = 0
    lr_g: float = 0.0
    lr_d: float = 0.0
    reason: str = ""
    rollback: int = 0  # 1 for the first rollback of the run, ...
    max_rollbacks: int = 0


_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls for cls in (Progress, Metrics, Samples, Checkpoint, Warning, Log, State, Hello, Finished, Failed,
                              Best, EarlyStopped, Rollback)  # fmt: skip
}


def event_types() -> dict[str, type[Event]]:
    """Return every event class by its TYPE."""
    return dict(_TYPES)


def _plain(value: Any) -> Any:
    """Return value as JSON-ready data (containers walked; NumPy/torch values and the rest via `jsonable`)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return jsonable(value)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Return value as the declared type (a ValueError names the field)."""
    try:
        if annotation is int or annotation == (int | None):
            if value is None and annotation != int:
                return None
            return int(value)
        if annotation is float:
            return float(value)
        if annotation == (float | None):
            return None if value is None else float(value)
        if annotation is str:
            return str(value)
        if annotation is bool:
            return bool(value)
        if annotation == dict[str, float]:
            items = value.items() if isinstance(value, dict) else ()
            return {str(k): float(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return _plain(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"event field {name}: {value!r} is not {annotation}") from None


_HINTS: dict[type[Event], dict[str, Any]] = {}


def _fields(cls: type[Event]) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def to_dict(event: Event) -> dict[str, Any]:
    """Return the event as a plain record {"type": TYPE, field: value, ...} (None fields left out)."""
    record = {"type": event.TYPE}
    for name in _fields(type(event)):
        value = getattr(event, name)
        if value is not None:
            record[name] = _plain(value)
    return record


def from_dict(record: dict[str, Any]) -> Event:
    """Return the typed event of a record; fields are coerced, unknown fields dropped, and an unknown
    or malformed record becomes a Log line that quotes it (a peer's mistake never loses the stream)."""
    cls = _TYPES.get(str(record.get("type", "")))
    if cls is None:
        return Log(message=json.dumps(_plain(record))[:2000])
    try:
        values = {name: _coerce(record[name], annotation, name)
                  for name, annotation in _fields(cls).items() if name in record}  # fmt: skip
        return cls(**values)
    except ValueError as error:
        return Log(level="warning", message=f"malformed {cls.TYPE} event ({error}): {json.dumps(_plain(record))[:2000]}")


def encode(event: Event) -> bytes:
    """Return the event as one JSON line (the codec of the worker pipe and the distributed side channel)."""
    return (json.dumps(to_dict(event)) + "\n").encode()


def decode(line: bytes | str) -> Event:
    """Return the event of one JSON line (bad JSON becomes a Log line quoting it)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    try:
        record = json.loads(text)
    except ValueError:
        return Log(level="warning", message=f"unreadable event line: {text.strip()[:2000]}")
    if not isinstance(record, dict):
        return Log(level="warning", message=f"unreadable event line: {text.strip()[:2000]}")
    return from_dict(record)


# --- sweeps (issue 13): a sweep job's events about its trials (gansvc.service.sweeps writes them)
_TRIAL_JOB = {"job_id": "trial_job_id"}


@dataclass(frozen=True)
class TrialStarted(Event):
    """A sweep's trial got its training job, with the settings the sampler chose."""

    TYPE: ClassVar[str] = "trial_started"
    PROTO: ClassVar[str | None] = "trial_started"
    RENAME: ClassVar[dict[str, str]] = _TRIAL_JOB
    trial: int = 0
    job_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialReported(Event):
    """A trial reported an intermediate objective value (an evaluation during its training) at a step."""

    TYPE: ClassVar[str] = "trial_reported"
    PROTO: ClassVar[str | None] = "trial_reported"
    RENAME: ClassVar[dict[str, str]] = _TRIAL_JOB
    trial: int = 0
    job_id: str = ""
    step: int = 0
    value: float = math.nan


@dataclass(frozen=True)
class TrialPruned(Event):
    """The pruner stopped a trial after its value at a step (its job is cancelled)."""

    TYPE: ClassVar[str] = "trial_pruned"
    PROTO: ClassVar[str | None] = "trial_pruned"
    RENAME: ClassVar[dict[str, str]] = _TRIAL_JOB
    trial: int = 0
    job_id: str = ""
    step: int = 0
    value: float = math.nan


@dataclass(frozen=True)
class TrialFinished(Event):
    """A trial ended: state COMPLETE (value = its objective), FAILED or PRUNED, with the reason."""

    TYPE: ClassVar[str] = "trial_finished"
    PROTO: ClassVar[str | None] = "trial_finished"
    RENAME: ClassVar[dict[str, str]] = _TRIAL_JOB
    trial: int = 0
    job_id: str = ""
    state: str = ""
    value: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class SweepBest(Event):
    """The sweep's best trial so far changed."""

    TYPE: ClassVar[str] = "sweep_best"
    PROTO: ClassVar[str | None] = "sweep_best"
    RENAME: ClassVar[dict[str, str]] = _TRIAL_JOB
    trial: int = 0
    job_id: str = ""
    value: float = math.nan
    params: dict[str, Any] = field(default_factory=dict)


# Registered here, below their classes (the _TYPES table above is built before they exist).
_TYPES.update({cls.TYPE: cls for cls in (TrialStarted, TrialReported, TrialPruned, TrialFinished, SweepBest)})

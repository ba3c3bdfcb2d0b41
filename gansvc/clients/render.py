"""How the service's commands show jobs and events in a terminal: event lines, the job table, summaries.

Events are rendered from their messages: a payload with a line of its own below gets it, any other
(a new event type) is shown by its fields, so adding an event type needs nothing here.
"""

from __future__ import annotations

import json
import math
import time

from gansvc.runtime.console import format_duration
from gansvc.api.convert import pb, state_name

# The metrics a finished job's summary shows, in this order, with their labels.
SUMMARY_METRICS = (("fid", "FID"), ("is_mean", "IS"), ("kid_mean", "KID"), ("d_loss", "D loss"), ("g_loss", "G loss"),
                   ("d_real", "D(x)"), ("d_fake", "D(G(z))"), ("images_per_sec", "img/s"))  # fmt: skip
_SPREAD = {"is_mean": "is_std", "kid_mean": "kid_std"}
_EVALUATION_METRICS = ("fid", "is_mean", "kid_mean")


duration = format_duration  # one definition: gansvc.runtime.console


def number(value: float | None) -> str:
    """Return a value with 4 significant digits ('-' for None, NaN or infinity)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def _metrics_line(metrics) -> str | None:
    shown = [k for k in _EVALUATION_METRICS if k in metrics.values]
    if not shown:  # the training losses are on the bar
        return None
    return f"evaluation at step {metrics.step}: " + ", ".join(f"{k} {number(metrics.values[k])}" for k in shown)


_LINES = {
    "state": lambda s: state_name(s.state) + (f": {s.reason}" if s.reason else ""),
    "warning": lambda w: f"warning {w.code} (step {w.step}): {w.message}",
    "log": lambda entry: entry.message,
    "samples": lambda s: f"samples ready: {s.artifact}",
    "checkpoint": lambda c: f"checkpoint: {c.artifact}",
    "metrics": _metrics_line,
    "progress": lambda p: None,  # drawn as the progress bar
}


def _fields_line(kind: str, payload) -> str:
    from google.protobuf.json_format import MessageToDict

    fields = MessageToDict(payload, preserving_proto_field_name=True)
    return f"{kind}: " + ", ".join(f"{name} {value}" for name, value in fields.items())


def event_line(event: pb.JobEvent) -> str | None:
    """Return a one-line description of an event worth printing above the bar, or None."""
    kind = event.WhichOneof("payload")
    if kind is None:
        return None
    payload = getattr(event, kind)
    line = _LINES[kind](payload) if kind in _LINES else _fields_line(kind, payload)
    return f"[{event.sequence}] {line}" if line else None


def message_json(message) -> str:
    """Return a message as one JSON line (proto field names)."""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(message, preserving_proto_field_name=True))


def progress_postfix(progress: pb.Progress) -> str:
    """Return the progress bar's text after the count: losses, throughput, time left."""
    return f"d {number(progress.d_loss)} g {number(progress.g_loss)} {progress.images_per_sec:.0f} img/s" + (
        f" eta {duration(progress.eta_seconds)}" if progress.eta_seconds > 0 else ""
    )


def summary_lines(job: pb.Job) -> list[str]:
    """Return a finished job's outcome and final metrics, one line each."""
    took = ""
    if job.HasField("started_at") and job.HasField("finished_at"):
        took = f" in {duration(job.finished_at.ToNanoseconds() / 1e9 - job.started_at.ToNanoseconds() / 1e9)}"
    lines = [f"job {job.id} {state_name(job.state)}{took}" + (f" on {job.device}" if job.device else "")
             + (f": {job.message}" if job.message else "")]  # fmt: skip
    metrics = dict(job.latest_metrics)
    if metrics:
        shown = []
        for name, label in SUMMARY_METRICS:
            if name in metrics:
                value = number(metrics[name])
                spread = _SPREAD.get(name)
                if spread and spread in metrics:
                    value += f" ± {number(metrics[spread])}"
                shown.append(f"{label} {value}")
        lines.append("final metrics: " + ", ".join(shown))
    return lines


JOB_TABLE_HEADER = ("ID", "KIND", "STATE", "PROGRESS", "DEVICE", "NODES", "CREATED", "NOTE")


def job_row(job: pb.Job) -> tuple[str, ...]:
    """Return the job's row of the job table (JOB_TABLE_HEADER's columns)."""
    progress = f"{job.progress.step}/{job.progress.total_steps}" if job.progress.total_steps else ""
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at.seconds))
    fid = job.latest_metrics.get("fid")
    note = f"fid {fid:.2f}" if fid is not None else job.message
    kind = {pb.JOB_KIND_TRAINING: "train", pb.JOB_KIND_SWEEP: "sweep"}.get(job.kind, "eval")
    if job.sweep_id:  # a sweep's trial
        note = f"{job.sweep_id}#{job.trial_number} {note}"
    return (job.id, kind, state_name(job.state), progress, job.device, ",".join(job.nodes), created, note[:60])


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] = JOB_TABLE_HEADER) -> list[str]:
    """Return rows as left-aligned columns under the header, one line each."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]

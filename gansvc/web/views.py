"""What the compare, sweep and submit pages compute from the gRPC API's answers (no I/O here: app.py calls the
API and hands the messages in).

- spec_diff: the settings that differ between jobs' resolved specs.
- sweep_trials: a sweep's trials from its own events (TrialStarted / TrialReported / TrialPruned / TrialFinished /
  SweepBest) and its trials' jobs.
- form_settings: a submitted form's text values as typed settings, by the server's field list
  (ServerInfo.training_fields): a value that is not of its field's type is a FormError naming the field.
"""

from __future__ import annotations

import json
import math
import re
import tomllib

from google.protobuf.json_format import MessageToDict

from gansvc.web import shapes


class FormError(ValueError):
    """A submitted value is wrong: 400 naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---------------------------------------------------------------------- compare
def spec_diff(specs: dict[str, dict]) -> list[dict]:
    """Return [{"field", "values": {job_id: value}}] for every spec field whose value is not the same in all jobs."""
    names: list[str] = []
    for spec in specs.values():
        names.extend(n for n in spec if n not in names)
    out = []
    for name in names:
        values = {job_id: spec.get(name) for job_id, spec in specs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out.append({"field": name, "values": values})
    return out


# ---------------------------------------------------------------------- sweeps
def sweep_trials(sweep_job, events, trial_jobs: dict) -> dict:
    """Return a sweep's trials as the sweep page reads them.

    `events`: the sweep job's JobEvents (its whole history); `trial_jobs`: {job_id: Job} of its trials. Each trial:
    trial, job_id, params, state (COMPLETE | PRUNED | FAILED once finished, else the job's state), job_state,
    value (the objective when complete, else the latest reported one), pruned, pruned_step, reports
    [[step, value]], reason."""
    spec = shapes.message(sweep_job.sweep) if sweep_job.WhichOneof("spec") == "sweep" else {}
    trials: dict[int, dict] = {}
    best = None

    def trial(number: int, job_id: str) -> dict:
        if number not in trials:
            trials[number] = {"trial": number, "job_id": job_id, "params": {}, "state": "", "job_state": "",
                              "value": None, "pruned": False, "pruned_step": None, "reports": [],
                              "reason": ""}  # fmt: skip
        return trials[number]

    for event in events:
        kind = event.WhichOneof("payload")
        if kind not in ("trial_started", "trial_reported", "trial_pruned", "trial_finished", "sweep_best"):
            continue
        data = getattr(event, kind)
        if kind == "sweep_best":
            best = {"trial": data.trial, "job_id": data.trial_job_id, "value": _number(data.value),
                    "params": MessageToDict(data.params)}  # fmt: skip
            continue
        row = trial(data.trial, data.trial_job_id)
        if kind == "trial_started":
            row["params"] = MessageToDict(data.params)
        elif kind == "trial_reported":
            row["reports"].append([data.step, _number(data.value)])
            row["value"] = _number(data.value)
        elif kind == "trial_pruned":
            row["pruned"], row["pruned_step"] = True, data.step
        else:
            row["state"], row["reason"] = data.state, data.reason
            row["pruned"] = row["pruned"] or data.state == "PRUNED"
            row["value"] = _number(data.value) if data.HasField("value") else row["value"]
    for row in trials.values():
        job = trial_jobs.get(row["job_id"])
        if job is not None:
            row["job_state"] = shapes.job(job)["state"]
        row["state"] = row["state"] or row["job_state"]
    params = sorted({name for row in trials.values() for name in row["params"]})
    return {"sweep": shapes.job(sweep_job), "metric": spec.get("metric") or "fid",
            "direction": spec.get("direction") or "minimize", "params": params,
            "trials": [trials[n] for n in sorted(trials)], "best": best}  # fmt: skip


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---------------------------------------------------------------------- submit
def field_list(info) -> list[dict]:
    """Return ServerInfo.training_fields as JSON: name, type, default, help, min, max (None = unbounded), choices."""
    out = []
    for field in info.training_fields:
        entry = shapes.message(field)
        entry["default"] = MessageToDict(field.default) if field.HasField("default") else None
        for bound in ("min", "max"):  # proto3 optional: shapes.message leaves an unset one out
            entry[bound] = getattr(field, bound) if field.HasField(bound) else None
        out.append(entry)
    return out


_WHOLE = re.compile(r"^[+-]?\d+$")


def form_settings(fields: list[dict], form: dict) -> dict:
    """Return the settings of a submitted form ({name: text or typed value}) typed by the field list.

    An empty text leaves the field to its default. Unknown names and values that are not of the field's type raise
    FormError naming the field; bounds and choices are the server's to check (its INVALID_ARGUMENT names them)."""
    by_name = {f["name"]: f for f in fields}
    settings = {}
    for name, value in form.items():
        field = by_name.get(name)
        if field is None:
            raise FormError(name, f"unknown training setting (known: {', '.join(by_name)})")
        if isinstance(value, str) and field["type"] != "str":
            value = value.strip()
            if value == "":
                continue
        settings[name] = _typed(name, field["type"], value)
    return settings


def _typed(name: str, kind: str, value):
    if not isinstance(value, str):
        return value  # JSON typed already (a pasted spec, a script): the server checks it
    if kind == "bool":
        if value.lower() in ("true", "on", "1", "yes"):
            return True
        if value.lower() in ("false", "off", "0", "no"):
            return False
        raise FormError(name, f"got {value!r}, expected true or false")
    if kind == "int":
        if not _WHOLE.match(value):
            raise FormError(name, f"got {value!r}, expected a whole number")
        return int(value)
    if kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise FormError(name, f"got {value!r}, expected a number") from None
        if not math.isfinite(number):
            raise FormError(name, f"got {value!r}, expected a finite number")
        return number
    if kind == "dict":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise FormError(name, f"expected a JSON object ({error})") from None
        if not isinstance(parsed, dict):
            raise FormError(name, f"got {value!r}, expected a JSON object")
        return parsed
    return value


def toml_settings(text: str) -> dict:
    """Return the settings of a pasted TOML spec (top-level keys, or a [train] table as spec files may have)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FormError("toml", f"not valid TOML: {error}") from None
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    return data


def error_field(message: str, known) -> str:
    """Return the field an INVALID_ARGUMENT message names ("field: ...", possibly "base.field"), or ""."""
    head = message.split(":", 1)[0].strip() if ":" in message else ""
    return head if head in known else ""

"""gRPC messages as the JSON the page reads: field names as in the proto, enums by name (states without their
JOB_STATE_ prefix), timestamps as UNIX seconds, int64 as numbers, bytes as their length, and NaN / Inf as null
(JSON has neither)."""

from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

from gansvc.api.convert import PROTO_TO_KIND, pb, state_name

_STRUCT = "google.protobuf.Struct"
_TIMESTAMP = "google.protobuf.Timestamp"


def finite(value):
    """Return `value` with every non-finite float (at any depth of dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def message(msg) -> dict:
    """Return a message as a dict of its fields (every field, set or not, so the page finds each name)."""
    out = {}
    for field in msg.DESCRIPTOR.fields:
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name) != field.name:
            continue
        if field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE and not msg.HasField(field.name):
            out[field.name] = None
            continue
        out[field.name] = _value(field, getattr(msg, field.name))
    return out


def _value(field, value):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_scalar(field, item) for item in value]
    return _scalar(field, value)


def _scalar(field, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == _TIMESTAMP:
            return value.seconds + value.nanos / 1e9 if (value.seconds or value.nanos) else None
        if name == _STRUCT:
            return finite(MessageToDict(value))
        return message(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        if field.enum_type.name == "JobState":
            return state_name(value)
        if field.enum_type.name == "JobKind":
            return PROTO_TO_KIND.get(value, "")
        return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number else value
    if field.type == FieldDescriptor.TYPE_BYTES:  # tensors, PNGs: the page fetches files, not bytes in JSON
        return len(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def job(msg: pb.Job) -> dict:
    """Return a Job as JSON: its fields, the spec (whichever kind) under "spec", and its age basis."""
    out = message(msg)
    kind = msg.WhichOneof("spec")
    out["spec"] = out.pop(kind) if kind else {}
    return out


def event(msg: pb.JobEvent) -> dict:
    """Return a JobEvent as JSON: sequence, time, `type` (the payload's name) and the payload under `data`."""
    kind = msg.WhichOneof("payload") or ""
    data = message(getattr(msg, kind)) if kind else {}
    time = msg.time.seconds + msg.time.nanos / 1e9
    return {"sequence": msg.sequence, "time": time, "type": kind, "data": data}

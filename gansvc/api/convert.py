"""The generated gRPC messages, and the conversions both ends need: state and kind names, timestamps,
training settings, and one generic conversion of a typed job event to its JobEvent.

This module knows nothing of the server's store, so a client imports it (with the stubs) and no
server code. The stubs are generated from protos/gansvc/v1/gansvc.proto by the build (setup.py) into
gansvc/_proto; they are never edited or committed.
"""

from __future__ import annotations

import math
import re

from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor

try:
    from gansvc._proto.v1 import gansvc_pb2 as pb
    from gansvc._proto.v1 import gansvc_pb2_grpc as pb_grpc
except ImportError as _error:  # pragma: no cover - only before the first build
    raise ImportError(
        f"gansvc's gRPC stubs are missing ({_error}): run `bash scripts/setup.sh`, which generates them"
    ) from None

from gansvc.runtime import events

__all__ = [
    "KIND_TO_PROTO", "PROTO_FILE", "PROTO_TO_KIND", "SERVICE_NAME", "evaluation_spec_to_proto", "job_event",
    "pb", "pb_grpc", "reflection_pool", "state_name", "state_to_proto", "struct", "timestamp",
    "training_spec_fields", "training_spec_from_dict", "training_spec_to_dict",
]  # fmt: skip

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GanService"].full_name  # "gansvc.v1.GanService"
# The name users find in protos/ (the build compiles it as gansvc/_proto/v1/..., see setup.py).
PROTO_FILE = "gansvc/v1/gansvc.proto"
KIND_TO_PROTO = {"training": pb.JOB_KIND_TRAINING, "evaluation": pb.JOB_KIND_EVALUATION, "sweep": pb.JOB_KIND_SWEEP}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}
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


# ---------------------------------------------------------------------- training settings
def training_spec_fields() -> dict[str, object]:
    """Return TrainingSpec's settings fields by name (the descriptors), without request_id."""
    return {f.name: f for f in pb.TrainingSpec.DESCRIPTOR.fields if f.name not in TRAINING_SPEC_EXTRA_FIELDS}


def training_spec_to_dict(message: pb.TrainingSpec) -> dict:
    """Return the settings a TrainingSpec sets explicitly, as a dict of TrainSpec field names."""
    return {name: _setting_value(getattr(message, name)) for name in training_spec_fields() if message.HasField(name)}


def _setting_value(value):
    """Return a setting as plain data: a Struct (model_args, dataset_args) as a dict, whole numbers as int."""
    if isinstance(value, struct_pb2.Struct):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _plain(value):
    # Struct holds every number as a double: 32.0 from a client meant 32 (docs/plugins.md says so).
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, struct_pb2.Struct):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(item) for item in value]
    return value


def training_spec_from_dict(settings: dict, request_id: str = "") -> pb.TrainingSpec:
    """Return a TrainingSpec with the given settings (TrainSpec names); a ValueError names a bad key or value."""
    fields = training_spec_fields()
    message = pb.TrainingSpec(request_id=request_id or "")
    for name, value in settings.items():
        if name not in fields:
            raise ValueError(f"{name}: unknown training setting (known: {', '.join(fields)})")
        try:
            if fields[name].message_type is not None:  # a Struct: model_args, dataset_args
                if not isinstance(value, dict):
                    raise TypeError(f"expected a JSON object, got {type(value).__name__}")
                getattr(message, name).SetInParent()  # given, even when empty (a resolved spec sets every field)
                getattr(message, name).update(value)
            else:
                setattr(message, name, value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: bad value {value!r} ({error})") from None
    return message


def evaluation_spec_to_proto(spec: dict) -> pb.EvaluationSpec:
    """Return the EvaluationSpec of a stored evaluation spec (uploaded sample bytes left out)."""
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
        message.best = bool(spec.get("best", False))
        message.class_labels.extend(spec.get("class_labels", []))  # issue 12
    else:
        message.samples.shape.extend(spec.get("samples_shape", []))
        message.samples.dtype = pb.DType.Value(f"DTYPE_{spec.get('samples_dtype', 'uint8').upper()}")
    if spec.get("num_real"):
        message.num_real = int(spec["num_real"])
    message.precision_recall = bool(spec.get("precision_recall", False))
    message.bootstrap = int(spec.get("bootstrap", 0))
    return message


def struct(data: dict) -> struct_pb2.Struct:
    """Return a Struct of plain data (non-finite floats as text: Struct has no NaN)."""
    message = struct_pb2.Struct()
    message.update(_struct_value(data))
    return message


def _struct_value(value):
    if isinstance(value, dict):
        return {str(k): _struct_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_struct_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ---------------------------------------------------------------------- events
_INTEGER_TYPES = {FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT32,
                  FieldDescriptor.CPPTYPE_UINT64}  # fmt: skip


def _enum_prefix(enum_name: str) -> str:
    """Return the value prefix of a proto enum by the style guide (JobState -> 'JOB_STATE_')."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def fill(message, record: dict, rename: dict[str, str] | None = None, time: float | None = None) -> None:
    """Set `message`'s fields from a plain record by name (record key -> RENAME -> proto field).

    Keys the message lacks are dropped; an enum takes the value's name without its prefix
    ('QUEUED' -> JOB_STATE_QUEUED); a map takes a dict; a Timestamp field the record does not give
    takes `time` (the event's time).
    """
    rename = rename or {}
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in record.items():
        field = fields.get(rename.get(key, key))
        if field is None or value is None:
            continue
        if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
            value = field.enum_type.values_by_name[_enum_prefix(field.enum_type.name) + value].number
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, field.name).update(value)
        elif field.message_type is struct_pb2.Struct.DESCRIPTOR:  # free-form data (a sweep trial's settings)
            getattr(message, field.name).CopyFrom(struct(value))
        elif field.message_type is not None:
            fill(getattr(message, field.name), value, time=time)
        else:
            if field.cpp_type in _INTEGER_TYPES and isinstance(value, float) and value.is_integer():
                value = int(value)  # records written before events were typed kept steps as floats
            setattr(message, field.name, value)
    if time is not None:
        for field in message.DESCRIPTOR.fields:
            if field.message_type is timestamp_pb2.Timestamp.DESCRIPTOR and not message.HasField(field.name):
                getattr(message, field.name).CopyFrom(timestamp(time))


def job_event(event: events.Event, job_id: str, sequence: int, time: float) -> pb.JobEvent:
    """Return the JobEvent of a stored typed event: the payload is the oneof field the class's PROTO names."""
    message = pb.JobEvent(job_id=job_id, sequence=sequence, time=timestamp(time))
    if event.PROTO is None:  # a protocol message is never stored; say so rather than drop it
        event = events.Log(level="warning", message=f"unexpected {event.TYPE} event")
    record = events.to_dict(event)
    record.pop("type")
    fill(getattr(message, event.PROTO), record, type(event).RENAME, time)
    getattr(message, event.PROTO).SetInParent()  # an event whose fields are all defaults still has its payload
    return message


# ---------------------------------------------------------------------- reflection
def reflection_pool(*others) -> descriptor_pool.DescriptorPool:
    """Return a descriptor pool holding gansvc's proto under its public name (PROTO_FILE) and the
    files of `others` (e.g. the health and reflection protos), each with its dependencies.

    The build compiles the proto as gansvc/_proto/v1/gansvc.proto; a client asking the server's
    reflection for the name in protos/ must find it.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file, name: str | None = None) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if name:
            proto.name = name
        pool.Add(proto)
        added.add(file.name)

    add(pb.DESCRIPTOR, PROTO_FILE)
    for file in others:
        add(file)
    return pool

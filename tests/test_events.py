"""The event schema and its codec: round trips, coercion, and what a bad peer's line becomes."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from gansvc.runtime import events as ev


def _example(cls):
    """An instance of cls with every field set to a non-default value of its type."""
    values = {}
    for f in dataclasses.fields(cls):
        hint = ev._fields(cls)[f.name]
        values[f.name] = {int: 7, float: 0.25, str: "x", bool: True}.get(hint, None)
        if hint == dict[str, float]:
            values[f.name] = {"fid": 12.5}
        elif hint == (float | None):
            values[f.name] = 0.75
        elif values[f.name] is None and hint != (int | None):
            values[f.name] = {"k": [1, 2]}
        elif hint == (int | None):
            values[f.name] = 3
    return cls(**values)


@pytest.mark.parametrize("cls", list(ev.event_types().values()), ids=lambda c: c.TYPE)
def test_every_event_round_trips_through_the_codec(cls):
    event = _example(cls)
    assert ev.decode(ev.encode(event)) == event
    assert ev.from_dict(json.loads(json.dumps(ev.to_dict(event)))) == event


def test_fields_are_coerced_to_their_declared_types():
    event = ev.from_dict({"type": "metrics", "step": "4", "values": {"a": np.float64(1.5), "b": "text", "c": True}})
    assert event == ev.Metrics(step=4, values={"a": 1.5})
    assert type(event.step) is int
    progress = ev.from_dict({"type": "progress", "step": 2.0, "d_loss": np.float32(0.5).item(), "extra": 1})
    assert progress.step == 2 and progress.d_loss == 0.5 and math.isnan(progress.g_loss)


def test_numpy_values_are_encoded_as_numbers():
    line = ev.encode(ev.Finished(stopped=False, summary={"fid": np.float32(2.5), "shape": (1, 2)}))
    assert json.loads(line)["summary"] == {"fid": 2.5, "shape": [1, 2]}


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"type": "progress", "step": "abc"}', b'{"type": "nope"}'])
def test_a_bad_line_becomes_a_log_event_quoting_it(line):
    event = ev.decode(line)
    assert isinstance(event, ev.Log)
    assert event.stored and event.message


def test_protocol_messages_are_not_stored():
    assert {t for t, cls in ev.event_types().items() if not cls.PROTO} == {"hello", "finished", "failed"}
    assert not ev.Hello(pid=1).stored and ev.Progress().stored

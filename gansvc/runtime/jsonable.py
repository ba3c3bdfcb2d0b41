"""JSON for the values gansvc writes (events, summaries, rows): NumPy / torch scalars and arrays, sets, paths."""

from __future__ import annotations

import json


def jsonable(value):
    """Return `value` as something json can write (the `default=` hook): scalars and arrays as Python, else str."""
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy / torch scalars and arrays
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def dumps(value, **kwargs) -> str:
    """Return json.dumps(value) with `jsonable` for the types json does not know (NaN / Inf kept as Python does)."""
    kwargs.setdefault("default", jsonable)
    return json.dumps(value, **kwargs)

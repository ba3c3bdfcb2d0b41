"""The store's index of metric series: each (job, metric) series in chunks of up to CHUNK points, each chunk its
steps, values and times as packed arrays (int64, float64, float64), so a run's 100 000 points are read as a
hundred rows, not decoded from 100 000 events (GetMetrics of a long run takes milliseconds, not seconds).

It holds exactly what a replay of the job's events gives, in event order:
- a metrics event sets each of its values at its step (a later value at the same step replaces the earlier one);
- every value at a step carries the time of the step's latest metrics event (whichever metrics it reported);
- a Log with resume_step (a resumed run) drops every point after that step.

The functions take the writer connection inside its transaction (JobStore._insert_events calls fold()).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

import numpy as np

from gansvc.runtime import events as ev

CHUNK = 512  # points per chunk: an append rewrites at most one chunk's ~12 KB per metric
SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_chunks (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    steps BLOB NOT NULL,   -- int64, ascending
    vals BLOB NOT NULL,    -- float64 (NaN kept)
    times BLOB NOT NULL,   -- float64 UNIX seconds
    PRIMARY KEY (job_id, name, first_step)
) WITHOUT ROWID;
"""
TYPES = (ev.Metrics.TYPE, ev.Log.TYPE)  # the events the index is built from


def _arrays(row) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.frombuffer(row[0], np.int64), np.frombuffer(row[1], np.float64), np.frombuffer(row[2], np.float64))


def read(conn: sqlite3.Connection, job_id: str, names: Iterable[str] = ()) -> dict[str, tuple[np.ndarray, ...]]:
    """Return {metric: (steps, values, times)} of the job as arrays in step order (every metric when names is
    empty)."""
    names = list(names)
    where = f" AND name IN ({', '.join('?' * len(names))})" if names else ""
    rows = conn.execute(
        f"SELECT name, steps, vals, times FROM metric_chunks WHERE job_id = ?{where} ORDER BY name, first_step",
        (job_id, *names),
    ).fetchall()
    parts: dict[str, list] = {}
    for row in rows:
        parts.setdefault(row[0], []).append(_arrays((row[1], row[2], row[3])))
    return {name: tuple(np.concatenate([c[i] for c in chunks]) for i in range(3)) for name, chunks in parts.items()}


def fold(conn: sqlite3.Connection, job_id: str, timed: Iterable[tuple[float, ev.Event]]) -> None:
    """Fold (time, event) pairs of one job, in event order, into the index."""
    values: dict[str, dict[int, float]] = {}
    step_times: dict[int, float] = {}

    def flush() -> None:
        if step_times:
            _write(conn, job_id, values, step_times)
        values.clear()
        step_times.clear()

    for moment, event in timed:
        if isinstance(event, ev.Metrics):
            for name, value in event.values.items():
                values.setdefault(name, {})[event.step] = float(value)
            step_times[event.step] = moment
        elif isinstance(event, ev.Log) and event.resume_step is not None:
            flush()  # the points before the resume go in before it drops what follows its step
            _truncate(conn, job_id, event.resume_step)
    flush()


def _write(conn, job_id: str, values: dict[str, dict[int, float]], step_times: dict[int, float]) -> None:
    for name, points in values.items():
        steps = np.fromiter(sorted(points), np.int64, len(points))
        vals = np.array([points[s] for s in steps.tolist()], np.float64)
        times = np.array([step_times[s] for s in steps.tolist()], np.float64)
        last = conn.execute(
            "SELECT first_step, last_step, steps, vals, times FROM metric_chunks WHERE job_id = ? AND name = ?"
            " ORDER BY first_step DESC LIMIT 1",
            (job_id, name),
        ).fetchone()
        if last is None or steps[0] > last[1]:  # the usual case: later steps, appended to the last chunk
            if last is not None and len(last[2]) // 8 < CHUNK:
                held = _arrays((last[2], last[3], last[4]))
                steps, vals, times = (np.concatenate(p) for p in zip(held, (steps, vals, times)))
                conn.execute("DELETE FROM metric_chunks WHERE job_id = ? AND name = ? AND first_step = ?",
                             (job_id, name, last[0]))  # fmt: skip
            _insert(conn, job_id, name, steps, vals, times)
        else:  # a step at or before the last one held: merge the whole series (rare: a redone or late step)
            held = read(conn, job_id, [name]).get(name)
            merged = dict(zip(held[0].tolist(), zip(held[1].tolist(), held[2].tolist())))
            merged.update(zip(steps.tolist(), zip(vals.tolist(), times.tolist())))
            order = sorted(merged)
            conn.execute("DELETE FROM metric_chunks WHERE job_id = ? AND name = ?", (job_id, name))
            _insert(conn, job_id, name, np.array(order, np.int64), np.array([merged[s][0] for s in order]),
                    np.array([merged[s][1] for s in order]))  # fmt: skip
    # every value at these steps, of any metric, takes the step's latest time
    wanted = np.fromiter(step_times, np.int64, len(step_times))
    new_times = np.array([step_times[s] for s in wanted.tolist()], np.float64)
    order = np.argsort(wanted)
    wanted, new_times = wanted[order], new_times[order]
    rows = conn.execute(
        "SELECT name, first_step, steps, vals, times FROM metric_chunks"
        " WHERE job_id = ? AND last_step >= ? AND first_step <= ?",
        (job_id, int(wanted[0]), int(wanted[-1])),
    ).fetchall()
    for name, first_step, *blobs in rows:
        steps, vals, times = _arrays(blobs)
        at = np.searchsorted(wanted, steps)
        hit = (at < len(wanted)) & (wanted[np.minimum(at, len(wanted) - 1)] == steps)
        if not hit.any():
            continue
        updated = times.copy()
        updated[hit] = new_times[at[hit]]
        if not np.array_equal(updated, times):
            conn.execute("UPDATE metric_chunks SET times = ? WHERE job_id = ? AND name = ? AND first_step = ?",
                         (updated.tobytes(), job_id, name, first_step))  # fmt: skip


def _insert(conn, job_id: str, name: str, steps: np.ndarray, vals: np.ndarray, times: np.ndarray) -> None:
    conn.executemany(
        "INSERT INTO metric_chunks (job_id, name, first_step, last_step, steps, vals, times)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(job_id, name, int(steps[i]), int(steps[min(i + CHUNK, len(steps)) - 1]), steps[i : i + CHUNK].tobytes(),
          vals[i : i + CHUNK].tobytes(), times[i : i + CHUNK].tobytes()) for i in range(0, len(steps), CHUNK)],
    )  # fmt: skip


def _truncate(conn, job_id: str, resume_step: int) -> None:
    """Drop every point after resume_step."""
    rows = conn.execute(
        "SELECT name, first_step, steps, vals, times FROM metric_chunks WHERE job_id = ? AND last_step > ?",
        (job_id, resume_step),
    ).fetchall()
    for name, first_step, *blobs in rows:
        conn.execute("DELETE FROM metric_chunks WHERE job_id = ? AND name = ? AND first_step = ?",
                     (job_id, name, first_step))  # fmt: skip
        steps, vals, times = _arrays(blobs)
        keep = steps <= resume_step
        if keep.any():
            _insert(conn, job_id, name, steps[keep], vals[keep], times[keep])


def backfill(conn: sqlite3.Connection) -> None:
    """Build the index from every stored metrics and log event (a store written before the index existed)."""
    rows = conn.execute(
        f"SELECT job_id, time, type, payload FROM events WHERE type IN ({', '.join('?' * len(TYPES))})"
        " ORDER BY job_id, sequence",
        TYPES,
    )
    job_id, timed = None, []
    for row in rows:
        if row[0] != job_id:
            if timed:
                fold(conn, job_id, timed)
            job_id, timed = row[0], []
        timed.append((row[1], ev.from_dict({**json.loads(row[3]), "type": row[2]})))
    if timed:
        fold(conn, job_id, timed)

"""Jobs and their events in one SQLite database (WAL mode): the service's durable state.

Every change to a job is an event with the next per-job sequence number (1, 2, 3, ... without gaps),
written in the same transaction as the job row it changes. An event is committed (fsync'd: WAL with
synchronous=FULL) before anyone is told about it, so nothing a watcher has seen can be lost.
One connection writes (behind a lock); readers borrow a connection from a small pool for each read
(WAL lets them read while the writer writes), so short-lived threads leave no connection behind.

Events are the typed events of gansvc.runtime.events, stored as their records ({"type", fields});
the job row changes with the progress, metrics, checkpoint and state events only.

Metric events are also indexed, in the same transaction, as packed series (gansvc.service.metric_index): GetMetrics
of a long run reads its series from there instead of decoding every event.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gansvc.runtime import events as ev
from gansvc.runtime import jsonable, registry
from gansvc.service import metric_index

STATES, TERMINAL_STATES = registry.JOB_STATES, registry.TERMINAL_STATES
KINDS = ("training", "evaluation", "sweep")
_ID_PREFIX = {"training": "train", "evaluation": "eval", "sweep": "sweep"}
# Which state may follow which; a terminal state is final.
_TRANSITIONS = {
    "QUEUED": {"RUNNING", "CANCELLED", "FAILED"},
    "RUNNING": {"QUEUED", "SUCCEEDED", "FAILED", "CANCELLED"},
}
_SCHEMA_VERSION = 5  # 2: jobs.sweep_id and trial_number (a sweep's trials); 3: jobs.relayed; 4: the metric index;
# 5: jobs.nodes (where it runs)
_IDLE_READERS = 4  # reader connections kept open between reads; more are opened while needed, then closed
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    request_id TEXT UNIQUE,
    request_hash TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    latest_metrics TEXT NOT NULL DEFAULT '{}',
    summary TEXT,
    last_checkpoint_step INTEGER NOT NULL DEFAULT 0,
    sweep_id TEXT NOT NULL DEFAULT '',
    trial_number INTEGER NOT NULL DEFAULT 0,
    relayed INTEGER NOT NULL DEFAULT 0,
    nodes TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""


class JobNotFound(KeyError):
    """No job has this id."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id!r} not found"


class RequestIdConflict(Exception):
    """A request id was used before for a different request; `job` is the job it created."""

    def __init__(self, request_id: str, job: JobRecord):
        super().__init__(f"request_id {request_id!r} was already used for job {job.id} with a different spec")
        self.job = job


class InvalidTransition(RuntimeError):
    """A state change that the job's current state does not allow (e.g. out of a terminal state)."""


@dataclass(frozen=True)
class StoredEvent:
    """One stored event of a job: its place in the job's history and its record (type and fields)."""

    job_id: str
    sequence: int
    time: float
    type: str
    payload: dict

    @property
    def event(self) -> ev.Event:
        """Return the typed event (a record of no known type becomes a Log line quoting it)."""
        return ev.from_dict({**self.payload, "type": self.type})

    def as_dict(self) -> dict:
        """Return the event as {"type": ..., **payload, "sequence": ..., "time": ...}."""
        return {"type": self.type, **self.payload, "sequence": self.sequence, "time": self.time}


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table, JSON columns decoded."""

    id: str
    kind: str
    state: str
    spec: dict
    request_id: str | None
    request_hash: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    message: str
    device: str
    attempts: int
    cancel_requested: bool
    last_sequence: int
    worker_pid: int
    progress: dict | None
    latest_metrics: dict = field(default_factory=dict)
    summary: dict | None = None
    last_checkpoint_step: int = 0
    rowid: int = 0
    sweep_id: str = ""  # the sweep job this training job is a trial of ("" when none)
    trial_number: int = 0
    # How many of the current attempt's worker lines are stored (written with their events, in one transaction):
    # a restarted server resumes a remote worker's relay there, so no event is stored twice (the Ray backend).
    relayed: int = 0
    nodes: tuple[str, ...] = ()  # the address of each node the current or last attempt runs on

    @property
    def terminal(self) -> bool:
        """Return whether the job has ended (SUCCEEDED, FAILED or CANCELLED)."""
        return self.state in TERMINAL_STATES


def _dumps(value) -> str:
    # NaN/Inf losses are real (a diverging run reports them): keep them as the JSON extensions
    # Python reads back, rather than failing the write.
    return jsonable.dumps(value, separators=(",", ":"))


def _row_to_job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        state=row["state"],
        spec=json.loads(row["spec"]),
        request_id=row["request_id"],
        request_hash=row["request_hash"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        message=row["message"],
        device=row["device"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        last_sequence=row["last_sequence"],
        worker_pid=row["worker_pid"],
        progress=json.loads(row["progress"]) if row["progress"] else None,
        latest_metrics=json.loads(row["latest_metrics"]),
        summary=json.loads(row["summary"]) if row["summary"] else None,
        last_checkpoint_step=row["last_checkpoint_step"],
        rowid=row["rowid"],
        sweep_id=row["sweep_id"],
        trial_number=row["trial_number"],
        relayed=row["relayed"],
        nodes=tuple(json.loads(row["nodes"])),
    )


def _row_to_event(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(row["job_id"], row["sequence"], row["time"], row["type"], json.loads(row["payload"]))


class JobStore:
    """The jobs and events tables; `on_append(job_id, last_sequence)` is called after each commit."""

    def __init__(self, path: str | Path, on_append: Callable[[str, int], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._on_append = on_append
        self._write_lock = threading.RLock()
        self._idle: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the watcher that is told about it can see it.
        self._writer.execute("PRAGMA synchronous=FULL")
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this gansvc ({_SCHEMA_VERSION})")
        with self._writer:
            if 0 < version < 2:  # a version 1 database: its jobs are no sweep's trials
                self._writer.execute("ALTER TABLE jobs ADD COLUMN sweep_id TEXT NOT NULL DEFAULT ''")
                self._writer.execute("ALTER TABLE jobs ADD COLUMN trial_number INTEGER NOT NULL DEFAULT 0")
            if 0 < version < 3:  # version 2: no remote worker's relay position yet
                self._writer.execute("ALTER TABLE jobs ADD COLUMN relayed INTEGER NOT NULL DEFAULT 0")
            if 0 < version < 5:  # before version 5 no job recorded its nodes
                self._writer.execute("ALTER TABLE jobs ADD COLUMN nodes TEXT NOT NULL DEFAULT '[]'")
            self._writer.executescript(_SCHEMA + metric_index.SCHEMA)
        # one transaction: a store opened again after a crash here builds the index again, from the start
        with self._transaction():
            if 0 < version < 4:  # written before the metric index: build it from the stored events, once
                metric_index.backfill(self._writer)
            self._writer.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """Lend a reader connection for one read, then take it back (closed beyond _IDLE_READERS)."""
        with self._readers_lock:
            if self._closed:
                raise RuntimeError("job store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._idle) < _IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Return every row of one query, read on a pooled connection."""
        with self._reading() as conn:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every connection (the store cannot be used afterwards; a read in progress closes its own)."""
        with self._readers_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._write_lock:
            self._writer.close()

    # ------------------------------------------------------------------ reads
    def get_job(self, job_id: str) -> JobRecord | None:
        """Return the job `job_id`, or None."""
        rows = self._read("SELECT rowid, * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def require_job(self, job_id: str) -> JobRecord:
        """Return the job `job_id` or raise JobNotFound."""
        job = self.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list_jobs(
        self, states: Iterable[str] = (), kind: str | None = None, limit: int = 50, before_rowid: int | None = None,
        sweep_id: str | None = None,
    ) -> list[JobRecord]:
        """Return up to `limit` jobs, newest first, optionally filtered; `before_rowid` continues a listing."""
        clauses, params = (["sweep_id = ?"], [sweep_id]) if sweep_id else ([], [])
        states = list(states)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params += states
        if kind:
            clauses.append("kind = ?")
            params.append(kind)
        if before_rowid is not None:
            clauses.append("rowid < ?")
            params.append(before_rowid)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"SELECT rowid, * FROM jobs {where} ORDER BY rowid DESC LIMIT ?", (*params, limit))
        return [_row_to_job(row) for row in rows]

    def jobs_in_state(self, state: str) -> list[JobRecord]:
        """Return every job in `state`, oldest first (the order the scheduler serves them)."""
        rows = self._read("SELECT rowid, * FROM jobs WHERE state = ? ORDER BY rowid", (state,))
        return [_row_to_job(row) for row in rows]

    def events_after(self, job_id: str, after_sequence: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Return the job's events with sequence > after_sequence, in order, at most `limit`."""
        rows = self._read(
            "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after_sequence, limit),
        )
        return [_row_to_event(r) for r in rows]

    def events_of_types(self, job_id: str, types: Iterable[str]) -> list[StoredEvent]:
        """Return the job's events of the given types, in order."""
        types = list(types)
        rows = self._read(
            f"SELECT * FROM events WHERE job_id = ? AND type IN ({', '.join('?' * len(types))}) ORDER BY sequence",
            (job_id, *types),
        )
        return [_row_to_event(r) for r in rows]

    def metric_series(self, job_id: str, names: Iterable[str] = ()) -> dict[str, tuple[np.ndarray, ...]]:
        """Return {metric: (steps, values, times)} of the job as arrays in step order (every metric when `names` is
        empty), read from the metric index (gansvc.service.metric_index)."""
        with self._reading() as conn:
            return metric_index.read(conn, job_id, names)

    # ------------------------------------------------------------------ writes
    def create_job(
        self, kind: str, spec: dict, request_id: str | None = None, request_hash: str = "", sweep_id: str = "",
        trial_number: int = 0,
    ) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job (and its first event); return (job, created).

        With a request id seen before, return (that job, False), or raise RequestIdConflict when it was
        used with a different request (a different `request_hash`).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        prefix = _ID_PREFIX[kind]
        with self._write_lock:
            if request_id:
                existing = self._writer.execute("SELECT rowid, * FROM jobs WHERE request_id = ?", (request_id,))
                row = existing.fetchone()
                if row is not None:
                    job = _row_to_job(row)
                    if job.request_hash != request_hash:
                        raise RequestIdConflict(request_id, job)
                    return job, False
            now = time.time()
            while True:
                job_id = f"{prefix}-{secrets.token_hex(6)}"
                if self._writer.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    break
            with self._transaction():
                self._writer.execute(
                    "INSERT INTO jobs (id, kind, state, spec, request_id, request_hash, created_at, updated_at,"
                    " message, sweep_id, trial_number) VALUES (?, ?, 'QUEUED', ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (job_id, kind, _dumps(spec), request_id or None, request_hash, now, now, sweep_id, trial_number),
                )
                self._insert_events(job_id, 0, [ev.State(state="QUEUED", reason="queued")], now)
                self._writer.execute("UPDATE jobs SET last_sequence = 1 WHERE id = ?", (job_id,))
            self._notify(job_id, 1)
            return self.require_job_locked(job_id), True

    def require_job_locked(self, job_id: str) -> JobRecord:
        """Return the job as the writer connection sees it (call with the write lock held)."""
        row = self._writer.execute("SELECT rowid, * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    def append_events(self, job_id: str, events: Iterable[ev.Event | dict], relayed: int | None = None
                      ) -> list[StoredEvent]:  # fmt: skip
        """Append events (typed, or records with a "type") to a job that has not ended; return them as stored.

        Records are typed first (fields coerced). Progress, metric and checkpoint events also update the
        job row (latest progress, latest value of each metric, last checkpoint step) in the same
        transaction, and so does `relayed` (the position in the attempt's worker lines after these events:
        JobRecord.relayed). Events for an ended job are dropped.
        """
        events = [e if isinstance(e, ev.Event) else ev.from_dict(e) for e in events]
        if not events:
            return []
        for event in events:
            if isinstance(event, ev.State):
                raise ValueError("state events are written by set_state, which also updates the job")
            if not event.stored:
                raise ValueError(f"{event.TYPE} is a worker-protocol message, not a job event")
        with self._write_lock:
            job = self.require_job_locked(job_id)
            if job.terminal:
                return []
            now = time.time()
            progress, metrics, checkpoint_step = job.progress, dict(job.latest_metrics), job.last_checkpoint_step
            for event in events:
                if isinstance(event, ev.Progress):
                    progress = {k: v for k, v in ev.to_dict(event).items() if k != "type"}
                elif isinstance(event, ev.Metrics):
                    metrics.update(event.values)
                elif isinstance(event, ev.Checkpoint):
                    checkpoint_step = event.step
            with self._transaction():
                stored = self._insert_events(job_id, job.last_sequence, events, now)
                self._writer.execute(
                    "UPDATE jobs SET last_sequence = ?, progress = ?, latest_metrics = ?, last_checkpoint_step = ?,"
                    " relayed = ?, updated_at = ? WHERE id = ?",
                    (
                        stored[-1].sequence,
                        _dumps(progress) if progress is not None else None,
                        _dumps(metrics),
                        checkpoint_step,
                        job.relayed if relayed is None else relayed,
                        now,
                        job_id,
                    ),
                )
            self._notify(job_id, stored[-1].sequence)
            return stored

    def set_state(
        self,
        job_id: str,
        state: str,
        reason: str = "",
        *,
        attempt: int | None = None,
        device: str | None = None,
        worker_pid: int | None = None,
        resume_step: int | None = None,
        summary: dict | None = None,
        nodes: Iterable[str] = (),
    ) -> StoredEvent:
        """Move the job to `state` and append the state event; return the event.

        RUNNING counts an attempt and records the device, the nodes (kept once it ends) and worker pid; leaving
        RUNNING clears the pid; a terminal state records the finish time. Raises InvalidTransition for a move the
        state machine does not allow (e.g. out of SUCCEEDED).
        """
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        with self._write_lock:
            job = self.require_job_locked(job_id)
            if state not in _TRANSITIONS.get(job.state, set()):
                raise InvalidTransition(f"job {job_id} cannot go from {job.state} to {state}")
            now = time.time()
            event = ev.State(state=state, reason=reason)
            columns = {"state": state, "message": reason, "updated_at": now}
            if state == "RUNNING":
                attempt = attempt if attempt is not None else job.attempts + 1
                nodes = [str(n) for n in nodes]
                event = ev.State(state=state, reason=reason, attempt=attempt, device=device or "",
                                 resume_step=int(resume_step or 0), node=",".join(nodes))  # fmt: skip
                columns.update(attempts=attempt, device=device or "", worker_pid=worker_pid or 0, relayed=0,
                               nodes=_dumps(nodes))  # fmt: skip
                if job.started_at is None:
                    columns["started_at"] = now
            else:
                columns["worker_pid"] = 0
            if state in TERMINAL_STATES:
                columns["finished_at"] = now
            if summary is not None:
                columns["summary"] = _dumps(summary)
            with self._transaction():
                (stored,) = self._insert_events(job_id, job.last_sequence, [event], now)
                columns["last_sequence"] = stored.sequence
                assignments = ", ".join(f"{name} = ?" for name in columns)
                self._writer.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*columns.values(), job_id))
            self._notify(job_id, stored.sequence)
            return stored

    def note_queued(self, job_id: str, message: str) -> None:
        """Set a QUEUED job's message (what it waits for) with a log event saying it; nothing for a job that left
        QUEUED meanwhile."""
        with self._write_lock:
            job = self.require_job_locked(job_id)
            if job.state != "QUEUED":
                return
            now = time.time()
            with self._transaction():
                (stored,) = self._insert_events(job_id, job.last_sequence, [ev.Log(message=message)], now)
                self._writer.execute(
                    "UPDATE jobs SET message = ?, last_sequence = ?, updated_at = ? WHERE id = ?",
                    (message, stored.sequence, now, job_id),
                )
            self._notify(job_id, stored.sequence)

    def set_cancel_requested(self, job_id: str, message: str = "cancel requested") -> JobRecord:
        """Mark a job as asked to cancel (the scheduler stops its worker) with a log event saying so; return the job.

        The flag and its event are one transaction: every change of a job is an event.
        """
        with self._write_lock:
            job = self.require_job_locked(job_id)
            if job.terminal:
                raise InvalidTransition(f"job {job_id} already ended ({job.state}); it cannot be cancelled")
            now = time.time()
            with self._transaction():
                (stored,) = self._insert_events(job_id, job.last_sequence, [ev.Log(message=message)], now)
                self._writer.execute(
                    "UPDATE jobs SET cancel_requested = 1, last_sequence = ?, updated_at = ? WHERE id = ?",
                    (stored.sequence, now, job_id),
                )
            self._notify(job_id, stored.sequence)
            return self.require_job_locked(job_id)

    def _transaction(self):
        return _Transaction(self._writer)

    def _insert_events(self, job_id: str, last_sequence: int, events: list[ev.Event], now: float) -> list[StoredEvent]:
        stored = []
        for offset, event in enumerate(events, start=1):
            payload = ev.to_dict(event)
            del payload["type"]
            stored.append(StoredEvent(job_id, last_sequence + offset, now, event.TYPE, payload))
        self._writer.executemany(
            "INSERT INTO events (job_id, sequence, time, type, payload) VALUES (?, ?, ?, ?, ?)",
            [(e.job_id, e.sequence, e.time, e.type, _dumps(e.payload)) for e in stored],
        )
        metric_index.fold(self._writer, job_id, [(now, event) for event in events])
        return stored

    def _notify(self, job_id: str, sequence: int) -> None:
        if self._on_append is not None:
            self._on_append(job_id, sequence)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False

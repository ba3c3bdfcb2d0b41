"""The service's life cycle without training: crash leftovers, many short jobs (no fd, connection or
thread left behind), the control pipe after a worker is gone, cancel's event, reflection by the public
proto name. Each test fails on the code before issue 9's fixes (items 2, 5, 6, 7)."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest

from gansvc.runtime import events as ev
from gansvc.service.devices import DevicePool
from gansvc.runtime.rundir import clean_leftovers
from gansvc.service.scheduler import Scheduler
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.store import _IDLE_READERS, JobStore
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def open_fds() -> list[str]:
    """Return what every open fd of this process points at."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the fd listdir itself used, closed by now
            pass
    return targets


# ---------------------------------------------------------------------- crash leftovers (item 2)
def test_leftovers_of_a_killed_run_are_gone_after_a_restart_and_real_files_kept(tmp_path):
    state = tmp_path / "state"
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0"))
    server.start()
    job, _ = server.store.create_job("training", {"steps": 10})
    server.scheduler.cancel(job.id)  # a job that never runs again: only its files matter here
    server.shutdown(timeout=5)

    run = state / "jobs" / job.id
    # What kill -9 in the middle of gansvc.atomic writes leaves (names as tempfile.mkstemp makes them) ...
    leftovers = [run / "checkpoints" / ".step_0000100.pt.k3j_x9ab.tmp",
                 run / "samples" / ".step_0001000.png.a1b2c3d4.tmp", run / ".summary.json.zzzz0000.tmp"]  # fmt: skip
    # ... and the run's real files, some with names close to theirs.
    kept = [run / "checkpoints" / "step_0000100.pt", run / "samples" / "step_0001000.png", run / "notes.tmp",
            run / ".hidden", run / "checkpoints" / ".step.pt.tmp", run / "worker.log"]  # fmt: skip
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)

    again = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0"))
    again.start()
    try:
        assert [p for p in leftovers if p.exists()] == []
        assert [p for p in kept if not p.exists()] == []
    finally:
        again.shutdown(timeout=5)


def test_clean_leftovers_matches_the_atomic_writers_names(tmp_path):
    from gansvc.atomic import atomic_write

    target = tmp_path / "deep" / "checkpoint.pt"
    seen = []

    def interrupted(f):
        seen.extend(p for p in target.parent.iterdir())  # the temp file as atomic_write names it
        f.write(b"data")

    atomic_write(target, interrupted)
    (temp,) = seen
    temp.write_bytes(b"half")  # as if the process died before the rename
    assert clean_leftovers(tmp_path) == [temp]
    assert target.read_bytes() == b"data" and not temp.exists()


# ---------------------------------------------------------------------- many short jobs (item 5)
def _missing_upload_job(store: JobStore, tmp_path: Path) -> str:
    """Queue an evaluation whose uploaded samples file is gone: its worker fails before importing torch."""
    spec = {"source": "samples", "samples_file": str(tmp_path / "gone.npy"), "real": "fashion-mnist:test",
            "extractor": "fmnist-cnn", "device": "cpu", "samples_shape": [4, 1, 28, 28],
            "samples_dtype": "uint8"}  # fmt: skip
    return store.create_job("evaluation", spec)[0].id


@pytest.mark.slow  # ~23 s of 200 jobs; CI runs it
def test_two_hundred_short_jobs_leave_no_fd_connection_or_thread_behind(tmp_path):
    """Issue 9.5: each attempt leaked a SQLite reader connection (a thread-local one per reader thread)."""
    db = tmp_path / "gansvc.db"
    store = JobStore(db)
    scheduler = Scheduler(store, DevicePool.from_flag("cpu", 4), tmp_path / "jobs")
    (tmp_path / "jobs").mkdir()
    # The test watches the jobs through its own read-only connection, opened before counting.
    watcher = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)

    def unfinished() -> int:
        return watcher.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('QUEUED', 'RUNNING')").fetchone()[0]

    scheduler.start()
    try:
        for _ in range(4):  # warm up: the scheduler's pooled reader and its threads exist from here on
            _missing_upload_job(store, tmp_path)
        scheduler.wake()
        wait_for(lambda: unfinished() == 0, 60, "the warm-up jobs")
        wait_for(lambda: not scheduler.running_workers(), 10, "the workers to be released")
        # the reader pool keeps up to _IDLE_READERS connections (one per read that overlapped another): fill it
        # now, so that a pool grown by overlapping reads later (a bounded cache, not a leak) is already counted
        with contextlib.ExitStack() as stack:
            for _ in range(_IDLE_READERS):
                stack.enter_context(store._reading())
        gc.collect()  # objects earlier tests left (grpc channels, ...) close their fds now, not during the count
        fds, threads = sorted(open_fds()), threading.active_count()
        connections = sum(target == str(db) for target in fds)

        ids = [_missing_upload_job(store, tmp_path) for _ in range(200)]
        scheduler.wake()
        wait_for(lambda: unfinished() == 0, 240, "200 jobs")
        wait_for(lambda: not scheduler.running_workers(), 10, "the workers to be released")
        wait_for(lambda: threading.active_count() <= threads, 10, "the reader threads to end")

        failed = [store.require_job(job_id) for job_id in ids]
        assert {job.state for job in failed} == {"FAILED"}
        assert all("gone.npy" in job.message for job in failed), failed[0].message
        gc.collect()
        after = sorted(open_fds())
        assert sum(target == str(db) for target in after) == connections
        # nothing this test's 200 jobs opened is left: no more fds of any kind than before (pipes included)
        assert len(after) <= len(fds), sorted(set(after) - set(fds))
        assert sum(t.startswith("pipe:") for t in after) <= sum(t.startswith("pipe:") for t in fds)
        assert threading.active_count() == threads
    finally:
        scheduler.drain(timeout=10)
        watcher.close()
        store.close()


# ---------------------------------------------------------------------- the control pipe (item 5)
def test_a_stop_request_after_the_worker_is_gone_writes_to_no_fd(tmp_path):
    """Issue 9.5: the control pipe was closed before the worker left the table; a late "stop" then went
    to whatever file had reused the fd number."""
    store = JobStore(tmp_path / "gansvc.db")
    scheduler = Scheduler(store, DevicePool.from_flag("cpu", 1), tmp_path / "jobs")
    (tmp_path / "jobs").mkdir()
    ended = []
    original = scheduler.worker_exited

    def worker_exited(worker, returncode):
        ended.append((worker, worker._control_fd))  # the control pipe's fd number while the worker ran
        original(worker, returncode)

    scheduler.worker_exited = worker_exited
    scheduler.start()
    try:
        # A training job that fails at once (no such folder): a real worker of the kind that reads "stop".
        job, _ = store.create_job("training", {"dataset": "folder:/nonexistent/images", "model": "mlp", "steps": 5,
                                               "device": "cpu"})  # fmt: skip
        scheduler.wake()
        wait_for(lambda: store.require_job(job.id).terminal, 120, "the job to fail")
        wait_for(lambda: ended and not scheduler.running_workers(), 10, "the worker to be released")
        (worker, number), = ended
        assert number >= 0
        with pytest.raises(OSError):
            os.fstat(number)  # closed now
        reused = tmp_path / "reused"
        fd = os.open(reused, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fd != number:  # make the number point at this file, as a new connection would
                os.dup2(fd, number)
            worker.request_stop()  # e.g. drain() with its copy of the worker table
        finally:
            if fd != number:
                os.close(number)
            os.close(fd)
        assert reused.read_bytes() == b""
    finally:
        scheduler.drain(timeout=10)
        store.close()


# ---------------------------------------------------------------------- cancel's event (item 6)
def test_cancel_request_is_an_event_in_the_same_change(tmp_path):
    store = JobStore(tmp_path / "gansvc.db")
    try:
        job, _ = store.create_job("training", {})
        store.set_state(job.id, "RUNNING", "go")
        before = store.require_job(job.id)
        after = store.set_cancel_requested(job.id, "cancel requested: the job writes a checkpoint and stops")
        assert after.cancel_requested and after.last_sequence == before.last_sequence + 1
        (event,) = store.events_after(job.id, before.last_sequence)
        assert event.event == ev.Log(message="cancel requested: the job writes a checkpoint and stops")
    finally:
        store.close()


def test_the_proto_error_contract_lists_already_exists():
    proto = (ROOT / "protos" / "gansvc" / "v1" / "gansvc.proto").read_text()
    header = proto.split("syntax =")[0]
    contract = header[header.index("// Errors:"):]
    assert re.search(r"ALREADY_EXISTS\s+//\s+when a submission reuses a request_id", contract)


# ---------------------------------------------------------------------- reflection (item 7)
def test_reflection_serves_the_proto_under_its_public_name(tmp_path):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server = GanServer(ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            by_name = database.FindFileByName("gansvc/v1/gansvc.proto")
            by_symbol = database.FindFileContainingSymbol("gansvc.v1.GanService")
            services = set(database.get_services())
    finally:
        server.shutdown(timeout=5)
    assert by_name.name == by_symbol.name == "gansvc/v1/gansvc.proto"
    assert [s.name for s in by_name.service] == ["GanService"]
    assert {m.name for m in by_name.message_type} >= {"TrainingSpec", "Job", "JobEvent"}
    assert {"gansvc.v1.GanService", "grpc.health.v1.Health"} <= services

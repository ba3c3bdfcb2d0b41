"""Unit tests of the service's parts without a server: store, bus, validation, devices, auth, artifacts."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gansvc.service.artifacts import latest_checkpoint_step, list_artifacts, resolve_artifact
from gansvc.service.auth import TokenFile, check_authorization
from gansvc.service.bus import EventBus
from gansvc.service.devices import DevicePool
from gansvc.service.errors import InvalidField, MissingReference
from gansvc.service.messages import job_to_proto, pb, state_name, training_spec_fields
from gansvc.runtime import events as ev
from gansvc.service.scheduler import describe_exit
from gansvc.service.store import InvalidTransition, JobStore, RequestIdConflict
from gansvc.service.validation import DataRoots, evaluation_spec, training_spec
from gansvc.train.spec import TrainSpec


@pytest.fixture
def store(tmp_path):
    published = []
    store = JobStore(tmp_path / "jobs.db", on_append=lambda job, seq: published.append((job, seq)))
    store.published = published
    yield store
    store.close()


# ---------------------------------------------------------------------- store
def test_events_get_gapless_per_job_sequences_and_update_the_job(store):
    a, _ = store.create_job("training", {"steps": 10})
    b, _ = store.create_job("training", {"steps": 20})
    store.set_state(a.id, "RUNNING", "go", device="cpu", worker_pid=123)
    store.append_events(a.id, [{"type": "progress", "step": 1, "total_steps": 10}])
    store.append_events(b.id, [{"type": "log", "level": "info", "message": "hi"}])
    store.append_events(
        a.id,
        [
            {"type": "metrics", "step": 5, "values": {"d_loss": 1.0, "g_loss": 2.0}},
            {"type": "metrics", "step": 5, "values": {"fid": 40.0}},
            {"type": "checkpoint", "step": 5, "path": "checkpoints/step_0000005.pt"},
        ],
    )
    events = store.events_after(a.id)
    assert [e.sequence for e in events] == list(range(1, 7))
    assert [e.type for e in events] == ["state", "state", "progress", "metrics", "metrics", "checkpoint"]
    assert [e.sequence for e in store.events_after(b.id)] == [1, 2]
    assert [e.sequence for e in store.events_after(a.id, 4)] == [5, 6]
    job = store.require_job(a.id)
    assert job.last_sequence == 6 and job.state == "RUNNING" and job.worker_pid == 123 and job.attempts == 1
    assert job.latest_metrics == {"d_loss": 1.0, "g_loss": 2.0, "fid": 40.0}
    assert job.progress["step"] == 1 and job.last_checkpoint_step == 5
    # every commit was published with the job's newest sequence, in order
    assert [s for j, s in store.published if j == a.id] == [1, 2, 3, 6]


def test_store_survives_reopening_and_uses_wal(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job, _ = store.create_job("training", {"steps": 1}, request_id="r1", request_hash="h")
    store.set_state(job.id, "RUNNING", "x")
    store.close()
    again = JobStore(tmp_path / "jobs.db")
    assert again.require_job(job.id).state == "RUNNING"
    assert [e.payload["state"] for e in again.events_after(job.id)] == ["QUEUED", "RUNNING"]
    again.close()
    mode = sqlite3.connect(tmp_path / "jobs.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_relay_position_is_stored_with_its_events_and_starts_again_with_each_attempt(tmp_path):
    """Issue 19: a remote worker's relay position (JobRecord.relayed) is written in the transaction of its events,
    survives a reopening (a server killed with -9), starts at 0 with each RUNNING, and a version-2 database gains
    it."""
    store = JobStore(tmp_path / "jobs.db")
    job, _ = store.create_job("training", {"steps": 1})
    store.set_state(job.id, "RUNNING", "x")
    store.append_events(job.id, [ev.Progress(step=1)], relayed=3)
    store.append_events(job.id, [ev.Log(message="not relayed")])  # the scheduler's own events keep the position
    store.close()
    store = JobStore(tmp_path / "jobs.db")
    assert store.require_job(job.id).relayed == 3
    store.set_state(job.id, "QUEUED", "retry")
    store.set_state(job.id, "RUNNING", "attempt 2")
    assert store.require_job(job.id).relayed == 0
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")  # a version-2 database: no relayed column
    db.executescript("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, spec TEXT "
                     "NOT NULL, request_id TEXT UNIQUE, request_hash TEXT NOT NULL DEFAULT '', created_at REAL NOT "
                     "NULL, started_at REAL, finished_at REAL, updated_at REAL NOT NULL, message TEXT NOT NULL "
                     "DEFAULT '', device TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0, "
                     "cancel_requested INTEGER NOT NULL DEFAULT 0, last_sequence INTEGER NOT NULL DEFAULT 0, "
                     "worker_pid INTEGER NOT NULL DEFAULT 0, progress TEXT, latest_metrics TEXT NOT NULL DEFAULT "
                     "'{}', summary TEXT, last_checkpoint_step INTEGER NOT NULL DEFAULT 0, sweep_id TEXT NOT NULL "
                     "DEFAULT '', trial_number INTEGER NOT NULL DEFAULT 0); PRAGMA user_version=2;")  # fmt: skip
    db.execute("INSERT INTO jobs (id, kind, state, spec, created_at, updated_at) VALUES "
               "('train-1', 'training', 'RUNNING', '{}', 0, 0)")  # fmt: skip
    db.commit()
    db.close()
    old = JobStore(tmp_path / "old.db")
    assert old.require_job("train-1").relayed == 0
    old.close()


def test_state_machine_refuses_leaving_a_terminal_state(store):
    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "")
    store.set_state(job.id, "SUCCEEDED", "done", summary={"step": 3})
    with pytest.raises(InvalidTransition):
        store.set_state(job.id, "RUNNING", "")
    assert store.append_events(job.id, [{"type": "log", "message": "late"}]) == []
    record = store.require_job(job.id)
    assert record.finished_at is not None and record.summary == {"step": 3} and record.worker_pid == 0


def test_request_id_returns_the_same_job_or_conflicts(store):
    first, created = store.create_job("training", {"steps": 5}, request_id="abc", request_hash="h1")
    again, created_again = store.create_job("training", {"steps": 5}, request_id="abc", request_hash="h1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(RequestIdConflict) as caught:
        store.create_job("training", {"steps": 6}, request_id="abc", request_hash="h2")
    assert caught.value.job.id == first.id and "abc" in str(caught.value)


def test_list_jobs_pages_newest_first_with_filters(store):
    ids = [store.create_job("training", {"n": i})[0].id for i in range(7)]
    store.set_state(ids[2], "CANCELLED", "")
    page = store.list_jobs(limit=3)
    assert [j.id for j in page] == ids[::-1][:3]
    rest = store.list_jobs(limit=10, before_rowid=page[-1].rowid)
    assert [j.id for j in rest] == ids[::-1][3:]
    assert [j.id for j in store.list_jobs(["CANCELLED"])] == [ids[2]]
    assert len(store.list_jobs(["QUEUED"], kind="training")) == 6
    assert store.list_jobs(kind="evaluation") == []


def test_concurrent_writers_keep_sequences_gapless(store):
    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "")

    def write(n):
        for i in range(25):
            store.append_events(job.id, [{"type": "log", "message": f"{n}-{i}"}])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sequences = [e.sequence for e in store.events_after(job.id, 0, limit=1000)]
    assert sequences == list(range(1, 103))


# ---------------------------------------------------------------------- bus
def test_bus_wakes_a_waiter_on_publish_and_not_before():
    bus = EventBus()
    woke = []
    thread = threading.Thread(target=lambda: woke.append(bus.wait("j", 3, timeout=10.0)))
    thread.start()
    time.sleep(0.2)
    bus.publish("j", 3)  # not newer than what the waiter has: keeps waiting
    bus.publish("other", 9)
    time.sleep(0.2)
    assert woke == []
    started = time.monotonic()
    bus.publish("j", 4)
    thread.join(5.0)
    assert woke == [True] and time.monotonic() - started < 2.0
    with bus.subscribe("j"):
        bus.publish("j", 5)  # published between a watcher's read of the store and its wait: not missed
        assert bus.wait("j", 4, timeout=0.0) is True
        assert bus.wait("j", 5, timeout=0.05) is False
    bus.close()
    assert bus.wait("j", 4, timeout=5.0) is False and bus.closed


def test_bus_holds_nothing_for_jobs_nobody_watches():
    """Issue 9.5: the bus kept a condition (and a sequence) for every job it ever saw."""
    bus = EventBus()
    for i in range(200):
        job = f"job-{i}"
        waiter = threading.Thread(target=bus.wait, args=(job, 0, 5.0))
        waiter.start()
        while bus.watched() == 0:  # the waiter has subscribed
            time.sleep(0.001)
        bus.publish(job, 1)
        waiter.join(5.0)
        bus.publish(f"unwatched-{i}", 1)
    assert bus.watched() == 0


# ---------------------------------------------------------------------- messages
def test_training_spec_message_mirrors_trainspec_fields():
    """The proto must carry every TrainSpec setting under the same name, with a matching type."""
    from google.protobuf.descriptor import FieldDescriptor as F

    proto = training_spec_fields()
    spec_fields = {f.name: f.type for f in dataclasses.fields(TrainSpec)}
    assert set(proto) == set(spec_fields)
    kinds = {"str": {F.TYPE_STRING}, "int": {F.TYPE_INT32, F.TYPE_INT64}, "float": {F.TYPE_DOUBLE},
             "bool": {F.TYPE_BOOL}, "dict": {F.TYPE_MESSAGE}}  # fmt: skip
    for name, annotation in spec_fields.items():
        assert proto[name].type in kinds[str(annotation)], name
        assert proto[name].has_presence, f"{name} must be optional (unset = the trainer's default)"


def test_job_message_round_trips_the_resolved_spec(store):
    spec = TrainSpec(steps=7, model="mlp", ema_decay=0.0, spectral_norm=False).to_dict()
    job, _ = store.create_job("training", spec, request_id="rid")
    message = job_to_proto(store.require_job(job.id))
    back = {
        f.name: getattr(message.training, f.name) for f in message.training.DESCRIPTOR.fields if f.name != "request_id"
    }
    assert TrainSpec.from_dict(back) == TrainSpec.from_dict(spec)
    assert message.training.HasField("ema_decay") and message.training.ema_decay == 0.0  # an explicit zero survives
    assert state_name(message.state) == "QUEUED" and message.request_id == "rid"


def test_records_are_typed_when_stored_and_protocol_messages_refused(store):
    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "go")
    records = [{"type": "metrics", "step": "5", "values": {"a": 1, "b": "x", "c": True}}, {"type": "surprise", "x": 1}]
    metrics, odd = store.append_events(job.id, records)
    assert metrics.event == ev.Metrics(step=5, values={"a": 1.0})
    assert store.require_job(job.id).latest_metrics == {"a": 1.0}
    assert isinstance(odd.event, ev.Log) and "surprise" in odd.event.message
    with pytest.raises(ValueError):
        store.append_events(job.id, [ev.Finished(summary={})])
    with pytest.raises(ValueError):
        store.append_events(job.id, [ev.State(state="SUCCEEDED")])
    assert "SIGKILL" in describe_exit(-9) and "code 3" in describe_exit(3)


# ---------------------------------------------------------------------- validation
@pytest.fixture
def roots(tmp_path):
    inside = tmp_path / "data"
    (inside / "faces").mkdir(parents=True)
    (inside / "weights.pt").write_bytes(b"x")
    outside = tmp_path / "secret"
    outside.mkdir()
    (inside / "escape").symlink_to(outside)
    return DataRoots.of([inside])


def test_paths_are_confined_to_the_data_roots(roots, tmp_path):
    inside = roots.roots[0]
    assert roots.confine("data_root", "faces") == str(inside / "faces")
    assert roots.confine("data_root", str(inside / "faces")) == str(inside / "faces")
    assert roots.confine("inception_weights", "weights.pt", "file") == str(inside / "weights.pt")
    refused = ["../secret", str(tmp_path / "secret"), "escape", "faces/../../secret", "/etc", "missing"]
    for value in refused:
        with pytest.raises(InvalidField) as caught:
            roots.confine("data_root", value)
        assert caught.value.field == "data_root" and repr(value) in str(caught.value)
    with pytest.raises(InvalidField, match="without --data-root"):
        DataRoots.of([]).confine("data_root", "x")


def test_training_spec_validation_names_the_field(roots):
    pool = DevicePool([], 1)
    ok = training_spec(pb.TrainingSpec(steps=5, model="mlp", data_root="faces"), roots, pool)
    assert ok["steps"] == 5 and ok["data_root"] == str(roots.roots[0] / "faces")
    cases = [
        (pb.TrainingSpec(steps=5, batch_size=0), "batch_size", "0"),
        (pb.TrainingSpec(), "epochs", "steps=0"),
        (pb.TrainingSpec(steps=5, loss="l2"), "loss", "'l2'"),
        (pb.TrainingSpec(steps=5, device="cuda:1"), "device", "'cuda:1'"),
        (pb.TrainingSpec(steps=5, dataset="folder:escape"), "dataset", "'escape'"),
        (pb.TrainingSpec(steps=5, data_root="../secret"), "data_root", "'../secret'"),
    ]
    for message, field, value in cases:
        with pytest.raises(InvalidField) as caught:
            training_spec(message, roots, pool)
        assert caught.value.field == field and value in str(caught.value), str(caught.value)


def test_evaluation_spec_validation(roots, store, tmp_path, monkeypatch):
    monkeypatch.delenv("GANSVC_INCEPTION_WEIGHTS", raising=False)
    pool = DevicePool([], 1)
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    good = pb.EvaluationSpec(samples=pb.Tensor(shape=[4, 1, 28, 28], dtype=pb.DTYPE_UINT8, data=images.tobytes()))
    request = evaluation_spec(good, roots, pool, store, tmp_path)
    assert request.spec["real"] == "fashion-mnist:test" and np.array_equal(request.samples, images)
    bad = [
        (pb.EvaluationSpec(), "source"),
        (pb.EvaluationSpec(samples=pb.Tensor(shape=[4, 1, 28], dtype=pb.DTYPE_UINT8)), "samples.shape"),
        (pb.EvaluationSpec(samples=pb.Tensor(shape=[4, 1, 28, 28], dtype=pb.DTYPE_UINT8, data=b"12")), "samples.data"),
        (pb.EvaluationSpec(samples=good.samples, real="imagenet:val"), "real"),
        (pb.EvaluationSpec(samples=good.samples, extractor="vgg"), "extractor"),
        (pb.EvaluationSpec(samples=good.samples, extractor="inception-v3"), "inception_weights"),
        (pb.EvaluationSpec(samples=good.samples, real="/etc/passwd"), "real"),
        (pb.EvaluationSpec(samples=good.samples, real="fashion-mnist:val"), "real"),
        (pb.EvaluationSpec(checkpoint=pb.CheckpointRef(job_id="")), "checkpoint.job_id"),
    ]
    for message, field in bad:
        with pytest.raises(InvalidField) as caught:
            evaluation_spec(message, roots, pool, store, tmp_path)
        assert caught.value.field == field, str(caught.value)
    with pytest.raises(MissingReference, match="nope"):
        evaluation_spec(pb.EvaluationSpec(checkpoint=pb.CheckpointRef(job_id="nope")), roots, pool, store, tmp_path)
    floats = pb.Tensor(shape=[2, 1, 2, 2], dtype=pb.DTYPE_FLOAT32, data=np.full(8, 3.0, "<f4").tobytes())
    with pytest.raises(InvalidField, match=r"\[-1, 1\]"):
        evaluation_spec(pb.EvaluationSpec(samples=floats), roots, pool, store, tmp_path)


# ---------------------------------------------------------------------- devices
def test_device_pool_allocates_and_queues():
    pool = DevicePool.from_flag("cuda:0,cuda:2", cpu_slots=1)
    assert pool.check("cuda:1") and "not in this server's pool" in pool.check("cuda:1")
    assert pool.check("cuda", nproc=3).startswith("nproc")
    first = pool.allocate("auto")
    second = pool.allocate("cuda:2") or pool.allocate("cuda")
    assert {first.label, second.label} == {"cuda:0", "cuda:2"}
    assert pool.allocate("cuda") is None  # both busy: the job waits
    assert first.worker_env()["CUDA_VISIBLE_DEVICES"] in ("0", "2")
    pool.release(first)
    assert pool.allocate("cuda").label == first.label
    cpu = pool.allocate("cpu")
    assert cpu.label == "cpu" and cpu.worker_env()["CUDA_VISIBLE_DEVICES"] == ""
    assert pool.allocate("cpu") is None
    assert DevicePool([], 1).check("cuda") and "has none" in DevicePool([], 1).check("cuda")
    with pytest.raises(ValueError, match="--devices"):
        DevicePool.from_flag("gpu0", 1)


# ---------------------------------------------------------------------- auth
def test_token_file_checks_and_reloads(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# team tokens\nalpha\n\nbeta\n")
    tokens = TokenFile(path)
    assert check_authorization("Bearer alpha", tokens) is None
    assert check_authorization("bearer beta", tokens) is None
    assert "missing" in check_authorization(None, tokens)
    assert "Bearer" in check_authorization("Basic alpha", tokens)
    assert check_authorization("Bearer gamma", tokens) == "invalid token"
    path.write_text("gamma\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    time.sleep(1.1)  # re-read at most once a second
    assert check_authorization("Bearer gamma", tokens) is None
    assert check_authorization("Bearer alpha", tokens) == "invalid token"
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(ValueError, match="no tokens"):
        TokenFile(tmp_path / "empty")


# ---------------------------------------------------------------------- artifacts
def test_artifact_names_stay_inside_the_run_directory(tmp_path):
    run = tmp_path / "jobs" / "train-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000010.pt").write_bytes(b"a")
    os.link(run / "checkpoints" / "step_0000010.pt", run / "checkpoints" / "latest.pt")
    (run / "checkpoints" / "step_0000020.pt").write_bytes(b"b")
    (run / "worker_input.json").write_text("{}")
    (run / ".hidden").write_text("")
    (tmp_path / "jobs" / "secret").write_text("s")
    (run / "link").symlink_to(tmp_path / "jobs" / "secret")
    names = [a.name for a in list_artifacts(run)]
    assert names == ["checkpoints/latest.pt", "checkpoints/step_0000010.pt", "checkpoints/step_0000020.pt"]
    assert resolve_artifact(run, "checkpoints/latest.pt").read_bytes() == b"a"
    assert latest_checkpoint_step(run) == 10  # the hard link names its step, not the newest file
    for name in ("../secret", "/etc/passwd", "link", ".hidden", "checkpoints/../../secret", ""):
        with pytest.raises(InvalidField):
            resolve_artifact(run, name)
    for name in ("nope.pt", "worker_input.json"):
        with pytest.raises(MissingReference):
            resolve_artifact(run, name)
    assert isinstance(Path(resolve_artifact(run, "checkpoints/step_0000020.pt")), Path)


def test_every_event_type_becomes_its_message(store):
    from gansvc.service.messages import event_to_proto

    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "go", device="cuda:1", worker_pid=5)
    store.append_events(
        job.id,
        [
            {"type": "progress", "step": 3, "total_steps": 9, "epoch": 0.5, "images_per_sec": 100.0,
             "eta_seconds": 6.0, "d_loss": 1.0, "g_loss": float("nan")},
            {"type": "metrics", "step": 3, "values": {"fid": 12.5}},
            {"type": "samples", "step": 3, "path": "samples/step_0000003.png"},
            {"type": "checkpoint", "step": 3, "path": "checkpoints/step_0000003.pt"},
            {"type": "warning", "step": 3, "code": "mode_collapse", "message": "samples look alike"},
            {"type": "log", "level": "info", "message": "resumed", "resume_step": 2},
        ],
    )  # fmt: skip
    store.set_state(job.id, "FAILED", "training diverged at step 4")
    messages = [event_to_proto(e) for e in store.events_after(job.id)]
    kinds = [m.WhichOneof("payload") for m in messages]
    assert kinds == ["state", "state", "progress", "metrics", "samples", "checkpoint", "warning", "log", "state"]
    running, progress, metrics, samples, checkpoint, warning, log, failed = messages[1:]
    assert running.state.device == "cuda:1" and running.state.attempt == 1
    assert progress.progress.eta_seconds == 6.0 and progress.progress.g_loss != progress.progress.g_loss  # NaN kept
    assert metrics.metrics.values["fid"] == 12.5 and metrics.metrics.step == 3
    assert samples.samples.artifact == "samples/step_0000003.png" and checkpoint.checkpoint.step == 3
    assert (warning.warning.code, warning.warning.message) == ("mode_collapse", "samples look alike")
    assert log.log.message == "resumed"
    assert state_name(failed.state.state) == "FAILED" and failed.state.reason == "training diverged at step 4"
    assert all(m.job_id == job.id and m.time.seconds > 0 for m in messages)


def test_every_stored_event_type_converts_by_its_schema():
    """The one generic conversion: each field lands in the proto field of its name (or RENAME), by value."""
    import dataclasses

    from gansvc.api.convert import job_event

    examples = {int: 7, float: 0.25, str: "x", bool: True}
    for cls in ev.event_types().values():
        if cls.PROTO is None:
            continue
        values = {}
        for f in dataclasses.fields(cls):
            hint = ev._fields(cls)[f.name]
            values[f.name] = {"fid": 1.5} if hint in (dict[str, float], dict[str, Any]) else examples.get(hint, 3)
        if cls is ev.State:
            values["state"] = "RUNNING"
        message = job_event(cls(**values), "job-1", 4, 1000.5)
        assert message.WhichOneof("payload") == cls.PROTO and (message.job_id, message.sequence) == ("job-1", 4)
        payload = getattr(message, cls.PROTO)
        for name, value in values.items():
            proto_name = cls.RENAME.get(name, name)
            if proto_name not in payload.DESCRIPTOR.fields_by_name:
                continue  # a field the proto does not carry (Log.resume_step) is dropped
            got = getattr(payload, proto_name)
            if cls is ev.State and name == "state":
                got = state_name(got)
            assert (dict(got) if isinstance(value, dict) else got) == value, (cls.TYPE, name)


def test_failure_reasons_come_from_the_error_types():
    from gansvc.service.worker import failure_reason
    from gansvc.train import SpecError, TrainingDiverged
    from gansvc.train.launch import DistributedRunFailed, LaunchResult, RankFailure

    class NaNLoss(TrainingDiverged):  # another name, the same kind of failure
        pass

    assert failure_reason(NaNLoss("loss is NaN at step 4")) == "training diverged: loss is NaN at step 4"
    assert failure_reason(SpecError("batch_size", "must be > 0")).startswith("invalid spec: batch_size")
    result = LaunchResult(exit_code=1, failure=RankFailure(rank=1, exit_code=1, error="ValueError", message="bad"))
    assert failure_reason(DistributedRunFailed(result)) == "rank 1 failed (exit code 1): ValueError: bad"
    assert failure_reason(FileNotFoundError("no such file: x.npy")) == "no such file: x.npy"
    assert failure_reason(RuntimeError("boom")) == "RuntimeError: boom"

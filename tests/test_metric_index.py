"""GetMetrics from the store's metric index, with and without max_points, against straightforward references:

- the series equal a replay of the job's stored events as GetMetrics did it before the index (a later value at a
  step replaces the earlier one, a step's values carry the time of its latest metrics event, a Log with resume_step
  drops the points after it), for random histories with repeated, late and NaN points and resumes;
- a store written before the index (schema 3) gets it built from its events when opened;
- max_points keeps, per bucket of consecutive points, the minimum and maximum (found by a plain loop), the first
  and the last point, each with its own value and time, and leaves a series of at most max_points unchanged;
- a bad max_points is INVALID_ARGUMENT naming it.
The timing of a 100 000-point series is in tests/test_web.py (its seeded job).
"""

from __future__ import annotations

import math
import sqlite3

import grpc
import numpy as np
import pytest

from gansvc.client import GanClient
from gansvc.runtime import events as ev
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service import store as store_module
from gansvc.service.store import JobStore


def replay(store: JobStore, job_id: str) -> dict[int, tuple[float, dict[str, float]]]:
    """Return {step: (time, {name: value})} by replaying the job's events, as GetMetrics did before the index."""
    points: dict[int, tuple[float, dict]] = {}
    for stored in store.events_of_types(job_id, (ev.Metrics.TYPE, ev.Log.TYPE)):
        event = stored.event
        if isinstance(event, ev.Log):
            if event.resume_step is not None:
                points = {s: p for s, p in points.items() if s <= event.resume_step}
            continue
        _, values = points.get(event.step, (stored.time, {}))
        values.update(event.values)
        points[event.step] = (stored.time, values)
    return points


def as_series(points: dict[int, tuple[float, dict]]) -> dict[str, list[tuple[int, float, float]]]:
    """Return {name: [(step, value, time)]} in step order."""
    series: dict[str, list] = {}
    for step in sorted(points):
        moment, values = points[step]
        for name, value in values.items():
            series.setdefault(name, []).append((step, float(value), moment))
    return series


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_series_equal(store: JobStore, job_id: str) -> None:
    expected = as_series(replay(store, job_id))
    got = store.metric_series(job_id)
    assert sorted(got) == sorted(expected)
    for name, points in expected.items():
        steps, values, times = got[name]
        assert steps.tolist() == [p[0] for p in points], name
        assert all(same(v, p[1]) for v, p in zip(values.tolist(), points)), name
        assert times.tolist() == [p[2] for p in points], name


def random_history(store: JobStore, rng: np.random.Generator, batches: int = 60) -> str:
    """Write a job's metric history with every case the index handles; return its id."""
    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "running", device="cpu")
    step = 0
    for _ in range(batches):
        batch = []
        for _ in range(int(rng.integers(1, 40))):
            roll = rng.random()
            if roll < 0.03 and step > 5:  # a resumed run: back to an earlier checkpoint
                step = int(rng.integers(0, step))
                batch.append(ev.Log(message="resumed", resume_step=step))
                continue
            if roll < 0.15 and step > 0:  # a late or repeated step (an evaluation of an earlier step)
                at = int(rng.integers(max(0, step - 700), step + 1))
            else:
                step += int(rng.integers(1, 4))
                at = step
            names = rng.choice(["d_loss", "g_loss", "fid", "is_mean"], size=int(rng.integers(1, 4)), replace=False)
            values = {str(n): float(rng.normal()) if rng.random() > 0.05 else float("nan") for n in names}
            batch.append(ev.Metrics(step=at, values=values))
        store.append_events(job.id, batch)
    return job.id


def test_the_index_equals_a_replay_of_the_events(tmp_path):
    store = JobStore(tmp_path / "gansvc.db")
    try:
        rng = np.random.default_rng(7)
        jobs = [random_history(store, rng) for _ in range(3)]
        for job_id in jobs:
            assert_series_equal(store, job_id)
        # more than one chunk of points, appended one event at a time as a worker does
        long, _ = store.create_job("training", {})
        store.set_state(long.id, "RUNNING", "running", device="cpu")
        store.append_events(long.id, [ev.Metrics(step=s, values={"d_loss": s / 7}) for s in range(1, 1500)])
        for s in range(1500, 1530):
            store.append_events(long.id, [ev.Metrics(step=s, values={"d_loss": -s, "fid": s / 3})])
        store.append_events(long.id, [ev.Metrics(step=700, values={"fid": 1.0})])  # late: the step's time moves
        assert_series_equal(store, long.id)
        only = store.metric_series(long.id, ["fid"])
        assert list(only) == ["fid"] and only["fid"][0].tolist() == [700, *range(1500, 1530)]
        assert store.metric_series("train-unknown") == {}
    finally:
        store.close()


def test_a_store_written_before_the_index_gets_it_on_open(tmp_path):
    path = tmp_path / "gansvc.db"
    store = JobStore(path)
    jobs = [random_history(store, np.random.default_rng(seed), batches=20) for seed in (1, 2)]
    store.close()
    conn = sqlite3.connect(path)  # what a schema 3 store holds: no index, no jobs.nodes (schema 5)
    conn.execute("DROP TABLE metric_chunks")
    conn.execute("ALTER TABLE jobs DROP COLUMN nodes")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    store = JobStore(path)
    try:
        assert store._writer.execute("PRAGMA user_version").fetchone()[0] == store_module._SCHEMA_VERSION
        for job_id in jobs:
            assert_series_equal(store, job_id)
    finally:
        store.close()


def reference_kept(values: list[float], max_points: int) -> set[int]:
    """Return the indices a min/max downsampling must keep: per bucket (consecutive points between the edges the
    API documents) the first minimum and maximum, by a plain loop; and the first and last point."""
    n = len(values)
    if n <= max_points:
        return set(range(n))
    buckets = (max_points - 2) // 2
    edges = [int(e) for e in np.linspace(1, n - 1, buckets + 1)]
    kept = {0, n - 1}
    for lo, hi in zip(edges[:-1], edges[1:]):
        finite = [i for i in range(lo, hi) if not math.isnan(values[i])]
        if not finite:
            kept.add(lo)
            continue
        kept.add(min(finite, key=lambda i: (values[i], i)))
        kept.add(max(finite, key=lambda i: (values[i], -i)))
    return kept


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    store = JobStore(state / "gansvc.db")
    rng = np.random.default_rng(3)
    job, _ = store.create_job("training", {})
    store.set_state(job.id, "RUNNING", "running", device="cpu")
    n = 5000
    d_loss = rng.normal(size=n)
    d_loss[rng.choice(n, 40, replace=False)] = np.nan
    d_loss[1234], d_loss[4321] = 50.0, -50.0
    for start in range(0, n, 1000):
        store.append_events(job.id, [ev.Metrics(step=3 * s + 2, values={"d_loss": float(d_loss[s])})
                                     for s in range(start, start + 1000)])  # fmt: skip
        store.append_events(job.id, [ev.Metrics(step=3 * start + 2, values={"fid": float(100 - start / 100)})])
    store.set_state(job.id, "SUCCEEDED", "done")
    store.close()
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=1))
    server.start()
    server.scheduler._start_queued = lambda: None
    try:
        with GanClient(server.address, timeout=60) as client:
            yield client, job.id
    finally:
        server.shutdown(timeout=10)


def test_get_metrics_max_points_keeps_every_bucket_extreme(served):
    client, job_id = served
    full = client.metric_history(job_id)
    reference: dict[str, list[tuple[int, float, float]]] = {}
    for point in full.points:
        for name, value in point.values.items():
            reference.setdefault(name, []).append((point.step, value, point.time.ToNanoseconds()))
    assert {k: len(v) for k, v in reference.items()} == dict(full.total_points) == {"d_loss": 5000, "fid": 5}
    for max_points in (4, 7, 100, 2000, 5000, 6000):
        reply = client.metric_history(job_id, max_points=max_points)
        assert dict(reply.total_points) == dict(full.total_points)
        got: dict[str, list[tuple[int, float, int]]] = {}
        for point in reply.points:
            for name, value in point.values.items():
                got.setdefault(name, []).append((point.step, value, point.time.ToNanoseconds()))
        assert [p.step for p in reply.points] == sorted({p.step for p in reply.points})
        for name, points in reference.items():
            want = sorted(reference_kept([p[1] for p in points], max_points))
            expected = [points[i] for i in want]
            assert len(got[name]) == len(expected) <= max(max_points, 4)
            assert [p[0] for p in got[name]] == [p[0] for p in expected], (name, max_points)
            assert all(same(a[1], b[1]) and a[2] == b[2] for a, b in zip(got[name], expected)), (name, max_points)
        if max_points >= 5000:
            assert reply == full  # nothing to thin: every point, unchanged
    # the extremes survive any thinning
    two = client.metrics(job_id, names=["d_loss"], max_points=4)
    assert [v["d_loss"] for _, v in two][1:3] in ([-50.0, 50.0], [50.0, -50.0])


@pytest.mark.parametrize("max_points", [-1, 1, 3])
def test_a_bad_max_points_names_it(served, max_points):
    client, job_id = served
    with pytest.raises(grpc.RpcError) as error:
        client.metric_history(job_id, max_points=max_points)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("max_points: ") and str(max_points) in error.value.details()

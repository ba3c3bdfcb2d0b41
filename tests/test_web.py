"""`gansvc web` end to end: a real gRPC server, the dashboard started as its own process (`python -m gansvc.web`)
on a free 127.0.0.1 port, and real HTTP requests checked against the gRPC API's own answers.

The default run needs no training worker: the server's state directory is seeded through its JobStore (a finished
job with 100 000 metric points, a short one, an evaluation, a job that was retried), and the scheduler is drained
so that submitted jobs stay QUEUED. The slow tests train a real (tiny) job and load the pages in headless Chromium.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gansvc.client import GanClient, state_name
from gansvc.runtime import events as ev
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.store import JobStore
from gansvc.train.spec import TrainSpec
from gansvc.api.downsample import downsample

import devtools  # tests/devtools.py: pytest puts this folder on sys.path
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
LONG_POINTS = 100_000
TINY = {"dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": 30,
        "log_every": 5, "sample_every": 15, "checkpoint_every": 15, "eval_samples": 0,
        "tensorboard": False}  # fmt: skip


# ---------------------------------------------------------------------- seeding the server's state
def _png(step: int) -> bytes:
    image = Image.fromarray(np.full((8, 8), step % 256, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def seed_state(state: Path) -> dict:
    """Write jobs into a fresh state directory through the server's own store; return their ids and facts."""
    store = JobStore(state / "gansvc.db")
    spec = TrainSpec(**TINY).to_dict()
    rng = np.random.default_rng(0)
    facts = {}
    try:
        # a finished run with 100 000 metric points (a spike and a dip to keep), grids and a best checkpoint
        long, _ = store.create_job("training", dict(spec, steps=LONG_POINTS))
        store.set_state(long.id, "RUNNING", "running on cpu", device="cpu")
        d_loss = rng.normal(1.0, 0.1, LONG_POINTS)
        d_loss[31_337], d_loss[77_777] = 25.0, -9.0
        for start in range(0, LONG_POINTS, 10_000):
            store.append_events(long.id, [ev.Metrics(step=s + 1, values={"d_loss": float(d_loss[s]),
                                                                         "g_loss": float(-d_loss[s])})
                                          for s in range(start, start + 10_000)])  # fmt: skip
        run = state / "jobs" / long.id
        (run / "samples").mkdir(parents=True)
        for step in (25_000, 50_000, 100_000):
            name = f"samples/step_{step:07d}.png"
            (run / name).write_bytes(_png(step))
            store.append_events(long.id, [ev.Samples(step=step, path=name)])
        store.append_events(long.id, [ev.Best(step=50_000, metric="fid", value=12.5, path="checkpoints/best.pt",
                                              generator="generator_best.pt")])  # fmt: skip
        (run / "generator.pt").write_bytes(rng.bytes(3 * 1024 * 1024 + 17))  # several gRPC chunks
        best = {"metric": "fid", "step": 50_000, "value": 12.5, "checkpoint": "checkpoints/best.pt",
                "generator": "generator_best.pt"}  # as the trainer's summary names it
        store.set_state(long.id, "SUCCEEDED", "done", summary={"step": LONG_POINTS, "best": best})
        facts["long"] = long.id
        facts["d_loss"] = d_loss

        # a short finished run: its whole event stream is read over SSE
        short, _ = store.create_job("training", spec)
        store.set_state(short.id, "RUNNING", "running on cpu", device="cpu")
        for step in range(5, 155, 5):
            store.append_events(short.id, [ev.Progress(step=step, total_steps=150, images_per_sec=100.0),
                                           ev.Metrics(step=step, values={"fid": 100.0 - step / 10})])  # fmt: skip
        store.append_events(short.id, [ev.Warning(step=150, code="mode_collapse", message="samples look alike")])
        store.set_state(short.id, "SUCCEEDED", "done")
        facts["short"] = short.id

        # an evaluation that took a measurable time, and a job whose worker died once
        evaluation, _ = store.create_job("evaluation", {"real": "fashion-mnist:test"})
        store.set_state(evaluation.id, "RUNNING", "running on cpu", device="cpu")
        time.sleep(0.05)
        store.set_state(evaluation.id, "SUCCEEDED", "done")
        retried, _ = store.create_job("training", spec)
        store.set_state(retried.id, "RUNNING", "running on cpu", device="cpu")
        store.set_state(retried.id, "QUEUED", "worker died: resumes from its last checkpoint")
        store.set_state(retried.id, "RUNNING", "running on cpu", attempt=2, device="cpu")
        store.set_state(retried.id, "FAILED", "gave up")
        facts["retried"] = retried.id
    finally:
        store.close()
    return facts


def start_web(server_address: str, tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `python -m gansvc.web` on a free port; return (process, base URL)."""
    ready = tmp / f"web-{time.monotonic_ns()}.json"
    log = open(ready.with_suffix(".log"), "w")  # noqa: SIM115 - the process writes it until stop()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "gansvc.web", "--server", server_address, "--listen", "127.0.0.1:0",
         "--ready-file", str(ready), *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log.close()
    print(f"gansvc web log: {ready.with_suffix('.log')}")
    try:
        wait_for(lambda: ready.is_file() or process.poll() is not None, 60, what="gansvc web's ready file")
    except TimeoutError:
        process.kill()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"gansvc web exited: {ready.with_suffix('.log').read_text()}")
    return process, json.loads(ready.read_text())["url"].rstrip("/")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, fashion_mnist_root):
    state = tmp_path_factory.mktemp("state")
    facts = seed_state(state)
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=1,
                                    data_roots=[fashion_mnist_root]))  # fmt: skip
    server.start()
    # no workers in the default run: the scheduler starts nothing, so submitted jobs stay QUEUED (and cancel at once)
    server.scheduler._start_queued = lambda: None
    yield server, facts
    server.shutdown(timeout=10)


@pytest.fixture(scope="module")
def client(seeded):
    server, _ = seeded
    with GanClient(server.address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def web(seeded, tmp_path_factory):
    server, _ = seeded
    process, url = start_web(server.address, tmp_path_factory.mktemp("web"))
    yield url
    stop(process)


def get(url: str, headers: dict | None = None, method: str = "GET", timeout: float = 30.0):
    """Return (status, headers, body bytes) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get_json(url: str, **kwargs):
    status, headers, body = get(url, **kwargs)
    assert headers.get("content-type", "").startswith("application/json"), (status, body[:200])
    return status, json.loads(body)


class SSE:
    """A server-sent-event stream read over a plain HTTP connection."""

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 30.0):
        parsed = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        self.connection.request("GET", parsed.path + (f"?{parsed.query}" if parsed.query else ""),
                                headers=headers or {})  # fmt: skip
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()[:300]
        assert self.response.getheader("content-type").startswith("text/event-stream")

    def next(self) -> dict:
        """Return the next event as {"event", "id", "data"} (comments and retry lines skipped)."""
        fields = {"event": "message", "id": None, "data": ""}
        seen = False
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            line = line.decode().rstrip("\n")
            if not line:
                if seen:
                    fields["data"] = json.loads(fields["data"]) if fields["data"] else None
                    return fields
                continue
            name, _, value = line.partition(": ")
            if name in fields:
                fields[name] = value
                seen = True

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------------- the jobs list
def test_jobs_json_is_list_jobs(web, client, seeded):
    _, facts = seeded
    status, page = get_json(f"{web}/api/jobs?page_size=2")
    assert status == 200
    grpc_page = client.list_jobs_page(page_size=2)
    assert [j["id"] for j in page["jobs"]] == [j.id for j in grpc_page.jobs]
    assert page["next_page_token"] == grpc_page.next_page_token != ""
    # every page, newest first, as ListJobs
    ids, token = [], ""
    while True:
        _, page = get_json(f"{web}/api/jobs?page_size=2&page_token={urllib.parse.quote(token)}")
        ids += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert ids == [j.id for j in client.list_jobs()]
    # filters
    _, page = get_json(f"{web}/api/jobs?state=succeeded&kind=training")
    expected = [j.id for j in client.list_jobs(states=["SUCCEEDED"], kind="training")]
    assert [j["id"] for j in page["jobs"]] == expected and facts["long"] in expected
    _, page = get_json(f"{web}/api/jobs?state=FAILED,SUCCEEDED")
    assert {j["id"] for j in page["jobs"]} == {j.id for j in client.list_jobs(states=["FAILED", "SUCCEEDED"])}
    # fields: state, progress, attempts, best FID (the lowest in the history, not the latest)
    job = next(j for j in get_json(f"{web}/api/jobs")[1]["jobs"] if j["id"] == facts["short"])
    grpc_job = client.get_job(facts["short"])
    assert job["state"] == state_name(grpc_job.state) == "SUCCEEDED" and job["kind"] == "training"
    assert job["progress"]["step"] == grpc_job.progress.step == 150
    assert job["latest_metrics"]["fid"] == pytest.approx(grpc_job.latest_metrics["fid"])
    assert job["best_fid"] == pytest.approx(min(v["fid"] for _, v in client.metrics(facts["short"])))
    assert job["created_at"] == pytest.approx(grpc_job.created_at.ToNanoseconds() / 1e9)
    retried = next(j for j in get_json(f"{web}/api/jobs?state=failed")[1]["jobs"] if j["id"] == facts["retried"])
    assert retried["attempts"] == 2


def test_bad_filters_are_400_naming_the_parameter(web):
    status, body = get_json(f"{web}/api/jobs?state=sleeping")
    assert status == 400 and body["error"].startswith("state:") and "sleeping" in body["error"]
    status, body = get_json(f"{web}/api/jobs?kind=painting")
    assert status == 400 and body["error"].startswith("kind:")
    status, body = get_json(f"{web}/api/jobs?page_size=0")
    assert status == 400 and body["error"].startswith("page_size:")
    status, body = get_json(f"{web}/api/jobs?page_token=garbage")
    assert status == 400 and "page_token" in body["error"]  # the server's INVALID_ARGUMENT, passed on


def test_a_new_job_appears_within_two_seconds(web, client):
    stream = SSE(f"{web}/api/jobs/stream?page_size=20")
    try:
        first = stream.next()["data"]
        submitted = client.submit_training(TINY)
        start = time.monotonic()
        assert submitted.id not in [j["id"] for j in first["jobs"]]
        while True:
            page = stream.next()["data"]
            if page["jobs"] and page["jobs"][0]["id"] == submitted.id:  # newest first
                break
        assert time.monotonic() - start < 2.0
        assert page["jobs"][0]["state"] == "QUEUED"
    finally:
        stream.close()
        client.cancel(submitted.id)


# ---------------------------------------------------------------------- a job's events over SSE
def test_events_arrive_in_order_and_resume_from_last_event_id(web, client, seeded):
    _, facts = seeded
    job_id = facts["short"]
    expected = [e.sequence for e in client.watch(job_id, history_only=True)]
    stream = SSE(f"{web}/api/jobs/{job_id}/events")
    seen = []
    try:
        while True:
            event = stream.next()
            if event["event"] == "end":
                break
            assert int(event["id"]) == event["data"]["sequence"]
            seen.append(event["data"])
    finally:
        stream.close()
    assert [e["sequence"] for e in seen] == expected
    assert [e["type"] for e in seen][:2] == ["state", "state"] and seen[-1]["data"]["state"] == "SUCCEEDED"
    warning = next(e for e in seen if e["type"] == "warning")
    assert warning["data"] == {"step": 150, "code": "mode_collapse", "message": "samples look alike"}
    # a dropped connection: the browser reconnects with Last-Event-ID and gets exactly the rest
    cut = expected[len(expected) // 3]
    resumed = SSE(f"{web}/api/jobs/{job_id}/events?after=0", headers={"Last-Event-ID": str(cut)})
    rest = []
    try:
        while (event := resumed.next())["event"] != "end":
            rest.append(event["data"]["sequence"])
    finally:
        resumed.close()
    assert rest == expected[expected.index(cut) + 1 :]
    status, body = get_json(f"{web}/api/jobs/{job_id}/events", headers={"Last-Event-ID": str(expected[-1] + 5)})
    assert status == 400 and body["error"].startswith("Last-Event-ID:")


def test_live_events_resume_without_loss_or_duplicates(web, client):
    """A live stream cut after its first event, the job changing meanwhile, then resumed: every event once."""
    job = client.submit_training(TINY)  # stays QUEUED: the scheduler is drained
    stream = SSE(f"{web}/api/jobs/{job.id}/events")
    first = stream.next()
    stream.close()
    client.cancel(job.id)  # a log event and the CANCELLED state, while no page listens
    resumed = SSE(f"{web}/api/jobs/{job.id}/events", headers={"Last-Event-ID": first["id"]})
    rest = []
    try:
        while (event := resumed.next())["event"] != "end":
            rest.append(event["data"])
    finally:
        resumed.close()
    expected = list(client.watch(job.id, history_only=True))
    assert [first["data"]["sequence"]] + [e["sequence"] for e in rest] == [e.sequence for e in expected]
    assert rest[-1]["type"] == "state" and rest[-1]["data"]["state"] == "CANCELLED"


# ---------------------------------------------------------------------- curves
def test_downsampling_keeps_every_bucket_extreme():
    rng = np.random.default_rng(1)
    n = 10_000
    steps = np.arange(n) * 3 + 7
    values = rng.normal(size=n)
    values[rng.choice(n, 50, replace=False)] = np.nan
    kept_steps, kept_values = downsample(steps, values, 200)
    assert len(kept_steps) <= 200 and kept_steps[0] == steps[0] and kept_steps[-1] == steps[-1]
    assert np.all(np.diff(kept_steps) > 0)
    by_step = dict(zip(steps.tolist(), values.tolist()))
    assert all(by_step[s] == v or (math.isnan(by_step[s]) and math.isnan(v)) for s, v in zip(kept_steps, kept_values))
    assert np.nanmin(kept_values) == np.nanmin(values) and np.nanmax(kept_values) == np.nanmax(values)
    # the extremes of any window of the original that a bucket covers survive: check against a brute force
    buckets = (200 - 2) // 2
    edges = np.linspace(1, n - 1, buckets + 1).astype(int)
    kept = set(kept_steps.tolist())
    for lo, hi in zip(edges[:-1], edges[1:]):
        window = values[lo:hi]
        if np.all(np.isnan(window)):
            continue
        assert steps[lo + int(np.nanargmin(window))] in kept and steps[lo + int(np.nanargmax(window))] in kept
    short_steps, short_values = downsample(steps[:50], values[:50], 200)
    assert short_steps.tolist() == steps[:50].tolist()


def test_100k_point_series_load_in_under_a_second(web, client, seeded):
    _, facts = seeded
    url = f"{web}/api/jobs/{facts['long']}/series"
    timings = []
    for _ in range(3):  # the first is the job page's first data request: nothing of this job was read before
        start = time.perf_counter()
        status, _, body = get(url)
        timings.append(time.perf_counter() - start)
    cold = timings[0]
    start = time.perf_counter()
    history = client.metric_history(facts["long"], max_points=2000)  # the server's part: its metric index
    grpc_seconds = time.perf_counter() - start
    assert dict(history.total_points) == {"d_loss": LONG_POINTS, "g_loss": LONG_POINTS}
    reply = json.loads(body)
    assert status == 200 and grpc_seconds < 1.0 and cold < 1.0 and max(timings) < 1.0, (grpc_seconds, timings)
    d_loss = facts["d_loss"]
    assert reply["total"] == {"d_loss": LONG_POINTS, "g_loss": LONG_POINTS}
    curve = reply["series"]["d_loss"]
    assert len(curve["step"]) <= reply["points"] == 2000
    assert max(curve["value"]) == pytest.approx(d_loss.max()) == 25.0  # the spike
    assert min(curve["value"]) == pytest.approx(d_loss.min()) == -9.0  # the dip
    assert curve["step"][0] == 1 and curve["step"][-1] == LONG_POINTS
    assert all(v == pytest.approx(d_loss[s - 1]) for s, v in zip(curve["step"], curve["value"]))
    one = json.loads(get(url + "?names=g_loss&points=100")[2])
    assert list(one["series"]) == ["g_loss"] and len(one["series"]["g_loss"]["step"]) <= 100
    print(f"100k-point series: GetMetrics max_points=2000 {grpc_seconds * 1000:.0f} ms; over HTTP first view"
          f" {cold * 1000:.0f} ms, then {min(timings[1:]) * 1000:.0f} ms")


def test_series_follow_new_events_and_resumes_as_get_metrics(web, client, seeded):
    """The series of a job that goes on: new points are added, a resume drops the redone steps."""
    server, _ = seeded
    job = client.submit_training(TINY)  # QUEUED; its events are written here as a worker's would be
    url = f"{web}/api/jobs/{job.id}/series"
    assert json.loads(get(url)[2])["series"] == {}
    server.store.set_state(job.id, "RUNNING", "running on cpu", device="cpu")
    server.store.append_events(job.id, [ev.Metrics(step=s, values={"d_loss": s / 10}) for s in range(1, 21)])
    first = json.loads(get(url)[2])["series"]["d_loss"]
    assert first["step"] == list(range(1, 21))
    server.store.set_state(job.id, "QUEUED", "worker died")
    server.store.set_state(job.id, "RUNNING", "resumes from step 10", device="cpu", resume_step=10)
    server.store.append_events(job.id, [ev.Log(message="resumed from the checkpoint at step 10", resume_step=10)])
    server.store.append_events(job.id, [ev.Metrics(step=s, values={"d_loss": -s}) for s in range(11, 16)])
    after = json.loads(get(url)[2])["series"]["d_loss"]
    reference = client.metrics(job.id)
    assert after["step"] == [s for s, _ in reference] == list(range(1, 16))
    assert after["value"] == [v["d_loss"] for _, v in reference]
    client.cancel(job.id)


def test_best_checkpoint_and_grids(web, seeded):
    _, facts = seeded
    status, body = get_json(f"{web}/api/jobs/{facts['long']}/best")
    assert status == 200 and body["best"]["step"] == 50_000 and body["best"]["value"] == 12.5
    assert body["best"]["generator"] == "generator_best.pt"
    _, artifacts = get_json(f"{web}/api/jobs/{facts['long']}/artifacts")
    names = [a["name"] for a in artifacts["artifacts"]]
    assert [n for n in names if n.startswith("samples/")] == [f"samples/step_{s:07d}.png" for s in (25_000, 50_000,
                                                                                                    100_000)]
    status, headers, png = get(f"{web}/api/jobs/{facts['long']}/files/samples/step_0050000.png")
    assert status == 200 and headers["content-type"] == "image/png" and png == _png(50_000)
    assert headers["content-disposition"].startswith("inline")
    assert get_json(f"{web}/api/jobs/{facts['short']}/best")[1] == {"best": None}


# ---------------------------------------------------------------------- downloads
def test_downloads_are_byte_identical_to_the_grpc_download(web, client, seeded, tmp_path):
    _, facts = seeded
    status, headers, body = get(f"{web}/api/jobs/{facts['long']}/files/generator.pt")
    reference = client.download(facts["long"], "generator.pt", tmp_path / "generator.pt").read_bytes()
    assert status == 200 and body == reference and len(body) == 3 * 1024 * 1024 + 17
    assert headers["x-checksum-sha256"] == hashlib.sha256(reference).hexdigest()
    assert headers["content-length"] == str(len(reference))
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == 'attachment; filename="generator.pt"'
    status, body = get_json(f"{web}/api/jobs/{facts['long']}/files/checkpoints/none.pt")
    assert status == 404 and "none.pt" in body["error"]


# ---------------------------------------------------------------------- cancel
def test_cancel_from_the_page_and_cross_site_refused(web, client, seeded):
    job = client.submit_training(TINY)
    url = f"{web}/api/jobs/{job.id}/cancel"
    status, body = get_json(url, method="POST", headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-site" in body["error"]
    status, body = get_json(url, method="POST", headers={"Origin": web, "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert state_name(client.get_job(job.id).state) == "QUEUED"
    status, body = get_json(url, method="POST", headers={"Origin": web, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body["state"] == "CANCELLED"
    assert state_name(client.get_job(job.id).state) == "CANCELLED"
    assert get(url)[0] == 405  # a GET (a link, an <img>) cannot cancel
    _, facts = seeded
    status, body = get_json(f"{web}/api/jobs/{facts['short']}/cancel", method="POST")
    assert status == 409 and "SUCCEEDED" in body["error"]


# ---------------------------------------------------------------------- operators and the server page
def test_metrics_parse_and_equal_the_servers_counts(web, client):
    status, headers, body = get(f"{web}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    jobs = list(client.list_jobs())
    assert samples[("gansvc_up", ())] == 1
    for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
        for kind, proto_kind in (("training", 1), ("evaluation", 2), ("sweep", 3)):
            expected = sum(1 for j in jobs if state_name(j.state) == state and j.kind == proto_kind)
            assert samples[("gansvc_jobs", (("kind", kind), ("state", state)))] == expected, (state, kind)
    assert samples[("gansvc_queue_length", ())] == sum(1 for j in jobs if state_name(j.state) == "QUEUED")
    assert samples[("gansvc_worker_deaths_total", ())] == sum(max(j.attempts - 1, 0) for j in jobs) >= 1
    evaluations = [j for j in jobs if j.kind == 2 and state_name(j.state) == "SUCCEEDED"]
    assert samples[("gansvc_evaluation_seconds_count", ())] == len(evaluations) == 1
    seconds = sum((j.finished_at.ToNanoseconds() - j.started_at.ToNanoseconds()) / 1e9 for j in evaluations)
    assert samples[("gansvc_evaluation_seconds_sum", ())] == pytest.approx(seconds, rel=1e-6) and seconds >= 0.05


def test_server_info_is_get_server_info(web, client):
    status, info = get_json(f"{web}/api/server", timeout=120)  # the server's first answer imports torch
    reference = client.server_info()
    assert status == 200 and info["version"] == reference.version
    assert [m["name"] for m in info["models"]] == [m.name for m in reference.models]
    assert [d["name"] for d in info["devices"]] == [d.name for d in reference.devices]
    assert isinstance(info["kernel_selftest"], dict)
    assert get(f"{web}/server")[0] == 200


def test_pages_and_assets_are_served_from_the_package(web, seeded):
    _, facts = seeded
    for path in ("/", f"/jobs/{facts['long']}", "/server"):
        status, headers, body = get(web + path)
        assert status == 200 and headers["content-type"].startswith("text/html"), path
        for asset in __import__("re").findall(r'(?:src|href)="(/static/[^"]+)"', body.decode()):
            assert get(web + asset)[0] == 200, asset
        assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere
    assert get(f"{web}/static/vendor/uplot/LICENSE")[0] == 200


def test_unknown_job_is_404_with_a_message(web):
    status, body = get_json(f"{web}/api/jobs/train-000000000000")
    assert status == 404 and "train-000000000000" in body["error"] and body["code"] == "NOT_FOUND"
    status, headers, page = get(f"{web}/jobs/train-000000000000")
    assert status == 404 and headers["content-type"].startswith("text/html") and b"train-000000000000" in page
    assert get_json(f"{web}/api/jobs/train-000000000000/events")[0] == 404
    assert get(f"{web}/no/such/page")[0] == 404


def test_a_server_that_is_down_gets_a_clear_503(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    process, url = start_web(address, tmp_path)
    try:
        status, headers, page = get(f"{url}/")
        assert status == 503 and headers["content-type"].startswith("text/html")
        assert b"unavailable" in page and address.encode() in page
        status, body = get_json(f"{url}/api/jobs")
        assert status == 503 and body["code"] == "UNAVAILABLE" and address in body["error"]
        status, _, metrics = get(f"{url}/metrics")
        assert status == 200 and "gansvc_up 0.0" in metrics.decode()
    finally:
        stop(process)


def test_the_dashboard_tries_a_call_twice_while_the_server_is_unavailable(tmp_path):
    """One retry, not the Python client's default five (~3 s of pauses): a page is answered 503 at once."""
    from tests.test_client_retries import start_restarting_server

    servicer, address, server = start_restarting_server()
    process, url = start_web(address, tmp_path)
    try:
        before = servicer.calls
        status, body = get_json(f"{url}/api/jobs")
        assert status == 503 and body["code"] == "UNAVAILABLE" and "restarting" in body["error"]
        assert servicer.calls - before == 2
    finally:
        stop(process)
        server.stop(0)


def test_listen_refuses_a_bad_address(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gansvc.web", "--listen", "nowhere"], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--listen" in result.stderr and "Traceback" not in result.stderr
    with socket.socket() as busy:  # a port another program holds
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "gansvc.web", "--listen", taken], capture_output=True,
                                text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)  # fmt: skip
    assert result.returncode == 2 and f"--listen {taken}: cannot listen there" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- slow: real training, serve --web, a browser
@pytest.fixture(scope="module")
def served(tmp_path_factory, fashion_mnist_root):
    """`gansvc serve --web` as a user starts it: one command, the dashboard's URL in the ready file."""
    state = tmp_path_factory.mktemp("served")
    ready = state / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "gansvc.service.cli", "serve", "--listen", "127.0.0.1:0", "--state-dir",
         str(state / "state"), "--ready-file", str(ready), "--web", "127.0.0.1:0", "--data-root",
         str(fashion_mnist_root)], env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = wait_for(lambda: ready.is_file() and json.loads(ready.read_text()), 120, what="serve's ready file")
        yield info
    finally:
        process.terminate()
        process.wait(60)


@pytest.mark.slow
def test_serve_web_starts_the_dashboard_beside_the_server(served):
    assert served["web_url"].startswith("http://127.0.0.1:")
    status, page = get_json(served["web_url"] + "api/jobs")
    assert status == 200 and page == {"jobs": [], "next_page_token": ""}


@pytest.mark.slow
def test_a_real_training_job_live(served, tmp_path):
    base = served["web_url"].rstrip("/")
    with GanClient(served["address"], timeout=30) as client:
        job = client.submit_training(dict(TINY, steps=200, sample_every=50, checkpoint_every=100))
        stream = SSE(f"{base}/api/jobs/{job.id}/events")
        types, steps = [], []
        try:
            while (event := stream.next())["event"] != "end":
                types.append(event["data"]["type"])
                if event["data"]["type"] == "metrics":
                    steps.append(event["data"]["data"]["step"])
        finally:
            stream.close()
        assert state_name(client.get_job(job.id).state) == "SUCCEEDED"
        assert steps == sorted(steps) and len(steps) >= 40 and types.count("samples") == 4
        series = json.loads(get(f"{base}/api/jobs/{job.id}/series")[2])
        assert series["series"]["d_loss"]["step"] == [s for s, v in client.metrics(job.id) if "d_loss" in v]
        downloaded = client.download(job.id, "generator.pt", tmp_path / "g.pt").read_bytes()
        assert get(f"{base}/api/jobs/{job.id}/files/generator.pt")[2] == downloaded


ARTIFACTS = Path(os.environ.get("GANSVC_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "web"


@pytest.mark.slow
def test_the_pages_in_a_browser(served, tmp_path):
    """Headless Chromium over the DevTools protocol: what the pages show of a real job, the slider, cancel."""
    if not devtools.available():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    base = served["web_url"].rstrip("/")
    with GanClient(served["address"], timeout=30) as client, devtools.Browser(base + "/", tmp_path / "p") as page:
        page.wait("document.getElementById('live').textContent === 'live'", what="the jobs page's live stream")
        # a job submitted through the CLI shows on the open jobs page without a reload
        submit = subprocess.run(
            [sys.executable, "-m", "gansvc.clients.cli", "submit", "--server", served["address"], "--dataset",
             "fashion-mnist", "--model", "mlp", "--mlp-hidden", "64", "--z-dim", "16", "--batch-size", "32",
             "--steps", "100000", "--log-every", "10", "--sample-every", "150", "--checkpoint-every", "0",
             "--eval-samples", "0", "--no-tensorboard", "--threads", "1"],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        job_id = submit.stdout.split()[0]
        start = time.monotonic()
        page.wait(f"document.querySelector('tr[data-job=\"{job_id}\"]') !== null", 30, "the new job's row")
        shown_after = time.monotonic() - start
        assert shown_after < 5.0, shown_after  # the HTTP test holds the 2 s; a loaded browser gets some slack
        page.wait(f"document.querySelector('tr[data-job=\"{job_id}\"] [data-state=\"RUNNING\"]') !== null", 120,
                  "the job RUNNING")  # fmt: skip
        page.screenshot(ARTIFACTS / "jobs.png")
        # the job page: the loss curve gains points as training runs
        page.goto(f"{base}/jobs/{job_id}")
        losses = "Number((document.querySelector('[data-chart=\"Losses\"]') || {dataset: {}}).dataset.points || 0)"
        first = page.wait(losses, 120, "a loss curve")
        page.wait(f"{losses} > {first}", 60, "the loss curve growing")
        # the grid slider: the earliest and a later grid
        page.wait("document.getElementById('grid-slider').max >= 1", 180, "two sample grids")
        src = "document.getElementById('grid-image').dataset.artifact"
        page.evaluate("(() => { const s = document.getElementById('grid-slider'); s.value = 0;"
                      " s.dispatchEvent(new Event('input')); })()")  # fmt: skip
        assert page.evaluate(src) == "samples/step_0000150.png"
        page.evaluate("(() => { const s = document.getElementById('grid-slider'); s.value = s.max;"
                      " s.dispatchEvent(new Event('input')); })()")  # fmt: skip
        later = page.evaluate(src)
        assert later > "samples/step_0000150.png" and later.startswith("samples/step_")
        page.wait("document.getElementById('grid-image').complete && "
                  "document.getElementById('grid-image').naturalWidth > 0", 30, "the later grid's image")  # fmt: skip
        assert page.evaluate("document.querySelectorAll('#log [data-type=\"metrics\"]').length") > 0
        page.screenshot(ARTIFACTS / "job.png")
        # cancel from the page
        page.evaluate("document.getElementById('cancel').click()")
        job = client.wait(job_id, timeout=180)
        assert state_name(job.state) == "CANCELLED"
        page.wait("document.querySelector('#job-state [data-state=\"CANCELLED\"]') !== null", 30,
                  "the CANCELLED state")  # fmt: skip
        # the server page: GetServerInfo's devices and models
        page.goto(f"{base}/server")
        info = client.server_info()
        page.wait("document.querySelectorAll('#models tbody tr').length > 0", 120, "the models table")
        shown = page.evaluate("[...document.querySelectorAll('#models tbody tr td:first-child')]"
                              ".map(c => c.textContent)")  # fmt: skip
        assert shown == [m.name for m in info.models]
        assert page.evaluate("document.querySelector('#devices tbody td').textContent") == info.devices[0].name
        page.screenshot(ARTIFACTS / "server.png")

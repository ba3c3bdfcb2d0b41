"""`gansvc web`'s compare, sweep and submit endpoints against a real gRPC server (seeded through its own JobStore, no
training worker: submitted jobs stay QUEUED), each answer checked against the gRPC API's own.

- /api/compare: every job's series is its GetMetrics (steps, values and each point's time), and the spec diff lists
  exactly the fields whose resolved values differ.
- /api/sweeps/ID: the trials are the sweep's Trial* events and its trial jobs (ListJobs, Job.sweep_id); /api/sweeps
  is ListJobs of kind sweep; /api/jobs?sweep=ID is the sweep's trial jobs, paged.
- /api/spec/fields is TrainSpec's own field list (names, types, defaults, help, bounds, choices), through
  GetServerInfo; a submitted form or TOML spec creates the job ListJobs shows, and a bad value is a 400 naming the
  field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import urllib.error
import urllib.request

import pytest
from google.protobuf.json_format import MessageToDict

from gansvc.api.convert import pb
from gansvc.client import GanClient, state_name
from gansvc.runtime import events as ev
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.store import JobStore
from gansvc.service.sweeps import SweepManager
from gansvc.sweep_spec import check_sweep, trial_settings
from gansvc.train.spec import TrainSpec

import devtools  # tests/devtools.py
from test_web import ARTIFACTS, TINY, get, get_json, start_web, stop  # tests/test_web.py's helpers

SWEEP_PARAMS = [{"lr_g": 1e-3, "z_dim": 16}, {"lr_g": 3e-4, "z_dim": 32}, {"lr_g": 2e-3, "z_dim": 16}]


def seed(state) -> dict:
    """Two training runs that differ in three settings, and a sweep of three trials (one pruned, one running)."""
    store = JobStore(state / "gansvc.db")
    facts = {}
    try:
        base = TrainSpec(**TINY).to_dict()
        for key, settings in (("a", {}), ("b", {"z_dim": 32, "lr_g": 5e-4, "loss": "hinge"})):
            job, _ = store.create_job("training", dict(base, **settings))
            store.set_state(job.id, "RUNNING", "running on cpu", device="cpu")
            for step in range(5, 55, 5):
                values = {"d_loss": 1.0 / step, "g_loss": step / 10}
                if step % 25 == 0:
                    values["fid"] = 300.0 - step - (7 if key == "b" else 0)
                store.append_events(job.id, [ev.Metrics(step=step, values=values)])
            store.set_state(job.id, "SUCCEEDED", "done")
            facts[key] = job.id

        space = {"lr_g": {"low": 1e-4, "high": 1e-2, "log": True}, "z_dim": [16, 32]}
        raw = {"base": dict(TINY, eval_samples=64, eval_every=15), "search": {"method": "random", "trials": 3,
               "space": space}, "objective": {"metric": "fid"}, "pruner": {"method": "median"}}  # fmt: skip
        spec = check_sweep(raw, TrainSpec(**raw["base"]).to_dict())
        sweep, _ = store.create_job("sweep", spec)
        store.set_state(sweep.id, "RUNNING", "3 trials")
        trials = []
        for number, params in enumerate(SWEEP_PARAMS):
            settings = TrainSpec.from_dict(trial_settings(spec, params)).to_dict()  # resolved, as the driver does
            trial, _ = store.create_job("training", settings, sweep_id=sweep.id, trial_number=number)
            trials.append(trial.id)
            store.append_events(sweep.id, [ev.TrialStarted(trial=number, job_id=trial.id, params=params)])
            store.set_state(trial.id, "RUNNING", "running on cpu", device="cpu")
        store.append_events(sweep.id, [ev.TrialReported(trial=0, job_id=trials[0], step=15, value=90.0),
                                       ev.TrialReported(trial=0, job_id=trials[0], step=30, value=80.0)])  # fmt: skip
        store.set_state(trials[0], "SUCCEEDED", "done")
        store.append_events(sweep.id, [ev.TrialFinished(trial=0, job_id=trials[0], state="COMPLETE", value=80.0),
                                       ev.SweepBest(trial=0, job_id=trials[0], value=80.0, params=SWEEP_PARAMS[0]),
                                       ev.TrialReported(trial=1, job_id=trials[1], step=15, value=120.0),
                                       ev.TrialPruned(trial=1, job_id=trials[1], step=15, value=120.0)])  # fmt: skip
        store.set_state(trials[1], "CANCELLED", "pruned")
        store.append_events(sweep.id, [ev.TrialFinished(trial=1, job_id=trials[1], state="PRUNED",
                                                        reason="pruned at step 15"),
                                       ev.TrialReported(trial=2, job_id=trials[2], step=15, value=70.0)])  # fmt: skip
        facts["sweep"], facts["trials"] = sweep.id, trials
    finally:
        store.close()
    return facts


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, fashion_mnist_root):
    state = tmp_path_factory.mktemp("state")
    facts = seed(state)
    with pytest.MonkeyPatch.context() as patch:
        # no sweep driver: the seeded sweep (requeued by the start, as after a crash) must not create more trials
        patch.setattr(SweepManager, "_drive", lambda self, job_id: None)
        server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=1,
                                        data_roots=[fashion_mnist_root]))  # fmt: skip
        server.start()
        server.scheduler._start_queued = lambda: None  # no workers: submitted jobs stay QUEUED
        # the server's first GetServerInfo loads the kernels extension (10-16 s on a loaded 2-core machine): paid
        # here once, so the tests time the dashboard's own work
        with GanClient(server.address, timeout=60) as client:
            client.server_info()
        yield server, facts
        server.shutdown(timeout=10)


@pytest.fixture(scope="module")
def client(seeded):
    with GanClient(seeded[0].address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def web(seeded, tmp_path_factory):
    process, url = start_web(seeded[0].address, tmp_path_factory.mktemp("web"))
    yield url
    stop(process)


def post_json(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    """POST a JSON body (or raw bytes); return (status, the JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ---------------------------------------------------------------------- compare
def test_compare_series_are_get_metrics_and_the_diff_is_the_differing_fields(web, client, seeded):
    _, facts = seeded
    ids = [facts["a"], facts["b"], facts["trials"][0]]
    status, body = get_json(f"{web}/api/compare?jobs={','.join(ids)}&points=100000")
    assert status == 200, body
    assert [j["id"] for j in body["jobs"]] == ids
    for job_id in ids:
        history = client.stub.GetMetrics(pb.GetMetricsRequest(job_id=job_id), timeout=30)
        expected = {}
        for point in history.points:
            for name, value in point.values.items():
                series = expected.setdefault(name, {"step": [], "time": [], "value": []})
                series["step"].append(point.step)
                series["time"].append(point.time.seconds + point.time.nanos / 1e9)
                series["value"].append(value)
        got = body["series"][job_id]
        assert set(got) == set(expected), job_id
        for name, series in expected.items():
            assert got[name]["step"] == series["step"] and got[name]["value"] == series["value"], (job_id, name)
            assert got[name]["time"] == pytest.approx(series["time"], abs=1e-6)
    specs = {i: {f.name: MessageToDict(v) if f.message_type else v
                 for f in pb.TrainingSpec.DESCRIPTOR.fields if f.name != "request_id"
                 for v in [getattr(client.get_job(i).training, f.name)]} for i in ids}  # fmt: skip
    differing = {n for n in set().union(*specs.values()) if len({json.dumps(s.get(n)) for s in specs.values()}) > 1}
    assert differing >= {"z_dim", "lr_g", "loss", "eval_samples"}  # b's settings, and the sweep's base
    assert {d["field"] for d in body["diff"]} == differing
    for entry in body["diff"]:
        assert set(entry["values"]) == set(ids)
    # two jobs: exactly the three settings b changed
    _, pair = get_json(f"{web}/api/compare?jobs={facts['a']},{facts['b']}&names=fid")
    assert {d["field"] for d in pair["diff"]} == {"z_dim", "lr_g", "loss"}
    assert {n for s in pair["series"].values() for n in s} == {"fid"}
    # a series over `points` keeps both ends, downsampled by the dashboard's own rule
    _, small = get_json(f"{web}/api/compare?jobs={facts['a']}&points=4")
    steps = small["series"][facts["a"]]["d_loss"]["step"]
    assert len(steps) == 4 and (steps[0], steps[-1]) == (5, 50)

    status, body = get_json(f"{web}/api/compare")
    assert status == 400 and "jobs" in body["error"]
    status, body = get_json(f"{web}/api/compare?jobs={facts['a']},t-nope")
    assert status == 404 and body["code"] == "NOT_FOUND"


def test_the_compare_page_is_served(web, seeded):
    status, headers, body = get(f"{web}/compare?jobs={seeded[1]['a']}")
    assert status == 200 and b"compare.js" in body
    for asset in ("compare.js", "sweep.js", "submit.js"):
        status, _, body = get(f"{web}/static/{asset}")
        assert status == 200 and len(body) > 200, asset


# ---------------------------------------------------------------------- sweeps
def test_the_sweep_json_is_its_trials(web, client, seeded):
    _, facts = seeded
    sweep_id = facts["sweep"]
    status, body = get_json(f"{web}/api/sweeps/{sweep_id}")
    assert status == 200, body
    assert body["sweep"]["id"] == sweep_id and body["metric"] == "fid" and body["direction"] == "minimize"
    assert body["params"] == ["lr_g", "z_dim"]
    # the reference: the sweep's own events (WatchJob) and its trial jobs (ListJobs, Job.sweep_id)
    trial_jobs = {j.id: j for j in client.list_jobs(kind="training", page_size=500) if j.sweep_id == sweep_id}
    assert sorted(trial_jobs) == sorted(facts["trials"])
    events = list(client.watch_call(sweep_id, history_only=True))
    started = {e.trial_started.trial: e.trial_started for e in events if e.WhichOneof("payload") == "trial_started"}
    finished = {e.trial_finished.trial: e.trial_finished for e in events if e.WhichOneof("payload") == "trial_finished"}
    pruned = {e.trial_pruned.trial for e in events if e.WhichOneof("payload") == "trial_pruned"}
    reports = {}
    for e in events:
        if e.WhichOneof("payload") == "trial_reported":
            reports.setdefault(e.trial_reported.trial, []).append([e.trial_reported.step, e.trial_reported.value])
    assert [t["trial"] for t in body["trials"]] == sorted(started) == [0, 1, 2]
    for row in body["trials"]:
        number = row["trial"]
        job = trial_jobs[started[number].trial_job_id]
        assert row["job_id"] == job.id and job.trial_number == number
        assert row["params"] == MessageToDict(started[number].params) == SWEEP_PARAMS[number]
        assert row["job_state"] == state_name(job.state)
        assert row["state"] == (finished[number].state if number in finished else state_name(job.state))
        assert row["pruned"] == (number in pruned)
        assert row["reports"] == reports.get(number, [])
        if number in finished and finished[number].HasField("value"):
            assert row["value"] == finished[number].value
        else:
            assert row["value"] == (reports[number][-1][1] if number in reports else None)
    assert [r["state"] for r in body["trials"]] == ["COMPLETE", "PRUNED", "RUNNING"]
    assert body["best"] == {"trial": 0, "job_id": facts["trials"][0], "value": 80.0, "params": SWEEP_PARAMS[0]}

    status, listed = get_json(f"{web}/api/sweeps")
    assert status == 200 and [j["id"] for j in listed["jobs"]] == [j.id for j in client.list_jobs(kind="sweep")]
    status, page = get_json(f"{web}/api/sweeps/{facts['a']}")
    assert status == 400 and "not a sweep" in page["error"]
    status, _, html = get(f"{web}/sweeps/{sweep_id}")
    assert status == 200 and b"sweep.js" in html


def test_the_jobs_page_filters_by_sweep(web, client, seeded):
    _, facts = seeded
    sweep_id = facts["sweep"]
    newest_first = [j.id for j in client.list_jobs(page_size=500) if j.sweep_id == sweep_id]
    _, body = get_json(f"{web}/api/jobs?sweep={sweep_id}")
    assert [j["id"] for j in body["jobs"]] == newest_first and body["next_page_token"] == ""
    _, first = get_json(f"{web}/api/jobs?sweep={sweep_id}&page_size=2")
    _, second = get_json(f"{web}/api/jobs?sweep={sweep_id}&page_size=2&page_token={first['next_page_token']}")
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == newest_first and second["next_page_token"] == ""
    _, running = get_json(f"{web}/api/jobs?sweep={sweep_id}&state=RUNNING")
    assert [j["id"] for j in running["jobs"]] == [
        j.id for j in client.list_jobs(states=["RUNNING"], page_size=500) if j.sweep_id == sweep_id]
    _, evaluations = get_json(f"{web}/api/jobs?sweep={sweep_id}&kind=evaluation")
    assert evaluations["jobs"] == []
    status, body = get_json(f"{web}/api/jobs?sweep={facts['a']}")
    assert status == 400 and "sweep" in body["error"]


# ---------------------------------------------------------------------- submit
def test_the_form_fields_are_the_specs_own(web):
    status, body = get_json(f"{web}/api/spec/fields")
    assert status == 200
    declared = dataclasses.fields(TrainSpec)
    assert [f["name"] for f in body["fields"]] == [f.name for f in declared]
    for got, field in zip(body["fields"], declared):
        meta = field.metadata
        assert got["type"] == field.type and got["help"] == meta["help"], field.name
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert got["default"] == pytest.approx(default) if isinstance(default, float) else got["default"] == default
        assert got["min"] == meta["min"] and got["max"] == (None if meta["max"] is None else float(meta["max"]))
        assert got["choices"] == list(meta["choices"]() if meta["choices"] else ()), field.name
    by_name = {f["name"]: f for f in body["fields"]}
    assert "mlp" in by_name["model"]["choices"] and by_name["z_dim"]["min"] == 1  # the registry's, not hand-copied
    assert by_name["loss"]["default"] == "" and by_name["loss"]["choices"][0] == ""  # the declared default: the model's
    status, _, html = get(f"{web}/submit")
    assert status == 200 and b"submit.js" in html


def test_a_submitted_form_creates_the_job_and_a_bad_value_names_its_field(web, client):
    form = {"dataset": "fashion-mnist", "model": "mlp", "z_dim": "24", "mlp_hidden": "48", "lr_g": "0.0005",
            "steps": "40", "tensorboard": "false", "eval_samples": "0", "batch_size": "16", "seed": ""}  # fmt: skip
    status, job = post_json(f"{web}/api/submit", {"settings": form, "request_id": "web-form-1"},
                            headers={"Origin": web})  # fmt: skip
    assert status == 200, job
    listed = {j.id: j for j in client.list_jobs(kind="training", page_size=500)}
    assert job["id"] in listed and state_name(listed[job["id"]].state) == "QUEUED"
    spec = listed[job["id"]].training
    assert (spec.model, spec.z_dim, spec.mlp_hidden, spec.steps, spec.batch_size) == ("mlp", 24, 48, 40, 16)
    assert math.isclose(spec.lr_g, 5e-4) and spec.tensorboard is False and spec.seed == TrainSpec().seed

    toml = 'model = "mlp"\nz_dim = 20\nmlp_hidden = 32\nsteps = 10\neval_samples = 0\ntensorboard = false\n'
    status, job = post_json(f"{web}/api/submit", {"toml": toml})
    assert status == 200, job
    spec = client.get_job(job["id"]).training
    assert (spec.model, spec.z_dim, spec.mlp_hidden, spec.steps) == ("mlp", 20, 32, 10)

    bad = [({"settings": {"model": "mlp", "z_dim": "0", "steps": "10"}}, "z_dim"),  # the server's bound
           ({"settings": {"model": "no-such-model", "steps": "10"}}, "model"),  # the registry's choices
           ({"settings": {"model": "mlp", "z_dim": "many"}}, "z_dim"),  # not a whole number
           ({"settings": {"model": "mlp", "lr_g": "fast"}}, "lr_g"),
           ({"settings": {"model": "mlp", "tensorboard": "perhaps"}}, "tensorboard"),
           ({"settings": {"no_such_setting": "1"}}, "no_such_setting"),
           ({"toml": "model = \"mlp\"\nsteps = -3\n"}, "steps"),
           ({"toml": "model = = mlp"}, "toml")]  # fmt: skip
    before = len(list(client.list_jobs(page_size=500)))
    for body, field in bad:
        status, answer = post_json(f"{web}/api/submit", body)
        assert status == 400 and answer["code"] == "INVALID_ARGUMENT", (body, answer)
        assert answer["field"] == field and field in answer["error"], (body, answer)
    assert len(list(client.list_jobs(page_size=500))) == before, "a refused form created a job"
    status, answer = post_json(f"{web}/api/submit", {"settings": {"model": "mlp"}},
                               headers={"Origin": "http://x.example"})  # fmt: skip
    assert status == 403 and answer["code"] == "CROSS_SITE"
    status, answer = post_json(f"{web}/api/submit", b"not json")
    assert status == 400 and answer["field"] == "body"


# ---------------------------------------------------------------------- in a browser
@pytest.mark.slow
def test_the_pages_in_a_browser(web, client, seeded, tmp_path):
    """Headless Chromium: the compare chart and diff, the sweep's table, chart and best link, a form submitted from
    the page and a refused value shown next to its field; screenshots go to the test artefacts."""
    if not devtools.available():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    check_pages_in_a_browser(web, client, seeded[1], tmp_path)


def check_pages_in_a_browser(web: str, client, facts: dict, tmp_path) -> None:
    with devtools.Browser(f"{web}/compare?jobs={facts['a']},{facts['b']}", tmp_path / "profile") as page:
        page.wait("document.querySelectorAll('#diff tr[data-field]').length > 0", 60, "the spec diff")
        shown = page.evaluate("[...document.querySelectorAll('#diff tr[data-field]')].map(r => r.dataset.field)")
        assert sorted(shown) == ["loss", "lr_g", "z_dim"]
        page.wait("document.querySelector('#chart .u-over') !== null", 30, "the compare chart")
        metric = page.evaluate("document.getElementById('chart').dataset.metric")
        assert metric == "fid"  # both report it, and the page shows it first
        page.screenshot(ARTIFACTS / "compare.png")

        page.goto(f"{web}/sweeps/{facts['sweep']}")
        page.wait("document.querySelectorAll('#trials tr[data-trial]').length === 3", 60, "the trials table")
        assert page.evaluate("document.querySelector('#best a').getAttribute('href')") == f"/jobs/{facts['trials'][0]}"
        assert page.evaluate("document.querySelectorAll('#parallel polyline').length") == 3
        assert page.evaluate("document.querySelector('#objective-chart .u-over') !== null")
        page.screenshot(ARTIFACTS / "sweep.png")

        page.goto(f"{web}/submit")
        page.wait("document.querySelectorAll('#fields tr[data-row]').length > 0", 60, "the form")
        assert page.evaluate("document.querySelectorAll('#fields tr[data-row]').length") == len(
            dataclasses.fields(TrainSpec))
        page.evaluate("document.getElementById('f-model').value = 'mlp'; document.getElementById('f-z_dim').value = "
                      "'0'; document.getElementById('submit').click()")  # fmt: skip
        page.wait("document.querySelector('[data-error-for=\"z_dim\"]').textContent.includes('z_dim')", 30,
                  "the refused z_dim next to its field")  # fmt: skip
        page.screenshot(ARTIFACTS / "submit-error.png")
        page.evaluate("document.getElementById('f-z_dim').value = '12'; document.getElementById('f-steps').value = "
                      "'20'; document.getElementById('submit').click()")  # fmt: skip
        page.wait("location.pathname.startsWith('/jobs/')", 30, "the new job's page")
        job_id = page.evaluate("decodeURIComponent(location.pathname.split('/').pop())")
        job = client.get_job(job_id)
        assert (job.training.model, job.training.z_dim, job.training.steps) == ("mlp", 12, 20)

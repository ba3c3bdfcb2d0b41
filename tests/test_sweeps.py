"""Sweeps on Optuna: the sweep file's checks, and sweeps through the real service (tiny MLP runs on
Fashion-MNIST, FID from a few hundred samples): a grid of two learning rates, cancel, a server restart."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import grpc
import pytest
import torch

from gansvc.cli import main as gansvc_main
from gansvc.client import GanClient, state_name
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.sweep_cli import build_request
from gansvc.sweep_spec import SweepSpecError, check_sweep, load_sweep_file, sweep_spec_to_proto, sweep_spec_to_raw
from gansvc.train.spec import TrainSpec

BASE = """
[base]
dataset = "fashion-mnist"
model = "mlp"
mlp_hidden = 64
z_dim = 16
batch_size = 32
steps = {steps}
log_every = 20
sample_every = 0
checkpoint_every = {checkpoint_every}
eval_every = 30
eval_samples = 200
tensorboard = false
"""
GRID = BASE + """
[search]
method = "grid"
[search.space]
lr_g = [1e-5, 1e-3]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def checked(path: Path) -> dict:
    raw = load_sweep_file(path)
    return check_sweep(raw, TrainSpec.from_dict(raw.get("base", {})).to_dict())


# ---------------------------------------------------------------------- the file
@pytest.mark.parametrize(
    ("search", "field"),
    [
        ('method = "grid"\n[search.space]\nlr_gg = [1e-4]', "search.space.lr_gg"),
        ('method = "grid"\n[search.space]\nlr_g = {low = 1e-4, high = 1e-3}', "search.space.lr_g"),
        ('method = "tpe"\n[search.space]\nloss = {low = 1, high = 2}', "search.space.loss"),
        ('method = "tpe"\n[search.space]\nlr_g = {low = 1e-3, high = 1e-4}', "search.space.lr_g"),
        ('method = "tpe"\n[search.space]\nlr_g = {low = 0.0, high = 0.1, log = true}', "search.space.lr_g.low"),
        ('method = "tpe"\n[search.space]\nlr_g = ["fast"]', "search.space.lr_g"),
        ('method = "tpe"\n[search.space]\nlr_g = [2.0]', "search.space.lr_g"),  # outside TrainSpec's (0, 1)
        ('method = "anneal"\n[search.space]\nlr_g = [1e-4]', "search.method"),
        ('method = "grid"\ntrials = 3\n[search.space]\nlr_g = [1e-4, 1e-3]', "search.trials"),
        ('parallel = 0\n[search.space]\nlr_g = [1e-4]', "search.parallel"),
        ("[search.space]", "search.space"),
    ],
)
def test_bad_sweep_settings_name_their_field(tmp_path, search, field):
    path = write(tmp_path, BASE.format(steps=60, checkpoint_every=0) + "[search]\n" + search + "\n")
    with pytest.raises(SweepSpecError) as caught:
        checked(path)
    assert caught.value.field == field


def test_objective_and_pruner_need_evaluations(tmp_path):
    no_eval = BASE.format(steps=60, checkpoint_every=0).replace("eval_samples = 200", "eval_samples = 0")
    with pytest.raises(SweepSpecError) as caught:
        checked(write(tmp_path, no_eval + '[search]\n[search.space]\nlr_g = [1e-4, 1e-3]\n'))
    assert caught.value.field == "objective.metric"
    no_every = BASE.format(steps=60, checkpoint_every=0).replace("eval_every = 30", "eval_every = 0")
    with pytest.raises(SweepSpecError) as caught:
        checked(write(tmp_path, no_every + '[search]\n[search.space]\nlr_g = [1e-4]\n[pruner]\nmethod = "median"\n'))
    assert caught.value.field == "pruner.method"
    with pytest.raises(SweepSpecError) as caught:
        checked(write(tmp_path, GRID.format(steps=60, checkpoint_every=0) + '[objective]\ndirection = "up"\n'))
    assert caught.value.field == "objective.direction"


def test_the_message_carries_the_file_unchanged(tmp_path):
    text = BASE.format(steps=60, checkpoint_every=0) + """
[search]
method = "tpe"
trials = 5
parallel = 2
seed = 7
[search.space]
lr_g = {low = 1e-5, high = 1e-2, log = true}
mlp_hidden = {low = 32, high = 128, step = 32}
loss = ["bce", "hinge"]
spectral_norm = [true, false]
[objective]
metric = "fid"
direction = "minimise"
[pruner]
method = "asha"
reduction_factor = 2
"""
    raw = load_sweep_file(write(tmp_path, text))
    base = TrainSpec.from_dict(raw["base"]).to_dict()
    direct = check_sweep(raw, base)
    base_message, again = sweep_spec_to_raw(sweep_spec_to_proto(raw))
    assert TrainSpec.from_dict({f.name: v for f, v in base_message.ListFields()}).to_dict() == base
    assert check_sweep(again, base) == direct
    assert direct["space"]["mlp_hidden"] == {"low": 32, "high": 128, "log": False, "step": 32}
    assert direct["objective"]["direction"] == "minimize"
    assert direct["pruner"] == {"method": "asha", "min_resource": 30, "reduction_factor": 2}
    # a checked spec (what the server stores) converts to the same message fields as well
    _, stored = sweep_spec_to_raw(sweep_spec_to_proto(direct))
    assert check_sweep(stored, base) == direct


def test_cli_refuses_a_bad_file_with_code_2_naming_the_field(tmp_path, capsys):
    path = write(tmp_path, GRID.format(steps=60, checkpoint_every=0).replace("lr_g = [", "lr_gee = ["))
    assert gansvc_main(["sweep", "--spec", str(path), "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "search.space.lr_gee" in err and "Traceback" not in err


# ---------------------------------------------------------------------- through the service
@pytest.fixture
def server(tmp_path, fashion_mnist_root, monkeypatch):
    # A relative cache folder: the workers run in their job directories, so it must reach them absolute.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANSVC_CACHE_DIR", "cache")
    config = ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", data_roots=[fashion_mnist_root])
    servers = [GanServer(config)]
    servers[0].start()
    yield servers
    for each in servers:
        each.shutdown(timeout=30)
    gc.collect()  # caught RpcErrors hold their calls' file descriptors in reference cycles


def events_of(client, job_id, kind):
    return [getattr(e, kind) for e in client.watch(job_id, history_only=True) if e.WhichOneof("payload") == kind]


def test_server_refuses_a_bad_sweep_naming_the_field(server, tmp_path):
    request = build_request(write(tmp_path, GRID.format(steps=60, checkpoint_every=0)))
    request.space[0].name = "lr_gee"
    with GanClient(server[0].address) as client, pytest.raises(grpc.RpcError) as caught:
        client.submit_sweep(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "search.space.lr_gee" in caught.value.details()
    request = build_request(write(tmp_path, GRID.format(steps=60, checkpoint_every=0)))
    request.base.batch_size = 0
    with GanClient(server[0].address) as client, pytest.raises(grpc.RpcError) as caught:
        client.submit_sweep(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "base.batch_size" in caught.value.details()


def test_grid_sweep_of_two_learning_rates_names_the_better_trial(server, tmp_path, capsys):
    path = write(tmp_path, GRID.format(steps=60, checkpoint_every=0))
    assert gansvc_main(["sweep", "--spec", str(path), "--watch", "--server", server[0].address]) == 0
    printed = capsys.readouterr().out.splitlines()
    with GanClient(server[0].address) as client:
        sweep = client.get_job(printed[0])
        assert sweep.kind == client_kind("SWEEP")
        finished = client.wait(sweep.id, timeout=600)
        assert state_name(finished.state) == "SUCCEEDED", finished.message
        trials = [job for job in client.list_jobs() if job.sweep_id == sweep.id]
        assert sorted(job.trial_number for job in trials) == [0, 1]
        assert sorted(job.training.lr_g for job in trials) == [1e-5, 1e-3]
        assert all(state_name(job.state) == "SUCCEEDED" for job in trials)
        # the better trial by the trials' own last FID (minimised), not by the sweep's bookkeeping
        fids = {job.id: job.latest_metrics["fid"] for job in trials}
        best_job = min(fids, key=fids.get)
        summary = finished.summary
        assert summary["best"]["job_id"] == best_job
        assert math.isclose(summary["best"]["value"], fids[best_job], rel_tol=1e-12)
        assert summary["best"]["spec"]["lr_g"] == next(j.training.lr_g for j in trials if j.id == best_job)
        assert len(summary["trials"]) == 2 and {row["state"] for row in summary["trials"]} == {"COMPLETE"}
        assert best_job in finished.message
        # --watch ended with the table of trials, the best one starred
        table = [line.split() for line in printed if line.split()[:1] and line.split()[0].lstrip("*").isdigit()]
        assert sorted(row[3] for row in table) == sorted(fids)
        assert [row[3] for row in table if row[0].startswith("*")] == [best_job]
        # every evaluation of every trial was reported, with the value the trial's job recorded
        reported = {(r.trial_job_id, r.step): r.value for r in events_of(client, sweep.id, "trial_reported")}
        recorded = {(job.id, step): values["fid"] for job in trials for step, values in client.metrics(job.id, ["fid"])}
        assert reported == recorded and len(recorded) == 4
        started = events_of(client, sweep.id, "trial_started")
        assert sorted(s.trial_job_id for s in started) == sorted(fids)
        assert [f.state for f in events_of(client, sweep.id, "trial_finished")] == ["COMPLETE", "COMPLETE"]
        assert events_of(client, sweep.id, "sweep_best")[-1].trial_job_id == best_job
        # the best trial's best checkpoint (keep_best = fid, the default) downloads
        path = client.download(best_job, "generator_best.pt", tmp_path / "best_generator.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state and isinstance(state, dict)
    # the trials shared one cached copy of the real statistics (in the relative cache folder)
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 1
    assert not list((tmp_path / "state" / "jobs").rglob("fid-stats"))


def client_kind(name: str) -> int:
    from gansvc.client import pb

    return pb.JobKind.Value(f"JOB_KIND_{name}")


def test_cancelling_a_sweep_cancels_its_running_trial(server, tmp_path):
    text = GRID.format(steps=100000, checkpoint_every=0)
    with GanClient(server[0].address) as client:
        sweep = client.submit_sweep(build_request(write(tmp_path, text)))
        trial = wait_for(lambda: next((j for j in client.list_jobs(["RUNNING"]) if j.sweep_id == sweep.id), None))
        client.cancel(sweep.id)
        ended = client.wait(sweep.id, timeout=120)
        assert state_name(ended.state) == "CANCELLED"
        assert state_name(client.wait(trial.id, timeout=120).state) == "CANCELLED"
        assert [j.id for j in client.list_jobs() if j.sweep_id == sweep.id] == [trial.id]  # no second trial
        assert [f.state for f in events_of(client, sweep.id, "trial_finished")] == ["CANCELLED"]


def wait_for(predicate, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not met")


@pytest.mark.slow
def test_a_sweep_resumes_after_a_server_restart(server, tmp_path):
    text = GRID.format(steps=150, checkpoint_every=30).replace("eval_every = 30", "eval_every = 50")
    first = server[0]
    with GanClient(first.address) as client:
        sweep = client.submit_sweep(build_request(write(tmp_path, text)))
        # stop while trial 0 runs, after it reported once
        wait_for(lambda: events_of(client, sweep.id, "trial_reported"))
        trial0 = next(j for j in client.list_jobs() if j.sweep_id == sweep.id)
    first.shutdown(timeout=60)
    second = GanServer(first.config)
    second.start()
    server.append(second)
    with GanClient(second.address) as client:
        finished = client.wait(sweep.id, timeout=600)
        assert state_name(finished.state) == "SUCCEEDED", finished.message
        trials = {j.trial_number: j for j in client.list_jobs() if j.sweep_id == sweep.id}
        assert sorted(trials) == [0, 1] and trials[0].id == trial0.id  # the same job, resumed
        assert trials[0].attempts >= 2 and all(state_name(j.state) == "SUCCEEDED" for j in trials.values())
        reported = [(r.trial_job_id, r.step) for r in events_of(client, sweep.id, "trial_reported")]
        assert len(reported) == len(set(reported)) == 6  # steps 50, 100, 150 of each, none twice
        states = [state_name(e.state.state) for e in client.watch(sweep.id, history_only=True)
                  if e.WhichOneof("payload") == "state"]  # fmt: skip
        assert states == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]

"""Sweeps on Optuna: the sweep file's checks, and sweeps through the real service (tiny MLP runs on
Fashion-MNIST, FID from a few hundred samples): a grid of two learning rates, cancel, a server restart; the random
and TPE samplers' draws; the median and ASHA pruners stopping a bad trial; each trial's model defaults."""

from __future__ import annotations

import gc
import math
import re
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import optuna
import pytest
import torch

from gansvc.cli import main as gansvc_main
from gansvc.client import GanClient, state_name
from gansvc.clients.sweep_cli import build_request
from gansvc.runtime import events as ev
from gansvc.runtime import registry
from gansvc.service import sweeps
from gansvc.service.devices import DevicePool
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.store import JobStore
from waiting import wait_for
from gansvc.service.sweeps import SweepDriver, TrialRun, checked_sweep
from gansvc.service.validation import DataRoots
from gansvc.sweep_spec import (SweepSpecError, check_sweep, load_sweep_file, sweep_spec_to_proto, sweep_spec_to_raw,
                               trial_settings)  # fmt: skip
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
@contextmanager
def running_server(state_dir: Path, data_root: Path):
    """Yield a list holding a started server (a test may append a restarted one); shut them all down after."""
    config = ServerConfig(state_dir=state_dir, listen="127.0.0.1:0", data_roots=[data_root])
    servers = [GanServer(config)]
    servers[0].start()
    try:
        yield servers
    finally:
        for each in servers:
            each.shutdown(timeout=30)
        gc.collect()  # caught RpcErrors hold their calls' file descriptors in reference cycles


@pytest.fixture
def server(tmp_path, fashion_mnist_root, monkeypatch):
    # A relative cache folder: the workers run in their job directories, so it must reach them absolute.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANSVC_CACHE_DIR", "cache")
    with running_server(tmp_path / "state", fashion_mnist_root) as servers:
        yield servers


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


@pytest.mark.slow
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


# ---------------------------------------------------------------------- samplers and pruners end to end
# Tiny trials (a few seconds of training; a worker's start, mostly importing torch, costs as much), few of them.
@pytest.fixture
def fast_server(tmp_path, fashion_mnist_root, cache_dir, monkeypatch):
    """A server whose trials share this module's statistics cache (the real split's statistics are computed once
    for all the tests below), its sweep drivers looking at their trials every 0.1 s."""
    monkeypatch.setattr(sweeps, "POLL_SECONDS", 0.1)
    with running_server(tmp_path / "state", fashion_mnist_root) as servers:
        yield servers[0]


def trial_jobs(client, sweep_id: str) -> dict:
    return {job.trial_number: job for job in client.list_jobs() if job.sweep_id == sweep_id}


def best_of(client, sweep, trials: dict) -> str:
    """Check that the sweep names, as its best, the trial whose own job recorded the lowest last FID among those
    that completed (its summary, message and last sweep_best event); return that job's id."""
    fids = {job.id: job.latest_metrics["fid"] for job in trials.values() if state_name(job.state) == "SUCCEEDED"}
    best = min(fids, key=fids.get)
    assert sweep.summary["best"]["job_id"] == best
    assert math.isclose(sweep.summary["best"]["value"], fids[best], rel_tol=1e-12)
    assert best in sweep.message and events_of(client, sweep.id, "sweep_best")[-1].trial_job_id == best
    return best


def counts(sweep) -> dict:
    return {state: int(n) for state, n in sweep.summary["counts"].items()}


def first_seed(draws, wanted: list) -> int:
    """Return the first seed for which `draws(seed)` (Optuna asked with that seed) gives `wanted`."""
    seed = next((seed for seed in range(200) if draws(seed) == wanted), None)
    assert seed is not None, f"no seed draws {wanted}"
    return seed


def asked(sampler, space: dict, n: int) -> list[dict]:
    """Return the settings a fresh Optuna study with `sampler` gives its first n trials (none told a value)."""
    study = optuna.create_study(sampler=sampler)
    return [study.ask(space).params for _ in range(n)]


@pytest.mark.slow  # ~17 s: the default run keeps the grid sweep end to end; CI runs this one
def test_tpe_sweep_follows_optunas_tpe_on_the_trials_results(fast_server, tmp_path):
    text = BASE.format(steps=30, checkpoint_every=0) + """
[search]
method = "tpe"
trials = 2
seed = 5
[search.space]
lr_g = {low = 1e-4, high = 1e-2, log = true}
"""
    with GanClient(fast_server.address) as client:
        sweep = client.wait(client.submit_sweep(build_request(write(tmp_path, text))).id, timeout=600)
        assert state_name(sweep.state) == "SUCCEEDED", sweep.message
        trials = trial_jobs(client, sweep.id)
        best_of(client, sweep, trials)
    assert sorted(trials) == [0, 1] and all(state_name(job.state) == "SUCCEEDED" for job in trials.values())
    # Optuna's TPE with the sweep's seed (and its one random start-up trial: half the trials), told each trial's
    # FID as its job recorded it, asks for the same settings in the same order
    space = {"lr_g": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=5, n_startup_trials=1))
    for number in range(2):
        trial = study.ask(space)
        assert trials[number].training.lr_g == trial.params["lr_g"], number
        study.tell(trial, trials[number].latest_metrics["fid"])
    assert sweep.summary["method"] == "tpe" and counts(sweep) == {"COMPLETE": 2}


PRUNED = BASE.format(steps=150, checkpoint_every=0) + """max_rollbacks = 0
[search]
method = "{method}"
trials = 2
seed = {seed}
[search.space]
lr_g = [1e-3, 0.9]
{more}
[pruner]
method = "{pruner}"
"""


def pruned_sweep(server, tmp_path, capsys, method: str, pruner: str, seed: int, more: str = ""):
    """Run a 2-trial sweep of lr_g 1e-3 (trial 0) and 0.9 (trial 1) with `gansvc sweep --watch`, and check the
    pruner stopped trial 1: lr_g 0.9 wrecks G at once (FID ~1500 at step 30, against ~840 at 1e-3), so with the
    good trial run first the pruner, with its defaults, stops the bad one at its first evaluation, step 30.
    Return (the sweep, its trials by number)."""
    path = write(tmp_path, PRUNED.format(method=method, pruner=pruner, seed=seed, more=more))
    assert gansvc_main(["sweep", "--spec", str(path), "--watch", "--server", server.address]) == 0
    printed = capsys.readouterr().out.splitlines()
    with GanClient(server.address) as client:
        sweep = client.get_job(printed[0])
        assert state_name(sweep.state) == "SUCCEEDED", sweep.message
        trials = trial_jobs(client, sweep.id)
        good, bad = trials[0], trials[1]
        assert (good.training.lr_g, bad.training.lr_g) == (1e-3, 0.9)
        assert state_name(good.state) == "SUCCEEDED" and good.progress.step == 150
        # the bad trial's job: cancelled cleanly (one attempt, the cancel's own message), early, saying why
        assert state_name(bad.state) == "CANCELLED" and bad.attempts == 1, bad.message
        stopped = re.match(r"cancelled at step (\d+)", bad.message)
        assert stopped and 30 <= int(stopped.group(1)) < 150, bad.message
        logs = [e.log.message for e in client.watch(bad.id, history_only=True) if e.WhichOneof("payload") == "log"]
        assert any(line.startswith(f"cancel requested (pruned by sweep {sweep.id}: trial 1, fid ") for line in logs)
        # the sweep's events: pruned at its first evaluation, with the FID its job recorded there (the worse)
        fid_at_30 = {job.id: dict(client.metrics(job.id, ["fid"]))[30]["fid"] for job in (good, bad)}
        [event] = events_of(client, sweep.id, "trial_pruned")
        assert (event.trial, event.trial_job_id, event.step, event.value) == (1, bad.id, 30, fid_at_30[bad.id])
        assert fid_at_30[bad.id] > fid_at_30[good.id]
        assert {f.trial: f.state for f in events_of(client, sweep.id, "trial_finished")} == {0: "COMPLETE",
                                                                                              1: "PRUNED"}  # fmt: skip
        assert best_of(client, sweep, trials) == good.id
    # the summary counts the trials by state
    assert counts(sweep) == {"COMPLETE": 1, "PRUNED": 1} and sweep.message.endswith("; 1 complete, 1 pruned")
    assert [(row["trial"], row["state"]) for row in sweep.summary["trials"]] == [(0, "COMPLETE"), (1, "PRUNED")]
    # what --watch showed: the pruning as it happened, then the table of trials, the best starred
    assert sum(line.split("] ", 1)[-1].startswith("trial_pruned:") for line in printed) == 1
    table = [row for row in (line.split() for line in printed) if row[:1] and row[0].lstrip("*").isdigit()]
    assert [row[:2] + row[3:4] for row in table] == [["*0", "COMPLETE", good.id], ["1", "PRUNED", bad.id]]
    return sweep, trials


@pytest.mark.slow  # ~18 s: as the TPE sweep above
def test_random_sweep_draws_optunas_seeded_random_settings_and_the_median_pruner_stops_the_bad_trial(
    fast_server, tmp_path, capsys
):
    space = {"lr_g": optuna.distributions.CategoricalDistribution([1e-3, 0.9]),
             "lr_d": optuna.distributions.FloatDistribution(2e-4, 6e-4, log=True)}  # fmt: skip

    def draws(seed):
        return [p["lr_g"] for p in asked(optuna.samplers.RandomSampler(seed=seed), space, 2)]

    seed = first_seed(draws, [1e-3, 0.9])
    sweep, trials = pruned_sweep(fast_server, tmp_path, capsys, "random", "median", seed,
                                    "lr_d = {low = 2e-4, high = 6e-4, log = true}")  # fmt: skip
    # every setting is Optuna's random sampler's draw with the sweep's seed, in trial order
    expected = asked(optuna.samplers.RandomSampler(seed=seed), space, 2)
    assert [{"lr_g": trials[n].training.lr_g, "lr_d": trials[n].training.lr_d} for n in range(2)] == expected
    assert sweep.summary["method"] == "random"


@pytest.mark.slow  # ~35 s on a busy machine; ASHA's pruning through the driver is also tested without workers below
def test_grid_sweep_with_the_asha_pruner_stops_the_bad_trial(fast_server, tmp_path, capsys):
    space = {"lr_g": optuna.distributions.CategoricalDistribution([1e-3, 0.9])}

    def draws(seed):  # the grid's order, as Optuna's grid sampler visits it
        return [asked(optuna.samplers.GridSampler({"lr_g": [1e-3, 0.9]}, seed=seed), space, 1)[0]["lr_g"]]

    pruned_sweep(fast_server, tmp_path, capsys, "grid", "asha", first_seed(draws, [1e-3]))


def test_asha_keeps_the_rungs_of_a_trial_that_ended_between_two_looks(tmp_path):
    """ASHA records a trial's value at each rung only as it answers should_prune; a trial whose job ended before
    the driver read its values must still take its rungs, or the next trial competes with nobody."""
    store = JobStore(tmp_path / "gansvc.db")
    sweep, _ = store.create_job("sweep", {}, "sweep")
    cancelled = []
    scheduler = SimpleNamespace(cancel=lambda job_id, reason="": cancelled.append((job_id, reason)))
    driver = SweepDriver(SimpleNamespace(store=store, scheduler=scheduler), sweep.id)
    spec = {"objective": {"metric": "fid", "direction": "minimize"}}
    study = optuna.create_study(pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=30, reduction_factor=3))
    space = {"lr_g": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}

    def trial_job(number: int, fids: list, ended: bool) -> str:
        job, _ = store.create_job("training", {}, sweep_id=sweep.id, trial_number=number)
        store.set_state(job.id, "RUNNING")
        store.append_events(job.id, [ev.Metrics(step=step, values={"fid": fid}) for step, fid in fids])
        if ended:
            store.set_state(job.id, "SUCCEEDED", "completed")
        return job.id

    good = TrialRun(study.ask(space), trial_job(0, [(30, 800.0), (60, 780.0)], ended=True))
    assert driver._poll(study, spec, good)  # ended before the driver looked: it completes
    bad = TrialRun(study.ask(space), trial_job(1, [(30, 1500.0)], ended=False))
    assert driver._poll(study, spec, bad)  # worse than the good trial at the first rung: pruned
    assert [job_id for job_id, _ in cancelled] == [bad.job_id] and "pruned" in cancelled[0][1]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    store.close()


def test_a_trial_of_another_model_gets_that_models_optimiser_defaults(tmp_path, fashion_mnist_root):
    """The base (model mlp) leaves lr_g, beta1, beta2 and the loss out and sets lr_d: searching model, the resnet
    trial's job gets SNGAN's settings (resnet's own) and the mlp trial's the fields' defaults; lr_d, given, stays.
    The sweep goes the server's way: the CLI's request, the server's check, the driver's trial job."""
    defaults = {name: f.default for name, f in TrainSpec.__dataclass_fields__.items()}
    resnet = registry.model_info("resnet")
    assert dict(resnet.optimizer)["lr_g"] != defaults["lr_g"] and resnet.default_loss != "bce"  # tells them apart
    text = BASE.format(steps=60, checkpoint_every=0) + """lr_d = 3e-4
[search]
method = "grid"
[search.space]
model = ["mlp", "resnet"]
"""
    roots, pool = DataRoots.of([fashion_mnist_root]), DevicePool([], 1)
    spec = checked_sweep(build_request(write(tmp_path, text)), roots, pool)
    store = JobStore(tmp_path / "gansvc.db")
    sweep, _ = store.create_job("sweep", spec, "sweep")
    manager = SimpleNamespace(store=store, scheduler=SimpleNamespace(wake=lambda: None), roots=roots, pool=pool)
    driver = SweepDriver(manager, sweep.id)
    study = optuna.create_study()
    for model in ("mlp", "resnet"):
        study.enqueue_trial({"model": model})
        trial = study.ask({"model": optuna.distributions.CategoricalDistribution(["mlp", "resnet"])})
        settings = store.require_job(driver._create_job(study, spec, trial)).spec
        info = registry.model_info(model)
        own = {key: dict(info.optimizer).get(key, defaults[key]) for key in ("lr_g", "beta1", "beta2")}
        assert {key: settings[key] for key in own} == own, model
        assert settings["loss"] == info.default_loss and settings["lr_d"] == 3e-4, model
        assert settings["mlp_hidden"] == 64 and settings["steps"] == 60, model  # the other given settings stay
    # a sweep stored before the server kept the base's given settings resumes with its whole base, as it began
    assert trial_settings({"base": spec["base"]}, {"model": "resnet"}) == {**spec["base"], "model": "resnet"}
    submitted = sweep_spec_to_proto(spec).base  # Job.sweep: the sweep as submitted, its base's own settings only
    assert submitted.lr_d == 3e-4 and not submitted.HasField("lr_g") and not submitted.HasField("loss")
    store.close()

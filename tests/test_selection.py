"""The best checkpoint and early stopping: best.pt / generator_best.pt hold the evaluation with the best keep_best
value (checked against the run's own Metrics events and an independent evaluate() of generator_best.pt), and
early_stop_patience stops a run that no longer improves."""

from __future__ import annotations

import json

import numpy as np

import pytest
import torch

from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainSpec
from gansvc.train.selection import SelectionState, lower_is_better
from gansvc.train.spec import SpecError

pytest.importorskip("gansvc.metrics")

TINY = {"width": 8, "batch_size": 16, "log_every": 2, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 200,
        "eval_every": 2, "tensorboard": False, "threads": 1}  # fmt: skip


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


@pytest.mark.parametrize("metric, mode", [("fid", "auto"), ("is_mean", "auto"), ("fid", "max")])
def test_best_checkpoint_holds_the_best_evaluation(tmp_path, metric, mode):
    from gansvc.metrics import evaluate
    from gansvc.train.sampling import generate, load_generator

    events = []
    spec = tiny(steps=8, keep_best=metric, keep_best_mode=mode)
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    scores = [(e.step, e.values[metric]) for e in events if isinstance(e, ev.Metrics) and metric in e.values]
    assert [step for step, _ in scores] == [2, 4, 6, 8]
    lower = mode == "min" or (mode == "auto" and metric == "fid")
    # the expected bests: every running record, by the direction the metric has
    records, best = [], None
    for step, value in scores:
        if best is None or (value < best if lower else value > best):
            best = value
            records.append((step, value))
    bests = [(e.step, e.value) for e in events if isinstance(e, ev.Best)]
    assert bests == records
    assert all(e.metric == metric and e.path == "checkpoints/best.pt" and e.generator == "generator_best.pt"
               for e in events if isinstance(e, ev.Best))  # fmt: skip
    step, value = records[-1]
    assert summary["best"] == {"metric": metric, "step": step, "value": value, "checkpoint": "checkpoints/best.pt",
                               "generator": "generator_best.pt"}  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text())["best"] == summary["best"]
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert state["step"] == step and state["format"] == "gansvc-checkpoint"
    # the best generator, scored from outside with the trainer's evaluation noise, gives the value it was kept for
    generator, _ = load_generator(tmp_path / "generator_best.pt")
    assert torch.load(tmp_path / "generator_best.pt", weights_only=True)["step"] == step
    again = evaluate(generate(generator, 200, seed=spec.seed + 4), real="fashion-mnist:test")
    assert again[metric] == pytest.approx(value, rel=1e-6)
    # the best checkpoint is no step checkpoint: pruning and resuming never see it
    from gansvc.runtime.rundir import checkpoint_steps, latest_checkpoint_step

    assert set(checkpoint_steps(tmp_path)) == {8} and latest_checkpoint_step(tmp_path) == 8


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path):
    events = []
    # min_delta so large that nothing after the first evaluation counts as better
    spec = tiny(steps=20, early_stop_patience=2, early_stop_min_delta=1e9)
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    assert summary["status"] == "early_stopped" and not summary["stopped"] and summary["step"] == 6
    stopped = [e for e in events if isinstance(e, ev.EarlyStopped)]
    assert len(stopped) == 1
    assert (stopped[0].step, stopped[0].best_step, stopped[0].evaluations, stopped[0].metric) == (6, 2, 2, "fid")
    assert stopped[0].best_value == summary["best"]["value"] and summary["best"]["step"] == 2
    # no second evaluation of step 6 at the end; the final checkpoint is written
    assert [e.step for e in events if isinstance(e, ev.Metrics) and "fid" in e.values] == [2, 4, 6]
    assert (tmp_path / "checkpoints" / "step_0000006.pt").is_file()
    # a resumed run that had stopped early stays stopped
    again = Trainer(spec, tmp_path).run()
    assert again["status"] == "early_stopped" and again["step"] == 6 and again["resumed_from"] == 6


def test_keep_best_off_and_a_metric_the_run_does_not_give(tmp_path):
    events = []
    Trainer(tiny(steps=2, keep_best=""), tmp_path / "off", on_event=events.append).run()
    assert not (tmp_path / "off" / "checkpoints" / "best.pt").exists() and not any(
        isinstance(e, ev.Best) for e in events
    )
    events.clear()
    summary = Trainer(tiny(steps=2, keep_best="precision"), tmp_path / "missing", on_event=events.append).run()
    assert summary["best"] is None
    said = [e.message for e in events if isinstance(e, ev.Log) and e.message.startswith("keep_best")]
    assert len(said) == 1 and "'precision'" in said[0] and "fid" in said[0]


def test_selection_settings_and_directions():
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({"steps": 10, "early_stop_patience": 3})  # evaluates at the end only
    assert caught.value.field == "early_stop_patience"
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({"steps": 10, "eval_every": 2, "early_stop_patience": 3, "keep_best": ""})
    assert caught.value.field == "early_stop_patience"
    for bad in ("FID", "fid; rm", "x" * 80):
        with pytest.raises(SpecError) as caught:
            TrainSpec.from_dict({"steps": 10, "keep_best": bad})
        assert caught.value.field == "keep_best"
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({"steps": 10, "keep_best_mode": "lowest"})
    assert caught.value.field == "keep_best_mode"
    assert lower_is_better("fid") and lower_is_better("kid_mean") and not lower_is_better("is_mean")
    assert not lower_is_better("precision") and lower_is_better("precision", "min")
    state = SelectionState(metric="fid", best_value=10.0, best_step=2)
    assert state.improves(8.9, "auto", 1.0) and not state.improves(9.0, "auto", 1.0)
    assert SelectionState(metric="is_mean", best_value=2.0).improves(2.5, "auto", 0.1)


# ---------------------------------------------------------------------- the service names the best checkpoint
@pytest.mark.slow
def test_service_best_checkpoint_in_events_samples_downloads_and_evaluations(tmp_path, fashion_mnist_root):
    import grpc

    from gansvc.client import GanClient, pb, state_name
    from gansvc.metrics import evaluate
    from gansvc.service.server import GanServer, ServerConfig
    from gansvc.train.sampling import generate, load_generator

    spec = {"dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": 30,
            "log_every": 5, "sample_every": 0, "checkpoint_every": 15, "eval_every": 10, "eval_samples": 200,
            "tensorboard": False}  # fmt: skip
    config = ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", data_roots=[fashion_mnist_root])
    server = GanServer(config)
    server.start()
    try:
        with GanClient(server.address, timeout=30) as client:
            job = client.submit_training(spec)
            # before any evaluation there is no best checkpoint: NOT_FOUND naming the field
            with pytest.raises(grpc.RpcError) as caught:
                client.stub.GetSamples(pb.GetSamplesRequest(job_id=job.id, best=True))
            assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
            done = client.wait(job.id, timeout=300)
            assert state_name(done.state) == "SUCCEEDED", done.message
            seen = list(client.watch(job.id))
            bests = [e.best for e in seen if e.WhichOneof("payload") == "best"]
            assert bests and bests[-1].artifact == "checkpoints/best.pt" and bests[-1].generator == "generator_best.pt"
            best = done.summary["best"]
            assert best["step"] == bests[-1].step and best["value"] == pytest.approx(bests[-1].value)
            run_dir = server.state_dir / "jobs" / job.id
            # GetSamples draws from generator_best.pt
            grid = client.stub.GetSamples(pb.GetSamplesRequest(job_id=job.id, best=True, seed=5, count=4,
                                                               include_tensor=True))  # fmt: skip
            assert grid.source == "generator_best.pt" and grid.step == best["step"]
            generator, _ = load_generator(run_dir / "generator_best.pt")
            images = np.frombuffer(grid.tensor.data, dtype=np.float32).reshape(tuple(grid.tensor.shape))
            expected = generate(generator, 4, seed=5)
            torch.testing.assert_close(torch.from_numpy(images.copy()), expected, rtol=0, atol=1e-6)
            with pytest.raises(grpc.RpcError) as caught:
                client.stub.GetSamples(pb.GetSamplesRequest(job_id=job.id, best=True, step=15))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "step" in caught.value.details()
            # both files download by name
            for name in ("checkpoints/best.pt", "generator_best.pt"):
                path = client.download(job.id, name, tmp_path / "download" / name)
                assert path.read_bytes() == (run_dir / name).read_bytes()
            # an evaluation job of the best checkpoint scores generator_best.pt
            message = pb.EvaluationSpec(checkpoint=pb.CheckpointRef(job_id=job.id), best=True, num_samples=200,
                                        seed=4, request_id="best-eval")  # fmt: skip
            evaluation = client.stub.SubmitEvaluation(message)
            assert evaluation.evaluation.best
            scored = client.wait(evaluation.id, timeout=300)
            assert state_name(scored.state) == "SUCCEEDED", scored.message
            local = evaluate(generate(generator, 200, seed=4), real="fashion-mnist:test")
            assert scored.latest_metrics["fid"] == pytest.approx(local["fid"], rel=1e-6)
            assert scored.latest_metrics["fid"] == pytest.approx(best["value"], rel=1e-6)  # the trainer's own noise
    finally:
        server.shutdown(timeout=20)

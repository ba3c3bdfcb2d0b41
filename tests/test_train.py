"""The trainer: determinism, exact resume, the one-G-forward step against a naive loop, regularisers, EMA,
what is written to the run directory, stopping, budgets and divergence."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.nn.functional as F

from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainingDiverged, TrainSpec
from gansvc.train.ema import EMA
from gansvc.train.monitor import FailureWatch
from gansvc.train.regularisers import gradient_penalty, r1_penalty

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


def losses(run_dir) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["d_loss"], r["g_loss"]) for r in records if r["kind"] == "train"]


def forget_settings(run_dir, *names: str) -> None:
    """Rewrite every checkpoint under run_dir as the code before settings `names` existed wrote it (their keys
    gone from the stored spec); AssertionError when no checkpoint held them. (latest.pt may be a link to a step's
    file, so a file can come round already rewritten.)"""
    removed = set()
    for path in run_dir.glob("**/*.pt"):
        state = torch.load(path, weights_only=False)
        if isinstance(state, dict) and "spec" in state:
            removed |= {name for name in names if state["spec"].pop(name, None) is not None}
            torch.save(state, path)
    assert removed == set(names), f"checkpoints under {run_dir} held {sorted(removed)} of {sorted(names)}"


def unlabelled_image_folder(folder, count: int):
    """Write `count` random 32 x 32 grey PNGs straight into `folder` (no class sub-folders: no labels); return it."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


RECIPES = {
    "defaults": {},
    "dcgan-hinge-sn": {"loss": "hinge", "spectral_norm": True},
    "dcgan-bce-batchnorm-ncritic2": {"loss": "bce", "spectral_norm": False, "n_critic": 2, "real_label": 0.9},
    "mlp-wasserstein-gp": {"model": "mlp", "loss": "wasserstein", "spectral_norm": False, "gradient_penalty": 10.0},
    "dcgan-r1-saturating": {"loss": "bce", "g_saturating": True, "spectral_norm": False, "r1_gamma": 1.0},
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_same_seed_gives_identical_losses(tmp_path, recipe):
    spec = tiny(steps=6, **RECIPES[recipe])
    Trainer(spec, tmp_path / "a").run()
    Trainer(spec, tmp_path / "b").run()
    Trainer(spec.with_overrides(seed=1), tmp_path / "c").run()
    assert len(losses(tmp_path / "a")) == 6
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_resume_is_exact(tmp_path, recipe):
    straight = tiny(steps=40, **RECIPES[recipe])
    Trainer(straight, tmp_path / "straight").run()
    first = Trainer(straight.with_overrides(steps=20), tmp_path / "split").run()
    assert first["step"] == 20 and (tmp_path / "split" / "checkpoints" / "latest.pt").is_file()
    second = Trainer(straight, tmp_path / "split").run()
    assert second["resumed_from"] == 20 and second["step"] == 40
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("G", "D"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


def test_resume_refuses_a_different_experiment(tmp_path):
    Trainer(tiny(steps=2), tmp_path).run()
    from gansvc.train.spec import SpecError

    with pytest.raises(SpecError, match="lr_g"):
        Trainer(tiny(steps=4, lr_g=5e-5), tmp_path).run()


def _naive_losses(spec: TrainSpec, steps: int) -> list[tuple[float, float]]:
    """Seed 003's loop shape: G forward for D's step, a second G forward for G's step, losses written out
    with torch.nn.functional, batches and noise drawn from the seeds the trainer documents."""
    from gansvc.data import load_images
    from gansvc.models import build_discriminator, build_generator

    images = load_images("fashion-mnist").images
    torch.manual_seed(spec.seed)
    G, D = build_generator(spec, (1, 28, 28)), build_discriminator(spec, (1, 28, 28))
    opt_g = torch.optim.Adam(G.parameters(), lr=spec.lr_g, betas=(spec.beta1, spec.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=spec.lr_d, betas=(spec.beta1, spec.beta2))
    order = torch.Generator().manual_seed(spec.seed)
    noise = torch.Generator().manual_seed(spec.seed + 1)
    perm, position, out = None, 0, []
    for _ in range(steps):
        if perm is None or position + spec.batch_size > len(images):
            perm, position = torch.randperm(len(images), generator=order), 0
        real = images[perm[position : position + spec.batch_size]].float() / 127.5 - 1
        position += spec.batch_size
        z = torch.randn(spec.batch_size, spec.z_dim, generator=noise)
        opt_d.zero_grad()
        real_logits, fake_logits = D(real), D(G(z).detach())
        if spec.loss == "bce":
            d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        else:
            d_loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        logits = D(G(z))  # the second G forward the trainer saves
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)) if spec.loss == "bce" \
            else -logits.mean()
        g_loss.backward()
        opt_g.step()
        out.append((d_loss.item(), g_loss.item()))
    return out


@pytest.mark.parametrize("recipe", [
    {"model": "mlp", "loss": "bce", "spectral_norm": False, "ema_decay": 0.0},
    # BatchNorm in G and D; the naive loop's losses are the GAN's alone (no class-entropy term)
    {"model": "dcgan", "loss": "hinge", "spectral_norm": False, "ema_decay": 0.0, "class_entropy": 0.0},
])  # fmt: skip
def test_one_generator_forward_per_step_matches_the_naive_loop(tmp_path, recipe):
    spec = tiny(steps=8, **recipe)
    Trainer(spec, tmp_path).run()
    ours = [(d, g) for _, d, g in losses(tmp_path)]
    naive = _naive_losses(spec, 8)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(naive, dtype=torch.float64), rtol=2e-4, atol=2e-5)


def test_gradient_penalty_and_r1_against_closed_forms():
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def quadratic(x):  # D(x) = sum_i w_i x_i^2, so dD/dx = 2 w x
        return (w * x.pow(2)).sum(1)

    real, fake = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    penalty = gradient_penalty(quadratic, real, fake, 10.0, generator)
    alpha = torch.rand(5, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_hat = alpha * real + (1 - alpha) * fake
    expected = 10.0 * ((2 * w * x_hat).norm(dim=1) - 1).pow(2).mean()
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-6, atol=1e-9)
    # differentiable with respect to D's weights (it is part of D's loss)
    (grad_w,) = torch.autograd.grad(penalty, w)
    (expected_w,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(grad_w.double(), expected_w, rtol=1e-5, atol=1e-8)

    x = real.clone().requires_grad_(True)
    r1 = r1_penalty(quadratic(x), x, gamma=4.0)
    torch.testing.assert_close(r1.double(), 0.5 * 4.0 * (2 * w * real).pow(2).sum(1).mean(), rtol=1e-6, atol=1e-9)


def test_ema_follows_its_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    expected = [p.detach().double().clone() for p in model.parameters()]
    for n in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [decay * e + (1 - decay) * p.detach().double() for e, p in zip(expected, model.parameters())]
    for mine, reference in zip(ema.model.parameters(), expected):
        torch.testing.assert_close(mine.double(), reference, rtol=1e-5, atol=1e-6)


def test_run_directory_and_events(tmp_path):
    events = []
    spec = tiny(steps=12, log_every=4, sample_every=6, checkpoint_every=5, keep_checkpoints=2, tensorboard=True)
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    assert all(isinstance(e, ev.Event) and e.stored for e in events)
    # every event crosses the pipe unchanged (the first progress has no losses yet: NaN, compared as text)
    assert [repr(ev.decode(ev.encode(e))) for e in events] == [repr(e) for e in events]
    kinds = {type(e) for e in events}
    assert {ev.Progress, ev.Metrics, ev.Samples, ev.Checkpoint} <= kinds
    assert not any(isinstance(e, ev.Log) and e.resume_step is not None for e in events)  # a fresh run
    progress = [e for e in events if isinstance(e, ev.Progress)][-1]
    assert progress.step == progress.total_steps == 12 and progress.eta_seconds == 0
    assert progress.d_loss == summary["final"]["d_loss"] and progress.g_loss == summary["final"]["g_loss"]
    samples = [e.path for e in events if isinstance(e, ev.Samples)]
    assert samples == ["samples/step_0000006.png", "samples/step_0000012.png"]
    checkpoints = [e.path for e in events if isinstance(e, ev.Checkpoint)]
    assert checkpoints == ["checkpoints/step_0000005.pt", "checkpoints/step_0000010.pt", "checkpoints/step_0000012.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.pt", "step_0000010.pt",
                                                                            "step_0000012.pt"]  # fmt: skip
    for name in ("spec.json", "summary.json", "generator.pt", "loss_curve.png", "samples/latest.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert set(records[0]) >= {"d_loss", "g_loss", "d_real", "d_fake", "d_accuracy", "g_grad_norm", "d_grad_norm",
                               "images_per_sec"}  # fmt: skip
    assert all(r["g_grad_norm"] > 0 and r["d_grad_norm"] > 0 and r["images_per_sec"] > 0 for r in records)
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == summary["step"] == 12
    assert TrainSpec.from_file(tmp_path / "spec.json") == spec

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/d_loss")] == [4, 8, 12]
    assert [e.value for e in accumulator.Scalars("train/g_loss")] == pytest.approx([r["g_loss"] for r in records])
    assert len(accumulator.Images("samples")) == 2


def test_should_stop_checkpoints_and_resume_finishes(tmp_path):
    calls = []
    summary = Trainer(tiny(steps=10), tmp_path, should_stop=lambda: len(calls) > 3 or calls.append(1)).run()
    assert summary["stopped"] and summary["status"] == "stopped" and summary["step"] == 4
    assert (tmp_path / "checkpoints" / "step_0000004.pt").is_file()
    events = []
    summary = Trainer(tiny(steps=10), tmp_path, on_event=events.append).run()
    assert summary["step"] == 10 and not summary["stopped"] and summary["resumed_from"] == 4
    # the resume is said once, first, with the step training continues from
    resumes = [e for e in events if isinstance(e, ev.Log) and e.resume_step is not None]
    assert resumes == [events[0]] and resumes[0].resume_step == 4 and "step 4" in resumes[0].message
    first_progress = next(e for e in events if isinstance(e, ev.Progress))
    assert first_progress.step == 4


def test_max_minutes_ends_cleanly(tmp_path):
    summary = Trainer(tiny(steps=100000, max_minutes=0.02), tmp_path).run()  # 1.2 s
    assert summary["status"] == "max_minutes" and not summary["stopped"]
    assert 0 < summary["step"] < 100000
    assert (tmp_path / "checkpoints" / f"step_{summary['step']:07d}.pt").is_file()
    assert (tmp_path / "samples" / "latest.png").is_file() and (tmp_path / "generator.pt").is_file()


def test_nan_stops_with_an_error_and_no_bad_checkpoint(tmp_path, monkeypatch):
    from gansvc.train.batches import DeviceBatches

    original = DeviceBatches.next
    served = []

    def poisoned(self):
        served.append(1)
        batch = original(self)
        return batch * float("nan") if len(served) > 3 else batch

    monkeypatch.setattr(DeviceBatches, "next", poisoned)
    events = []
    with pytest.raises(TrainingDiverged, match="step 4"):
        Trainer(tiny(steps=10, checkpoint_every=1, max_rollbacks=0), tmp_path, on_event=events.append).run()
    assert [e.code for e in events if isinstance(e, ev.Warning)] == ["diverged"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step_0000003.pt"
    # with rollbacks, data that stays poisoned fails the run once they are spent, each one said
    events.clear()
    served.clear()
    with pytest.raises(TrainingDiverged, match=r"step 4: .* \(after 2 rollbacks\)"):
        Trainer(tiny(steps=10, checkpoint_every=1, max_rollbacks=2), tmp_path / "again", on_event=events.append).run()
    rollbacks = [e for e in events if isinstance(e, ev.Rollback)]
    assert [(r.step, r.to_step, r.rollback) for r in rollbacks] == [(4, 3, 1), (4, 3, 2)]
    assert [e.code for e in events if isinstance(e, ev.Warning)] == ["diverged"] * 3


def test_bf16_autocast_trains(tmp_path):
    summary = Trainer(tiny(steps=3, precision="bf16"), tmp_path).run()
    assert summary["step"] == 3 and all(v == v for v in summary["final"].values())


def test_failure_watch_flags_d_overpowering_once():
    watch = FailureWatch("bce", window=3)
    healthy = {"d_loss": 1.2, "g_loss": 0.8, "d_accuracy": 0.7}
    assert not any(watch.check_train(healthy) for _ in range(5))
    raised = []
    for g in (2.0, 3.0, 4.0, 5.0, 6.0):
        raised += watch.check_train({"d_loss": 0.01, "g_loss": g, "d_accuracy": 1.0})
    assert [code for code, _ in raised] == ["d_overpowering"]
    for _ in range(3):
        watch.check_train(healthy)
    raised = [c for g in (2.0, 3.0, 4.0) for c, _ in watch.check_train({"d_loss": 0.01, "g_loss": g, "d_accuracy": 1.0})]
    assert raised == ["d_overpowering"]  # a new episode after recovery
    assert watch.check_coverage(3, 10, "classes")[0][0] == "mode_collapse"
    assert watch.check_coverage(9, 10, "classes") == []


def test_gaussian_mixture_run_reports_the_ring_metric(tmp_path):
    spec = TrainSpec.from_dict({"dataset": "gaussian-mixture", "model": "mlp", "loss": "bce", "spectral_norm": False,
                                "steps": 30, "log_every": 10, "eval_samples": 2500, "tensorboard": False,
                                "threads": 1})  # fmt: skip
    summary = Trainer(spec, tmp_path).run()
    assert set(summary["eval"]) == {"modes_covered", "high_quality_fraction"}
    assert 0 <= summary["eval"]["modes_covered"] <= 8
    assert (tmp_path / "samples" / "latest.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluation_scores_the_ema_generator_with_fmnist_cnn(tmp_path):
    pytest.importorskip("gansvc.metrics")
    from gansvc.metrics import evaluate
    from gansvc.train.sampling import generate, load_generator

    spec = tiny(steps=4, eval_samples=200, eval_every=2, log_every=2)
    events = []
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    evals = [e for e in events if isinstance(e, ev.Metrics) and "fid" in e.values]
    assert [e.step for e in evals] == [2, 4]
    # the run says which network scores it, before the first score; Fashion-MNIST's own classifier: no warning
    said = [e.message for e in events if isinstance(e, ev.Log) and "fmnist-cnn" in e.message]
    assert len(said) == 1 and "trained on fashion-mnist" in said[0]
    assert events.index(next(e for e in events if isinstance(e, ev.Log) and e.message == said[0])) < events.index(
        evals[0]
    )
    assert not [e for e in events if isinstance(e, ev.Warning)]
    # the same numbers from outside: the exported (EMA) generator, the trainer's evaluation noise seed
    generator, _ = load_generator(tmp_path)
    expected = evaluate(generate(generator, 200, seed=spec.seed + 4), real="fashion-mnist:test")
    assert summary["eval"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert summary["eval"]["is_mean"] == pytest.approx(expected["is_mean"], rel=1e-6)
    assert 0 <= summary["eval"]["classes_covered"] <= 10


def test_fused_adam_matches_torch_adam_bit_for_bit():
    import copy

    from gansvc.train.optim import FusedAdam

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    reference = copy.deepcopy(ours)
    optimiser = FusedAdam(ours.parameters(), lr=1e-3, betas=(0.5, 0.999))
    torch_adam = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True)
    for step in range(25):
        x = torch.randn(8, 10)
        for model, opt in ((ours, optimiser), (reference, torch_adam)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
        if step == 10:  # a reload through state_dict, as a resumed run does
            state = optimiser.state_dict()
            optimiser = FusedAdam(ours.parameters(), lr=1e-3, betas=(0.5, 0.999))
            optimiser.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))
    assert optimiser.state_dict()["state"][0]["step"] == torch_adam.state_dict()["state"][0]["step"] == 25


def test_training_scoring_names_the_extractor_and_flags_one_trained_on_another_data_set():
    from gansvc.runtime import registry
    from gansvc.train.evaluation import EXTRACTOR_TRAINED_ON, training_scoring

    # not installed plugins
    shipped = {name for name in registry.extractor_names() if not registry.is_plugin("extractors", name)}
    assert set(EXTRACTOR_TRAINED_ON) == shipped  # every shipped extractor says what it was trained on
    own = training_scoring("fashion-mnist", (1, 28, 28), points=False)
    assert own.extractor == "fmnist-cnn" and not own.mismatch and not own.unavailable
    assert "fmnist-cnn" in own.message and "fashion-mnist:test" in own.message
    borrowed = training_scoring("mnist", (1, 28, 28), points=False)
    assert borrowed.extractor == "fmnist-cnn" and "trained on fashion-mnist" in borrowed.mismatch
    folder = training_scoring("folder:/data/faces", (1, 28, 28), points=False)  # 28x28 grey: fmnist-cnn, said
    assert folder.extractor == "fmnist-cnn" and "trained on fashion-mnist" in folder.mismatch
    # other images take inception-v3, which needs the operator's weights: without them, no FID, and why
    unscored = [("cifar10", (3, 32, 32)), ("folder:/data/faces", (3, 64, 64)), ("fashion-mnist", (1, 32, 32))]
    for dataset, shape in unscored:
        none = training_scoring(dataset, shape, points=False)
        assert none.extractor is None and "FID / IS skipped" in none.unavailable and not none.mismatch, dataset
        assert "--inception-weights" in none.unavailable, dataset
    points = training_scoring("gaussian-mixture", (2,), points=True)
    assert points.extractor is None and not points.unavailable and "ring metric" in points.message


def test_mnist_scored_with_the_fashion_mnist_classifier_warns_once(tmp_path, fashion_mnist_root):
    """MNIST has no classifier of its own here: the run says so (extractor_mismatch) before its first score."""
    pytest.importorskip("gansvc.metrics")
    # the Debian package's IDX files stand in for MNIST's (the same file names and format)
    spec = tiny(steps=2, dataset="mnist", data_root=str(fashion_mnist_root), eval_samples=200)
    events = []
    Trainer(spec, tmp_path, on_event=events.append).run()
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert [w.code for w in warnings] == ["extractor_mismatch"]
    assert "mnist is scored with fmnist-cnn, a network trained on fashion-mnist" in warnings[0].message
    scores = [e for e in events if isinstance(e, ev.Metrics) and "fid" in e.values]
    assert len(scores) == 1 and events.index(warnings[0]) < events.index(scores[0])
    assert "classes_covered" not in scores[0].values  # Fashion-MNIST's classes say nothing about digits
    assert any(isinstance(e, ev.Log) and "fmnist-cnn" in e.message and "mnist:test" in e.message for e in events)
    assert [json.loads(line)["code"] for line in (tmp_path / "warnings.jsonl").read_text().splitlines()] == [
        "extractor_mismatch"
    ]
    # a resumed run names the extractor again, but the warning stands once in the run's record
    events.clear()
    summary = Trainer(spec.with_overrides(steps=3), tmp_path, on_event=events.append).run()
    assert not [e for e in events if isinstance(e, ev.Warning)]
    assert any(isinstance(e, ev.Log) and "fmnist-cnn" in e.message for e in events)
    assert summary["warnings"] == ["extractor_mismatch"]


def test_a_folder_run_says_it_gets_no_fid_during_training(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels):
        Image.fromarray(image.numpy(), mode="L").save(folder / f"{i}.png")
    events = []
    spec = tiny(steps=2, dataset=f"folder:{folder}", eval_samples=100)
    summary = Trainer(spec, tmp_path / "run", on_event=events.append).run()
    assert [e.code for e in events if isinstance(e, ev.Warning)] == ["eval_unavailable"]
    assert any(isinstance(e, ev.Log) and "FID / IS skipped" in e.message for e in events)
    assert not any(isinstance(e, ev.Metrics) and "fid" in e.values for e in events) and not summary["eval"]


def _interrupted_write(path) -> None:
    """Start an atomic write of `path` in another process and kill -9 it mid-write (its temp file half written)."""
    import subprocess
    import sys

    program = (
        "import sys, time\n"
        "from gansvc.atomic import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        child.kill()
        child.wait()


def test_clean_leftovers_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    from gansvc.atomic import atomic_write_text
    from gansvc.runtime.rundir import clean_leftovers

    _interrupted_write(tmp_path / "checkpoints" / "step_0000100.pt")
    _interrupted_write(tmp_path / "samples" / "step_0001000.png")
    leftovers = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.parent.name for p in leftovers] == ["checkpoints", "samples"]
    assert all(p.name.startswith((".step_0000100.pt.", ".step_0001000.png.")) for p in leftovers)
    assert not (tmp_path / "checkpoints" / "step_0000100.pt").exists()  # the target was never written
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "samples" / "step_0000500.png"]
    for path in keep:
        atomic_write_text(path, "mine")
    assert clean_leftovers(tmp_path) == leftovers
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
    assert clean_leftovers(tmp_path) == []


def test_resume_removes_the_temp_files_of_a_killed_run_and_says_so(tmp_path):
    Trainer(tiny(steps=2, checkpoint_every=1), tmp_path).run()
    _interrupted_write(tmp_path / "checkpoints" / "step_0000003.pt")
    (tmp_path / "checkpoints" / ".latest.4242.tmp").write_bytes(b"half a link")  # checkpoints.py's own temp name
    assert len([p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]) == 2
    events = []
    summary = Trainer(tiny(steps=4, checkpoint_every=1), tmp_path, on_event=events.append).run()
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    assert not [p for p in tmp_path.rglob("*.tmp")]
    said = [e.message for e in events if isinstance(e, ev.Log) and "removed" in e.message]
    assert len(said) == 1 and "2 unfinished file(s)" in said[0] and "checkpoints/.latest.4242.tmp" in said[0]
    assert events[0].resume_step == 2  # the resume is still said first


@pytest.mark.parametrize("load, expected", [(0.1, 2), (0.4, 2), (0.9, 1), (1.6, 1), (7.0, 1)])
def test_threads_zero_takes_the_cores_free_at_start(tmp_path, monkeypatch, load, expected):
    # Issue 18: a demo on a busy 2-core machine kept 2 threads (and the cpu_oversubscribed warning fired).
    import gansvc.train.build as build

    monkeypatch.setattr(build, "cpu_threads", lambda: 2)
    monkeypatch.setattr(build, "system_load", lambda: load)
    before = torch.get_num_threads()
    events = []
    trainer = Trainer(tiny(steps=2, threads=0), tmp_path, on_event=events.append)
    trainer.run()
    assert trainer.threads == expected
    said = [e.message for e in events if isinstance(e, ev.Log) and e.message.startswith("threads:")]
    assert said == ([] if expected == 2 else [f"threads: 1 of 2 cores (the CPU was busy at start: {load:.1f} cores "
                                              "in use); --threads N fixes the count"])  # fmt: skip
    warned = [e.code for e in events if isinstance(e, ev.Warning) and e.code == "cpu_oversubscribed"]
    # the warning judges by the same measure that chose the threads: a count chosen for the load is no warning
    assert torch.get_num_threads() == before and warned == []


def test_system_load_counts_the_cores_other_processes_keep_busy_now():
    # A process spinning on one core while we measure: about one core busy (the 1-minute load average would
    # still be near its past value). The machine may be busy with other work, so only a lower bound is fixed.
    import subprocess
    import sys

    from gansvc.train.devices import system_load

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        busy = system_load(window=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.8 <= busy <= (os.cpu_count() or 1) + 0.05, busy

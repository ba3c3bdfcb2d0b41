"""Schedules and precision for longer runs (issue 21): learning-rate schedules against torch.optim.lr_scheduler,
gradient accumulation against the whole batch, lazy R1 and fp16's gradient scaler against plain-PyTorch loops of
the same arithmetic, each resumed exactly, and each setting refused with its name when it cannot work.

fp16 trains on CUDA only; its scaler's path is exercised here on the CPU by letting the trainer take fp16 there
(torch's CPU autocast and GradScaler do the same arithmetic), and on a GPU by the tests marked cuda.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gansvc import ops
from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainSpec
from gansvc.train.schedule import LR_SCHEDULES, lr_factor
from gansvc.train.spec import SpecError

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip
MLP = {"model": "mlp", "loss": "bce", "spectral_norm": False, "ema_decay": 0.0}


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


def train_records(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def losses(run_dir) -> list[tuple[float, float]]:
    return [(r["d_loss"], r["g_loss"]) for r in train_records(run_dir)]


def checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Let the trainer take precision fp16 on the CPU, with a scaler whose scale moves within a few steps."""
    import gansvc.train.build as build

    monkeypatch.setattr(Trainer, "_fp16_device_types", ("cuda", "cpu"))
    # the default scaler grows only after 2000 clean steps: this one after 3, so its state changes in a short run
    monkeypatch.setattr(build, "grad_scaler", lambda precision, device: torch.amp.GradScaler(
        device.type, init_scale=2.0**10, growth_interval=3) if precision == "fp16" else None)  # fmt: skip


def torch_schedulers(optimiser, schedule: str, total: int, warmup: int):
    """Return torch's schedulers for `schedule` after `warmup` linear warm-up steps (the reference)."""
    from torch.optim import lr_scheduler as sched

    after = total - warmup
    main = {
        "constant": lambda: sched.LambdaLR(optimiser, lambda epoch: 1.0),
        "cosine": lambda: sched.CosineAnnealingLR(optimiser, T_max=after, eta_min=0.0),
        "linear-decay": lambda: sched.LinearLR(optimiser, start_factor=1.0, end_factor=0.0, total_iters=after),
    }[schedule]
    if not warmup:
        return main()
    warm = sched.LinearLR(optimiser, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return sched.SequentialLR(optimiser, [warm, main()], milestones=[warmup])


def torch_rates(schedule: str, total: int, warmup: int, base: float = 0.1) -> list[float]:
    """Return the learning rate torch's schedulers give each of `total` steps."""
    optimiser = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    scheduler = torch_schedulers(optimiser, schedule, total, warmup)
    rates = []
    for _ in range(total):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    return rates


# ---------------------------------------------------------------------- schedules
@pytest.mark.parametrize("schedule", LR_SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_lr_factor_matches_torch_schedulers(schedule, warmup):
    total = 23
    expected = torch_rates(schedule, total, warmup)
    ours = [0.1 * lr_factor(schedule, step, total, warmup) for step in range(total)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # and the closed forms: the warm-up's first step, the decay's midpoint and last step
    if warmup:
        assert lr_factor(schedule, 0, total, warmup) == 1.0 / warmup
    decay = total - warmup
    if schedule == "cosine" and decay % 2 == 0:
        assert lr_factor(schedule, warmup + decay // 2, total, warmup) == pytest.approx(0.5, abs=1e-15)
    if schedule == "linear-decay":
        assert lr_factor(schedule, total - 1, total, warmup) == pytest.approx(1.0 / decay, rel=1e-12)


def reference_losses(spec: TrainSpec, steps: int, *, schedule=None, r1_every: int = 0, r1_gamma: float = 0.0,
                     fp16_device: str | None = None, init_scale: float = 2.0**16):  # fmt: skip
    """The trainer's arithmetic written out in plain PyTorch for the MLP GAN with bce: batches and noise from the
    seeds the trainer documents, torch.optim.Adam (fused, as the trainer's), torch's schedulers, R1 on every
    r1_every-th D step weighted r1_gamma * r1_every, fp16 autocast with a GradScaler per optimiser.
    Returns ([(d_loss, g_loss, r1)], G, D, the final loss scales of G and D)."""
    from gansvc.data import load_images
    from gansvc.models import build_discriminator, build_generator

    device = torch.device(fp16_device or "cpu")
    batch = spec.batch_size
    images = load_images("fashion-mnist").images
    torch.manual_seed(spec.seed)
    G, D = build_generator(spec, (1, 28, 28)).to(device), build_discriminator(spec, (1, 28, 28)).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=spec.lr_g, betas=(spec.beta1, spec.beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=spec.lr_d, betas=(spec.beta1, spec.beta2), fused=True)
    schedulers = [torch_schedulers(o, *schedule) for o in (opt_g, opt_d)] if schedule else []
    scalers = {}
    if fp16_device:
        scalers = {o: torch.amp.GradScaler(device.type, init_scale=init_scale) for o in (opt_g, opt_d)}
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16)) if fp16_device else torch.enable_grad

    def update(optimiser, loss):
        if not scalers:
            loss.backward()
            optimiser.step()
            return
        scalers[optimiser].scale(loss).backward()
        scalers[optimiser].unscale_(optimiser)
        scalers[optimiser].step(optimiser)
        scalers[optimiser].update()

    order = torch.Generator().manual_seed(spec.seed)
    noise = torch.Generator(device=device).manual_seed(spec.seed + 1)
    perm, position, out = None, 0, []
    for step in range(steps):
        if perm is None or position + batch > len(images):
            perm, position = torch.randperm(len(images), generator=order), 0
        real = (images[perm[position : position + batch]].float() / 127.5 - 1).to(device)
        position += batch
        z = torch.randn(batch, spec.z_dim, generator=noise, device=device)
        opt_d.zero_grad()
        with autocast():
            fake = G(z)
        r1_now = r1_every and step % r1_every == 0
        real.requires_grad_(bool(r1_now))
        with autocast():
            logits = D(torch.cat([real, fake.detach()])).float()  # one forward, as the trainer's D without BatchNorm
        real_logits, fake_logits = logits.split(batch)
        d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))  # fmt: skip
        r1 = torch.zeros(())
        if r1_now:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = 0.5 * r1_gamma * r1_every * grad.pow(2).flatten(1).sum(1).mean()
        update(opt_d, d_loss + r1)
        opt_g.zero_grad()
        with autocast():
            fake_logits = D(fake).float()
        g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        update(opt_g, g_loss)
        for scheduler in schedulers:
            scheduler.step()
        out.append((d_loss.item(), g_loss.item(), r1.item()))
    return out, G, D, [scalers[o].get_scale() for o in (opt_g, opt_d)] if scalers else None


def test_trainer_follows_the_schedule_of_a_plain_pytorch_loop(tmp_path):
    spec = tiny(steps=9, lr_schedule="cosine", lr_warmup_steps=3, **MLP)
    Trainer(spec, tmp_path).run()
    reference, *_ = reference_losses(spec, 9, schedule=("cosine", 9, 3))
    torch.testing.assert_close(torch.tensor(losses(tmp_path), dtype=torch.float64),
                               torch.tensor([r[:2] for r in reference], dtype=torch.float64), rtol=2e-4, atol=2e-5)
    # metrics.jsonl shows the rates of each step: torch's for the step before the record
    records = train_records(tmp_path)
    rates = torch_rates("cosine", 9, 3, base=spec.lr_g)
    assert [r["lr_g"] for r in records] == pytest.approx(rates, rel=1e-9)
    assert [r["lr_d"] for r in records] == pytest.approx(torch_rates("cosine", 9, 3, base=spec.lr_d), rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear-decay", "constant"])
def test_warm_up_and_linear_decay_match_the_plain_pytorch_loop(tmp_path, schedule):
    spec = tiny(steps=6, lr_schedule=schedule, lr_warmup_steps=2, **MLP)
    Trainer(spec, tmp_path).run()
    reference, *_ = reference_losses(spec, 6, schedule=(schedule, 6, 2))
    torch.testing.assert_close(torch.tensor(losses(tmp_path), dtype=torch.float64),
                               torch.tensor([r[:2] for r in reference], dtype=torch.float64), rtol=2e-4, atol=2e-5)


def test_resume_refuses_another_length_under_a_decaying_schedule(tmp_path):
    Trainer(tiny(steps=4, lr_schedule="cosine", **MLP), tmp_path).run()
    with pytest.raises(SpecError, match="decays over 4 steps") as caught:
        Trainer(tiny(steps=6, lr_schedule="cosine", **MLP), tmp_path).run()
    assert caught.value.field == "steps"
    # a constant rate (with a warm-up) does not depend on the length: the run goes on
    Trainer(tiny(steps=4, lr_warmup_steps=2, **MLP), tmp_path / "constant").run()
    assert Trainer(tiny(steps=6, lr_warmup_steps=2, **MLP), tmp_path / "constant").run()["step"] == 6


def test_a_rollback_halves_the_full_rate_the_schedule_scales(tmp_path, monkeypatch):
    poisoned = []
    original = Trainer._train_step

    def step(self):  # D's weights become NaN once, after step 6: step 7 diverges, back to step 4's checkpoint
        stats = original(self)
        poisoned.append(1)
        if len(poisoned) == 6:
            with torch.no_grad():
                next(self.D.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(Trainer, "_train_step", step)
    events = []
    spec = tiny(steps=12, checkpoint_every=4, lr_schedule="cosine", lr_warmup_steps=2)
    assert Trainer(spec, tmp_path, on_event=events.append).run()["status"] == "completed"
    (rollback,) = [e for e in events if isinstance(e, ev.Rollback)]
    assert (rollback.step, rollback.to_step) == (7, 4)
    assert rollback.lr_g == spec.lr_g * 0.5 and rollback.lr_d == spec.lr_d * 0.5  # not the scheduled rate halved
    for record in train_records(tmp_path):
        full = 1.0 if record["step"] <= 4 else 0.5
        expected = spec.lr_g * full * lr_factor("cosine", record["step"] - 1, 12, 2)
        assert record["lr_g"] == pytest.approx(expected, rel=1e-12), record["step"]
    groups = checkpoint(tmp_path)["opt_g"]["param_groups"]
    assert groups[0]["initial_lr"] == spec.lr_g * 0.5


# ---------------------------------------------------------------------- gradient accumulation
class MicroBatchTrainer(Trainer):
    """Records the number of real samples in each of D's micro-batches."""

    def _d_micro_step(self, real, *args):
        self.micro_batches = getattr(self, "micro_batches", []) + [real.shape[0]]
        return super()._d_micro_step(real, *args)


@pytest.mark.parametrize("recipe", [
    MLP,
    {"model": "mlp", "loss": "wasserstein", "spectral_norm": False, "gradient_penalty": 10.0, "ema_decay": 0.0},
    {"model": "mlp", "loss": "hinge", "spectral_norm": False, "r1_gamma": 1.0, "ema_decay": 0.0},
])  # fmt: skip
def test_accumulated_micro_batches_train_what_the_whole_batch_trains(tmp_path, recipe):
    """Without BatchNorm or spectral norm (the MLP): BatchNorm normalises each micro-batch with its own statistics
    and spectral norm takes a power iteration per forward, so with them the two differ by design."""
    # the gradients themselves (Adam's step hardly changes when they are all twice too large): after one step,
    # D's were taken at the same weights, G's through D's nearly equal updated ones
    whole = Trainer(tiny(steps=1, batch_size=32, **recipe), tmp_path / "whole-1")
    whole.run()
    split = MicroBatchTrainer(tiny(steps=1, batch_size=32, accumulate=2, **recipe), tmp_path / "split-1")
    split.run()
    assert split.micro_batches == [16, 16]
    for a, b in ((whole.G, split.G), (whole.D, split.D)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=name)
    # and a few steps: the same statistics, and the same weights to what Adam makes of rounding (where a gradient
    # is near zero, its step is lr * g / (|g| + eps): a rounding of g moves such a weight by up to 2 lr)
    Trainer(tiny(steps=6, batch_size=32, **recipe), tmp_path / "whole").run()
    split = MicroBatchTrainer(tiny(steps=6, batch_size=32, accumulate=2, **recipe), tmp_path / "split")
    split.run()
    assert split.micro_batches == [16] * 12
    a, b = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "split")
    lr = max(split.spec.lr_g, split.spec.lr_d)
    for part in ("G", "D"):
        for name, value in a[part].items():
            close = torch.isclose(b[part][name], value, rtol=1e-4, atol=1e-5)
            assert close.float().mean() > 0.99 and (b[part][name] - value).abs().max() <= 2 * lr, (part, name)
        close = torch.cat([torch.isclose(b[part][n], v, rtol=1e-4, atol=1e-5).flatten() for n, v in a[part].items()])
        assert close.float().mean() > 0.9999, part
    names = [n for n in train_records(tmp_path / "whole")[0] if n.startswith(("d_", "g_", "gradient", "r1"))]
    for ra, rb in zip(train_records(tmp_path / "whole"), train_records(tmp_path / "split"), strict=True):
        torch.testing.assert_close(torch.tensor([rb[n] for n in names]), torch.tensor([ra[n] for n in names]),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_accumulation_counts_each_micro_batch_once_in_batchnorm_statistics(tmp_path):
    # the DCGAN's G has BatchNorm; the G step runs G again on the last D step's micro-batches
    trainer = Trainer(tiny(steps=3, n_critic=2, accumulate=2, loss="bce", spectral_norm=False), tmp_path)
    trainer.run()
    tracked = [b for n, b in trainer.G.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(int(b) == 3 * 2 * 2 for b in tracked)  # steps x n_critic x micro-batches


# ---------------------------------------------------------------------- lazy R1
def test_lazy_r1_matches_the_plain_pytorch_loop(tmp_path, monkeypatch):
    spec = tiny(steps=7, r1_gamma=2.0, r1_every=3, **MLP)
    calls = []
    fused = ops.d_loss_step
    monkeypatch.setattr(ops, "d_loss_step", lambda *a: calls.append(1) or fused(*a))
    Trainer(spec, tmp_path).run()
    assert len(calls) == 4  # D steps 1, 2, 4, 5 have no R1: the fused loss step
    reference, *_ = reference_losses(spec, 7, r1_every=3, r1_gamma=2.0)
    records = train_records(tmp_path)
    ours = [(r["d_loss"], r["g_loss"], r["r1_penalty"]) for r in records]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64),
                               rtol=2e-4, atol=2e-6)  # fmt: skip
    assert [r["r1_penalty"] > 0 for r in records] == [True, False, False, True, False, False, True]


# ---------------------------------------------------------------------- exact resume
RESUMABLE = {
    "cosine-warmup": {"lr_schedule": "cosine", "lr_warmup_steps": 3},  # stopped in the decay
    "linear-decay-stopped-in-warmup": {"lr_schedule": "linear-decay", "lr_warmup_steps": 7},
    "accumulate-batchnorm": {"accumulate": 2, "n_critic": 2, "loss": "bce", "spectral_norm": False},
    "lazy-r1-mid-phase": {"loss": "bce", "spectral_norm": False, "r1_gamma": 1.0, "r1_every": 3},  # 5 % 3 = 2
    "everything": {"model": "mlp", "loss": "wasserstein", "gradient_penalty": 10.0, "accumulate": 4,
                   "lr_schedule": "cosine", "lr_warmup_steps": 2},
}  # fmt: skip


def assert_resume_is_exact(tmp_path, spec: TrainSpec, stop: int) -> tuple[dict, dict]:
    """Train `spec` straight and stopped at `stop` then resumed; assert the same losses and the same weights bit
    for bit; return both final checkpoints. The stop is a request (the run's length is the schedule's)."""
    Trainer(spec, tmp_path / "straight").run()
    asked = []
    stopped = Trainer(spec, tmp_path / "split", should_stop=lambda: len(asked) >= stop or asked.append(1)).run()
    assert stopped["status"] == "stopped" and stopped["step"] == stop
    assert Trainer(spec, tmp_path / "split").run()["resumed_from"] == stop
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    a, b = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "split")
    for part in ("G", "D"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    return a, b


@pytest.mark.parametrize("recipe", list(RESUMABLE))
def test_resume_is_exact_mid_schedule_accumulation_and_lazy_r1(tmp_path, recipe):
    assert_resume_is_exact(tmp_path, tiny(steps=10, **RESUMABLE[recipe]), stop=5)


def test_fp16_resume_is_exact_with_the_scalers_state(tmp_path, fp16_on_cpu):
    a, b = assert_resume_is_exact(tmp_path, tiny(steps=10, precision="fp16", **MLP), stop=5)
    # one update per optimiser step, the scale doubled after every 3 clean ones: 10 steps = 3 doublings + 1 step;
    # a resume that started its scalers afresh would stand at 2**11, 2 (5 steps: 1 doubling + 2, twice)
    for part in ("d", "g"):
        assert (a["scalers"][part]["scale"], a["scalers"][part]["_growth_tracker"]) == (2.0**13, 1)
        assert b["scalers"][part] == a["scalers"][part]


# ---------------------------------------------------------------------- fp16
def test_fp16_scales_the_losses_as_a_plain_pytorch_amp_loop(tmp_path, monkeypatch):
    import gansvc.train.build as build

    monkeypatch.setattr(Trainer, "_fp16_device_types", ("cuda", "cpu"))
    # a first scale too large for fp16's range: the first steps' gradients overflow, are skipped, the scale halves
    monkeypatch.setattr(build, "grad_scaler", lambda precision, device: torch.amp.GradScaler(
        device.type, init_scale=2.0**24) if precision == "fp16" else None)  # fmt: skip
    spec = tiny(steps=6, precision="fp16", **MLP)
    trainer = Trainer(spec, tmp_path)
    trainer.run()
    reference, G, D, scales = reference_losses(spec, 6, fp16_device="cpu", init_scale=2.0**24)
    assert [trainer.scaler_g.get_scale(), trainer.scaler_d.get_scale()] == scales and max(scales) < 2.0**24
    torch.testing.assert_close(torch.tensor(losses(tmp_path), dtype=torch.float64),
                               torch.tensor([r[:2] for r in reference], dtype=torch.float64), rtol=2e-3, atol=2e-4)
    for mine, theirs in ((trainer.G, G), (trainer.D, D)):
        for (name, p), q in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    state = checkpoint(tmp_path)["scalers"]
    assert [state["g"]["scale"], state["d"]["scale"]] == scales
    # the gradients left on G (the logged grad norms) are the true ones, unscaled
    for (name, p), q in zip(trainer.G.named_parameters(), G.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-2, atol=1e-3 * float(q.grad.abs().max()), msg=name)


def test_fused_adam_under_a_grad_scaler_matches_torch_adam_and_skips_overflowed_steps():
    import copy

    from gansvc.train.optim import FusedAdam

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    reference = copy.deepcopy(ours)
    pairs = [(ours, FusedAdam(ours.parameters(), lr=1e-3, betas=(0.5, 0.999)), torch.amp.GradScaler("cpu")),
             (reference, torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True),
              torch.amp.GradScaler("cpu"))]  # fmt: skip
    for step in range(12):
        x = torch.randn(8, 10)
        for model, optimiser, scaler in pairs:
            optimiser.zero_grad()
            scaler.scale(model(x).pow(2).sum()).backward()
            if step in (4, 9):  # an overflow: the step is skipped and the scale halved
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.unscale_(optimiser)
            scaler.step(optimiser)
            scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))
    (_, optimiser, scaler), (_, torch_adam, _) = pairs
    assert optimiser.state_dict()["state"][0]["step"] == torch_adam.state_dict()["state"][0]["step"] == 10
    assert scaler.get_scale() == 2.0**16 / 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_on_cuda_fp16_trains_and_resumes_exactly(tmp_path, precision):
    spec = tiny(steps=8, precision=precision, device="cuda", **MLP)
    a, _ = assert_resume_is_exact(tmp_path, spec, stop=3)
    assert (a["scalers"] is None) == (precision == "fp32")
    if precision == "fp16":
        assert a["scalers"]["d"]["scale"] <= 2.0**16 and a["scalers"]["d"]["_growth_tracker"] <= 8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_fp16_matches_the_plain_pytorch_amp_loop(tmp_path):
    spec = tiny(steps=6, precision="fp16", device="cuda", **MLP)
    trainer = Trainer(spec, tmp_path)
    trainer.run()
    reference, G, D, scales = reference_losses(spec, 6, fp16_device="cuda")
    assert [trainer.scaler_g.get_scale(), trainer.scaler_d.get_scale()] == scales
    torch.testing.assert_close(torch.tensor(losses(tmp_path), dtype=torch.float64),
                               torch.tensor([r[:2] for r in reference], dtype=torch.float64), rtol=2e-3, atol=2e-4)
    for mine, theirs in ((trainer.G, G), (trainer.D, D)):
        for (name, p), q in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)


# ---------------------------------------------------------------------- refusals, named
@pytest.mark.parametrize(("settings", "field", "text"), [
    ({"lr_schedule": "step"}, "lr_schedule", "constant, cosine, linear-decay"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps", ">= 0"),
    ({"lr_warmup_steps": 10}, "lr_warmup_steps", "none of the run's 10 steps"),
    ({"accumulate": 0}, "accumulate", ">= 1"),
    ({"accumulate": 3}, "accumulate", "multiple of 3"),
    ({"accumulate": 4, "nproc": 2, "batch_size": 12}, "accumulate", "multiple of 8"),
    ({"r1_every": 4}, "r1_every", "set r1_gamma"),
    ({"r1_every": 0, "r1_gamma": 1.0}, "r1_every", ">= 1"),
    ({"precision": "fp16", "device": "cpu"}, "precision", "CUDA device only"),
    ({"precision": "fp8"}, "precision", "fp32, bf16, fp16"),
])  # fmt: skip
def test_bad_settings_are_refused_naming_the_field(settings, field, text):
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({**TINY, "steps": 10, **settings})
    assert caught.value.field == field and text in caught.value.message, str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="device auto is a GPU here")
def test_fp16_on_a_cpu_only_machine_is_refused_when_the_device_resolves(tmp_path):
    with pytest.raises(SpecError, match="on a CPU use bf16") as caught:
        Trainer(tiny(steps=2, precision="fp16", **MLP), tmp_path).run()
    assert caught.value.field == "precision" and not (tmp_path / "checkpoints").exists()


def test_the_service_refuses_fp16_where_it_would_run_on_a_cpu():
    from gansvc.service.devices import DevicePool
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import pb
    from gansvc.service.validation import DataRoots, training_spec

    message = pb.TrainingSpec(steps=2, model="mlp", precision="fp16", lr_schedule="cosine", accumulate=2, r1_every=1)
    with pytest.raises(InvalidField) as caught:
        training_spec(message, DataRoots(()), DevicePool([], 1))  # device auto on a server without GPUs
    assert caught.value.field == "precision" and "bf16" in str(caught.value)
    accepted = training_spec(message, DataRoots(()), DevicePool([0], 1))
    assert (accepted["precision"], accepted["lr_schedule"], accepted["accumulate"]) == ("fp16", "cosine", 2)
    with pytest.raises(InvalidField) as caught:
        training_spec(pb.TrainingSpec(steps=2, model="mlp", accumulate=3), DataRoots(()), DevicePool([], 1))
    assert caught.value.field == "accumulate"


def test_submit_refuses_each_bad_setting_with_invalid_argument_naming_it(tmp_path):
    import grpc

    from gansvc.service.messages import pb, pb_grpc
    from gansvc.service.server import GanServer, ServerConfig

    cases = [({"lr_schedule": "step"}, "lr_schedule"), ({"lr_warmup_steps": 4}, "lr_warmup_steps"),
             ({"accumulate": 3}, "accumulate"), ({"r1_every": 2}, "r1_every"),
             ({"precision": "fp16"}, "precision")]  # fmt: skip
    server = GanServer(ServerConfig(state_dir=tmp_path, listen="127.0.0.1:0", cpu_jobs=1))  # no GPUs: auto is a CPU
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GanServiceStub(channel)
            for settings, field in cases:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.SubmitTraining(pb.TrainingSpec(steps=4, model="mlp", **settings), timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, settings
                assert caught.value.details().startswith(f"{field}:"), caught.value.details()
    finally:
        server.shutdown(timeout=20)


def test_the_cli_refuses_a_bad_setting_with_exit_code_2(tmp_path, capsys):
    from gansvc.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "4", "--accumulate", "5", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("gansvc train: error: --accumulate")
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "4", "--lr-schedule", "cos", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("gansvc train: error: --lr-schedule")
    assert not (tmp_path / "run").exists()


def test_schedule_factors_stay_within_zero_and_one():
    for schedule in LR_SCHEDULES:
        for total, warmup in ((1, 0), (2, 1), (50, 10), (7, 6)):
            factors = [lr_factor(schedule, s, total, warmup) for s in range(total)]
            assert all(0.0 < f <= 1.0 for f in factors) and all(math.isfinite(f) for f in factors), (schedule, total)

"""The trainer's fused loss steps (gansvc.ops.d_loss_step / g_loss_step) against its autograd path.

Without a gradient penalty or R1 the step adds d loss / d logits straight into the logits' graph; the
reference is the same trainer forced onto the differentiable loss + loss.backward() path. Both must
train the same weights and report the same statistics, to float rounding.
"""

from __future__ import annotations

import json

import pytest
import torch

from gansvc import ops
from gansvc.train import Trainer, TrainSpec
from gansvc.train.step import TrainerStep

# class_entropy 0: a classifier term joins D's and G's losses in the graph, so runs with it (the unconditional
# DCGAN's default on labelled data) take the autograd path; the fused steps serve the plain GAN losses
TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1, "steps": 5, "class_entropy": 0.0}  # fmt: skip

FUSED_RECIPES = {
    "mlp-bce": {"model": "mlp", "loss": "bce", "spectral_norm": False, "ema_decay": 0.0},
    "dcgan-defaults": {},
    "dcgan-hinge-sn": {"loss": "hinge", "spectral_norm": True},
    "dcgan-bce-batchnorm-ncritic2-smoothing": {"loss": "bce", "spectral_norm": False, "n_critic": 2, "real_label": 0.9},
    "mlp-bce-saturating": {"model": "mlp", "loss": "bce", "g_saturating": True, "spectral_norm": False},
    "mlp-wasserstein": {"model": "mlp", "loss": "wasserstein", "spectral_norm": True},
    "dcgan-bf16": {"precision": "bf16"},
    "dcgan-diffaugment": {"augment": "translation,cutout,color", "augment_p": 0.5},
    "dcgan-ada-conditional": {"augment": "translation,cutout", "ada_target": 0.6, "conditional": True,
                              "ac_weight": 0.0},
    # RaGAN: G's step is D's fused loss step with the roles swapped (counted as a "d" call)
    "dcgan-relativistic": {"relativistic": True},
    "dcgan-relativistic-hinge-ncritic2": {"loss": "hinge", "relativistic": True, "n_critic": 2},
}
AUTOGRAD_ONLY = {
    "mlp-wasserstein-gp": {"model": "mlp", "loss": "wasserstein", "spectral_norm": False, "gradient_penalty": 10.0},
    "dcgan-r1": {"loss": "bce", "spectral_norm": False, "r1_gamma": 1.0},
    # the conditional recipe: the auxiliary classifier's cross-entropy joins both losses
    "dcgan-conditional-ac": {"conditional": True},
    "dcgan-relativistic-conditional-ac": {"conditional": True, "relativistic": True},
}


def _train(run_dir, spec: TrainSpec, fused: bool, monkeypatch) -> tuple[dict, list[dict], int]:
    """Train `spec` into run_dir on one path; return (the last checkpoint, the train records, fused calls)."""
    calls = []
    d_step, g_step = ops.d_loss_step, ops.g_loss_step
    with monkeypatch.context() as patch:
        patch.setattr(TrainerStep, "_fused_loss_steps", fused)
        patch.setattr(ops, "d_loss_step", lambda *a: calls.append("d") or d_step(*a))
        patch.setattr(ops, "g_loss_step", lambda *a: calls.append("g") or g_step(*a))
        Trainer(spec, run_dir).run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    return state, [r for r in records if r["kind"] == "train"], len(calls)


def _assert_same_training(a: tuple, b: tuple, rtol: float, atol: float) -> None:
    (state_a, records_a, _), (state_b, records_b, _) = a, b
    parts = [p for p in ("G", "D") if p in state_a]
    assert parts == ["G", "D"]
    for part in parts:
        assert state_a[part].keys() == state_b[part].keys()
        for name, value in state_a[part].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, state_b[part][name], rtol=rtol, atol=atol, msg=f"{part}.{name}")
            else:
                assert torch.equal(value, state_b[part][name]), (part, name)
    assert len(records_a) == len(records_b) == TINY["steps"]
    for ra, rb in zip(records_a, records_b):
        stats = [k for k in ra if k.startswith(("d_", "g_")) or k in ("gp", "r1", "augment_p")]
        assert {"d_loss", "g_loss", "d_real", "d_fake", "d_accuracy"} <= set(stats)
        assert list(ra) == list(rb)
        torch.testing.assert_close(torch.tensor([ra[k] for k in stats], dtype=torch.float64),
                                   torch.tensor([rb[k] for k in stats], dtype=torch.float64),
                                   rtol=rtol, atol=atol)  # fmt: skip


@pytest.mark.parametrize("recipe", list(FUSED_RECIPES))
def test_fused_loss_steps_train_what_the_autograd_path_trains(tmp_path, monkeypatch, recipe):
    spec = TrainSpec.from_dict({**TINY, **FUSED_RECIPES[recipe]})
    fused = _train(tmp_path / "fused", spec, True, monkeypatch)
    plain = _train(tmp_path / "autograd", spec, False, monkeypatch)
    # one d and one g step per D step / G step: the fused path was taken, the reference path was not
    assert fused[2] == TINY["steps"] * (spec.n_critic + 1) and plain[2] == 0
    low = spec.precision == "bf16"  # bf16 logits: a rounding of one path's logits can flip in the other
    _assert_same_training(fused, plain, rtol=1e-3 if low else 1e-5, atol=1e-4 if low else 1e-6)


@pytest.mark.parametrize("recipe", list(AUTOGRAD_ONLY))
def test_penalties_keep_the_loss_in_the_graph(tmp_path, monkeypatch, recipe):
    spec = TrainSpec.from_dict({**TINY, **AUTOGRAD_ONLY[recipe]})
    default = _train(tmp_path / "default", spec, True, monkeypatch)
    plain = _train(tmp_path / "autograd", spec, False, monkeypatch)
    assert default[2] == 0 and plain[2] == 0
    _assert_same_training(default, plain, rtol=0, atol=0)


# the residual model with the DCGAN's Adam (beta1 0.5): its own beta1 = 0 turns every rounding difference of a
# near-zero gradient into a full +-lr step, which tests Adam's noise, not the memory layout
@pytest.mark.parametrize("recipe", [{}, {"model": "resnet", "conditional": True, "lr_g": 1e-3, "lr_d": 4e-4,
                                         "beta1": 0.5, "beta2": 0.999}])  # fmt: skip
def test_channels_last_conv_nets_train_what_contiguous_ones_train(tmp_path, monkeypatch, recipe):
    import gansvc.train.build as build

    spec = TrainSpec.from_dict({**TINY, **recipe})
    trainer = Trainer(spec, tmp_path / "channels-last")
    trainer.run()
    four_d = [p for p in trainer.D.parameters() if p.dim() == 4 and p.shape[1] > 1 and p[0, 0].numel() > 1]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in four_d)
    monkeypatch.setattr(build, "channels_last_on_cpu", lambda model, device: model)
    plain = Trainer(spec, tmp_path / "contiguous")
    plain.run()
    assert all(p.is_contiguous() for p in plain.D.parameters())
    # Biases followed by BatchNorm have a zero true gradient: Adam turns its rounding noise into +-lr steps, so
    # those drift apart under any change of summation order (and the running means with them). Nearly all
    # weights agree to rounding, and the trained networks compute the same functions.
    for mine, theirs in ((trainer.G, plain.G), (trainer.D, plain.D)):
        a = torch.cat([p.detach().flatten() for p in mine.parameters()])
        b = torch.cat([p.detach().flatten() for p in theirs.parameters()])
        assert torch.isclose(a, b, rtol=1e-4, atol=1e-7).float().mean() > 0.99
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(32, spec.z_dim, generator=gen)
    labels = (torch.randint(0, trainer.num_classes, (32,), generator=gen),) if trainer.num_classes else ()
    with torch.no_grad():
        images, images_plain = trainer.G(z, *labels), plain.G(z, *labels)  # train mode: batch statistics
        torch.testing.assert_close(images, images_plain, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(trainer.D(images, *labels), plain.D(images, *labels), rtol=1e-3, atol=1e-4)

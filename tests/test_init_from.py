"""Starting a run from another run's weights (issue 21): init_from, init_parts, partial loads, FreezeD, and the
files a start refuses. Tiny runs on Fashion-MNIST (DCGAN width 8, or a small MLP), a few steps each."""

from __future__ import annotations

import hashlib
import pickle
import re

import numpy as np
import pytest
import torch

from gansvc.models import build_models
from gansvc.runtime import events as ev
from gansvc.train import SpecError, Trainer, TrainSpec

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip
MLP = {**TINY, "model": "mlp", "mlp_hidden": 24, "z_dim": 8}


def tiny(**kw) -> TrainSpec:
    return TrainSpec.from_dict({**TINY, **kw})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny DCGAN run (with EMA) to start from: (run directory, its latest checkpoint as loaded)."""
    run_dir = tmp_path_factory.mktemp("source")
    Trainer(tiny(steps=4, checkpoint_every=2), run_dir).run()
    return run_dir, torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def set_up(spec: TrainSpec, run_dir) -> Trainer:
    """Return a Trainer after its set-up (models built, a start or resume applied), before any step."""
    trainer = Trainer(spec, run_dir)
    trainer._setup()
    return trainer


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def sha256_of(state_dict: dict) -> str:
    """The weights digest the start's log line names, computed here with NumPy: name|dtype|shape|bytes, sorted."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        array = state_dict[name].numpy().copy(order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
        digest.update(f"{name}|{state_dict[name].dtype}|{list(array.shape)}|".encode() + array.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- exact starts
def test_a_run_starts_at_step_0_with_exactly_the_checkpoints_weights(source, tmp_path):
    run_dir, saved = source
    spec = tiny(steps=3, init_from=str(run_dir), init_parts="optim,ema,d,g", lr_g=3e-4, seed=7)
    assert spec.init_parts == "g,d,ema,optim"  # written in its canonical order
    trainer = set_up(spec, tmp_path / "run")
    assert trainer.step == 0 and trainer.resumed_from is None
    assert_same_tensors(trainer.G.state_dict(), saved["G"])
    assert_same_tensors(trainer.D.state_dict(), saved["D"])
    assert_same_tensors(trainer.ema.model.state_dict(), saved["ema"]["model"])
    assert trainer.ema.updates == saved["ema"]["updates"]
    for name in ("opt_g", "opt_d"):  # Adam's moments come along; the learning rate and betas are this run's
        mine, theirs = getattr(trainer, name).state_dict(), saved[name]
        for index, moments in theirs["state"].items():
            for key, value in moments.items():
                assert torch.equal(mine["state"][index][key], value), (name, index, key)
    assert trainer.opt_g.param_groups[0]["lr"] == 3e-4 != saved["opt_g"]["param_groups"][0]["lr"]
    log = next(e for e in trainer._startup_logs if e.message.startswith("init_from"))
    digests = dict(re.findall(r"\b(G|D|ema) ([0-9a-f]{64})", log.message))
    assert digests == {"G": sha256_of(saved["G"]), "D": sha256_of(saved["D"]), "ema": sha256_of(saved["ema"]["model"])}


def test_a_checkpoint_file_and_a_run_directory_name_what_they_hold(source, tmp_path):
    run_dir, _ = source
    step_file = run_dir / "checkpoints" / "step_0000002.pt"
    trainer = set_up(tiny(steps=3, init_from=str(step_file)), tmp_path / "run")
    assert_same_tensors(trainer.G.state_dict(), torch.load(step_file, weights_only=True)["G"])
    with pytest.raises(SpecError, match="no checkpoints/latest.pt") as caught:
        set_up(tiny(steps=3, init_from=str(tmp_path)), tmp_path / "other")
    assert caught.value.field == "init_from"
    with pytest.raises(SpecError, match="server") as caught:
        set_up(tiny(steps=3, init_from="job:train-abc:best"), tmp_path / "third")
    assert caught.value.field == "init_from"


def test_init_parts_g_leaves_d_at_its_fresh_initialisation(source, tmp_path):
    run_dir, saved = source
    fresh = set_up(tiny(steps=3), tmp_path / "fresh")
    started = set_up(tiny(steps=3, init_from=str(run_dir), init_parts="g"), tmp_path / "started")
    assert_same_tensors(started.G.state_dict(), saved["G"])
    assert_same_tensors(started.D.state_dict(), fresh.D.state_dict())
    assert not torch.equal(fresh.D.state_dict()["main.0.weight"], saved["D"]["main.0.weight"])  # the test can fail
    assert_same_tensors(started.ema.model.state_dict(), saved["G"])  # without ema, the average starts at the new G
    assert started.ema.updates == 0
    assert not started.opt_g.state and not started.opt_d.state  # without optim, Adam starts afresh


def test_resume_of_a_started_run_is_exact_and_does_not_load_again(source, tmp_path):
    run_dir, _ = source
    spec = tiny(steps=6, init_from=str(run_dir), checkpoint_every=3)
    Trainer(spec, tmp_path / "straight").run()
    Trainer(spec.with_overrides(steps=3), tmp_path / "split").run()
    events = []
    summary = Trainer(spec, tmp_path / "split", on_event=events.append).run()
    assert summary["resumed_from"] == 3
    assert not any(isinstance(e, ev.Log) and e.message.startswith("init_from") for e in events)
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    assert straight["step"] == split["step"] == 6
    for part in ("G", "D"):
        assert_same_tensors(split[part], straight[part])


# ---------------------------------------------------------------------- what does not fit
def test_a_misfit_names_every_mismatched_entry_with_both_shapes(source, tmp_path):
    run_dir, saved = source
    spec = tiny(steps=3, init_from=str(run_dir), image_size=32)
    with pytest.raises(SpecError) as caught:
        set_up(spec, tmp_path / "refused")
    assert caught.value.field == "init_from" and "partial" in caught.value.message
    # the expected misfits, from the two models' own state dicts
    generator, discriminator = build_models(spec, (1, 32, 32))
    for what, model in (("G", generator), ("D", discriminator)):
        own = model.state_dict()
        for name, tensor in own.items():
            if name in saved[what] and saved[what][name].shape != tensor.shape:
                assert f"{name} {list(saved[what][name].shape)} vs {list(tensor.shape)}" in caught.value.message
            elif name not in saved[what]:
                assert f"{name} {list(tensor.shape)}" in caught.value.message
        assert any(name not in saved[what] for name in own)

    partial = set_up(spec.with_overrides(init_parts="g,d,partial"), tmp_path / "partial")
    fresh = set_up(tiny(steps=3, image_size=32), tmp_path / "fresh")
    warning = next(e for e in partial._startup_logs if e.level == "warning")
    loaded = 0
    for what, mine, new in (("G", partial.G, fresh.G), ("D", partial.D, fresh.D)):
        for name, tensor in mine.state_dict().items():
            theirs = saved[what].get(name)
            if theirs is not None and theirs.shape == tensor.shape:
                assert torch.equal(tensor, theirs), name
                loaded += 1
            else:  # left at its fresh initialisation, and named
                assert torch.equal(tensor, new.state_dict()[name]), name
                assert f"{what}: {name} " in warning.message
    assert loaded >= 4  # D's first convolutions fit across 28 and 32 px


def test_optimiser_state_needs_weights_that_fit_whole(source, tmp_path):
    run_dir, _ = source
    with pytest.raises(SpecError, match="optim") as caught:
        set_up(tiny(steps=3, init_from=str(run_dir), image_size=32, init_parts="g,d,optim,partial"), tmp_path / "a")
    assert caught.value.field == "init_parts"


def _evil_payload(marker):
    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    return Evil()


def test_foreign_and_damaged_files_are_refused_and_nothing_in_them_runs(source, tmp_path):
    run_dir, _ = source
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_evil_payload(marker)))  # the payload is live: unpickled in full, it makes the file
    assert marker.exists()
    marker.unlink()
    real = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    files = {
        "a pickle of an object": (pickle.dumps(_evil_payload(marker), protocol=2), "not a readable checkpoint"),
        "random bytes": (np.random.default_rng(0).bytes(4096), "not a readable checkpoint"),
        "a truncated checkpoint": (real[: len(real) // 2], "not a readable checkpoint"),
    }
    evil_zip = tmp_path / "evil.pt"
    torch.save({"format": "gansvc-checkpoint", "G": _evil_payload(marker)}, evil_zip)
    files["torch.save of an object"] = (evil_zip.read_bytes(), "not a readable checkpoint")
    linear = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), linear)
    files["another model's state dict"] = (linear.read_bytes(), "not a gansvc checkpoint")
    files["an exported generator"] = ((run_dir / "generator.pt").read_bytes(), "exported generator")
    for what, (data, expected) in files.items():
        path = tmp_path / "file.pt"
        path.write_bytes(data)
        with pytest.raises(SpecError) as caught:
            set_up(tiny(steps=3, init_from=str(path)), tmp_path / "run")
        assert caught.value.field == "init_from" and expected in caught.value.message, what
        assert str(path) in caught.value.message, what
        assert not marker.exists(), what


def test_a_checkpoint_of_another_model_is_a_misfit(tmp_path):
    Trainer(TrainSpec.from_dict({**MLP, "steps": 2}), tmp_path / "mlp").run()
    with pytest.raises(SpecError, match="does not fit") as caught:
        set_up(tiny(steps=3, init_from=str(tmp_path / "mlp")), tmp_path / "dcgan")
    assert "main.0.weight [24, 8] vs [100, 24, 7, 7]" in caught.value.message  # G at g_width 12 = 1.5 x 8


# ---------------------------------------------------------------------- FreezeD
@pytest.mark.parametrize("model", ["dcgan", "mlp"])
def test_freeze_d_keeps_the_first_blocks_and_trains_the_rest(tmp_path, model):
    settings = TINY if model == "dcgan" else MLP
    Trainer(TrainSpec.from_dict({**settings, "steps": 2}), tmp_path / "source").run()
    saved = torch.load(tmp_path / "source" / "checkpoints" / "latest.pt", weights_only=True)["D"]
    spec = TrainSpec.from_dict({**settings, "steps": 3, "init_from": str(tmp_path / "source"), "freeze_d_layers": 1})
    Trainer(spec, tmp_path / "run").run()
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    frozen = {"main.0.weight", "main.0.bias"}  # the first block: the first convolution / Linear layer
    for name in frozen:
        assert torch.equal(state["D"][name], saved[name]), name
    trained = [n for n in saved if n.endswith("weight") and n not in frozen]
    assert trained and all(not torch.equal(state["D"][n], saved[n]) for n in trained)
    label_classes = 10 if spec.class_entropy > 0 else 0  # the default DCGAN D classifies Fashion-MNIST's classes
    d = build_models(spec, (1, 28, 28), label_classes=label_classes)[1]
    trainable = sum(1 for name, p in d.named_parameters() if name not in frozen)
    assert len(state["opt_d"]["state"]) == trainable  # the optimiser holds no state for the frozen block


def test_freeze_d_blocks_of_the_residual_discriminator():
    from gansvc.models import freeze_blocks

    spec = TrainSpec.from_dict({**TINY, "steps": 1, "model": "resnet", "attention": 14})
    _, discriminator = build_models(spec, (1, 28, 28))
    blocks = discriminator.feature_blocks()  # 28 -> 14 (with self-attention) -> 7
    assert len(blocks) == 2 and discriminator.attention in list(blocks[0].modules())
    frozen = freeze_blocks(discriminator, 1)
    first = [*discriminator.blocks[0].parameters(), *discriminator.attention.parameters()]
    assert {id(p) for p in frozen} == {id(p) for p in first}
    before = {n: p.detach().clone() for n, p in discriminator.named_parameters()}
    optimizer = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], lr=0.1)
    discriminator(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    for name, parameter in discriminator.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == (not name.startswith(("blocks.0.", "attention."))), name
    with pytest.raises(ValueError, match="has 2 blocks"):
        freeze_blocks(discriminator, 3)


def test_freeze_d_refuses_blocks_that_would_stay_fresh(source, tmp_path):
    run_dir, _ = source
    spec = tiny(steps=3, init_from=str(run_dir), image_size=32, init_parts="g,d,partial", freeze_d_layers=3)
    # 32 px: D's third block (convolution main.5, BatchNorm main.6) has no counterpart in the 28 px checkpoint
    with pytest.raises(SpecError, match=re.escape("main.5.weight, main.6.weight, main.6.bias;")) as caught:
        set_up(spec, tmp_path / "run")
    assert caught.value.field == "freeze_d_layers"
    with pytest.raises(SpecError, match="has 2 blocks") as caught:
        set_up(tiny(steps=3, init_from=str(run_dir), freeze_d_layers=3), tmp_path / "other")
    assert caught.value.field == "freeze_d_layers"


# ---------------------------------------------------------------------- the spec
@pytest.mark.parametrize(("settings", "field", "text"), [
    ({"init_parts": "g,x", "init_from": "run"}, "init_parts", "unknown part 'x'"),
    ({"init_parts": "optim", "init_from": "run"}, "init_parts", "name the weights"),
    ({"init_parts": "g"}, "init_parts", "with init_from only"),
    ({"freeze_d_layers": 1}, "freeze_d_layers", "set init_from"),
    ({"freeze_d_layers": 1, "init_from": "run", "init_parts": "g"}, "freeze_d_layers", "d in init_parts"),
    ({"init_from": "run", "init_parts": "g,ema", "ema_decay": 0.0}, "init_parts", "no EMA"),
    ({"init_from": "job:"}, "init_from", "job:ID:best"),
    ({"init_from": "job:a:step:x"}, "init_from", "job:ID:step:N"),
    ({"init_from": "upload:abc"}, "init_from", "64 lower-case hex"),
    ({"freeze_d_layers": -1}, "freeze_d_layers", ">= 0"),
])  # fmt: skip
def test_bad_settings_name_their_field(settings, field, text):
    with pytest.raises(SpecError, match=re.escape(text)) as caught:
        TrainSpec.from_dict({"steps": 1, **settings})
    assert caught.value.field == field


def test_gansvc_train_takes_init_from(source, tmp_path, capsys):
    from gansvc.cli import main

    run_dir, saved = source
    common = ["train", "--steps", "1", "--width", "8", "--batch-size", "16", "--eval-samples", "0", "--threads", "1",
              "--no-tensorboard", "--quiet"]  # fmt: skip
    assert main([*common, "--init-from", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main([*common, "--init-from", str(run_dir), "--init-parts", "g", "--out", str(tmp_path / "b")]) == 0
    spec = TrainSpec.from_file(tmp_path / "b" / "spec.json")
    assert spec.init_from == str(run_dir) and spec.init_parts == "g"

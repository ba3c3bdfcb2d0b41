"""TrainSpec: defaults, file formats, and errors that name the bad setting."""

from __future__ import annotations

import json

import pytest

from gansvc.train.spec import SpecError, TrainSpec


def test_defaults_round_trip_through_dict_and_json(tmp_path):
    spec = TrainSpec.from_dict({"epochs": 5})
    assert spec.epochs == 5.0 and spec.steps == 0 and spec.model == "dcgan"
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert TrainSpec.from_file(path) == spec


def test_toml_file_plain_and_with_train_table(tmp_path):
    plain = tmp_path / "a.toml"
    plain.write_text('dataset = "mnist"\nmodel = "mlp"\nloss = "bce"\nspectral_norm = false\nsteps = 100\nlr_g = 1e-4\n')
    spec = TrainSpec.from_file(plain)
    assert (spec.dataset, spec.model, spec.loss, spec.spectral_norm, spec.steps, spec.lr_g) == (
        "mnist", "mlp", "bce", False, 100, 1e-4,
    )  # fmt: skip
    table = tmp_path / "b.toml"
    table.write_text('[train]\nsteps = 7\nbatch_size = 32\n')
    assert TrainSpec.from_file(table).batch_size == 32


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"steps": 10, "batch_size": 0}, "batch_size"),
        ({"steps": 10, "batch_size": "64"}, "batch_size"),
        ({"steps": 10, "batch_size": True}, "batch_size"),
        ({"steps": 10, "batch_size": 64.5}, "batch_size"),
        ({"steps": 10, "spectral_norm": "yes"}, "spectral_norm"),
        ({"steps": 10, "lr_g": 0.0}, "lr_g"),
        ({"steps": 10, "lr_d": float("nan")}, "lr_d"),
        ({"steps": 10, "beta2": 1.0}, "beta2"),
        ({"steps": 10, "ema_decay": 1.0}, "ema_decay"),
        ({"steps": 10, "loss": "l2"}, "loss"),
        ({"steps": 10, "model": "stylegan"}, "model"),
        ({"steps": 10, "dataset": "imagenet"}, "dataset"),
        ({"steps": 10, "dataset": "folder:"}, "dataset"),
        ({"steps": 10, "dataset": "gaussian-mixture"}, "model"),
        ({"steps": 10, "image_size": 50}, "image_size"),
        ({"steps": 10, "loss": "hinge", "g_saturating": True}, "g_saturating"),
        ({"steps": 10, "loss": "hinge", "real_label": 0.9}, "real_label"),
        ({"steps": 10, "n_critic": 0}, "n_critic"),
        ({"steps": 10, "gradient_penalty": -1}, "gradient_penalty"),
        ({"steps": 10, "precision": "fp8"}, "precision"),
        ({"steps": 10, "precision": "fp16", "device": "cpu"}, "precision"),  # fp16 is CUDA's (issue 21)
        ({"steps": 10, "device": "tpu"}, "device"),
        ({"steps": 10, "eval_samples": 1}, "eval_samples"),
        ({"steps": 10, "nproc": 0}, "nproc"),
        ({"steps": 10, "nproc": 3}, "batch_size"),  # the global batch (64) does not divide among 3 processes
        ({"steps": 10, "colour": "red"}, "colour"),
        ({}, "epochs"),
        ({"steps": 10, "epochs": 2}, "steps"),
    ],
)
def test_bad_settings_name_the_field_and_value(data, field):
    with pytest.raises(SpecError) as info:
        TrainSpec.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert isinstance(info.value, ValueError)


def test_integral_floats_are_accepted_for_integer_fields():
    # JSON clients often send 64.0; it is an integer in value
    assert TrainSpec.from_dict({"steps": 10.0, "batch_size": 64.0}).batch_size == 64


def test_with_overrides_validates_and_ignores_none():
    spec = TrainSpec.from_dict({"steps": 10})
    assert spec.with_overrides(batch_size=None, lr_d=4e-4).lr_d == 4e-4
    with pytest.raises(SpecError, match="n_critic"):
        spec.with_overrides(n_critic=-1)


def test_file_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        TrainSpec.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(SpecError, match="cannot parse"):
        TrainSpec.from_file(bad)
    other = tmp_path / "spec.yaml"
    other.write_text("steps: 3")
    with pytest.raises(SpecError, match=r"\.json or \.toml"):
        TrainSpec.from_file(other)


def test_example_spec_files_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        TrainSpec.from_file(path)

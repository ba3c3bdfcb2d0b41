"""The runtime layer: the registry of names, the run-directory layout and its crash clean-up, safe path checks,
one JSON hook, one duration format, and the spec as the single source of its fields."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gansvc.runtime import paths, registry, rundir
from gansvc.runtime.console import format_duration
from gansvc.runtime.jsonable import dumps
from gansvc.train.spec import SpecError, TrainSpec

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- registry
def test_builtin_dataset_facts_match_the_files(fashion_mnist_root):
    """The registry's sizes and shapes are what the loaders really return (the submit-time checks rely on them)."""
    from gansvc.data import load_dataset

    for split in registry.SPLITS:
        data = load_dataset("fashion-mnist", split, fashion_mnist_root)
        info = registry.dataset_info("fashion-mnist")
        assert (len(data), tuple(data.images.shape[1:]), data.num_classes) == (info.size(split), info.shape, 10)
        points = load_dataset("gaussian-mixture", split)
        info = registry.dataset_info("gaussian-mixture")
        assert (len(points), tuple(points.points.shape[1:]), points.num_classes) == (
            info.size(split), info.shape, info.num_classes,
        )  # fmt: skip


def test_every_reader_of_names_agrees_with_the_registry():
    from gansvc import data, losses
    from gansvc.metrics import features
    from gansvc.service import validation
    from gansvc.train import spec

    assert spec.DATASETS == data.ALL_DATASETS == registry.dataset_names()
    assert data.IMAGE_DATASETS == registry.image_dataset_names()
    built_in = tuple(name for name in registry.image_dataset_names() if not registry.is_plugin("datasets", name))
    assert built_in == ("fashion-mnist", "mnist", "cifar10")  # installed plugins (examples/plugins) come after
    assert spec.MODELS == registry.model_names() and spec.LOSSES == tuple(losses.FAMILIES)
    assert validation.DEFAULT_REAL == registry.DEFAULT_REAL and validation.SPLITS == registry.SPLITS
    for name in registry.extractor_names():  # each name builds (or at least is known to the builder)
        assert features.extractor_fits(name, (1, 28, 28)) in (True, False)


def test_a_registered_dataset_reaches_the_spec_and_taken_names_are_refused():
    info = registry.DatasetInfo("tiny-plugin-set", "images", (3, 32, 32), {"train": 100}, None)
    registry.register_dataset(info)
    try:
        assert "tiny-plugin-set" in registry.dataset_names()
        assert TrainSpec.from_dict({"steps": 1, "dataset": "tiny-plugin-set", "batch_size": 100}).dataset == info.name
        with pytest.raises(SpecError, match="100 samples") as caught:
            TrainSpec.from_dict({"steps": 1, "dataset": "tiny-plugin-set", "batch_size": 101})
        assert caught.value.field == "batch_size"
        with pytest.raises(ValueError, match="taken"):
            registry.register_dataset(info)
    finally:
        registry._DATASETS.pop("tiny-plugin-set")
    with pytest.raises(ValueError, match="taken"):
        registry.register_model(registry.ModelInfo("dcgan"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fashion-mnist", ("dataset", "fashion-mnist", "train", "")),
        ("cifar10:test", ("dataset", "cifar10", "test", "")),
        ("folder:/data/faces", ("folder", "folder:/data/faces", "train", "/data/faces")),
        ("stats.npz", ("path", "stats.npz", "train", "stats.npz")),
        ("some/folder", ("path", "some/folder", "train", "some/folder")),
        ("/abs/mnist:test", ("path", "/abs/mnist:test", "train", "/abs/mnist:test")),
    ],
)
def test_parse_real_kinds(text, expected):
    source = registry.parse_real(text)
    assert (source.kind, source.name, source.split, source.path) == expected


@pytest.mark.parametrize("text, words", [("cifar11:test", "unknown dataset 'cifar11'"), ("mnist:val", "split"),
                                         ("", "empty"), ("folder:", "needs a path")])  # fmt: skip
def test_parse_real_errors(text, words):
    with pytest.raises(ValueError, match=words):
        registry.parse_real(text)


def test_parse_real_lets_the_cli_name_an_existing_bare_folder(tmp_path):
    assert registry.parse_real("samples", is_path=lambda t: True).kind == "path"
    assert registry.parse_real("mnist", is_path=lambda t: True).kind == "dataset"  # a data set name wins


# ---------------------------------------------------------------------- run directory
def test_the_format_tags_are_written_out_once():
    """CHECKPOINT_FORMAT and GENERATOR_FORMAT are the run directory's; no other module spells them out."""
    import ast
    from pathlib import Path

    package = Path(rundir.__file__).resolve().parents[1]
    tags = {rundir.CHECKPOINT_FORMAT, rundir.GENERATOR_FORMAT}
    spelled = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in tags})
        if found:
            spelled[path.relative_to(package).as_posix()] = found
    assert spelled == {"runtime/rundir.py": sorted(tags)}


def test_run_directory_names_match_a_real_checkpoint(tmp_path):
    from gansvc.train.checkpoints import load_checkpoint, save_checkpoint

    for step in (100, 200, 300):
        save_checkpoint({"format": rundir.CHECKPOINT_FORMAT, "step": step}, tmp_path, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.pt", "step_0000200.pt", "step_0000300.pt",
    ]  # fmt: skip
    assert rundir.checkpoint_steps(tmp_path) == {s: tmp_path / "checkpoints" / f"step_{s:07d}.pt" for s in (200, 300)}
    assert rundir.latest_checkpoint_step(tmp_path) == 300
    assert load_checkpoint(rundir.latest_checkpoint(tmp_path))["step"] == 300
    assert rundir.step_of("step_0000300.pt", ".pt") == 300 and rundir.step_of("step_0000300.png", ".pt") is None
    assert rundir.step_of("step_x.pt", ".pt") is None and rundir.samples_path(tmp_path, 7).name == "step_0000007.png"
    assert rundir.generator_source(tmp_path) == tmp_path / "checkpoints" / "latest.pt"
    (tmp_path / "generator.pt").write_bytes(b"g")
    assert rundir.generator_source(tmp_path) == tmp_path / "generator.pt"


def test_clean_leftovers_removes_what_a_killed_atomic_write_left(tmp_path):
    run_dir = tmp_path / "run"
    target = run_dir / "checkpoints" / "step_0000100.pt"
    program = textwrap.dedent(f"""
        import sys, time
        from gansvc.atomic import atomic_write
        def write(f):
            f.write(b"x" * 1_000_000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
    """)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout.readline() == b"writing\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    leftovers = [p for p in target.parent.iterdir() if p.name != target.name]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".step_0000100.pt.") and not target.exists()
    assert leftovers[0].stat().st_size == 1_000_000
    # what a run directory holds besides: results (kept) and more temp files (removed)
    keep = [run_dir / "metrics.jsonl", run_dir / "samples" / "step_0000010.png", run_dir / ".hidden-but-not-tmp",
            run_dir / "notes.tmp", run_dir / "tensorboard" / "events.out.tfevents.1.host"]  # fmt: skip
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep")
    extra = [run_dir / "samples" / ".latest.png.k2j3l4m5.tmp", run_dir / "checkpoints" / ".latest.pt.1234.tmp"]
    for path in extra:
        path.write_bytes(b"partial")
    removed = rundir.clean_leftovers(run_dir)
    assert removed == sorted([leftovers[0], *extra])
    assert all(p.exists() for p in keep) and not any(p.exists() for p in removed)
    assert rundir.clean_leftovers(run_dir) == [] and rundir.clean_leftovers(tmp_path / "missing") == []


# ---------------------------------------------------------------------- safe path checks
def test_path_checks_never_raise(tmp_path):
    (tmp_path / "f").write_text("x")
    long_name = tmp_path / ("a" * 300)
    with pytest.raises(OSError):  # what pathlib does, and why the helper exists
        long_name.is_dir()
    assert paths.check_path(tmp_path) == paths.PathCheck("dir")
    assert paths.check_path(tmp_path / "f") == paths.PathCheck("file")
    assert paths.check_path(tmp_path / "missing") == paths.PathCheck(None)
    assert paths.check_path(tmp_path / "f" / "under-a-file") == paths.PathCheck(None)
    check = paths.check_path(long_name)
    assert check.kind is None and check.refused and "too long" in check.problem
    assert paths.check_path("a\x00b").refused
    assert not paths.is_dir(long_name) and not paths.is_file(long_name) and not paths.exists(long_name)
    assert "too long" in paths.describe_missing(str(long_name), check, "folder")
    assert len(paths.short_repr("b" * 5000)) < 130


def test_a_permission_error_is_refused_not_raised(tmp_path, monkeypatch):
    """EACCES (which root never sees, so it is injected here) comes back as a problem, like ENAMETOOLONG."""
    import errno

    def stat(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(paths.os, "stat", stat)
    check = paths.check_path(tmp_path / "inner")
    assert check.kind is None and check.refused and "denied" in check.problem.lower()


# ---------------------------------------------------------------------- one JSON hook, one duration
def test_jsonable_round_trips_numpy_torch_and_python_values():
    value = {"a": np.float32(1.5), "b": torch.tensor(2), "c": np.arange(3), "d": {1, 2}, "e": Path("/x"),
             "f": float("nan"), "g": torch.tensor([0.25, 0.5])}  # fmt: skip
    back = json.loads(dumps(value))
    assert back["a"] == 1.5 and back["b"] == 2 and back["c"] == [0, 1, 2] and sorted(back["d"]) == [1, 2]
    assert back["e"] == "/x" and math.isnan(back["f"]) and back["g"] == [0.25, 0.5]


@pytest.mark.parametrize("seconds", [0, 4.6, 59, 60, 65, 3599, 3600, 3725, 90061])
def test_format_duration(seconds):
    text = format_duration(seconds)
    total = round(seconds)
    hours, minutes, secs = total // 3600, total % 3600 // 60, total % 60
    parsed = 0
    for number, unit in __import__("re").findall(r"(\d+)([hms])", text):
        parsed += int(number) * {"h": 3600, "m": 60, "s": 1}[unit]
    assert parsed == total and text.endswith("s")
    assert text.startswith(f"{hours}h") if hours else text.startswith(f"{minutes}m") if minutes else text == f"{secs}s"


def test_subcommand_modules_do_not_import_the_dispatcher():
    """No cycle: the command modules get UsageError from beneath, and gansvc.cli still re-exports it."""
    program = "import sys, gansvc.train.cli, gansvc.metrics.cli; print('gansvc.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)  # fmt: skip
    assert result.stdout.strip() == "False"
    from gansvc.cli import UsageError
    from gansvc.runtime.console import UsageError as Beneath

    assert UsageError is Beneath


# ---------------------------------------------------------------------- the spec is the source of its fields
def test_train_flags_come_from_the_spec_fields():
    import argparse

    from gansvc.train import cli
    from gansvc.train.spec import field_help

    parser = argparse.ArgumentParser()
    cli.add_arguments("train", parser)
    options = {a.dest: a for a in parser._actions}
    for spec_field in dataclasses.fields(TrainSpec):
        action = options[spec_field.name]
        if spec_field.name == "nnodes":  # the launcher's --nnodes (N or MIN:MAX) is the same notion on the CLI
            assert action.option_strings == ["--nnodes"]
            continue
        assert action.option_strings == ["--" + spec_field.name.replace("_", "-")] + (
            ["--no-" + spec_field.name.replace("_", "-")] if spec_field.type == "bool" else []
        )
        assert action.help.startswith(field_help(spec_field.name)) and spec_field.metadata["help"]


@pytest.mark.parametrize(
    "field, value",
    [("mlp_hidden", 2**31 - 1), ("steps", 10**12), ("z_dim", 10**6), ("width", 10**5), ("batch_size", 10**9),
     ("n_critic", 10**4), ("nproc", 10**5), ("eval_samples", 10**7), ("threads", 10**6), ("log_every", 10**12)],
)  # fmt: skip
def test_absurd_sizes_are_refused_by_their_declared_bounds(field, value):
    data = {"steps": 10, "batch_size": 64, field: value}
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict(data)
    assert caught.value.field == field and str(value) in caught.value.message


def test_every_bound_fits_the_proto_field_and_the_defaults_lie_within():
    from google.protobuf.descriptor import FieldDescriptor as F

    from gansvc.service.messages import training_spec_fields

    proto = training_spec_fields()
    limits = {F.TYPE_INT32: 2**31 - 1, F.TYPE_INT64: 2**63 - 1}
    for spec_field in dataclasses.fields(TrainSpec):
        low, high = spec_field.metadata["min"], spec_field.metadata["max"]
        default = spec_field.default
        if spec_field.type in ("int", "float"):
            assert high is not None, f"{spec_field.name} declares no upper bound"
            assert (low is None or low <= default) and default <= high, spec_field.name
        if spec_field.type == "int":
            assert high <= limits[proto[spec_field.name].type], spec_field.name


def test_batch_size_against_the_built_in_data_set_sizes():
    assert TrainSpec.from_dict({"steps": 1, "batch_size": 60000}).batch_size == 60000
    with pytest.raises(SpecError, match="60000") as caught:
        TrainSpec.from_dict({"steps": 1, "batch_size": 60001})
    assert caught.value.field == "batch_size"
    with pytest.raises(SpecError, match="50000"):
        TrainSpec.from_dict({"steps": 1, "dataset": "cifar10", "batch_size": 50001})

"""Data set plugins (entry point group gansvc.datasets): the example package's `shapes` (in memory) and
`shapes-stream` (a map-style Dataset), checked, streamed over the memory budget in the in-memory order,
trained by the Trainer; malformed plugins fail with errors that name the plugin or `dataset_args.<key>`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gansvc.data.datasets import ImageData
from gansvc.data.streaming import (
    CheckedDataset, StreamedData, check_in_memory, make_batches, open_training_data, read_into_memory,
)  # fmt: skip
from gansvc.runtime.plugins import PluginError, plugin_names
from gansvc.train import Trainer, TrainSpec
from gansvc.train.batches import StreamedBatches
from gansvc.train.spec import SpecError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The example plugin package, installed: as it is in the environment, else into a folder on sys.path
    (the shared environment is left as it is)."""
    if "shapes" not in plugin_names("datasets"):
        target = tmp_path_factory.mktemp("plugins")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                        "--target", str(target), str(EXAMPLE)], check=True)  # fmt: skip
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
        import importlib

        importlib.invalidate_caches()
    assert {"shapes", "shapes-stream"} <= set(plugin_names("datasets"))
    from gansvc_example_plugins import shapes as module

    return module


def test_in_memory_plugin_is_checked_and_matches_its_drawing(shapes):
    data = open_training_data("shapes", dataset_args={"count": 30}, image_size=16)
    assert isinstance(data, ImageData) and data.images.shape == (30, 1, 16, 16)
    for i in (0, 17, 29):  # the plugin's own drawing function is the reference
        image, label = shapes.draw(i, 16, "train")
        assert np.array_equal(data.images[i].numpy(), image) and int(data.labels[i]) == label
    assert data.num_classes == 3 and data.class_names == ["circle", "square", "triangle"]


def test_streamed_plugin_gives_the_in_memory_batches(shapes):
    args = {"count": 40}
    held = open_training_data("shapes", dataset_args=args, image_size=16)
    small = open_training_data("shapes-stream", dataset_args=args, image_size=16)  # fits: read into memory
    streamed = open_training_data("shapes-stream", dataset_args=args, image_size=16, budget=1000)
    assert isinstance(small, ImageData) and isinstance(streamed, StreamedData)
    assert torch.equal(small.images, held.images) and torch.equal(small.labels, held.labels)
    assert streamed.plugin == "shapes-stream" and streamed.shape == (1, 16, 16) and streamed.num_classes == 3
    assert torch.equal(streamed.labels, held.labels)  # read once through the loader, kept in memory
    memory = make_batches(held, 8, 4, CPU)
    disk = make_batches(streamed, 8, 4, CPU)
    assert isinstance(disk, StreamedBatches)
    for _ in range(12):
        images, labels = memory.next_labelled()
        got, got_labels = disk.next_labelled()
        assert torch.equal(got, images) and torch.equal(got_labels, labels)
    disk.close()


def test_trainer_on_a_streamed_plugin_resumes_exactly(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("GANSVC_MAX_DATASET_MEMORY", "1K")
    monkeypatch.setenv("GANSVC_DATA_WORKERS", "1")
    base = {"dataset": "shapes-stream", "model": "mlp", "mlp_hidden": 16, "z_dim": 8, "batch_size": 8,
            "image_size": 8, "steps": 9, "log_every": 1, "sample_every": 0, "checkpoint_every": 0,
            "eval_samples": 0, "tensorboard": False, "threads": 1}  # fmt: skip
    spec = TrainSpec.from_dict(base)
    # dataset_args is a spec field from the plugins work; before it lands, the plugin's default count is used
    straight = Trainer(spec, tmp_path / "straight")
    straight.run()
    assert isinstance(straight.batches, StreamedBatches) and straight.data_shape == (1, 8, 8)
    Trainer(spec.with_overrides(steps=4), tmp_path / "split").run()
    assert Trainer(spec, tmp_path / "split").run()["resumed_from"] == 4
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("G", "D"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_reference_statistics_of_a_streamed_plugin_equal_its_in_memory_twins(shapes, tmp_path, monkeypatch):
    """shapes-stream over the budget streams into the statistics (all images, one class); `shapes` holds the
    same images in memory: the two agree in float64."""
    from gansvc.metrics import reference
    from gansvc.metrics.evaluate import get_extractor

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GANSVC_MAX_DATASET_MEMORY", "1K")
    monkeypatch.setenv("GANSVC_DATA_WORKERS", "0")
    net = get_extractor("fmnist-cnn")
    for label in (None, 2):
        with monkeypatch.context() as streaming:  # never read whole: chunk by chunk through the loader
            streaming.setattr("gansvc.data.streaming.read_into_memory", lambda *a, **k: pytest.fail("read whole"))
            streamed = reference.real_reference("shapes-stream:test", net, image_size=28, label=label)
        held = reference.real_reference("shapes:test", net, image_size=28, label=label)
        assert streamed.count == held.count and (label is None) == (held.count == 1000)
        np.testing.assert_allclose(streamed.stats.mu, held.stats.mu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(streamed.stats.sigma, held.stats.sigma, rtol=1e-9, atol=1e-12)


def test_factory_argument_errors_name_the_argument(shapes):
    with pytest.raises(SpecError) as caught:
        open_training_data("shapes", dataset_args={"count": 0})
    assert caught.value.field == "dataset_args.count" and "shapes" in str(caught.value)
    with pytest.raises(SpecError) as caught:
        open_training_data("shapes-stream", dataset_args={"colour": "red"})
    assert caught.value.field == "dataset_args.colour"
    with pytest.raises(PluginError, match="gansvc.datasets:nope: not installed"):
        open_training_data("nope")


class _Made:
    def __init__(self, images, labels=None, class_names=None):
        self.images, self.labels, self.class_names = images, labels, class_names


def test_malformed_in_memory_data_names_the_plugin():
    good = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    cases = [
        (_Made(good.float()), "images must be uint8"),
        (_Made(good[0]), r"images must be \[N, C, H, W\]"),
        (_Made(torch.zeros(4, 2, 8, 8, dtype=torch.uint8)), "C 1 or 3"),
        (_Made(good, torch.zeros(3, dtype=torch.int64)), r"labels must be \[N\] = \[4\]"),
        (_Made(good, torch.zeros(4)), "labels must be int64"),
        (_Made(good, torch.tensor([0, 1, 2, 3]), ["a", "b"]), r"class indices in \[0, 2\)"),
        (object(), "expected an object with images"),
    ]
    for made, message in cases:
        with pytest.raises(PluginError, match=message) as caught:
            check_in_memory("mine", made, 0)
        assert "gansvc.datasets:mine" in str(caught.value)
    data = check_in_memory("mine", _Made(good, torch.tensor([0, 2, 1, 2])), 0)
    assert data.num_classes == 3 and data.class_names == ["0", "1", "2"]


class _Broken(torch.utils.data.Dataset):
    """Good samples but one: index `bad` returns what `make_bad` gives."""

    def __init__(self, bad, make_bad, count=16):
        self.bad, self.make_bad, self.count = bad, make_bad, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index == self.bad:
            return self.make_bad()
        return torch.full((1, 4, 4), index, dtype=torch.uint8), index % 2


def _boom():
    raise RuntimeError("disk on fire")


@pytest.mark.parametrize("make_bad, message", [
    (lambda: (torch.zeros(1, 5, 5, dtype=torch.uint8), 0), r"sample 9 has shape \[1, 5, 5\]"),
    (lambda: (torch.zeros(1, 4, 4), 0), "sample 9: the image must be a uint8"),
    (lambda: (torch.zeros(1, 4, 4, dtype=torch.uint8), None), "sample 9 has no label"),
    (_boom, "sample 9 raised RuntimeError: disk on fire"),
])  # fmt: skip
def test_a_bad_sample_read_in_a_worker_names_the_plugin(make_bad, message):
    checked = CheckedDataset.of("mine", _Broken(9, make_bad), 0)
    data = StreamedData("mine", checked, checked.shape, checked.labelled, None, None, plugin="mine")
    batches = StreamedBatches(checked, 16, 0, CPU, workers=1, describe_error=data.describe_error)
    with pytest.raises(PluginError, match=message) as caught:
        batches.next()
    assert str(caught.value).startswith("plugin gansvc.datasets:mine: ")
    assert str(caught.value).count("gansvc.datasets:mine") == 1
    with pytest.raises(PluginError, match=message):
        read_into_memory(data, workers=0)

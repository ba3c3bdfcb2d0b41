"""Data larger than memory: zip:PATH archives in dataset_tool.py's layout, folder classes, the memory budget,
streamed batches identical to in-memory ones (same seed, same order, same labels, exact resume mid-epoch,
also through the Trainer), and the service's checks of zip:PATH. Every data set is files written here."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gansvc.data.datasets import DatasetNotFound, ImageData
from gansvc.data.sources import count_zip_images, folder_files, zip_files
from gansvc.data.streaming import StreamedData, make_batches, open_training_data, read_into_memory
from gansvc.runtime import registry
from gansvc.runtime.console import parse_size
from gansvc.train import Trainer, TrainSpec
from gansvc.train.batches import DeviceBatches, StreamedBatches
from gansvc.train.spec import SpecError

CPU = torch.device("cpu")


def random_images(count: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Return uint8 [count, size, size, channels] noise images (channels 1: [count, size, size])."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size) if channels == 1 else (count, size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder(folder, arrays, classes=None) -> list[str]:
    """Write PNGs (in class sub-folders when classes are given); return their relative paths in write order."""
    names = []
    for i, array in enumerate(arrays):
        name = f"img{i:04d}.png" if classes is None else f"{classes[i]}/img{i:04d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(array))
        names.append(name)
    return names


def write_dataset_tool_zip(path, arrays, labels=None, stored=True) -> list[str]:
    """Write a ZIP as StyleGAN's dataset_tool.py does: 00000/img00000000.png, ... and dataset.json."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(arrays))]
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, array in zip(names, arrays):
            archive.writestr(name, png_bytes(array))
        meta = {"labels": None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]}
        archive.writestr("dataset.json", json.dumps(meta))
    return names


def as_chw(arrays: np.ndarray) -> torch.Tensor:
    """The reference layout: [N, H, W] -> [N, 1, H, W]; [N, H, W, C] -> [N, C, H, W]."""
    tensor = torch.from_numpy(arrays)
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------- sources
def test_zip_in_dataset_tool_layout_reads_images_and_labels_in_place(tmp_path):
    arrays = random_images(12, 16, 3, seed=1)
    labels = np.random.default_rng(2).integers(0, 4, 12)
    labels[0] = 3  # the classes are 0..max
    write_dataset_tool_zip(tmp_path / "faces.zip", arrays, labels, stored=False)
    data = open_training_data(f"zip:{tmp_path / 'faces.zip'}", budget=1 << 30)
    assert isinstance(data, ImageData)
    assert torch.equal(data.images, as_chw(arrays))  # kept at their own size: no resampling
    assert torch.equal(data.labels, torch.from_numpy(labels).long())
    assert data.num_classes == 4 and data.class_names == ["0", "1", "2", "3"]
    assert count_zip_images(tmp_path / "faces.zip") == 12
    # the same archive through load_images (FID's real side) and resized
    from gansvc.data import load_images

    small = load_images(f"zip:{tmp_path / 'faces.zip'}", image_size=8)
    from gansvc.images import open_image

    expected = np.asarray(open_image(io.BytesIO(png_bytes(arrays[5])), 8)).transpose(2, 0, 1)
    assert small.images.shape == (12, 3, 8, 8) and np.array_equal(small.images[5].numpy(), expected)


def test_zip_without_labels_and_broken_archives(tmp_path):
    arrays = random_images(5, 8, 1, seed=3)
    write_dataset_tool_zip(tmp_path / "grey.zip", arrays, None)
    data = zip_files(tmp_path / "grey.zip").read_all()
    assert data.labels is None and data.num_classes is None and torch.equal(data.images, as_chw(arrays))
    names = write_dataset_tool_zip(tmp_path / "partial.zip", arrays, [0, 1, 0, 1, 0])
    with zipfile.ZipFile(tmp_path / "partial.zip", "a") as archive:  # one more image, with no label
        archive.writestr("00000/img00000099.png", png_bytes(arrays[0]))
    with pytest.raises(ValueError, match="no label for 1 image.*img00000099"):
        zip_files(tmp_path / "partial.zip")
    assert len(names) == 5
    (tmp_path / "not.zip").write_bytes(b"plain text")
    with pytest.raises(DatasetNotFound, match="not a ZIP archive"):
        zip_files(tmp_path / "not.zip")
    with pytest.raises(DatasetNotFound, match="does not exist"):
        zip_files(tmp_path / "missing.zip")


def test_folder_subdirectories_are_classes_in_sorted_order(tmp_path):
    arrays = random_images(9, 8, 3, seed=4)
    classes = ["zebra", "ant", "moth"] * 3
    names = write_folder(tmp_path, arrays, classes)
    files = folder_files(tmp_path, 8)
    assert files.class_names == ["ant", "moth", "zebra"]
    order = sorted(range(9), key=lambda i: names[i])  # list_images sorts by path
    expected = torch.tensor([["ant", "moth", "zebra"].index(classes[i]) for i in order])
    assert torch.equal(files.labels, expected)
    assert torch.equal(files.read_all().images, as_chw(arrays[order]))
    # images directly in the folder: unlabelled
    (tmp_path / "loose.png").write_bytes(png_bytes(arrays[0]))
    assert folder_files(tmp_path, 8).labels is None


def test_the_memory_budget_decides_and_sizes_parse():
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5k") == 1536
    assert parse_size("64KiB") == 65536 and parse_size("1000") == 1000
    for bad in ("", "G", "4X", "-1M", "four"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_over_budget_streams_the_same_samples(tmp_path):
    arrays = random_images(20, 8, 1, seed=5)
    write_folder(tmp_path, arrays, [str(i % 2) for i in range(20)])
    name = f"folder:{tmp_path}"
    held = open_training_data(name, image_size=8, budget=20 * 64)  # exactly fits
    streamed = open_training_data(name, image_size=8, budget=20 * 64 - 1)
    assert isinstance(held, ImageData) and isinstance(streamed, StreamedData)
    assert streamed.shape == (1, 8, 8) and len(streamed) == 20 and streamed.num_classes == 2
    again = read_into_memory(streamed, workers=0)
    assert torch.equal(again.images, held.images) and torch.equal(again.labels, held.labels)


def test_budget_from_the_environment(tmp_path, monkeypatch):
    write_folder(tmp_path, random_images(4, 8, 1, seed=6))
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "100")  # 4 x 64 bytes do not fit
    assert isinstance(open_training_data(f"folder:{tmp_path}", image_size=8), StreamedData)
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1K")
    assert isinstance(open_training_data(f"folder:{tmp_path}", image_size=8), ImageData)
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "lots")
    with pytest.raises(SpecError, match="GANSVC_MAX_DATASET_MEMORY"):
        open_training_data(f"folder:{tmp_path}", image_size=8)


# ---------------------------------------------------------------------- the same batches, in memory or streamed
@pytest.fixture
def labelled_zip(tmp_path):
    arrays = random_images(44, 8, 3, seed=7)
    labels = np.random.default_rng(8).integers(0, 5, 44)
    write_dataset_tool_zip(tmp_path / "set.zip", arrays, labels)
    return f"zip:{tmp_path / 'set.zip'}"


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_in_memory_batches(labelled_zip, workers):
    held = open_training_data(labelled_zip, budget=1 << 30)
    streamed = open_training_data(labelled_zip, budget=0)
    memory = make_batches(held, 8, 11, CPU)
    disk = StreamedBatches(streamed.dataset, 8, 11, CPU, workers=workers, labelled=True)
    assert disk.batches_per_epoch == memory.batches_per_epoch == 5
    for _ in range(13):  # across two epoch boundaries
        images, labels = memory.next_labelled()
        got, got_labels = disk.next_labelled()
        assert torch.equal(got, images) and torch.equal(got_labels, labels)
        assert torch.equal(disk.last_labels, memory.last_labels)
        # the labels belong to those images: look each image up in the data set
        for image, label in zip(images, labels):
            row = (held.images.float() / 127.5 - 1 - image).abs().flatten(1).amax(1).argmin()
            assert held.labels[row] == label
    assert disk.epoch == memory.epoch == 13 / 5
    # a checkpoint mid-epoch from either path resumes the other exactly
    state = disk.state_dict()
    resumed_memory = make_batches(held, 8, 0, CPU)
    resumed_memory.load_state_dict(state)
    resumed_disk = StreamedBatches(streamed.dataset, 8, 0, CPU, workers=workers)
    resumed_disk.load_state_dict(memory.state_dict())
    for _ in range(7):
        expected = memory.next()
        assert torch.equal(disk.next(), expected)
        assert torch.equal(resumed_memory.next(), expected) and torch.equal(resumed_disk.next(), expected)
    disk.close()
    resumed_disk.close()


def test_streamed_rank_shards_are_the_single_process_batches(labelled_zip):
    streamed = open_training_data(labelled_zip, budget=0)
    single = StreamedBatches(streamed.dataset, 8, 3, CPU, workers=0)
    ranks = [StreamedBatches(streamed.dataset, 8, 3, CPU, rank=r, world_size=2, workers=1) for r in range(2)]
    for _ in range(6):
        whole = single.next()
        assert torch.equal(torch.cat([r.next() for r in ranks]), whole)
    for r in ranks:
        r.close()


def test_device_batches_labels_follow_the_rows():
    data = torch.arange(30, dtype=torch.uint8).reshape(30, 1, 1, 1)
    labels = torch.arange(30) * 7
    batches = DeviceBatches(data, 4, 1, CPU, labels=labels)
    for _ in range(10):
        images, got = batches.next_labelled()
        rows = ((images.flatten() + 1) * 127.5).round().long()
        assert torch.equal(got, rows * 7)
    assert DeviceBatches(data, 4, 1, CPU).next_labelled()[1] is None
    with pytest.raises(ValueError, match="one per sample"):
        DeviceBatches(data, 4, 1, CPU, labels=labels[:5])


def test_a_sample_that_cannot_be_read_names_the_file(tmp_path):
    write_folder(tmp_path, random_images(8, 8, 1, seed=9))
    (tmp_path / "img0003.png").write_bytes(b"not a png")  # header looks unreadable: decoding names it
    streamed = open_training_data(f"folder:{tmp_path}", image_size=8, budget=0)
    batches = StreamedBatches(streamed.dataset, 8, 0, CPU, workers=1, describe_error=streamed.describe_error)
    with pytest.raises(SpecError, match=r"dataset: .*img0003.png: cannot read this image"):
        batches.next()


# ---------------------------------------------------------------------- through the Trainer
SPEC = {"model": "mlp", "mlp_hidden": 16, "z_dim": 8, "batch_size": 8, "image_size": 8, "log_every": 1,
        "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False, "threads": 1,
        "ema_decay": 0.0}  # fmt: skip


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def _train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["d_loss"], r["g_loss"]) for r in records if r["kind"] == "train"]


def test_trainer_streamed_equals_in_memory_and_resumes_mid_epoch(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    write_folder(folder, random_images(44, 8, 1, seed=10), [f"c{i % 3}" for i in range(44)])
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"folder:{folder}", "steps": 13})  # 5 batches an epoch
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1G")
    Trainer(spec, tmp_path / "memory").run()
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1K")  # 44 x 64 bytes: streamed
    monkeypatch.setenv("GANSVC_DATA_WORKERS", "2")
    streamed = Trainer(spec, tmp_path / "streamed")
    streamed.run()
    assert isinstance(streamed.batches, StreamedBatches)
    Trainer(spec.with_overrides(steps=7), tmp_path / "split").run()  # stops mid-epoch (batch 7 of 10 read)
    second = Trainer(spec, tmp_path / "split").run()
    assert second["resumed_from"] == 7
    expected = _train_losses(tmp_path / "memory")
    assert _train_losses(tmp_path / "streamed") == expected == _train_losses(tmp_path / "split")
    reference = _weights(tmp_path / "memory")
    for run in ("streamed", "split"):
        other = _weights(tmp_path / run)
        assert other["batches"]["position"] == reference["batches"]["position"]
        for part in ("G", "D"):
            for key in reference[part]:
                assert torch.equal(other[part][key], reference[part][key]), (run, part, key)


# ---------------------------------------------------------------------- the service's checks
def test_service_accepts_zip_under_the_data_roots_and_counts_its_images(tmp_path):
    from gansvc.service.devices import DevicePool
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import pb
    from gansvc.service.validation import DataRoots, training_spec

    inside = tmp_path / "data"
    inside.mkdir()
    write_dataset_tool_zip(inside / "set.zip", random_images(6, 8, 1, seed=11), [0, 1, 2, 0, 1, 2])
    (tmp_path / "outside.zip").write_bytes((inside / "set.zip").read_bytes())
    (inside / "bad.zip").write_bytes(b"no archive")
    roots, pool = DataRoots.of([inside]), DevicePool([], 1)
    ok = training_spec(pb.TrainingSpec(steps=2, model="mlp", batch_size=4, dataset="zip:set.zip"), roots, pool)
    assert ok["dataset"] == f"zip:{inside / 'set.zip'}"
    cases = [
        (pb.TrainingSpec(steps=2, model="mlp", batch_size=7, dataset="zip:set.zip"), "batch_size", "holds 6"),
        (pb.TrainingSpec(steps=2, model="mlp", dataset=f"zip:{tmp_path / 'outside.zip'}"), "dataset", "outside"),
        (pb.TrainingSpec(steps=2, model="mlp", dataset="zip:missing.zip"), "dataset", "no such file"),
        (pb.TrainingSpec(steps=2, model="mlp", batch_size=4, dataset="zip:bad.zip"), "dataset", "not a readable ZIP"),
        (pb.TrainingSpec(steps=2, model="mlp", dataset="zip:"), "dataset", "zip:PATH needs a path"),
    ]
    for message, field, text in cases:
        with pytest.raises(InvalidField) as caught:
            training_spec(message, roots, pool)
        assert caught.value.field == field and text in str(caught.value), str(caught.value)
    assert registry.parse_real("zip:/d/x.zip") == registry.RealSource("zip", "zip:/d/x.zip", "train", "/d/x.zip")


def test_cli_refuses_a_bad_memory_size(capsys):
    from gansvc.cli import main

    for argv in (["train", "--max-dataset-memory", "lots", "--steps", "1"], ["serve", "--max-dataset-memory", "4Q"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        assert "max-dataset-memory" in capsys.readouterr().err

"""Sampling: generator export and loading, `gansvc sample` in every format, and image grids vs torchvision."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gansvc.cli import main
from gansvc.images import encode_png, make_grid, to_uint8
from gansvc.train import Trainer, TrainSpec
from gansvc.train.sampling import generate, load_generator


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    spec = TrainSpec.from_dict({"width": 8, "batch_size": 16, "steps": 6, "checkpoint_every": 3, "eval_samples": 0,
                                "sample_every": 0, "tensorboard": False, "threads": 1})  # fmt: skip
    Trainer(spec, folder).run()
    return folder


def test_generate_is_seeded_shaped_and_in_range(run_dir):
    generator, spec = load_generator(run_dir)
    a = generate(generator, 37, seed=5, batch_size=10)
    b = generate(generator, 37, seed=5, batch_size=10)
    assert a.shape == (37, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, generate(generator, 37, seed=6, batch_size=10))
    assert a.min() >= -1 and a.max() <= 1
    assert spec.model == "dcgan" and not generator.training


def test_run_dir_checkpoint_and_export_give_the_same_generator(run_dir):
    from_run, _ = load_generator(run_dir)  # generator.pt
    from_export, _ = load_generator(run_dir / "generator.pt")
    from_checkpoint, _ = load_generator(run_dir / "checkpoints" / "latest.pt")
    samples = [generate(g, 20, seed=1) for g in (from_run, from_export, from_checkpoint)]
    assert torch.equal(samples[0], samples[1])
    # the checkpoint path recomputes the EMA generator's BatchNorm statistics the same way the export did
    torch.testing.assert_close(samples[0], samples[2], rtol=0, atol=1e-5)
    export = torch.load(run_dir / "generator.pt", weights_only=True)
    assert export["ema"] is True and export["step"] == 6


def test_load_generator_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path)
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_generator(bogus)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".png"])
def test_sample_command_writes_every_format(run_dir, tmp_path, suffix, capsys):
    out = tmp_path / f"samples{suffix}"
    assert main(["sample", str(run_dir), "-n", "30", "-o", str(out), "--seed", "2"]) == 0
    generator, _ = load_generator(run_dir)
    expected = generate(generator, 30, seed=2)
    if suffix == ".npy":
        array = np.load(out)
    elif suffix == ".npz":
        array = np.load(out)["images"]
    elif suffix == ".pt":
        array = torch.load(out, weights_only=True).numpy()
    else:
        grid = np.asarray(Image.open(out))
        assert np.array_equal(grid, make_grid(expected)[:, :, 0])
        return
    assert array.dtype == np.float32 and array.shape == (30, 1, 28, 28)
    np.testing.assert_array_equal(array, expected.numpy())
    assert "wrote 30 samples" in capsys.readouterr().out


def test_sample_command_rejects_bad_arguments(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "3", "-o", str(tmp_path / "x.jpg")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "-n", "0", "-o", str(tmp_path / "x.npy")]) == 2
    assert main(["sample", str(tmp_path / "nothing"), "-n", "3", "-o", str(tmp_path / "x.npy")]) == 2
    assert "RUN_DIR_OR_CHECKPOINT" in capsys.readouterr().err


# ---------------------------------------------------------------------- grids
@pytest.mark.parametrize(("n", "channels", "nrow"), [(16, 1, None), (10, 3, 4), (2, 1, None), (7, 3, 3)])
def test_make_grid_matches_torchvision(n, channels, nrow):
    torchvision_utils = pytest.importorskip("torchvision.utils")
    images = torch.rand(n, channels, 9, 7) * 2 - 1
    ours = make_grid(images, nrow=nrow)
    reference = torchvision_utils.make_grid((images + 1) / 2, nrow=nrow or int(np.ceil(np.sqrt(n))), padding=2)
    reference = (reference * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if channels == 1:
        reference = reference[:, :, :1]  # torchvision repeats grey into three channels
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1  # rounding of x*127.5+127.5 vs (x+1)/2*255


def test_png_round_trip_and_uint8_input():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    assert np.array_equal(to_uint8(images), images.numpy())
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(images, nrow=5))))
    assert np.array_equal(decoded, make_grid(images, nrow=5))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        make_grid(torch.zeros(3, 28, 28))

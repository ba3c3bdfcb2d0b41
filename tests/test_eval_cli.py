"""`gansvc eval` end to end: image files in every supported format, the JSON it prints, and exit code 2
with a clear message for bad files and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gansvc.cli import main
from gansvc.ops._ext import load_extension
from tests.test_fid_ops import one_thread

pytestmark = pytest.mark.skipif(load_extension() is None, reason="gansvc._C is not built (run scripts/setup.sh)")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """This module's computations on one thread (see tests/test_fid_ops.py: one_thread)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def train_images(fashion_mnist_root):
    """400 Fashion-MNIST training images, uint8 [400, 1, 28, 28]."""
    from gansvc.data import load_images

    images = load_images("fashion-mnist", "train", fashion_mnist_root).images
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:400]]


def run_eval(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["eval", "--quiet", "--kid-subsets", "10", *map(str, args)])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_eval_prints_json_for_a_saved_npz(tmp_path, capsys, cache_dir, train_images):
    path = tmp_path / "samples.npz"
    np.savez(path, images=train_images.numpy())
    code, report, _ = run_eval(capsys, "--fake", path, "--output", tmp_path / "scores.json")
    assert code == 0
    assert set(report) >= {"fid", "is", "kid", "n_real", "n_fake", "extractor"}
    assert (report["n_real"], report["n_fake"], report["extractor"]) == (10_000, 400, "fmnist-cnn")
    # real images against real images: a small FID (400 samples add finite-sample bias), a high IS
    assert 0 < report["fid"] < 15 and report["is"]["mean"] > 5 and report["is"]["std"] >= 0
    assert abs(report["kid"]["mean"]) < 0.5 and report["kid"]["std"] > 0
    assert json.loads((tmp_path / "scores.json").read_text()) == report


def test_all_file_formats_give_the_same_scores(tmp_path, capsys, cache_dir, train_images):
    from PIL import Image

    images = train_images[:60]
    as_float = images.float() / 127.5 - 1
    np.savez(tmp_path / "a.npz", samples=images.numpy())
    np.save(tmp_path / "b.npy", as_float.permute(0, 2, 3, 1).numpy())  # NHWC float in [-1, 1]
    np.save(tmp_path / "c.npy", (images.float() / 255).numpy())  # [0, 1], with --pixel-range 0,1
    torch.save({"images": as_float}, tmp_path / "d.pt")
    np.save(tmp_path / "e.npy", images[:, 0].numpy().astype(np.int64))  # [N, H, W] integers
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, picture in enumerate(images[:, 0].numpy()):
        Image.fromarray(picture, mode="L").save(folder / f"{i:03d}.png")
    reports = []
    for name, extra in (("a.npz", []), ("b.npy", []), ("c.npy", ["--pixel-range", "0,1"]), ("d.pt", []),
                        ("e.npy", []), ("pngs", [])):
        code, report, err = run_eval(capsys, "--fake", tmp_path / name, *extra)
        assert code == 0, (name, err)
        reports.append(report)
    for report in reports[1:]:
        assert report["n_fake"] == 60
        assert report["fid"] == pytest.approx(reports[0]["fid"], rel=1e-4)
        assert report["is"]["mean"] == pytest.approx(reports[0]["is"]["mean"], rel=1e-4)


def test_a_statistics_file_as_the_real_side(tmp_path, capsys, cache_dir, train_images):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 128))
    np.savez(tmp_path / "stats.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    np.savez(tmp_path / "fake.npz", images=train_images[:50].numpy())
    code, report, _ = run_eval(capsys, "--fake", tmp_path / "fake.npz", "--real", tmp_path / "stats.npz")
    assert code == 0 and report["kid"] is None and report["n_real"] is None and report["fid"] > 0


def test_evaluate_api(cache_dir, train_images):
    from gansvc.metrics import evaluate

    result = evaluate(train_images[:50].float() / 127.5 - 1, kid_subsets=5)
    assert set(result) == {
        "fid", "fid_trace", "is_mean", "is_std", "kid_mean", "kid_std", "n_real", "n_fake", "extractor"
    }
    bound = result["fid_trace"].pop("error_bound")
    assert result["fid_trace"] == {"route": "samples", "iterations": 0, "fell_back": False, "device": "cpu"}
    assert 0 < bound < 1e-7  # 50 samples, the m×m route: the trace term certified to far below FID's noise
    assert result["n_fake"] == 50 and result["extractor"] == "fmnist-cnn"
    with pytest.raises(ValueError, match=r"cannot take images of shape \[3, 32, 32\]; use the inception-v3"):
        evaluate(torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluate(torch.zeros(1, 1, 28, 28))


BAD_FILES = {
    "missing.npz": (None, "no such file or folder"),
    "notes.txt": (b"hello", "unsupported file type '.txt'"),
    "text.npz": (b"not an archive", "not an .npz file"),
    "text.npy": (b"not an array", "not an .npy file"),
    "corrupt.npz": (b"PK\x03\x04 a broken zip", "not an .npz file"),
    "corrupt.pt": (b"\x80\x02garbage", "cannot read it as .pt"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_exit_2_with_a_clear_message(name, tmp_path, capsys, cache_dir):
    content, message = BAD_FILES[name]
    if content is not None:
        (tmp_path / name).write_bytes(content)
    code, _, err = run_eval(capsys, "--fake", tmp_path / name)
    assert code == 2 and message in err and name in err, err


BAD_ARRAYS = {
    "stats.npz": (dict(mu=np.zeros(3), sigma=np.eye(3)), "holds statistics (mu, sigma), not images"),
    "range.npy": (np.full((4, 1, 28, 28), 255.0, dtype=np.float32), "float pixels must be in [-1, 1]"),
    "channels.npy": (np.zeros((4, 4, 28, 28), dtype=np.uint8), "need 1 or 3 channels"),
    "empty.npy": (np.zeros((0, 1, 28, 28), dtype=np.uint8), "holds no images"),
    "flat.npy": (np.zeros((4, 784), dtype=np.uint8), "images must be [N, C, H, W]"),
    "many.npz": (dict(a=np.zeros((2, 1, 28, 28)), b=np.zeros((2, 1, 28, 28))), "cannot tell which array"),
    "single.npy": (np.zeros((1, 1, 28, 28), dtype=np.uint8), "at least 2 images"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_bad_arrays_exit_2_with_a_clear_message(name, tmp_path, capsys, cache_dir):
    content, message = BAD_ARRAYS[name]
    if name.endswith(".npz"):
        np.savez(tmp_path / name, **content)
    else:
        np.save(tmp_path / name, content)
    code, _, err = run_eval(capsys, "--fake", tmp_path / name)
    assert code == 2 and message in err, err


def test_bad_settings_exit_2(tmp_path, capsys, cache_dir, train_images, monkeypatch):
    np.savez(tmp_path / "fake.npz", images=train_images[:20].numpy())
    fake = tmp_path / "fake.npz"
    code, _, err = run_eval(capsys, "--fake", fake, "--real", "cifar11:test")
    assert code == 2 and "unknown dataset 'cifar11'" in err
    code, _, err = run_eval(capsys, "--fake", fake, "--real", tmp_path / "no_such_stats.npz")
    assert code == 2 and "no_such_stats.npz': no such file or folder" in err
    code, _, err = run_eval(capsys, "--fake", fake, "--n-real", "1")
    assert code == 2 and "--n-real must be >= 2" in err
    monkeypatch.delenv("GANSVC_INCEPTION_WEIGHTS", raising=False)
    code, _, err = run_eval(capsys, "--fake", fake, "--extractor", "inception-v3")
    assert code == 2 and "--inception-weights" in err
    np.save(tmp_path / "rgb.npy", np.zeros((3, 3, 32, 32), dtype=np.uint8))  # auto picks inception-v3
    code, _, err = run_eval(capsys, "--fake", tmp_path / "rgb.npy")
    assert code == 2 and "GANSVC_INCEPTION_WEIGHTS" in err
    bad_device = "nodevice" if torch.cuda.is_available() else "cuda:0"
    code, _, err = run_eval(capsys, "--fake", fake, "--device", bad_device)
    assert code == 2 and "--device" in err


def test_the_console_command_exits_2_on_a_bad_file(tmp_path, cache_dir):
    (tmp_path / "bad.npz").write_bytes(b"junk")
    env = dict(os.environ, GANSVC_CACHE_DIR=str(cache_dir))
    done = subprocess.run(
        [sys.executable, "-m", "gansvc", "eval", "--fake", str(tmp_path / "bad.npz")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 2
    assert "gansvc eval: error: --fake" in done.stderr and "bad.npz" in done.stderr
    assert "Traceback" not in done.stderr

"""`gansvc train` on the command line: settings from flags and spec files, exit code 2 naming the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gansvc.cli import main

FAST = ["--width", "8", "--batch-size", "16", "--eval-samples", "0", "--no-tensorboard", "--threads", "1", "--quiet"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--steps", "5", "--batch-size", "0"], "--batch-size"),
        (["--steps", "5", "--loss", "l1"], "--loss"),
        (["--steps", "5", "--model", "gan"], "--model"),
        (["--steps", "5", "--lr-d", "-1"], "--lr-d"),
        (["--steps", "5", "--dataset", "gaussian-mixture"], "--model"),
        (["--steps", "5", "--image-size", "30"], "--image-size"),
        (["--steps", "5", "--epochs", "1"], "--steps"),
        ([], "--epochs"),
        (["--steps", "5", "--dataset", "mnist", "--data-root", "/nonexistent"], "--dataset"),
        (["--steps", "5", "--spec", "/nonexistent.toml"], "--spec"),
    ],
)
def test_invalid_settings_exit_2_naming_the_setting(tmp_path, capsys, argv, named):
    assert main(["train", "--out", str(tmp_path / "run"), *FAST, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gansvc train: error: " + named), err


def test_argparse_type_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "five"])
    assert info.value.code == 2 and "--steps" in capsys.readouterr().err


def test_spec_file_with_command_line_overrides(tmp_path, capsys):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('model = "mlp"\nloss = "bce"\nspectral_norm = false\nepochs = 3.0\nlog_every = 2\n')
    out = tmp_path / "run"
    assert main(["train", "--spec", str(spec_file), "--steps", "4", "--out", str(out), *FAST]) == 0
    written = json.loads((out / "spec.json").read_text())
    assert written["model"] == "mlp" and written["steps"] == 4 and written["epochs"] == 0 and written["width"] == 8
    assert "finished at step 4/4" in capsys.readouterr().out


def test_train_writes_metrics_grids_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fashion-mnist", "--model", "dcgan", "--loss", "hinge", "--spectral-norm",
            "--steps", "6", "--log-every", "3", "--sample-every", "3", "--checkpoint-every", "3", "--out", str(out)]  # fmt: skip
    assert main(argv + FAST) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "D loss" in text and str(out) in text
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [3, 6]
    assert (out / "samples" / "step_0000003.png").is_file() and (out / "samples" / "step_0000006.png").is_file()
    assert (out / "checkpoints" / "step_0000006.pt").is_file() and (out / "checkpoints" / "latest.pt").is_file()


def _gansvc(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "gansvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_end_to_end_fashion_mnist_dcgan_hinge_sn(tmp_path):
    """The issue's command, shortened to 0.15 epochs with evaluations; then `gansvc sample` on the run.

    The batch is pinned at 64 (the default became 32 in issue 22) so the run keeps its length: 0.15 × 60 000 / 64
    rounds up to 141 steps."""
    out = tmp_path / "x"
    result = _gansvc("train", "--dataset", "fashion-mnist", "--model", "dcgan", "--loss", "hinge", "--spectral-norm",
                     "--epochs", "0.15", "--batch-size", "64", "--log-every", "50", "--sample-every", "50", "--eval-every", "100",
                     "--eval-samples", "2000", "--checkpoint-every", "100", "--threads", "1", "--out", str(out),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "finished at step 141/141" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [50, 100, 141]
    evals = [r for r in records if r["kind"] == "eval"]
    if evals:  # FID/IS need gansvc.metrics; the trainer warns (eval_unavailable) when it is missing
        assert [r["step"] for r in evals] == [100, 141] and all(r["fid"] > 0 for r in evals)
    else:
        assert "eval_unavailable" in (out / "warnings.jsonl").read_text()
    assert len(list((out / "samples").glob("step_*.png"))) == 3
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    result = _gansvc("sample", str(out), "-n", "1000", "-o", str(tmp_path / "s.npy"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import numpy as np

    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (1000, 1, 28, 28) and samples.dtype == np.float32 and np.abs(samples).max() <= 1


@pytest.mark.slow
def test_gaussian_mixture_mlp_covers_the_ring(tmp_path):
    """The mode-collapse test: with an R1 penalty the MLP GAN covers the 8-Gaussians ring (examples/ recipe).

    (Without it, plain bce at these settings covered 3 of 8 modes here: the collapse the test is named for.)
    """
    out = tmp_path / "ring"
    spec = Path(__file__).resolve().parents[1] / "examples" / "gaussian_mixture.toml"
    # the recipe's own 4 000 steps: at 3 000, seeds 0 and 2 sat at 5 modes on their way to 8 (seeds 0-2 all cover 8
    # at 4 000), and which step a seed passes through 5 moves with the last bits of the loss kernels
    result = _gansvc("train", "--spec", str(spec), "--eval-every", "0", "--sample-every", "0",
                     "--threads", "1", "--quiet", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["modes_covered"] >= 6, summary["eval"]
    assert summary["eval"]["high_quality_fraction"] > 0.2, summary["eval"]
    # the samples `gansvc sample` writes score the same under the metric computed independently here
    result = _gansvc("sample", str(out), "-n", "2500", "-o", str(tmp_path / "ring.npy"), cwd=tmp_path)
    assert result.returncode == 0 and "modes covered" in result.stdout
    import math

    import numpy as np

    points = np.load(tmp_path / "ring.npy").astype(np.float64)
    centers = np.array([[2 * math.cos(math.pi * k / 4), 2 * math.sin(math.pi * k / 4)] for k in range(8)])
    distance = np.sqrt(((points[:, None] - centers[None]) ** 2).sum(-1))
    good = distance.min(1) <= 0.06
    counts = np.bincount(distance.argmin(1)[good], minlength=8)
    assert (counts >= 20).sum() >= 6

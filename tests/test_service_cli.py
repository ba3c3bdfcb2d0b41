"""`gansvc submit | watch | jobs | samples | cancel` (and download, health, serve's flag checks) as a user runs them."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gansvc.client import GanClient, state_name
from gansvc.service.server import GanServer, ServerConfig
from gansvc.train.spec import TrainSpec

SMALL = [
    "--dataset", "fashion-mnist", "--model", "mlp", "--mlp-hidden", "64", "--z-dim", "16", "--batch-size", "32",
    "--log-every", "5", "--sample-every", "10", "--checkpoint-every", "10", "--eval-samples", "0", "--no-tensorboard",
]  # fmt: skip


def gansvc(*args, timeout=300):
    """Run `python -m gansvc ARGS`; return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "gansvc", *args], check=False, capture_output=True, text=True, timeout=timeout
    )


def service_cli(*args, timeout=120):
    """Run `python -m gansvc.clients.cli ARGS` (`python -m gansvc.service.cli serve ...` for serve): the same
    commands without the top-level dispatcher's imports; the client one is the health check of scripts/run.sh
    and the Dockerfile."""
    module = "gansvc.service.cli" if args[0] == "serve" else "gansvc.clients.cli"
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory, fashion_mnist_root):
    server = GanServer(
        ServerConfig(state_dir=tmp_path_factory.mktemp("state"), listen="127.0.0.1:0", data_roots=[fashion_mnist_root])
    )
    server.start()
    yield server
    server.shutdown(timeout=20)


@pytest.mark.slow
def test_submit_watch_jobs_samples_download(server, tmp_path):
    submitted = gansvc("submit", "--server", server.address, *SMALL, "--steps", "20")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    default_loss = TrainSpec().loss  # SMALL leaves the loss at the trainer's default
    assert job_id.startswith("train-") and f"mlp / {default_loss} on fashion-mnist, 20 steps" in submitted.stderr

    watched = gansvc("watch", job_id, "--server", server.address)
    assert watched.returncode == 0, watched.stderr
    assert f"job {job_id} SUCCEEDED" in watched.stdout and "final metrics: " in watched.stdout
    assert "D loss" in watched.stdout and "20/20" in watched.stderr  # the bar reached the end
    assert "checkpoint: checkpoints/step_0000020.pt" in watched.stdout and "[2] RUNNING" in watched.stdout

    listed = gansvc("jobs", "--server", server.address)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "20/20" in row and listed.stdout.startswith("ID")

    png, tensor = tmp_path / "grid.png", tmp_path / "images.npy"
    sampled = gansvc("samples", job_id, "-o", str(png), "--seed", "1", "--count", "4", "--tensor", str(tensor),
                     "--server", server.address)  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    images = np.load(tensor)
    assert images.shape == (4, 1, 28, 28) and images.dtype == np.float32 and np.abs(images).max() <= 1.0
    assert Image.open(io.BytesIO(png.read_bytes())).size == (2 * 30 + 2, 2 * 30 + 2)

    target = tmp_path / "generator.pt"
    fetched = service_cli("download", job_id, "generator.pt", "-o", str(target), "--server", server.address)
    assert fetched.returncode == 0, fetched.stderr
    assert target.read_bytes() == (server.state_dir / "jobs" / job_id / "generator.pt").read_bytes()


@pytest.mark.slow
def test_submit_from_a_spec_file_with_overrides(server, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[train]\nmodel = "mlp"\nsteps = 1000000\nz_dim = 8\nbatch_size = 16\neval_samples = 0\n')
    submitted = gansvc("submit", "--server", server.address, "--spec", str(spec), "--z-dim", "12", "--request-id", "f1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    with GanClient(server.address) as client:
        job = client.get_job(job_id)
        assert (job.training.model, job.training.z_dim, job.training.batch_size) == ("mlp", 12, 16)
        assert job.request_id == "f1"
        cancelled = gansvc("cancel", job_id, "--server", server.address)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {job_id} CANCELLED" in cancelled.stdout
        assert state_name(client.get_job(job_id).state) == "CANCELLED"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["submit", *SMALL, "--steps", "10", "--batch-size", "0"], "batch_size: got 0"),
        (["submit", *SMALL, "--steps", "10", "--data-root", "/etc"], "data_root: '/etc' is outside"),
        (["submit", "--steps", "ten"], "--steps: invalid int value: 'ten'"),
        (["jobs", "--state", "sleeping"], "--state 'sleeping'"),
    ],
)
def test_bad_input_exits_2_naming_it(server, args, expected):
    result = service_cli(*args, "--server", server.address)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_unknown_job_and_unreachable_server(server):
    missing = service_cli("watch", "train-missing", "--server", server.address)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "train-missing" in missing.stderr
    healthy = service_cli("health", "--server", server.address)
    assert healthy.returncode == 0 and healthy.stdout.strip() == "SERVING"
    gone = service_cli("health", "--server", "127.0.0.1:1", "--timeout", "2")
    assert gone.returncode == 1 and gone.stdout.startswith("UNREACHABLE")


def test_serve_refuses_bad_settings(tmp_path):
    bad_devices = service_cli("serve", "--state-dir", str(tmp_path), "--devices", "gpu0")
    assert bad_devices.returncode == 2 and "--devices" in bad_devices.stderr
    open_port = service_cli("serve", "--state-dir", str(tmp_path), "--listen", "0.0.0.0:0")
    assert open_port.returncode == 2 and "--auth-token-file" in open_port.stderr
    lone_cert = service_cli("serve", "--state-dir", str(tmp_path), "--tls-cert", str(tmp_path / "c.pem"))
    assert lone_cert.returncode == 2 and "--tls-key" in lone_cert.stderr


def test_a_second_server_on_the_same_state_dir_is_refused(server):
    second = service_cli("serve", "--state-dir", str(server.state_dir), "--listen", "127.0.0.1:0", timeout=60)
    assert second.returncode == 1 and "another gansvc server" in second.stderr


def test_a_busy_port_is_refused_before_any_job_starts(server, tmp_path):
    port = server.address.rsplit(":", 1)[1]
    busy = service_cli("serve", "--state-dir", str(tmp_path / "other"), "--listen", f"127.0.0.1:{port}", timeout=60)
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr


@pytest.mark.slow
def test_samples_by_class_and_evaluation_flags_of_a_conditional_job(server, tmp_path):
    import torch

    from gansvc.train.sampling import generate, load_generator

    spec = {"dataset": "fashion-mnist", "model": "dcgan", "width": 8, "batch_size": 16, "steps": 3, "conditional": True,
            "sample_every": 0, "eval_samples": 0, "tensorboard": False}  # fmt: skip
    with GanClient(server.address, timeout=30) as client:
        job = client.wait(client.submit_training(spec).id, timeout=300)
        assert state_name(job.state) == "SUCCEEDED", job.message
        tensor = tmp_path / "class3.npy"
        sampled = gansvc("samples", job.id, "-o", str(tmp_path / "g.png"), "--class", "3", "--seed", "1", "--count",
                         "4", "--tensor", str(tensor), "--server", server.address)  # fmt: skip
        assert sampled.returncode == 0, sampled.stderr
        generator, _ = load_generator(server.state_dir / "jobs" / job.id / "generator.pt")
        expected = generate(generator, 4, seed=1, labels=torch.full((4,), 3))
        torch.testing.assert_close(torch.from_numpy(np.load(tensor)), expected, rtol=0, atol=1e-6)
        # --best before any evaluation kept a best checkpoint: a clear error, exit 1
        best = gansvc("samples", job.id, "-o", str(tmp_path / "b.png"), "--best", "--server", server.address)
        assert best.returncode == 1 and "best" in best.stderr, best.stderr
        submitted = gansvc("submit", "--evaluate", job.id, "--classes", "1,2", "--num-samples", "40",
                           "--server", server.address)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        evaluation = client.get_job(submitted.stdout.strip())
        assert list(evaluation.evaluation.class_labels) == [1, 2]
        client.wait(evaluation.id, timeout=300)


def test_evaluation_metric_flags_reach_the_evaluation_spec(server, tmp_path, fashion_mnist_root):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((8, 1, 28, 28), dtype=np.uint8))
    evaluation = ["submit", "--evaluate-images", str(images), "--data-root", str(fashion_mnist_root)]
    submitted = service_cli(*evaluation, "--precision-recall", "--bootstrap", "7", "--server", server.address)
    assert submitted.returncode == 0, submitted.stderr
    with GanClient(server.address) as client:
        job = client.get_job(submitted.stdout.strip())
        client.cancel(job.id)  # the scores are not this test's
        assert job.evaluation.precision_recall and job.evaluation.bootstrap == 7
        plain = client.get_job(service_cli(*evaluation, "--server", server.address).stdout.strip())
        client.cancel(plain.id)
        assert not plain.evaluation.precision_recall and plain.evaluation.bootstrap == 0
    negative = service_cli(*evaluation, "--bootstrap", "-1", "--server", server.address)
    assert negative.returncode == 2 and "--bootstrap: expected a number of resamples >= 0" in negative.stderr
    too_many = service_cli(*evaluation, "--bootstrap", "1000000", "--server", server.address)
    assert too_many.returncode == 2 and "INVALID_ARGUMENT: bootstrap: got 1000000" in too_many.stderr
    for flag in (["--precision-recall"], ["--bootstrap", "5"]):  # a training submission has no such scores
        training = service_cli("submit", *SMALL, "--steps", "10", *flag, "--server", server.address)
        assert training.returncode == 2 and f"{flag[0]} scores an evaluation" in training.stderr, training.stderr


def test_bad_class_lists_exit_2(server):
    result = service_cli("submit", "--evaluate", "train-x", "--classes", "one,two", "--server", server.address)
    assert result.returncode == 2 and "--classes" in result.stderr, result.stderr

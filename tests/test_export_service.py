"""ExportGenerator and GetSamples by seed through a real server (issue 21 items 2, 3): the exported file, downloaded
with DownloadArtifact or by `gansvc export JOB`, reproduces the server's images for the same seeds, and those equal
the local `gansvc sample --seeds` of the job's run directory; bad requests are named."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from gansvc.cli import main
from gansvc.client import GanClient, pb, state_name
from gansvc.service.server import GanServer, ServerConfig

JOB = {"dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 32, "z_dim": 16, "batch_size": 16, "steps": 4,
       "log_every": 2, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
       "ema_decay": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, fashion_mnist_root):
    server = GanServer(ServerConfig(state_dir=tmp_path_factory.mktemp("state"), listen="127.0.0.1:0", cpu_jobs=1,
                                    data_roots=[fashion_mnist_root]))  # fmt: skip
    server.start()
    yield server
    server.shutdown(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    with GanClient(server.address, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def job(client):
    submitted = client.submit_training(JOB)
    finished = client.wait(submitted.id, timeout=300)
    assert state_name(finished.state) == "SUCCEEDED", finished.message
    return finished


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def seed_images(client, job_id, seeds="0-9") -> np.ndarray:
    return client.samples(job_id, seeds=seeds, include_tensor=True).images


def test_get_samples_by_seed_equals_local_gansvc_sample(server, client, job, tmp_path):
    remote = client.samples(job.id, seeds="0-9", include_tensor=True)
    local = tmp_path / "local.npz"
    assert main(["sample", str(server.state_dir / "jobs" / job.id), "--seeds", "0-9", "-o", str(local)]) == 0
    with np.load(local) as data:
        assert np.array_equal(remote.images, data["images"])
    assert remote.seeds == tuple(range(10)) and remote.labels == ()
    # truncated and interpolated images come through too
    cut = client.samples(job.id, seeds="0-9", truncation=0.5, include_tensor=True)
    assert cut.images.shape == (10, 1, 28, 28) and not np.array_equal(cut.images, remote.images)
    walk = client.samples(job.id, interpolate=(2, 5), frames=6, include_tensor=True)
    assert np.array_equal(walk.images[[0, -1]], remote.images[[2, 5]]) and walk.seeds == (2,) * 6
    assert Image.open(io.BytesIO(walk.animation)).n_frames == 6


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_generator_writes_a_verified_file_to_download(server, client, job, tmp_path, fmt):
    reply = client.export_generator(job.id, fmt)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    assert reply.artifact == f"exports/generator{suffix}" and reply.contract_artifact == reply.artifact + ".json"
    assert reply.step == 4 and reply.ema is False and 0 <= reply.max_abs_error <= 1e-5
    target, contract_file = tmp_path / f"g{suffix}", tmp_path / "contract.json"
    client.download(job.id, reply.artifact, target)
    client.download(job.id, reply.contract_artifact, contract_file)
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == reply.sha256 and len(data) == reply.size_bytes
    contract = json.loads(contract_file.read_text())
    assert contract == json.loads(reply.contract_json) and contract["source"]["weights"] == "generator.pt"
    assert contract["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["N", 16]}]
    z = torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(s)) for s in range(10)])
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        exported = session.run(None, {"z": z.numpy()})[0]
    else:
        with torch.no_grad():
            exported = torch.jit.load(str(target))(z).numpy()
    assert np.abs(exported - seed_images(client, job.id)).max() <= 1e-5
    assert reply.artifact in [a.name for a in client.list_artifacts(job.id)]


def test_gansvc_export_of_a_job_id_downloads_the_file_and_its_contract(server, job, tmp_path):
    out = tmp_path / "remote.pt"
    result = subprocess.run([sys.executable, "-m", "gansvc", "export", job.id, "--format", "torchscript", "-o",
                             str(out), "--server", server.address], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "verified: max abs error" in result.stdout
    contract = json.loads((tmp_path / "remote.pt.json").read_text())
    assert contract["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and contract["format"] == "torchscript"
    missing = subprocess.run([sys.executable, "-m", "gansvc", "export", "train-nope", "--format", "onnx", "-o",
                              str(tmp_path / "x.onnx"), "--server", server.address],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "no run directory" in missing.stderr


def test_gansvc_samples_interpolate_writes_the_animation(server, job, tmp_path):
    grid = tmp_path / "walk.png"
    result = subprocess.run([sys.executable, "-m", "gansvc", "samples", job.id, "--interpolate", "1,3", "--frames",
                             "5", "-o", str(grid), "--server", server.address],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).size == (5 * 30 + 2, 32) and Image.open(tmp_path / "walk.gif").n_frames == 5
    bad = subprocess.run([sys.executable, "-m", "gansvc", "samples", job.id, "--seeds", "5-2", "-o", str(grid),
                          "--server", server.address], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "seeds: 5-2 is empty" in bad.stderr


def test_bad_requests_are_named(client, job):
    request = pb.ExportGeneratorRequest(job_id=job.id)
    code, details = code_of(lambda: client.stub.ExportGenerator(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("format: got EXPORT_FORMAT_UNSPECIFIED")
    code, details = code_of(lambda: client.export_generator("train-nope", "onnx"))
    assert code == grpc.StatusCode.NOT_FOUND and "job_id" in details
    code, details = code_of(lambda: client.export_generator(job.id, "onnx", best=True))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("best: ")
    code, details = code_of(lambda: client.export_generator(job.id, "onnx", ema=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("ema: ") and "no EMA" in details
    for fields, expected in [({"seeds": "5-2"}, "seeds: 5-2 is empty"),
                             ({"seeds": "1", "truncation": 0.0}, "truncation: must be in (0, 1]"),
                             ({"interpolate": (1, 2), "frames": 1}, "interpolate.frames: got 1")]:  # fmt: skip
        code, details = code_of(lambda fields=fields: client.samples(job.id, **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(expected), details

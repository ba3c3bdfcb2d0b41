"""Fine-tuning through the service (issue 21): UploadCheckpoint (chunks, resume, digest, size limit, foreign files),
init_from resolved at submit (job:ID..., upload:SHA256, paths under a data root), and runs that start from another
job's best checkpoint and from an uploaded one. A real server on 127.0.0.1, tiny MLP jobs."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import time

import grpc
import numpy as np
import pytest
import torch

from gansvc.client import GanClient, pb, state_name
from gansvc.runtime.rundir import partial_name
from gansvc.service.errors import InvalidField, TooLarge, WrongState
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.uploads import MAX_PARTIAL_AGE, CheckpointUploads
from gansvc.train import Trainer, TrainSpec

TINY = {"dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 16, "z_dim": 8, "batch_size": 32, "steps": 10,
        "log_every": 5, "sample_every": 0, "checkpoint_every": 5, "eval_samples": 0, "tensorboard": False}  # fmt: skip
CHUNK = 100_000


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def sha256_file(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def weights_sha256(state_dict: dict) -> str:
    """The weights digest a start's log line names (name|dtype|shape|bytes, names sorted), computed with NumPy."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        array = state_dict[name].numpy().copy(order="C")
        digest.update(f"{name}|{state_dict[name].dtype}|{list(array.shape)}|".encode() + array.tobytes())
    return digest.hexdigest()


def chunks(data: bytes, sha256: str, start: int = 0, total: int | None = None, count: int | None = None):
    """Yield CheckpointChunk messages of `data` from `start` (at most `count` of them)."""
    total = len(data) if total is None else total
    for index, offset in enumerate(range(start, len(data), CHUNK)):
        if count is not None and index >= count:
            return
        yield pb.CheckpointChunk(sha256=sha256, total_size=total, offset=offset, data=data[offset : offset + CHUNK])


def evil(marker):
    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    return Evil()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MLP run's checkpoint file, trained here (not through the service)."""
    run_dir = tmp_path_factory.mktemp("local-run")
    spec = TrainSpec.from_dict({**TINY, "steps": 2, "checkpoint_every": 0, "threads": 1})
    Trainer(spec, run_dir).run()
    path = run_dir / "checkpoints" / "latest.pt"
    assert 3 * CHUNK < path.stat().st_size < 2**20  # several chunks, under the server's 1 MiB limit
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("data")
    os.link(checkpoint, root / "start.pt")
    return root


@pytest.fixture(scope="module")
def service(tmp_path_factory, data_root):
    state = tmp_path_factory.mktemp("state")
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=2, data_roots=[data_root],
                                    max_upload_mb=1))  # fmt: skip
    server.start()
    yield server
    server.shutdown(timeout=20)


@pytest.fixture(scope="module")
def client(service):
    with GanClient(service.address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def source_job(client):
    """A finished training job that kept a best checkpoint (its evaluation at the end)."""
    job = client.submit_training(dict(TINY, eval_samples=200))
    return client.wait(job.id, timeout=300)


# ---------------------------------------------------------------------- the upload store
def test_an_interrupted_upload_resumes_where_it_stopped(service, client, checkpoint):
    data = checkpoint.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    assert client.checkpoint_upload(sha256).received_bytes == 0
    reply = client.stub.UploadCheckpoint(chunks(data, sha256, count=3))  # a stream that ends early
    assert not reply.complete and reply.received_bytes == 3 * CHUNK and not reply.reference

    def held() -> int:
        return client.checkpoint_upload(sha256).received_bytes

    def broken():  # a stream whose client fails once the server has written one more chunk
        yield from chunks(data, sha256, start=3 * CHUNK, count=1)
        # The failure must come after the chunk arrived: a client that fails at once cancels the call, and gRPC
        # may then drop the chunk it had not yet sent (the race CI once lost on a loaded machine).
        deadline = time.monotonic() + 10
        while held() != 4 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("connection lost")

    with pytest.raises(grpc.RpcError):
        client.stub.UploadCheckpoint(broken())
    assert held() == 4 * CHUNK  # the broken stream's chunk stays
    code, details = code_of(lambda: client.stub.UploadCheckpoint(chunks(data, sha256, count=1)))  # from offset 0
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"holds {4 * CHUNK} bytes" in details

    sent = []
    reference = client.upload_checkpoint(checkpoint, chunk_bytes=CHUNK, progress=lambda n, total: sent.append(n))
    assert reference == f"upload:{sha256}"
    assert sent[0] == 5 * CHUNK and sent[-1] == len(data)  # it continued from the 4 chunks the server held
    stored = service.init_sources.uploads.path(sha256)
    assert stored.read_bytes() == data
    status = client.checkpoint_upload(sha256)
    assert status.complete and status.received_bytes == len(data) and status.reference == reference
    assert client.upload_checkpoint(checkpoint) == reference  # already there: nothing is sent again


def test_a_digest_mismatch_is_refused_and_the_upload_dropped(client, checkpoint):
    data = checkpoint.read_bytes()
    claimed = hashlib.sha256(b"another file").hexdigest()
    code, details = code_of(lambda: client.stub.UploadCheckpoint(chunks(data, claimed)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("sha256:") and hashlib.sha256(data).hexdigest() in details and claimed in details
    assert client.checkpoint_upload(claimed).received_bytes == 0
    code, details = code_of(lambda: client.checkpoint_upload("ABC"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sha256:")


def test_the_size_limit_is_resource_exhausted_naming_it(client):
    sha256 = hashlib.sha256(b"big").hexdigest()
    too_big = pb.CheckpointChunk(sha256=sha256, total_size=2**20 + 1, offset=0, data=b"x")
    code, details = code_of(lambda: client.stub.UploadCheckpoint(iter([too_big])))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "total_size" in details and "1 MiB" in details and "--max-upload-mb" in details
    fits = pb.CheckpointChunk(sha256=sha256, total_size=2**20, offset=0, data=b"x" * 10)
    assert not client.stub.UploadCheckpoint(iter([fits])).complete  # the limit itself is allowed


def test_foreign_files_are_refused_and_nothing_in_them_runs(client, tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(evil(marker)))  # live: unpickled in full, it makes the file
    assert marker.exists()
    marker.unlink()
    evil_zip = tmp_path / "evil.pt"
    torch.save({"format": "gansvc-checkpoint", "G": evil(marker)}, evil_zip)
    linear = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), linear)
    foreign = {
        "pickle": (pickle.dumps(evil(marker), protocol=2), "not a readable checkpoint"),
        "torch.save of an object": (evil_zip.read_bytes(), "not a readable checkpoint"),
        "random bytes": (np.random.default_rng(1).bytes(5000), "not a readable checkpoint"),
        "another model's state dict": (linear.read_bytes(), "not a gansvc checkpoint"),
    }
    for what, (data, expected) in foreign.items():
        sha256 = hashlib.sha256(data).hexdigest()
        code, details = code_of(lambda: client.stub.UploadCheckpoint(chunks(data, sha256)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, what
        assert details.startswith("data: the uploaded file is not a usable gansvc checkpoint") and expected in details
        assert client.checkpoint_upload(sha256).received_bytes == 0, what  # dropped
        assert not marker.exists(), what


def test_partial_uploads_are_swept_when_stale_and_at_a_restart(tmp_path):
    uploads = CheckpointUploads(tmp_path / "store", max_bytes=1000)
    data = b"0123456789" * 30
    sha256 = hashlib.sha256(data).hexdigest()

    def piece(offset: int, size: int, total: int = len(data)):
        message = pb.CheckpointChunk(sha256=sha256, total_size=total, offset=offset, data=data[offset : offset + size])
        return iter([message])

    assert uploads.receive(piece(0, 100)).received == 100
    partial = tmp_path / "store" / partial_name(f"{sha256}.pt")
    assert partial.stat().st_size == 100
    assert uploads.sweep() == []  # fresh: kept for its resume
    assert uploads.sweep(now=time.time() + MAX_PARTIAL_AGE + 5) == [partial] and not partial.exists()
    uploads.receive(piece(0, 100))
    assert CheckpointUploads(tmp_path / "store", max_bytes=1000).removed_at_start == [partial]  # a restart
    with pytest.raises(TooLarge):
        uploads.receive(piece(0, 100, total=1001))
    with pytest.raises(InvalidField, match="runs past total_size"):
        uploads.receive(piece(0, 100, total=10))
    with pytest.raises(WrongState, match="holds 0 bytes"):
        uploads.receive(piece(5, 100))


# ---------------------------------------------------------------------- runs that start from weights
def test_runs_fine_tuned_from_an_upload_and_from_a_jobs_best_checkpoint_succeed(service, client, checkpoint,
                                                                                source_job):  # fmt: skip
    assert state_name(source_job.state) == "SUCCEEDED", source_job.message
    best_file = service.state_dir / "jobs" / source_job.id / "checkpoints" / "best.pt"
    uploaded = client.upload_checkpoint(checkpoint)
    from_upload = client.submit_training(dict(TINY, init_from=uploaded, init_parts="g,d,ema,optim", seed=3))
    from_best = client.submit_training(dict(TINY, init_from=f"job:{source_job.id}:best", freeze_d_layers=1))
    assert from_upload.training.init_from == uploaded
    # the job keeps the best checkpoint as it was at submit: its bytes, by their digest
    assert from_best.training.init_from == f"upload:{sha256_file(best_file)}"
    expected = {
        from_upload.id: torch.load(checkpoint, weights_only=True),
        from_best.id: torch.load(best_file, weights_only=True),
    }
    for job_id, source in expected.items():
        job = client.wait(job_id, timeout=300)
        assert state_name(job.state) == "SUCCEEDED", job.message
        assert job.progress.step == TINY["steps"]  # its own length, from step 0
        logs = [e.log.message for e in client.watch(job_id, history_only=True) if e.WhichOneof("payload") == "log"]
        start = next(m for m in logs if m.startswith("init_from: loaded"))
        assert "starts at step 0" in start
        digests = dict(re.findall(r"\b(G|D) ([0-9a-f]{64})", start))
        assert digests == {"G": weights_sha256(source["G"]), "D": weights_sha256(source["D"])}
    run = service.state_dir / "jobs" / from_best.id / "checkpoints" / "latest.pt"
    state = torch.load(run, weights_only=True)
    best = expected[from_best.id]
    assert torch.equal(state["D"]["main.0.weight"], best["D"]["main.0.weight"])  # FreezeD held D's first block
    assert not torch.equal(state["D"]["main.2.weight"], best["D"]["main.2.weight"])


def test_init_from_references_are_checked_at_submit(service, client, source_job, data_root):
    def refused(**settings):
        return code_of(lambda: client.submit_training(dict(TINY, **settings)))

    missing = [f"job:train-{'0' * 12}", f"job:{source_job.id}:step:7", "upload:" + "0" * 64]
    for reference in missing:
        code, details = refused(init_from=reference)
        assert code == grpc.StatusCode.NOT_FOUND and details.startswith("init_from:"), reference
    code, details = refused(init_from=f"job:{source_job.id}", mlp_hidden=32)  # another width: nothing fits
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("init_from:")
    assert "main.0.weight [16, 8] vs [32, 8]" in details
    code, details = refused(init_from="/etc/passwd")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "data roots" in details
    code, details = refused(init_from=str(data_root / "start.pt"), freeze_d_layers=3)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("freeze_d_layers:")
    # a file under a data root is taken as it is; a retried submit is the same job
    first = client.submit_training(dict(TINY, init_from="start.pt"), request_id="same-start")
    again = client.submit_training(dict(TINY, init_from="start.pt"), request_id="same-start")
    assert first.id == again.id and first.training.init_from == str(data_root / "start.pt")
    client.cancel(first.id)


def test_gansvc_upload_prints_the_reference(service, checkpoint, capsys):
    from gansvc.cli import main

    assert main(["upload", str(checkpoint), "--server", service.address, "--quiet", "--chunk-mb", "0.2"]) == 0
    assert capsys.readouterr().out.strip() == f"upload:{sha256_file(checkpoint)}"
    assert main(["upload", str(checkpoint.with_name("missing.pt")), "--server", service.address]) == 2

"""The gRPC service end to end: a real server on 127.0.0.1 (ephemeral port), real clients, real training.

Jobs are tiny (an MLP GAN, tens of steps) so each runs in seconds; what is slow is the worker start
(importing torch), so the module shares one server and one finished job where it can.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from gansvc.client import GanClient, pb, state_name
from gansvc.service.server import GanServer, ServerConfig
from waiting import wait_for

TINY = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": 30,
    "log_every": 5, "sample_every": 15, "checkpoint_every": 15, "eval_samples": 0, "tensorboard": False,
}  # fmt: skip
LONG = {**TINY, "steps": 1_000_000, "sample_every": 0, "checkpoint_every": 0}  # runs until stopped


def code_of(call) -> tuple[grpc.StatusCode, str]:
    """Return the status code and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__next__"):  # a stream fails on its first read
            list(result)
    return caught.value.code(), caught.value.details()


def history(client, job_id):
    """Return every stored event of the job."""
    return list(client.watch(job_id, history_only=True))


def states_of(events):
    return [state_name(e.state.state) for e in events if e.WhichOneof("payload") == "state"]


def wait_running(client, job_id, min_step=1, timeout=120.0):
    """Wait until the job is RUNNING and has reported progress past min_step; return the job."""

    def ready():
        job = client.get_job(job_id)
        assert state_name(job.state) in ("QUEUED", "RUNNING"), f"{job_id} is {state_name(job.state)}: {job.message}"
        return job if state_name(job.state) == "RUNNING" and job.progress.step >= min_step else None

    return wait_for(ready, timeout, what=f"{job_id} running past step {min_step}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "empty-images").mkdir()
    (root / "broken-images").mkdir()
    for index in range(40):  # enough files for a batch of 32, none of them an image: the worker fails
        (root / "broken-images" / f"{index}.png").write_bytes(b"not a png")
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def service(tmp_path_factory, data_root, fashion_mnist_root):
    state = tmp_path_factory.mktemp("state")
    server = GanServer(
        ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=1, data_roots=[data_root, fashion_mnist_root])
    )
    server.start()
    yield server
    server.shutdown(timeout=20)


@pytest.fixture(scope="module")
def client(service):
    with GanClient(service.address, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def finished(service, client):
    """A small training job watched from submission to its end: (job, events seen live)."""
    job = client.submit_training(dict(TINY, eval_samples=400))
    events = list(client.watch(job.id))
    return client.get_job(job.id), events


# ---------------------------------------------------------------------- the happy path
def test_submit_watch_to_succeeded(finished, service):
    job, events = finished
    assert state_name(job.state) == "SUCCEEDED", job.message
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].sequence == job.last_sequence
    assert states_of(events) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    progress = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    assert [p.step for p in progress] == [0, 5, 10, 15, 20, 25, 30]
    assert all(p.total_steps == 30 for p in progress) and progress[-1].images_per_sec > 0
    assert progress[1].eta_seconds > 0 and progress[-1].eta_seconds == 0
    assert [e.checkpoint.step for e in events if e.WhichOneof("payload") == "checkpoint"] == [15, 30]
    assert [e.samples.artifact for e in events if e.WhichOneof("payload") == "samples"] == [
        "samples/step_0000015.png", "samples/step_0000030.png",
    ]  # fmt: skip
    assert job.summary["step"] == 30 and job.attempts == 1 and job.device == "cpu"
    assert job.training.steps == 30 and job.training.model == "mlp" and job.training.z_dim == 16


def test_the_resolved_spec_sets_every_field(finished, client):
    """SubmitTraining and GetJob return the resolved spec: every setting set (model_args / dataset_args
    empty Structs when there are none), as a client that checks field presence expects."""
    job, _ = finished
    submitted = client.submit_training(dict(TINY, eval_samples=400), request_id=job.request_id)  # the same job
    assert submitted.id == job.id
    for answer in (submitted, client.get_job(job.id)):
        spec = answer.training
        unset = [f.name for f in spec.DESCRIPTOR.fields if f.has_presence and not spec.HasField(f.name)]
        assert unset == []
        assert dict(spec.model_args) == {} and dict(spec.dataset_args) == {}
        assert {f.name for f, _ in spec.ListFields()} >= {f.name for f in spec.DESCRIPTOR.fields if f.has_presence}


def test_metrics_history_matches_the_run_directory(finished, client, service):
    import json

    job, _ = finished
    history_points = client.metrics(job.id)
    run_dir = service.state_dir / "jobs" / job.id
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r.get("kind") == "train"}
    assert [step for step, _ in history_points] == sorted(train)
    for step, values in history_points:
        assert values["d_loss"] == pytest.approx(train[step]["d_loss"], rel=1e-12)
        assert values["g_loss"] == pytest.approx(train[step]["g_loss"], rel=1e-12)
    final = history_points[-1][1]
    assert {"fid", "is_mean", "kid_mean"} <= set(final), sorted(final)
    assert final["fid"] == job.latest_metrics["fid"] > 0
    only = client.metrics(job.id, names=["fid"])
    assert only == [(30, {"fid": final["fid"]})]


def test_sample_grid_is_the_trainers_png(finished, client, service):
    job, _ = finished
    grid = client.samples(job.id)
    run_dir = service.state_dir / "jobs" / job.id
    assert grid.png == (run_dir / "samples" / "latest.png").read_bytes() and grid.step == 30
    picture = Image.open(io.BytesIO(grid.png))
    assert picture.format == "PNG" and picture.size == (8 * 30 + 2, 8 * 30 + 2)  # 64 images of 28 px, 2 px gaps
    earlier = client.samples(job.id, step=15)
    assert earlier.png == (run_dir / "samples" / "step_0000015.png").read_bytes()
    code, details = code_of(lambda: client.samples(job.id, step=7))
    assert code == grpc.StatusCode.NOT_FOUND and "step 7" in details


def test_generated_samples_match_the_exported_generator(finished, client, service):
    from gansvc.images import make_grid
    from gansvc.train.sampling import generate, load_generator

    job, _ = finished
    grid = client.samples(job.id, seed=5, count=9, include_tensor=True)
    assert grid.source == "generator.pt" and grid.images.shape == (9, 1, 28, 28)
    generator, _ = load_generator(service.state_dir / "jobs" / job.id / "generator.pt")
    expected = generate(generator, 9, seed=5)
    torch.testing.assert_close(torch.from_numpy(grid.images.copy()), expected, rtol=0, atol=1e-6)
    decoded = np.asarray(Image.open(io.BytesIO(grid.png)))
    assert np.array_equal(decoded, make_grid(expected)[:, :, 0])
    other = client.samples(job.id, seed=6, count=9, include_tensor=True)
    assert not np.allclose(other.images, grid.images)
    from_checkpoint = client.samples(job.id, step=15, count=4)
    assert from_checkpoint.source == "checkpoints/step_0000015.pt" and from_checkpoint.step == 15
    code, details = code_of(lambda: client.samples(job.id, count=5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "count" in details and "5000" in details


def test_checkpoint_and_generator_download_and_load(finished, client, service, tmp_path):
    from gansvc.train.checkpoints import load_checkpoint
    from gansvc.train.sampling import load_generator

    job, _ = finished
    run_dir = service.state_dir / "jobs" / job.id
    names = [a.name for a in client.list_artifacts(job.id)]
    assert {"generator.pt", "checkpoints/latest.pt", "checkpoints/step_0000030.pt", "worker.log"} <= set(names)
    assert "worker_input.json" not in names
    path = client.download(job.id, "checkpoints/latest.pt", tmp_path / "latest.pt")
    assert path.read_bytes() == (run_dir / "checkpoints" / "latest.pt").read_bytes()
    state = load_checkpoint(path)
    assert state["step"] == 30 and state["spec"]["model"] == "mlp"
    generator_file = client.download(job.id, "generator.pt", tmp_path / "g" / "generator.pt")
    generator, spec = load_generator(generator_file)
    assert spec.z_dim == 16 and generator(torch.zeros(2, 16)).shape == (2, 1, 28, 28)
    # a broken download resumes from an offset: the rest of the file, in order
    request = pb.DownloadArtifactRequest(job_id=job.id, name="generator.pt", offset=1000)
    tail = b"".join(chunk.data for chunk in client.stub.DownloadArtifact(request))
    assert tail == generator_file.read_bytes()[1000:]


# ---------------------------------------------------------------------- evaluation jobs
@pytest.mark.slow
def test_evaluation_of_a_checkpoint_matches_local_metrics(finished, client, service):
    from gansvc.metrics import evaluate
    from gansvc.train.sampling import generate, load_generator

    job, _ = finished
    evaluation = client.submit_evaluation(job_id=job.id, num_samples=300, seed=3)
    assert evaluation.kind == pb.JOB_KIND_EVALUATION and evaluation.evaluation.checkpoint.job_id == job.id
    done = client.wait(evaluation.id, timeout=300)
    assert state_name(done.state) == "SUCCEEDED", done.message
    generator, _ = load_generator(service.state_dir / "jobs" / job.id / "generator.pt")
    local = evaluate(generate(generator, 300, seed=3), real="fashion-mnist:test", extractor="fmnist-cnn")
    assert done.latest_metrics["fid"] == pytest.approx(local["fid"], rel=1e-6)
    assert done.latest_metrics["is_mean"] == pytest.approx(local["is_mean"], rel=1e-6)
    assert client.metrics(evaluation.id) == [(30, dict(done.latest_metrics))]


@pytest.mark.slow
def test_evaluation_of_uploaded_samples(client, fashion_mnist_root):
    from gansvc.data import load_images
    from gansvc.metrics import evaluate

    real = load_images("fashion-mnist", "train").images[:200].numpy()
    evaluation = client.submit_evaluation(samples=real, num_real=2000)
    assert list(evaluation.evaluation.samples.shape) == [200, 1, 28, 28]
    done = client.wait(evaluation.id, timeout=300)
    assert state_name(done.state) == "SUCCEEDED", done.message
    local = evaluate(torch.from_numpy(real), real="fashion-mnist:test", extractor="fmnist-cnn", n_real=2000)
    assert done.latest_metrics["fid"] == pytest.approx(local["fid"], rel=1e-6)
    code, details = code_of(lambda: client.samples(evaluation.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "evaluation" in details


# ---------------------------------------------------------------------- requests that must fail
BAD_SPECS = [
    ({"batch_size": 0}, "batch_size", "0"),
    ({"steps": -5}, "steps", "-5"),
    ({"epochs": 2.0}, "steps", "epochs=2.0"),  # steps and epochs both set
    ({"loss": "l2"}, "loss", "'l2'"),
    ({"model": "stylegan"}, "model", "'stylegan'"),
    ({"attention": 14}, "attention", "14"),  # self-attention exists in model resnet only
    ({"dataset": "imagenet"}, "dataset", "'imagenet'"),
    ({"lr_g": 1.5}, "lr_g", "1.5"),
    ({"beta2": 1.0}, "beta2", "1.0"),
    ({"ema_decay": -0.1}, "ema_decay", "-0.1"),
    ({"n_critic": 0}, "n_critic", "0"),
    ({"real_label": 0.9, "loss": "hinge"}, "real_label", "0.9"),  # label smoothing applies to loss bce only
    ({"precision": "fp8"}, "precision", "'fp8'"),
    ({"device": "tpu"}, "device", "'tpu'"),
    ({"device": "cuda"}, "device", "'cuda'"),  # valid, but this server has no GPU
    ({"eval_samples": 1}, "eval_samples", "1"),
    ({"nproc": 512, "batch_size": 512}, "nproc", "512"),  # more CPU processes than this server has cores
    ({"image_size": 3}, "image_size", "3"),
    ({"seed": -1}, "seed", "-1"),
]


@pytest.mark.parametrize("change, field, value", BAD_SPECS, ids=[f[1] + "=" + f[2] for f in BAD_SPECS])
def test_bad_specs_are_invalid_argument_naming_the_field(client, change, field, value):
    code, details = code_of(lambda: client.submit_training(dict(TINY, **change)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:") and value in details, details


def test_request_id_validation(client):
    code, details = code_of(lambda: client.submit_training(TINY, request_id="x" * 200))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request_id:")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"data_root": "../../../etc"}, "data_root"),
        ({"data_root": "/etc"}, "data_root"),
        ({"data_root": "escape"}, "data_root"),  # a symlink out of the data root
        ({"dataset": "folder:/etc"}, "dataset"),
        ({"dataset": "folder:escape/../../.."}, "dataset"),
    ],
)
def test_paths_outside_the_data_roots_are_refused(client, change, field):
    code, details = code_of(lambda: client.submit_training(dict(TINY, **change)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), details
    assert repr(next(iter(change.values())).removeprefix("folder:")) in details


def test_artifact_names_cannot_leave_the_run_directory(finished, client):
    job, _ = finished
    for name in ("../../gansvc.db", "/etc/passwd", "checkpoints/../../../gansvc.db"):
        request = pb.DownloadArtifactRequest(job_id=job.id, name=name)
        code, details = code_of(lambda request=request: list(client.stub.DownloadArtifact(request)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name:"), details


def test_unknown_ids_are_not_found(client):
    calls = {
        "GetJob": lambda: client.get_job("train-nope"),
        "CancelJob": lambda: client.cancel("train-nope"),
        "WatchJob": lambda: list(client.watch("train-nope", reconnect=False)),
        "GetMetrics": lambda: client.metrics("train-nope"),
        "GetSamples": lambda: client.samples("train-nope"),
        "ListArtifacts": lambda: client.list_artifacts("train-nope"),
        "DownloadArtifact": lambda: list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id="train-nope", name="x"))),
        "SubmitEvaluation": lambda: client.submit_evaluation(job_id="train-nope"),
    }  # fmt: skip
    for name, call in calls.items():
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "train-nope" in details, (name, details)


def test_retried_submit_returns_the_same_job(client):
    spec = dict(TINY, steps=1_000_001)
    first = client.submit_training(spec, request_id="retry-me")
    again = client.submit_training(spec, request_id="retry-me")
    assert again.id == first.id
    code, details = code_of(lambda: client.submit_training(dict(spec, seed=9), request_id="retry-me"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and first.id in details
    client.cancel(first.id)
    assert state_name(client.wait(first.id, timeout=120).state) == "CANCELLED"


# ---------------------------------------------------------------------- cancel, listing
def test_cancel_running_and_queued_jobs(client, service):
    from gansvc.service.artifacts import latest_checkpoint_step

    running = client.submit_training(LONG)
    queued = client.submit_training(LONG)  # one CPU slot: waits behind the first
    wait_running(client, running.id, min_step=5)
    assert state_name(client.get_job(queued.id).state) == "QUEUED"
    cancelled = client.cancel(queued.id)
    assert state_name(cancelled.state) == "CANCELLED" and "queued" in cancelled.message
    asked = client.cancel(running.id)
    assert asked.cancel_requested and state_name(asked.state) == "RUNNING"
    done = client.wait(running.id, timeout=120)
    assert state_name(done.state) == "CANCELLED", done.message
    step = latest_checkpoint_step(service.state_dir / "jobs" / running.id)
    assert step and step >= 5 and f"step {step}" in done.message  # it wrote a checkpoint where it stopped
    events = history(client, running.id)
    assert states_of(events) == ["QUEUED", "RUNNING", "CANCELLED"] and events[-1].WhichOneof("payload") == "state"
    assert client.cancel(running.id).state == pb.JOB_STATE_CANCELLED  # cancelling again is a no-op
    listed = [j.id for j in client.list_jobs(states=["CANCELLED"], page_size=1)]  # pages of one
    assert listed[:2] == [queued.id, running.id]
    code, details = code_of(lambda: client.stub.ListJobs(pb.ListJobsRequest(page_token="garbage")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token:")
    code, _ = code_of(lambda: client.stub.ListJobs(pb.ListJobsRequest(page_size=501)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_of_a_finished_job_is_failed_precondition(finished, client):
    job, _ = finished
    code, details = code_of(lambda: client.cancel(job.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in details


# ---------------------------------------------------------------------- many watchers
def test_fifty_concurrent_watchers_all_see_every_event(service):
    with GanClient(service.address) as submitter:
        job = submitter.submit_training(dict(TINY, steps=20))
        results: dict[int, list] = {}
        errors = []

        def watch(index):
            try:
                with GanClient(service.address) as own:
                    results[index] = [(e.sequence, e.SerializeToString(deterministic=True)) for e in own.watch(job.id)]
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors[:3]
        final = submitter.get_job(job.id)
        stored = [(e.sequence, e.SerializeToString(deterministic=True)) for e in history(submitter, job.id)]
    assert state_name(final.state) == "SUCCEEDED" and len(stored) == final.last_sequence > 10
    assert [s for s, _ in stored] == list(range(1, final.last_sequence + 1))
    assert len(results) == 50 and all(seen == stored for seen in results.values())


def test_watch_resumes_after_a_sequence_number(finished, client):
    job, events = finished
    tail = list(client.watch(job.id, after_sequence=5))
    assert [e.SerializeToString(deterministic=True) for e in tail] == [
        e.SerializeToString(deterministic=True) for e in events[5:]
    ]
    code, details = code_of(lambda: list(client.watch(job.id, after_sequence=job.last_sequence + 5, reconnect=False)))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "after_sequence" in details


# ---------------------------------------------------------------------- failures
@pytest.mark.slow
def test_a_killed_worker_is_started_again_and_the_server_lives_on(client):
    # (tests/test_service_retry.py follows a job through every attempt to its failure)
    job = client.submit_training(LONG)
    running = wait_running(client, job.id, min_step=1)
    os.kill(running.worker_pid, signal.SIGKILL)
    again = wait_for(lambda: (j := client.get_job(job.id)).attempts == 2 and j.worker_pid not in (0, running.worker_pid)
                     and j, timeout=60, what="the second attempt")  # fmt: skip
    retry = [e.state for e in history(client, job.id) if e.WhichOneof("payload") == "state"][-2]
    assert state_name(retry.state) == "QUEUED" and "killed by SIGKILL (signal 9)" in retry.reason, retry.reason
    assert client.health() == "SERVING"
    client.cancel(job.id)
    done = client.wait(job.id, timeout=60)
    assert state_name(done.state) == "CANCELLED" and done.worker_pid == 0 and again.attempts == 2


def test_a_failing_run_reports_its_reason(client):
    # an empty folder is refused at submit: the batch cannot be filled from it
    code, details = code_of(lambda: client.submit_training(dict(TINY, dataset="folder:empty-images")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("batch_size:") and "0 samples" in details
    job = client.submit_training(dict(TINY, dataset="folder:broken-images"))
    done = client.wait(job.id, timeout=120)
    assert state_name(done.state) == "FAILED"
    assert "0.png" in done.message and "cannot read this image" in done.message, done.message
    last = history(client, job.id)[-1]
    assert state_name(last.state.state) == "FAILED" and last.state.reason == done.message


# ---------------------------------------------------------------------- auth, TLS, limits
def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secure_service(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("secure")
    cert, key = _self_signed(folder)
    (folder / "tokens").write_text("# gansvc tokens\nsecret-one\nsecret-two\n")
    server = GanServer(
        ServerConfig(
            state_dir=folder / "state", listen="127.0.0.1:0", auth_token_file=folder / "tokens",
            tls_cert=cert, tls_key=key, max_message_mb=1, health_listen="127.0.0.1:0",
        )
    )  # fmt: skip
    server.start()
    yield server, cert
    server.shutdown(timeout=10)


def test_tokens_are_required_except_for_health(secure_service):
    server, cert = secure_service
    with GanClient(server.address, tls_ca=cert) as anonymous:
        assert anonymous.health() == "SERVING"
        for call in (
            lambda: list(anonymous.list_jobs()),
            lambda: anonymous.get_job("train-x"),
            lambda: list(anonymous.watch("train-x", reconnect=False)),
            lambda: anonymous.submit_training(TINY),
        ):
            code, details = code_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(anonymous.channel)
        code, _ = code_of(
            lambda: list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with GanClient(server.address, tls_ca=cert, token="wrong") as wrong:
        code, details = code_of(lambda: list(wrong.list_jobs()))
        assert code == grpc.StatusCode.UNAUTHENTICATED and details == "invalid token"
    with GanClient(server.address, tls_ca=cert, token="secret-two") as allowed:
        assert list(allowed.list_jobs()) == []
        code, _ = code_of(lambda: allowed.get_job("train-x"))
        assert code == grpc.StatusCode.NOT_FOUND  # past auth: the real answer
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(allowed.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), metadata=(("authorization", "Bearer secret-two"),)))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"gansvc.v1.GanService", "grpc.health.v1.Health"} <= names


def test_plaintext_clients_cannot_talk_to_a_tls_server(secure_service):
    server, _ = secure_service
    with GanClient(server.address, token="secret-one", timeout=5) as plain:
        code, _ = code_of(lambda: plain.health(timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_answers_without_ca_or_token_and_serves_nothing_else(secure_service):
    # The Docker image's HEALTHCHECK: `gansvc health` on the loopback health port of a TLS + token server.
    server, _ = secure_service
    health_address = f"127.0.0.1:{server.health_port}"
    check = subprocess.run([sys.executable, "-m", "gansvc", "health", "--server", health_address, "--timeout", "10"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 0 and "SERVING" in check.stdout, check
    main_port = subprocess.run([sys.executable, "-m", "gansvc", "health", "--server", server.address, "--timeout", "5"],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert main_port.returncode != 0  # the TLS port needs the CA: why the image checks the health port
    with GanClient(health_address, timeout=5) as plain:
        assert plain.health() == "SERVING"
        code, _ = code_of(lambda: list(plain.list_jobs()))
        assert code == grpc.StatusCode.UNIMPLEMENTED  # health alone: no job API in plaintext


def test_the_health_port_must_be_loopback(tmp_path):
    with pytest.raises(ValueError, match="--health-listen 0.0.0.0:50052: the plaintext health port must be a loopback"):
        GanServer(ServerConfig(state_dir=tmp_path, listen="127.0.0.1:0", health_listen="0.0.0.0:50052"))


def test_message_size_limit(secure_service):
    server, cert = secure_service
    with GanClient(server.address, tls_ca=cert, token="secret-one") as client:
        big = np.zeros((2000, 1, 28, 28), dtype=np.uint8)  # 1.5 MiB > the server's 1 MiB
        code, _ = code_of(lambda: client.submit_evaluation(samples=big))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_auth_off_needs_no_token(client):
    assert client.health() == "SERVING" and isinstance(list(client.list_jobs(page_size=2)), list)


def test_listening_beyond_loopback_needs_auth(tmp_path):
    with pytest.raises(ValueError, match="auth-token-file"):
        GanServer(ServerConfig(state_dir=tmp_path, listen="0.0.0.0:0"))


def test_wait_times_out_on_a_job_that_does_not_end(client):
    job = client.submit_training(LONG)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=job.id):
        client.wait(job.id, timeout=2)
    assert time.monotonic() - started < 10
    client.cancel(job.id)
    assert state_name(client.wait(job.id, timeout=120).state) == "CANCELLED"

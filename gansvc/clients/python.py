"""A small Python client for the gansvc gRPC service.

    from gansvc.clients.python import GanClient

    with GanClient("127.0.0.1:50051", token="...") as client:
        job = client.submit_training(dataset="fashion-mnist", model="mlp", steps=2000)
        for event in client.watch(job.id):          # reconnects and resumes by sequence number
            print(event)
        print(client.metrics(job.id)[-1])            # (step, {"fid": ..., ...})
        open("grid.png", "wb").write(client.samples(job.id).png)
        client.download(job.id, "generator.pt", "generator.pt")

Messages are the generated gansvc.v1 protobuf classes (`gansvc.client.pb`); no torch and no server code
needed here: this module imports only the stubs and gansvc.api.convert.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gansvc.runtime import registry
from gansvc.api.convert import pb, pb_grpc, state_name, state_to_proto, training_spec_from_dict

DEFAULT_ADDRESS = registry.DEFAULT_ADDRESS
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
# Unary calls are retried on UNAVAILABLE (a server restarting); submissions carry a request id, so
# a retry never creates a second job. The pauses start at 0.2 s and double: the default 5 attempts ride out
# ~3 s of a server restarting.
DEFAULT_RETRY_ATTEMPTS = 5


def _retry_config(attempts: int) -> str:
    """The channel's service config: `attempts` tries of each unary call while the server is UNAVAILABLE."""
    if attempts < 2:  # gRPC wants maxAttempts >= 2 in a retry policy; one attempt is no policy
        return json.dumps({})
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": "0.2s",
        "maxBackoff": "3s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": [{"service": "gansvc.v1.GanService"}], "retryPolicy": policy}]})


@dataclass
class SampleGrid:
    """A GetSamples answer: PNG bytes, the step and file it came from, and the raw images when asked for."""

    png: bytes
    step: int
    source: str
    images: object | None = None  # numpy float32 [N, C, H, W] in [-1, 1]
    seeds: tuple[int, ...] = ()  # drawn by seeds / interpolate: each image's seed
    labels: tuple[int, ...] = ()  # and a conditional run's class of each
    animation: bytes = b""  # interpolate: the animated GIF / WebP


def _read(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class GanClient:
    """A connection to a gansvc server; every method is one RPC (watch and download may reconnect)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        tls_ca: str | os.PathLike | bytes | None = None,
        tls: bool | None = None,
        tls_server_name: str | None = None,
        max_message_mb: int = 64,
        timeout: float = 60.0,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
    ):
        """Connect to `address`; TLS when tls_ca is given (or tls=True: the system's roots). A unary call is tried
        up to `retry_attempts` times while the server is UNAVAILABLE (pauses of 0.2 s, doubling; 1: no retry)."""
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be >= 1, got {retry_attempts}")
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        limit = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.service_config", _retry_config(retry_attempts)),
            ("grpc.enable_retries", int(retry_attempts > 1)),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None or tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=_read(tls_ca))
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.GanServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def with_token(self, token: str | None) -> GanClient:
        """Return a client on this one's channel that sends `token` (None: no token) instead of this one's; closing
        it closes the shared channel, so close only the original."""
        other = copy.copy(self)
        other._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return other

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ health
    def health(self, service: str = "", timeout: float | None = None) -> str:
        """Return the server's health status name: 'SERVING', 'NOT_SERVING', ..."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until health says SERVING; raise TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.2)
        raise TimeoutError(f"{self.address} not SERVING after {timeout:.0f} s (last: {last})")

    # ------------------------------------------------------------------ jobs
    def submit_training(self, spec=None, request_id: str | None = None, **settings) -> pb.Job:
        """Submit a training job; return it. `spec`: a dict, TrainSpec or TrainingSpec; settings override it.

        A request id is generated when none is given, so the automatic retries cannot create two jobs.
        """
        if spec is None:
            merged = {}
        elif isinstance(spec, pb.TrainingSpec):
            merged = {f.name: v for f, v in spec.ListFields() if f.name != "request_id"}
            request_id = request_id or spec.request_id or None
        elif hasattr(spec, "to_dict"):
            merged = spec.to_dict()
        else:
            merged = dict(spec)
        merged.update(settings)
        message = training_spec_from_dict(merged, request_id or f"py-{uuid.uuid4()}")
        return self.stub.SubmitTraining(message, metadata=self._metadata, timeout=self.timeout)

    def submit_evaluation(
        self,
        job_id: str | None = None,
        step: int = 0,
        samples=None,
        real: str = "",
        extractor: str = "",
        num_samples: int | None = None,
        num_real: int | None = None,
        seed: int | None = None,
        data_root: str = "",
        inception_weights: str = "",
        device: str = "",
        request_id: str | None = None,
        precision_recall: bool = False,
        bootstrap: int = 0,
        best: bool = False,
        class_labels: list[int] | tuple[int, ...] = (),
        sample_labels: list[int] | tuple[int, ...] = (),
    ) -> pb.Job:
        """Submit an evaluation of a training job's checkpoint (job_id, step) or of `samples`; return the job.

        samples: images [N, C, H, W], uint8 or float in [-1, 1] (NumPy array or torch tensor).
        best: score the job's best checkpoint (checkpoints/best.pt) instead of `step`.
        class_labels: a conditional checkpoint generates these classes in turn (scored per class too);
        sample_labels: the class of each of `samples` (per-class scores).
        """
        if (job_id is None) == (samples is None):
            raise ValueError("give exactly one of job_id (a checkpoint to score) or samples (images)")
        message = pb.EvaluationSpec(
            real=real, extractor=extractor, data_root=data_root, inception_weights=inception_weights,
            device=device, request_id=request_id or f"py-{uuid.uuid4()}", precision_recall=precision_recall,
            bootstrap=bootstrap, best=best, class_labels=list(class_labels), sample_labels=list(sample_labels),
        )  # fmt: skip
        if job_id is not None:
            message.checkpoint.job_id = job_id
            message.checkpoint.step = step
        else:
            message.samples.CopyFrom(to_tensor(samples))
        if num_samples is not None:
            message.num_samples = num_samples
        if num_real is not None:
            message.num_real = num_real
        if seed is not None:
            message.seed = seed
        return self.stub.SubmitEvaluation(message, metadata=self._metadata, timeout=self.timeout)

    def submit_sweep(self, spec: pb.SweepSpec) -> pb.Job:
        """Submit a sweep (see gansvc.sweep_spec for building one from a TOML file); return the sweep job."""
        if not spec.request_id:  # the automatic retries must not create two sweeps
            spec.request_id = f"py-{uuid.uuid4()}"
        return self.stub.SubmitSweep(spec, metadata=self._metadata, timeout=self.timeout)

    def get_job(self, job_id: str) -> pb.Job:
        """Return the job."""
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata, timeout=self.timeout)

    def list_jobs(self, states: Iterable[str] = (), kind: str | None = None, page_size: int = 50) -> Iterator[pb.Job]:
        """Yield jobs newest first, every page; states by name ('RUNNING', ...), kind 'training'/'evaluation'."""
        token = ""
        while True:
            page = self.list_jobs_page(states, kind, page_size, token)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def list_jobs_page(self, states: Iterable[str] = (), kind: str | None = None, page_size: int = 50,
                       page_token: str = "") -> pb.ListJobsResponse:  # fmt: skip
        """Return one ListJobs page (jobs newest first, and the token of the next page, "" on the last)."""
        request = pb.ListJobsRequest(
            states=[state_to_proto(s.upper()) for s in states],
            kind={None: pb.JOB_KIND_UNSPECIFIED, "training": pb.JOB_KIND_TRAINING,
                  "evaluation": pb.JOB_KIND_EVALUATION, "sweep": pb.JOB_KIND_SWEEP}[kind],
            page_size=page_size, page_token=page_token,
        )  # fmt: skip
        return self.stub.ListJobs(request, metadata=self._metadata, timeout=self.timeout)

    def cancel(self, job_id: str) -> pb.Job:
        """Ask the job to stop (a running one checkpoints first); return it."""
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=self._metadata, timeout=self.timeout)

    def watch(
        self,
        job_id: str,
        after_sequence: int = 0,
        reconnect: bool = True,
        reconnect_timeout: float = 300.0,
        history_only: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.JobEvent]:
        """Yield the job's events after `after_sequence` until it ends.

        When the connection drops (UNAVAILABLE: the server restarts, the network blips) it reconnects
        with the last sequence number seen, for up to `reconnect_timeout` seconds, so no event is
        missed or repeated. `timeout` bounds the whole watch (grpc DEADLINE_EXCEEDED after it).
        """
        last = after_sequence
        deadline = None if timeout is None else time.monotonic() + timeout
        down_since = None
        delay = 0.2
        while True:
            try:
                request = pb.WatchJobRequest(job_id=job_id, after_sequence=last, history_only=history_only)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                for event in self.stub.WatchJob(request, metadata=self._metadata, timeout=remaining):
                    down_since, delay = None, 0.2
                    last = event.sequence
                    yield event
                return
            except grpc.RpcError as error:
                if not reconnect or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_timeout:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def watch_call(self, job_id: str, after_sequence: int = 0, history_only: bool = False):
        """Return one WatchJob call: an iterator of the job's events after `after_sequence` with a thread-safe
        cancel(); no reconnection (a relay that reconnects on its own, like the web page's, resumes it)."""
        request = pb.WatchJobRequest(job_id=job_id, after_sequence=after_sequence, history_only=history_only)
        return self.stub.WatchJob(request, metadata=self._metadata)

    def wait(self, job_id: str, timeout: float | None = None) -> pb.Job:
        """Block until the job ends; return it (TimeoutError after `timeout` seconds)."""
        job = self.get_job(job_id)
        try:
            for _ in self.watch(job_id, after_sequence=job.last_sequence, timeout=timeout):
                pass
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        job = self.get_job(job_id)
        if job.state not in TERMINAL:
            raise TimeoutError(f"job {job_id} still {state_name(job.state)} after {timeout} s")
        return job

    # ------------------------------------------------------------------ results
    def metrics(
        self, job_id: str, names: Iterable[str] = (), max_points: int = 0
    ) -> list[tuple[int, dict[str, float]]]:
        """Return the job's metric history as [(step, {name: value})], in step order; with max_points, each series
        downsampled on the server to at most that many points (its minima and maxima kept)."""
        return [(step, values) for step, _, values in self.metric_points(job_id, names, max_points)]

    def metric_points(
        self, job_id: str, names: Iterable[str] = (), max_points: int = 0
    ) -> list[tuple[int, float, dict[str, float]]]:
        """Return the job's metric history as [(step, UNIX time, {name: value})], in step order (max_points as in
        metrics)."""
        return [(p.step, p.time.seconds + p.time.nanos / 1e9, dict(p.values))
                for p in self.metric_history(job_id, names, max_points).points]  # fmt: skip

    def metric_history(self, job_id: str, names: Iterable[str] = (), max_points: int = 0) -> pb.MetricsHistory:
        """Return GetMetrics' reply itself (points, and each series' total_points before downsampling)."""
        request = pb.GetMetricsRequest(job_id=job_id, names=list(names))
        if max_points:
            request.max_points = max_points
        return self.stub.GetMetrics(request, metadata=self._metadata, timeout=self.timeout)

    def samples(
        self,
        job_id: str,
        step: int = 0,
        seed: int | None = None,
        count: int | None = None,
        include_tensor: bool = False,
        nrow: int = 0,
        best: bool = False,
        class_label: int | None = None,
        seeds: str = "",
        truncation: float | None = None,
        interpolate: tuple[int, int] | None = None,
        frames: int = 0,
        animation_format: str = "",
        per_class: bool = False,
    ) -> SampleGrid:
        """Return a sample grid: the trainer's own, or generated from a checkpoint when seed/count is given.

        best: generate from the job's best generator (generator_best.pt); class_label: a conditional run's
        images all of this class (fresh images are drawn in both cases). seeds ("0-63"): one image per seed,
        as `gansvc sample --seeds`; truncation: psi in (0, 1]; interpolate (seed A, seed B): `frames` images
        along the slerp and an animation (animation_format gif | webp); per_class: every seed in every class.
        """
        request = pb.GetSamplesRequest(job_id=job_id, step=step, include_tensor=include_tensor, nrow=nrow, best=best,
                                       seeds=seeds, per_class=per_class)  # fmt: skip
        if truncation is not None:
            request.truncation = truncation
        if interpolate is not None:
            request.interpolate.CopyFrom(pb.Interpolation(seed_a=interpolate[0], seed_b=interpolate[1], frames=frames,
                                                          animation_format=animation_format))  # fmt: skip
        if class_label is not None:
            request.class_label = class_label
        if seed is not None:
            request.seed = seed
        if count is not None:
            request.count = count
        reply = self.stub.GetSamples(request, metadata=self._metadata, timeout=self.timeout)
        images = from_tensor(reply.tensor) if reply.HasField("tensor") else None
        return SampleGrid(reply.png, reply.step, reply.source, images, tuple(reply.seeds), tuple(reply.labels),
                          reply.animation)  # fmt: skip

    def export_generator(self, job_id: str, fmt: str, best: bool = False,
                         ema: bool | None = None) -> pb.ExportedGenerator:  # fmt: skip
        """Export the job's generator as fmt (torchscript | onnx) into its run directory; return the answer, whose
        `artifact` and `contract_artifact` download() fetches."""
        formats = {"torchscript": pb.EXPORT_FORMAT_TORCHSCRIPT, "onnx": pb.EXPORT_FORMAT_ONNX}
        if fmt not in formats:
            raise ValueError(f"fmt: got {fmt!r}, expected torchscript or onnx")
        request = pb.ExportGeneratorRequest(job_id=job_id, format=formats[fmt], best=best)
        if ema is not None:
            request.ema = ema
        return self.stub.ExportGenerator(request, metadata=self._metadata, timeout=self.timeout)

    def server_info(self, probe_datasets: bool = False) -> pb.ServerInfo:
        """Return what the server offers (GetServerInfo): models, data sets, extractors, devices, kernels, limits."""
        request = pb.GetServerInfoRequest(probe_datasets=probe_datasets)
        return self.stub.GetServerInfo(request, metadata=self._metadata, timeout=self.timeout)

    def list_artifacts(self, job_id: str) -> list[pb.Artifact]:
        """Return the job's files (name, size, modification time)."""
        reply = self.stub.ListArtifacts(
            pb.ListArtifactsRequest(job_id=job_id), metadata=self._metadata, timeout=self.timeout
        )
        return list(reply.artifacts)

    def download_call(self, job_id: str, name: str, offset: int = 0):
        """Return one DownloadArtifact call: an iterator of ArtifactChunk from `offset` (cancel() ends it)."""
        request = pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=offset)
        return self.stub.DownloadArtifact(request, metadata=self._metadata)

    def download(self, job_id: str, name: str, path: str | os.PathLike, retries: int = 5) -> Path:
        """Download the job's file `name` to `path` (atomically, resuming after a dropped connection); return it.

        The SHA-256 the server sends is checked before the file is renamed into place.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        expected, total = "", None
        with open(partial, "wb") as out:
            attempt = 0
            while True:
                try:
                    request = pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=out.tell())
                    for chunk in self.stub.DownloadArtifact(request, metadata=self._metadata):
                        if chunk.sha256:
                            if expected and chunk.sha256 != expected:  # the file changed between attempts
                                out.seek(0)
                                out.truncate()
                                raise _Restart()
                            expected = chunk.sha256
                        total = chunk.total_size
                        out.write(chunk.data)
                    break
                except _Restart:
                    expected = ""
                except grpc.RpcError as error:
                    attempt += 1
                    if error.code() != grpc.StatusCode.UNAVAILABLE or attempt > retries:
                        partial.unlink(missing_ok=True)
                        raise
                    time.sleep(min(0.2 * 2**attempt, 5.0))
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        if (total is not None and partial.stat().st_size != total) or digest != expected:
            partial.unlink(missing_ok=True)
            raise OSError(f"download of {job_id}/{name} is corrupt (sha256 {digest}, server said {expected})")
        os.replace(partial, path)
        return path


    # ------------------------------------------------------------------ checkpoints to start from (issue 21)
    def checkpoint_upload(self, sha256: str) -> pb.CheckpointUpload:
        """Return how much of the upload of the file with this sha256 the server holds (and its reference once
        complete)."""
        request = pb.GetCheckpointUploadRequest(sha256=sha256)
        return self.stub.GetCheckpointUpload(request, metadata=self._metadata, timeout=self.timeout)

    def upload_checkpoint(self, path: str | os.PathLike, chunk_bytes: int = 1 << 20, retries: int = 5,
                          progress=None) -> str:  # fmt: skip
        """Upload a checkpoint file for TrainingSpec.init_from; return its reference, "upload:<sha256>".

        Resumable: it continues from the bytes the server already holds (also of an earlier, interrupted
        upload of the same file), and after a dropped connection. progress(sent_bytes, total_bytes) is
        called after each chunk.
        """
        path = Path(path)
        total = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        attempt = 0
        while True:
            try:
                status = self.checkpoint_upload(sha256)
                if status.complete:
                    return status.reference
                chunks = _file_chunks(path, sha256, total, status.received_bytes, chunk_bytes, progress)
                reply = self.stub.UploadCheckpoint(chunks, metadata=self._metadata)
                if reply.complete:
                    return reply.reference
            except grpc.RpcError as error:
                # UNAVAILABLE: the connection dropped; FAILED_PRECONDITION: the server holds another offset;
                # ABORTED: a stream of the same file is still open there (a broken one of ours, ending)
                retry = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                                         grpc.StatusCode.ABORTED)  # fmt: skip
                if not retry or attempt >= retries:
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0))
            attempt += 1
            if attempt > retries:
                raise OSError(f"upload of {path} did not complete after {retries} retries")


def _file_chunks(path: Path, sha256: str, total: int, offset: int, chunk_bytes: int, progress=None):
    """Yield CheckpointChunk messages of the file from `offset` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        while offset < total:
            data = f.read(chunk_bytes)
            if not data:
                raise OSError(f"{path} shrank while it was uploaded")
            yield pb.CheckpointChunk(sha256=sha256, total_size=total, offset=offset, data=data)
            offset += len(data)
            if progress is not None:
                progress(offset, total)


class _Restart(Exception):
    """The artifact changed during a resumed download: start over."""


def to_tensor(images) -> pb.Tensor:
    """Return images [N, C, H, W] (uint8, or float in [-1, 1]; NumPy or torch) as a Tensor message."""
    import numpy as np

    if hasattr(images, "detach"):  # torch
        images = images.detach().cpu().numpy()
    array = np.ascontiguousarray(images)
    if array.dtype == np.uint8:
        dtype = pb.DTYPE_UINT8
    else:
        array = array.astype("<f4")
        dtype = pb.DTYPE_FLOAT32
    return pb.Tensor(shape=list(array.shape), dtype=dtype, data=array.tobytes())


def from_tensor(tensor: pb.Tensor):
    """Return a Tensor message as a NumPy array."""
    import numpy as np

    dtype = {pb.DTYPE_UINT8: np.uint8, pb.DTYPE_FLOAT32: np.dtype("<f4")}[tensor.dtype]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


__all__ = ["DEFAULT_ADDRESS", "TERMINAL", "GanClient", "SampleGrid", "from_tensor", "pb", "state_name", "to_tensor"]

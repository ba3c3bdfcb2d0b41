"""The GanService RPCs: validate the request, then read or change the store through the scheduler.

Errors become the most specific status: INVALID_ARGUMENT names the field and value, NOT_FOUND names
the unknown id, FAILED_PRECONDITION says which state forbids the call, UNAVAILABLE while shutting down.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import threading
from pathlib import Path

import grpc
import numpy as np

from gansvc.api.downsample import MIN_POINTS, downsample_indices
from gansvc.atomic import atomic_write
from gansvc.runtime import events as ev
from gansvc.service import validation
from gansvc.service.artifacts import list_artifacts, resolve_artifact
from gansvc.service.bus import EventBus
from gansvc.service.devices import DevicePool
from gansvc.service.errors import Busy, InvalidField, MissingReference, ShuttingDown, TooLarge, WrongState
from gansvc.service.exports import export_job_generator
from gansvc.service.messages import (
    PROTO_TO_KIND,
    event_to_proto,
    job_to_proto,
    pb,
    pb_grpc,
    state_name,
    timestamp,
)
from gansvc.service.samples import SampleRenderer
from gansvc.service.scheduler import Scheduler
from gansvc.service.store import JobNotFound, JobStore, RequestIdConflict

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CHUNK_BYTES = 1 << 20
_WATCH_WAKE_SECONDS = 2.0  # how often an idle watcher checks that its client is still there
_EVENTS_PER_READ = 500


@contextlib.contextmanager
def status_errors(context: grpc.ServicerContext):
    """Turn the service's exceptions into gRPC statuses (context.abort raises, ending the RPC)."""
    try:
        yield
    except TooLarge as error:  # before InvalidField, its base
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except Busy as error:
        context.abort(grpc.StatusCode.ABORTED, str(error))
    except InvalidField as error:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except (MissingReference, JobNotFound) as error:
        context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except WrongState as error:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except RequestIdConflict as error:
        context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
    except ShuttingDown as error:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(error))


class GanServicer(pb_grpc.GanServiceServicer):
    """gansvc.v1.GanService over a JobStore, a Scheduler and the jobs' run directories."""

    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        scheduler: Scheduler,
        pool: DevicePool,
        roots: validation.DataRoots,
        state_dir: Path,
        max_message_bytes: int,
        max_watchers: int,
        sweeps=None,
        init_sources=None,
        default_track: str = "",
        jobs_dir: Path | None = None,
    ):
        self.store = store
        self.bus = bus
        self.scheduler = scheduler
        self.pool = pool
        self.roots = roots
        self.jobs_dir = Path(jobs_dir) if jobs_dir else Path(state_dir) / "jobs"  # gansvc serve --jobs-dir
        self.uploads_dir = Path(state_dir) / "uploads"
        self.max_message_bytes = max_message_bytes
        self.renderer = SampleRenderer(max_message_bytes)
        self._watch_slots = threading.BoundedSemaphore(max_watchers)
        self.max_watchers = max_watchers
        self.sweeps = sweeps  # gansvc.service.sweeps.SweepManager
        self.init_sources = init_sources  # gansvc.service.init_sources.InitSources: init_from, uploads (issue 21)
        self.default_track = default_track  # gansvc serve --mlflow-uri: `track` of jobs that set none (issue 21)

    # ------------------------------------------------------------------ helpers
    def _accepting(self) -> None:
        if self.scheduler.draining or self.bus.closed:
            raise ShuttingDown("the server is shutting down and takes no new jobs; retry on its successor")

    def _job(self, job_id: str, field: str = "job_id"):
        if not job_id:
            raise InvalidField(field, "is empty")
        job = self.store.get_job(job_id)
        if job is None:
            raise MissingReference(field, f"job {job_id!r} not found")
        return job

    def _training_job(self, job_id: str):
        job = self._job(job_id)
        if job.kind != "training":
            raise WrongState(f"job {job_id} is of kind {job.kind!r}; samples and checkpoints come from training jobs")
        return job

    # ------------------------------------------------------------------ submit
    def SubmitTraining(self, request: pb.TrainingSpec, context) -> pb.Job:
        """Return the queued training job (or the one a retried request_id made)."""
        with status_errors(context):
            self._accepting()
            request_id = validation.check_request_id("request_id", request.request_id)
            spec = validation.training_spec(request, self.roots, self.pool, self.init_sources, self.default_track)
            # a retry names init_from as the first request did, whatever it resolved to (a job's snapshot)
            asked = {**spec, "init_from": request.init_from} if request.HasField("init_from") else spec
            job, created = self.store.create_job(
                "training", spec, request_id, validation.request_hash({"training": asked})
            )
            if created:
                self.scheduler.wake()
            return job_to_proto(job)

    def SubmitEvaluation(self, request: pb.EvaluationSpec, context) -> pb.Job:
        """Return the queued evaluation job (uploaded samples are stored before it exists)."""
        with status_errors(context):
            self._accepting()
            request_id = validation.check_request_id("request_id", request.request_id)
            evaluation = validation.evaluation_spec(request, self.roots, self.pool, self.store, self.jobs_dir)
            spec = dict(evaluation.spec)
            if evaluation.samples is not None:
                # Content-addressed and written before the job exists, so a worker never misses it.
                digest = hashlib.sha256(evaluation.samples.tobytes()).hexdigest()
                path = self.uploads_dir / f"{digest}.npy"
                if not path.is_file():
                    atomic_write(path, lambda f: np.save(f, evaluation.samples, allow_pickle=False))
                spec["samples_file"] = str(path)
            job, created = self.store.create_job("evaluation", spec, request_id, evaluation.hash)
            if created:
                self.scheduler.wake()
            return job_to_proto(job)

    def SubmitSweep(self, request: pb.SweepSpec, context) -> pb.Job:
        """Return the queued sweep job (or the one a retried request_id made); its driver starts at once."""
        with status_errors(context):
            self._accepting()
            job = self.sweeps.submit(request)
            return job_to_proto(job)

    # ------------------------------------------------------------------ jobs
    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        """Return the job."""
        with status_errors(context):
            return job_to_proto(self._job(request.job_id))

    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        """Return one page of jobs, newest first, and the token of the next page."""
        with status_errors(context):
            page_size = request.page_size or DEFAULT_PAGE_SIZE
            if not 1 <= page_size <= MAX_PAGE_SIZE:
                raise InvalidField("page_size", f"got {request.page_size}, expected 0 (default {DEFAULT_PAGE_SIZE}) "
                                   f"to {MAX_PAGE_SIZE}")  # fmt: skip
            states = []
            for value in request.states:
                if value == pb.JOB_STATE_UNSPECIFIED or value not in pb.JobState.values():
                    raise InvalidField("states", f"got {value}, expected JOB_STATE_QUEUED .. JOB_STATE_CANCELLED")
                states.append(state_name(value))
            if request.kind not in PROTO_TO_KIND and request.kind != pb.JOB_KIND_UNSPECIFIED:
                raise InvalidField("kind", f"got {request.kind}, expected a JobKind")
            before = _decode_page_token(request.page_token)
            jobs = self.store.list_jobs(states, PROTO_TO_KIND.get(request.kind), page_size + 1, before)
            response = pb.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs[:page_size]])
            if len(jobs) > page_size:
                response.next_page_token = _encode_page_token(jobs[page_size - 1].rowid)
            return response

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        """Return the job after asking it to stop (CANCELLED at once when it was queued)."""
        with status_errors(context):
            if self._job(request.job_id).kind == "sweep":
                return job_to_proto(self.sweeps.cancel(request.job_id))
            return job_to_proto(self.scheduler.cancel(request.job_id))

    # ------------------------------------------------------------------ events
    def WatchJob(self, request: pb.WatchJobRequest, context):
        """Yield the job's events after after_sequence, then the live ones until the job ends."""
        with status_errors(context):
            job = self._job(request.job_id)
            if request.after_sequence < 0:
                raise InvalidField("after_sequence", f"got {request.after_sequence}, expected >= 0")
        if request.after_sequence > job.last_sequence:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"after_sequence: {request.after_sequence} is past the job's last event ({job.last_sequence})",
            )
        if not self._watch_slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many watchers (limit {self.max_watchers})")
        # Subscribed before the first read of the store, so no commit between a read and a wait is missed.
        try:
            with self.bus.subscribe(request.job_id):
                sequence = request.after_sequence
                while context.is_active():
                    stored = self.store.events_after(request.job_id, sequence, _EVENTS_PER_READ)
                    for event in stored:
                        yield event_to_proto(event)
                        sequence = event.sequence
                    if len(stored) == _EVENTS_PER_READ:
                        continue
                    job = self.store.get_job(request.job_id)
                    if request.history_only or (job.terminal and sequence >= job.last_sequence):
                        return
                    if self.bus.closed:
                        context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            f"the server is shutting down; reconnect with after_sequence={sequence}",
                        )
                    self.bus.wait(request.job_id, sequence, _WATCH_WAKE_SECONDS)
        finally:
            self._watch_slots.release()

    def GetMetrics(self, request: pb.GetMetricsRequest, context) -> pb.MetricsHistory:
        """Return every metric point by step (after a resume, the resumed run's values replace the redone steps);
        with max_points, each series downsampled keeping its minima and maxima. Read from the store's metric
        index, not from the events, so a long run's history takes a fraction of a second."""
        with status_errors(context):
            max_points = request.max_points
            if max_points and max_points < MIN_POINTS:
                raise InvalidField("max_points", f"got {max_points}, expected 0 (every point) or at least {MIN_POINTS}")
            self._job(request.job_id)
            series = self.store.metric_series(request.job_id, request.names)
            points: dict[int, tuple[float, dict[str, float]]] = {}
            history = pb.MetricsHistory(job_id=request.job_id)
            for name, (steps, values, times) in series.items():
                history.total_points[name] = len(steps)
                if max_points:
                    kept = downsample_indices(values, max_points)
                    steps, values, times = steps[kept], values[kept], times[kept]
                for step, value, time in zip(steps.tolist(), values.tolist(), times.tolist()):
                    # every value of a step carries the same time (the step's latest metrics event)
                    points.setdefault(step, (time, {}))[1][name] = value
            for step in sorted(points):
                time, values = points[step]
                history.points.add(step=step, values=values, time=timestamp(time))
            return history

    # ------------------------------------------------------------------ files
    def GetSamples(self, request: pb.GetSamplesRequest, context) -> pb.Samples:
        """Return the trainer's grid for a step, or images generated from a checkpoint."""
        with status_errors(context):
            job = self._training_job(request.job_id)
            return self.renderer.render(self.jobs_dir / job.id, request)

    def ExportGenerator(self, request: pb.ExportGeneratorRequest, context) -> pb.ExportedGenerator:
        """Export the job's generator (TorchScript / ONNX, verified) into its run directory; return the artifacts."""
        with status_errors(context):
            job = self._training_job(request.job_id)
            return export_job_generator(self.jobs_dir / job.id, request)

    def ListArtifacts(self, request: pb.ListArtifactsRequest, context) -> pb.ListArtifactsResponse:
        """Return the files of the job's run directory."""
        with status_errors(context):
            job = self._job(request.job_id)
            response = pb.ListArtifactsResponse()
            for artifact in list_artifacts(self.jobs_dir / job.id):
                response.artifacts.add(
                    name=artifact.name, size_bytes=artifact.size, modified_at=timestamp(artifact.modified)
                )
            return response

    def DownloadArtifact(self, request: pb.DownloadArtifactRequest, context):
        """Yield one artifact in chunks (the first carries the file's SHA-256)."""
        with status_errors(context):
            job = self._job(request.job_id)
            path = resolve_artifact(self.jobs_dir / job.id, request.name)
            handle = open(path, "rb")  # noqa: SIM115 - closed below; an atomic rename cannot change it
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if not 0 <= request.offset <= size:
                context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset: {request.offset} is outside the file (0..{size})")
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(block)
            handle.seek(request.offset)
            chunk_bytes = min(CHUNK_BYTES, self.max_message_bytes // 2)
            position, first = request.offset, True
            while True:
                data = handle.read(chunk_bytes)
                if not data and not first:
                    return
                yield pb.ArtifactChunk(
                    offset=position, data=data, total_size=size, sha256=digest.hexdigest() if first else ""
                )
                position += len(data)
                first = False
                if not data:
                    return


    # ------------------------------------------------------------------ checkpoints to start from (issue 21)
    def UploadCheckpoint(self, request_iterator, context) -> pb.CheckpointUpload:
        """Return the upload's status after storing the stream's chunks (complete once verified)."""
        with status_errors(context):
            self._accepting()
            return _upload_to_proto(self.init_sources.uploads.receive(request_iterator))

    def GetCheckpointUpload(self, request: pb.GetCheckpointUploadRequest, context) -> pb.CheckpointUpload:
        """Return how much of an upload the server holds."""
        with status_errors(context):
            return _upload_to_proto(self.init_sources.uploads.status(request.sha256))

    # ------------------------------------------------------------------ what this server offers (issue 11)
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        from gansvc.service.info import server_info

        with status_errors(context):
            return server_info(self.pool, self.roots, self.scheduler.max_attempts,
                               self.store.jobs_in_state("RUNNING"), request.probe_datasets)  # fmt: skip


def _upload_to_proto(status) -> pb.CheckpointUpload:
    return pb.CheckpointUpload(sha256=status.sha256, received_bytes=status.received, complete=status.complete,
                               reference=status.reference)  # fmt: skip


def _encode_page_token(rowid: int) -> str:
    return base64.urlsafe_b64encode(f"jobs-before:{rowid}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "jobs-before" or not number.isdigit():
            raise ValueError(text)
        return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidField("page_token", f"{token[:60]!r} is not a token from ListJobs") from None

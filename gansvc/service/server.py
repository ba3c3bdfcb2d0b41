"""The gRPC server: store, scheduler and servicer wired together, with health, reflection, auth and TLS.

Shutdown (SIGTERM / SIGINT via `gansvc serve`): health turns NOT_SERVING, submissions get UNAVAILABLE,
running training jobs write a checkpoint and go back to QUEUED, watchers get their last events and
then UNAVAILABLE (they reconnect with after_sequence), and the server stops. The next start resumes
the queued jobs; after a crash it first requeues the jobs left RUNNING.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gansvc.runtime import registry
from gansvc.runtime.registry import INCEPTION_WEIGHTS_ENV
from gansvc.service.auth import BearerTokenInterceptor, TokenFile
from gansvc.service.bus import EventBus
from gansvc.service.devices import DevicePool
from gansvc.api.convert import SERVICE_NAME, pb_grpc, reflection_pool
from gansvc.service.scheduler import Scheduler
from gansvc.service.servicer import GanServicer
from gansvc.service.sweeps import SweepManager
from gansvc.service.init_sources import InitSources
from gansvc.service.store import JobStore
from gansvc.service.errors import InvalidField
from gansvc.service.tracking import Tracker, check_mlflow_installed
from gansvc.service.uploads import CheckpointUploads
from gansvc.service.validation import DataRoots

DEFAULT_LISTEN = registry.DEFAULT_ADDRESS
log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Everything `gansvc serve` can set."""

    state_dir: Path
    listen: str = DEFAULT_LISTEN
    devices: str = "cpu"  # cpu | all | cuda:0,cuda:1
    cpu_jobs: int = 1  # CPU jobs run at once
    data_roots: list[Path] = field(default_factory=list)
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_mb: int = 64
    max_upload_mb: int = 1024  # the largest checkpoint UploadCheckpoint takes (issue 21)
    max_watchers: int = 64
    shutdown_timeout: float = 60.0  # seconds running jobs get to checkpoint on shutdown
    cancel_timeout: float = 120.0  # seconds a cancelled job gets to checkpoint before it is killed
    max_attempts: int = 3  # times a job is started when its worker keeps dying without a word
    allow_unauthenticated: bool = False  # listen beyond loopback without tokens
    inception_weights: Path | None = None  # the FID Inception weights training runs and evaluations use by default
    # A loopback address serving grpc.health.v1 alone, plaintext, no tokens: a health check that works whatever
    # TLS and auth the main port uses (the Docker image's HEALTHCHECK), exposing nothing else.
    health_listen: str | None = None
    # The MLflow tracking server of jobs whose spec sets no `track` ("" = none; service/tracking.py, issue 21)
    mlflow_uri: str = ""
    backend: str = "local"  # local: worker processes of this server; ray: workers on the nodes of a Ray cluster
    ray_address: str = ""  # the Ray cluster's HOST:PORT (backend ray; "" = RAY_ADDRESS)
    # The run directories (None = STATE_DIR/jobs); with the Ray backend on storage every node sees, while the SQLite
    # store stays in state_dir on this machine's disk (docs/cluster.md)
    jobs_dir: Path | None = None


def is_loopback(listen: str) -> bool:
    """Return whether a HOST:PORT address only accepts connections from this machine."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StateDirLock:
    """An exclusive lock on a state directory: two servers must never run the same jobs."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "server.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RuntimeError(
                f"another gansvc server (pid {owner}) is using the state directory {state_dir}"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Unlock (closing the file)."""
        os.close(self.fd)


class GanServer:
    """One running service: start() it, shutdown() it (also what SIGTERM does)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if config.max_message_mb < 1:
            raise ValueError(f"--max-message-mb must be >= 1, got {config.max_message_mb}")
        if config.max_upload_mb < 1:
            raise ValueError(f"--max-upload-mb must be >= 1, got {config.max_upload_mb}")
        if config.max_watchers < 1:
            raise ValueError(f"--max-watchers must be >= 1, got {config.max_watchers}")
        if not 1 <= config.max_attempts <= 100:
            raise ValueError(f"--max-attempts must be in [1, 100], got {config.max_attempts}")
        self.tokens = TokenFile(config.auth_token_file) if config.auth_token_file else None
        if self.tokens is None and not is_loopback(config.listen) and not config.allow_unauthenticated:
            raise ValueError(
                f"refusing to listen on {config.listen} without --auth-token-file: anyone who can reach it "
                "could run jobs (pass --allow-unauthenticated to do it anyway)"
            )
        self.roots = DataRoots.of(config.data_roots)
        if config.inception_weights:
            weights = Path(config.inception_weights).expanduser()
            if not weights.is_file():
                raise ValueError(f"--inception-weights {str(weights)!r} is not a file")
            # the workers inherit this process's environment: training runs score with these weights
            os.environ[INCEPTION_WEIGHTS_ENV] = str(weights.resolve())
        from gansvc.train.spec import SpecError, check_track_uri

        try:
            self.mlflow_uri = check_track_uri(config.mlflow_uri or "", "--mlflow-uri")
            if self.mlflow_uri:
                check_mlflow_installed("--mlflow-uri")
        except (SpecError, InvalidField) as error:
            raise ValueError(str(error)) from None
        self.executor = None  # the scheduler's default: LocalExecutor
        if config.backend == "ray":
            # imported only here: the local backend runs without Ray installed or running
            from gansvc.service import ray_executor

            ray_executor.connect(config.ray_address or os.environ.get("RAY_ADDRESS", "") or "auto")
            self.pool = ray_executor.RayPool()
            self.executor = ray_executor.RayExecutor()
        elif config.backend == "local":
            self.pool = DevicePool.from_flag(config.devices, config.cpu_jobs)
        else:
            raise ValueError(f"--backend: got {config.backend!r}, expected local or ray")
        self.state_dir = Path(config.state_dir).resolve()
        self.jobs_dir = Path(config.jobs_dir).expanduser().resolve() if config.jobs_dir else self.state_dir / "jobs"
        self.node_probes = None  # the Ray backend's shared-storage probes (service/ray_nodes.py), once started
        self.max_message_bytes = config.max_message_mb * 1024 * 1024
        self.port = 0
        if config.health_listen and not is_loopback(config.health_listen):
            raise ValueError(f"--health-listen {config.health_listen}: the plaintext health port must be a loopback "
                             "address (it answers without TLS or tokens)")
        self.health_server: grpc.Server | None = None
        self.health_port = 0
        self._lock: StateDirLock | None = None
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shutting_down = False

    @property
    def address(self) -> str:
        """Return HOST:PORT the server listens on (the real port when --listen asked for port 0)."""
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> int:
        """Recover the state directory, start the scheduler and the gRPC server; return the bound port."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RuntimeError(f"--jobs-dir {self.jobs_dir}: cannot create it ({error.strerror or error})") from None
        self._lock = StateDirLock(self.state_dir)
        try:
            return self._start()
        except BaseException:
            self._lock.release()
            raise

    def _start(self) -> int:
        self.bus = EventBus()
        # MLflow (issue 21): told of each commit like the watchers; it logs from a thread of its own
        self.tracker = Tracker(self.jobs_dir)

        def appended(job_id: str, sequence: int) -> None:
            self.bus.publish(job_id, sequence)
            self.tracker.notify(job_id, sequence)

        self.store = JobStore(self.state_dir / "gansvc.db", on_append=appended)
        # checkpoints runs start from (issue 21): uploads, and jobs' checkpoints snapshotted at submit
        uploads = CheckpointUploads(self.state_dir / "uploads" / "checkpoints", self.config.max_upload_mb * 2**20)
        self.init_sources = InitSources(self.store, self.jobs_dir, uploads)
        self.scheduler = Scheduler(
            self.store, self.pool, self.jobs_dir, self.config.cancel_timeout, self.config.max_attempts,
            executor=self.executor, uploads=uploads,
        )
        self.sweeps = SweepManager(self.store, self.scheduler, self.roots, self.pool, self.state_dir,
                                   init_sources=self.init_sources, default_track=self.mlflow_uri,
                                   jobs_dir=self.jobs_dir)  # fmt: skip
        self.servicer = GanServicer(
            self.store, self.bus, self.scheduler, self.pool, self.roots, self.state_dir,
            self.max_message_bytes, self.config.max_watchers, sweeps=self.sweeps, init_sources=self.init_sources,
            default_track=self.mlflow_uri, jobs_dir=self.jobs_dir,
        )  # fmt: skip
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.keepalive_time_ms", 60_000),  # long, quiet watches survive idle-connection reapers
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        interceptors = [BearerTokenInterceptor(self.tokens)] if self.tokens else []
        # Each open WatchJob holds a thread: room for every watcher plus the unary calls beside them.
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.config.max_watchers + 16, thread_name_prefix="gansvc-rpc"
        )
        self.grpc_server = grpc.server(self._executor, interceptors=interceptors, options=options)
        pb_grpc.add_GanServiceServicer_to_server(self.servicer, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        # Reflection serves the proto under the name in protos/ (not the build's gansvc/_proto/... name).
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc_server,
            pool=reflection_pool(health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR),
        )
        # Bind before any job starts: a server that cannot listen must not run the state directory's jobs.
        try:
            if self.config.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
                )
                self.port = self.grpc_server.add_secure_port(self.config.listen, credentials)
            else:
                self.port = self.grpc_server.add_insecure_port(self.config.listen)
        except (RuntimeError, OSError) as error:
            self.port, reason = 0, str(error)
        else:
            reason = "address in use or not available here"
        if not self.port:
            self._executor.shutdown(wait=False)
            self.store.close()
            raise RuntimeError(f"cannot listen on {self.config.listen} ({reason})")
        self.health_server, self.health_port = self._health_only_server()
        if self.config.backend == "ray":  # a cluster: every node must see the run directories, later ones too
            from gansvc.service.ray_nodes import NodeProbes

            probes = NodeProbes(self.jobs_dir)
            try:
                probes.check_start()
            except RuntimeError:
                self._executor.shutdown(wait=False)
                self.store.close()
                raise
            self.pool.probes = self.node_probes = probes
            probes.start()
        self.tracker.start(self.store)  # picks up the tracked jobs whose runs a predecessor left incomplete
        self.scheduler.start()  # requeues what a crashed predecessor left RUNNING, then starts jobs
        self.sweeps.start()  # resumes the queued sweeps (their trials are ordinary jobs)
        self.grpc_server.start()
        if self.health_server is not None:
            self.health_server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.tokens and not self.config.tls_cert and not is_loopback(self.config.listen):
            log.warning("bearer tokens travel unencrypted without --tls-cert/--tls-key")
        return self.port

    def _health_only_server(self) -> tuple[grpc.Server | None, int]:
        """Return (a server of grpc.health.v1 alone on config.health_listen, its port), or (None, 0) when not asked.

        It shares the main server's HealthServicer, so it answers NOT_SERVING during a drain like the main port,
        and runs on a thread pool of its own, so busy watchers on the main port cannot starve the check.
        """
        listen = self.config.health_listen
        if not listen:
            return None, 0
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gansvc-health"))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            port = server.add_insecure_port(listen)
        except (RuntimeError, OSError):
            port = 0
        if not port:
            self._executor.shutdown(wait=False)
            self.store.close()
            raise RuntimeError(f"cannot listen on {listen} for health checks (address in use or not available)")
        return server, port

    def running_jobs(self) -> dict[str, int]:
        """Return {job id: worker pid} of the jobs running now."""
        return self.scheduler.running_workers()

    def kill_running_jobs(self) -> list[str]:
        """SIGKILL every running job's worker now (they resume from their last checkpoint); return their ids."""
        return self.scheduler.kill_all()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop gracefully: NOT_SERVING, running jobs checkpoint and requeue, watchers end, server stops."""
        with self._shutdown_lock:
            if self._shutting_down:
                return
            self._shutting_down = True
        self.health.enter_graceful_shutdown()
        self.sweeps.stop()  # first: no sweep starts a trial while the scheduler drains
        if self.node_probes is not None:
            self.node_probes.stop()
        self.scheduler.drain(self.config.shutdown_timeout if timeout is None else timeout)
        self.bus.close()  # watchers deliver what is stored, then end with UNAVAILABLE
        self.tracker.stop()  # what it has not logged yet waits in the store for the next start
        self.grpc_server.stop(grace=5.0).wait()
        if self.health_server is not None:
            self.health_server.stop(grace=None)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        if self._lock is not None:
            self._lock.release()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown() has finished; return whether it has."""
        return self._stopped.wait(timeout)

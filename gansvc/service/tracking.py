"""MLflow tracking of a server's jobs (spec field `track`, `gansvc serve --mlflow-uri`), off the training path.

The store tells the tracker which jobs have new events (JobStore's on_append, beside the watchers' bus): a
job id goes into a bounded set of pending jobs and nothing else happens on the committing thread. One
background thread reads the events back from the store, in order from the last one it logged, and logs them
through `mlflow.MlflowClient`:

- when the job first has events: a run in experiment "gansvc" named by the job id (tags gansvc.job_id,
  gansvc.kind, gansvc.state; a sweep's trial also mlflow.parentRunId, its sweep's run), the resolved spec as
  params (strings as they are, other values as JSON);
- Metrics events: every value with its step and the event's time, batched (up to 1000 per request);
- Samples events: the grid as an artefact under samples/; State events: the gansvc.state tag;
- a sweep's TrialFinished / SweepBest events: the objective of each completed trial (step = trial number), the
  best trial's job in a tag;
- when the job has ended: the best checkpoint (without one, the last checkpoint) under checkpoints/, the
  generator exported as TorchScript (gansvc.service.exports) under exports/, and the final status
  (SUCCEEDED -> FINISHED, FAILED -> FAILED, CANCELLED -> KILLED).

Where it stands is kept in the job's directory (mlflow.json: the run id, the last event logged), written
atomically after each batch, so a retried attempt or a restarted server logs to the same run from where it
stopped; a run found by its gansvc.job_id tag is reused too (a server that died between creating the run and
recording it). Tracking never fails or slows a job: the job's worker never waits on it, an unreachable server
is one warning event on the job per outage, and the tracker retries with a growing pause (RETRY_SECONDS up to
MAX_RETRY_SECONDS), the events it missed waiting in the store. mlflow is imported only here, when the first
tracked job needs it, so the server starts without it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gansvc.atomic import atomic_write_text
from gansvc.runtime import events as ev
from gansvc.runtime.rundir import best_checkpoint_path, latest_checkpoint
from gansvc.service.errors import InvalidField
from gansvc.service.store import JobRecord, JobStore

log = logging.getLogger(__name__)
STATE_FILE = "mlflow.json"  # in the job's directory: the run id and how far the job's events are logged
EXPERIMENT = "gansvc"
MAX_PENDING = 10_000  # jobs waiting for the thread; beyond it, a rescan of the unfinished tracked jobs
RETRY_SECONDS = 2.0  # the first pause after a failure; doubled per failure in a row, up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 120.0
EVENTS_PER_READ = 1000
# MLflow's client retries a failed request up to 7 times with pauses of minutes by default: the tracker
# retries on its own schedule, so each request gets few retries and a short timeout (the operator's own
# settings of these variables win).
_CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # the server's stdout is its own  # fmt: skip
_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED"}


def check_mlflow_installed(field: str) -> None:
    """Raise InvalidField naming `field` when mlflow cannot be imported here (without importing it)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise InvalidField(field, "this server has no MLflow installed (pip install 'gansvc[mlflow]')")


def tracking_uri(job: JobRecord) -> str:
    """Return the MLflow tracking URI a job logs to ("" when it is not tracked)."""
    if job.kind == "training":
        return str(job.spec.get("track") or "")
    if job.kind == "sweep":
        return str((job.spec.get("base") or {}).get("track") or "")
    return ""


def spec_params(spec: dict, prefix: str = "") -> dict[str, str]:
    """Return a spec as MLflow params: strings as they are, other values as JSON (a sweep's nested settings as
    prefix.name); values longer than MLflow's limit are cut, ending in '...'."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = {}
    for name, value in spec.items():
        if isinstance(value, dict) and prefix == "" and name in ("base", "objective", "pruner"):
            params.update(spec_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        params[prefix + name] = text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return params


@dataclass
class RunState:
    """What mlflow.json holds: the run, how far the job's events are logged, whether the job's end is logged."""

    uri: str = ""
    run_id: str = ""
    experiment_id: str = ""
    sequence: int = 0
    done: bool = False
    warned: bool = False  # a warning about this outage was added to the job
    # metric -> the last step logged: a resumed attempt redoes the steps after its checkpoint (with the same
    # values), which are not logged twice; a rollback lowers it, as its redone steps differ
    steps: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> RunState:
        """Return the state stored at path (a fresh one when there is none or it is unreadable)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return cls()

    def write(self, path: Path) -> None:
        """Store the state atomically."""
        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")


class TrackingUnavailable(Exception):
    """The tracking server could not be reached or failed (a retry may succeed)."""


class Tracker:
    """Logs tracked jobs to MLflow from a background thread: notify() on new events, start(), stop()."""

    def __init__(self, jobs_dir: Path):
        self.jobs_dir = Path(jobs_dir)
        self.store: JobStore | None = None
        self._lock = threading.Condition()
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._rescan = False
        self._untracked: set[str] = set()  # jobs that are not tracked (or whose end is logged): notify skips them
        self._waiting: dict[str, set[str]] = {}  # uri -> jobs that wait for it to come back
        self._retry_at: dict[str, float] = {}  # uri -> when to try it again
        self._failures: dict[str, int] = {}  # uri -> failures in a row
        self._clients: dict[str, object] = {}
        self._experiments: dict[str, str] = {}
        self._states: dict[str, RunState] = {}
        self._stopped = False
        self._busy = False  # the thread is logging a job now
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the store's side
    def notify(self, job_id: str, sequence: int = 0) -> None:
        """Note that a job has new events (called after each commit: it only records the job id)."""
        if job_id in self._untracked:
            return
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending[job_id] = None
            else:
                self._rescan = True
            self._lock.notify()

    # ------------------------------------------------------------------ lifecycle
    def start(self, store: JobStore) -> None:
        """Start the thread, which first picks up the tracked jobs whose runs are not complete."""
        self.store = store
        self._rescan = True
        self._thread = threading.Thread(target=self._loop, name="gansvc-tracking", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (what it has not logged is logged by the next server from the store)."""
        with self._lock:
            self._stopped = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def idle(self) -> bool:
        """Return whether nothing waits to be logged now (jobs waiting for an unreachable server aside)."""
        with self._lock:
            return not self._pending and not self._rescan and not self._busy

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and not self._pending and not self._rescan and not self._due():
                    self._lock.wait(timeout=self._next_retry())
                if self._stopped:
                    return
                for uri in self._due():
                    self._pending.update(dict.fromkeys(self._waiting.pop(uri, ())))
                    self._retry_at.pop(uri, None)
                rescan, self._rescan = self._rescan, False
                job_id = None if rescan or not self._pending else self._pending.popitem(last=False)[0]
                self._busy = True
            try:
                if rescan:
                    self._scan()
                elif job_id is not None:
                    self._sync(job_id)
            except Exception:  # the tracker must outlive any one job's or server's trouble
                if not self._stopped:  # at shutdown the store closes under it: nothing is lost, the next start goes on
                    log.exception("tracking job %s failed", job_id)
            finally:
                with self._lock:
                    self._busy = False

    def _due(self) -> list[str]:
        now = time.monotonic()
        return [uri for uri, at in self._retry_at.items() if at <= now]

    def _next_retry(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.05, min(self._retry_at.values()) - time.monotonic())

    def _scan(self) -> None:
        """Queue every tracked job whose run is not complete (at start, and after the pending set overflowed)."""
        for state in ("QUEUED", "RUNNING"):
            for job in self.store.jobs_in_state(state):
                self.notify(job.id)
        for path in self.jobs_dir.glob(f"*/{STATE_FILE}"):  # ended jobs whose end was not logged yet
            if not RunState.read(path).done:
                self.notify(path.parent.name)

    # ------------------------------------------------------------------ one job
    def _sync(self, job_id: str) -> None:
        job = self.store.get_job(job_id)  # read before the events: an ended job's events are all stored
        uri = tracking_uri(job) if job is not None else ""
        if not uri:
            self._untracked.add(job_id)
            return
        with self._lock:
            if uri in self._retry_at:  # down: the job waits for the next try of its server
                self._waiting.setdefault(uri, set()).add(job_id)
                return
        path = self.jobs_dir / job_id / STATE_FILE
        state = self._states.get(job_id) or RunState.read(path)
        self._states[job_id] = state
        if state.done:
            self._untracked.add(job_id)
            return
        try:
            if state.uri != uri or not state.run_id:
                self._open_run(job, state, uri)
                state.write(path)
            self._log_events(job, state, path)
            if job.terminal:
                self._log_end(job, state)
                state.done = True
                state.write(path)
                self._untracked.add(job_id)
                self._states.pop(job_id, None)
        except TrackingUnavailable as error:
            self._failed(job, state, path, uri, str(error))
            return
        with self._lock:
            self._failures.pop(uri, None)
        if state.warned:
            state.warned = False
            state.write(path)
            self._event(job, ev.Log(message=f"MLflow tracking at {uri} is reachable again: run {state.run_id} "
                                            "has caught up"))  # fmt: skip

    def _failed(self, job: JobRecord, state: RunState, path: Path, uri: str, error: str) -> None:
        """Pause the server's jobs (growing pauses) and warn the job once per outage."""
        with self._lock:
            failures = self._failures[uri] = self._failures.get(uri, 0) + 1
            pause = min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** (failures - 1))
            self._retry_at[uri] = time.monotonic() + pause
            self._waiting.setdefault(uri, set()).add(job.id)
        log.warning("MLflow tracking of job %s at %s failed (retrying in %.0f s): %s", job.id, uri, pause, error)
        if not state.warned:
            state.warned = True
            state.write(path)  # also where no run exists yet: a restarted server's scan finds the job by this file
            self._event(job, ev.Warning(step=int((job.progress or {}).get("step", 0) or 0), code="tracking_unavailable",
                                        message=f"MLflow tracking at {uri} failed: {error}; the job goes on, and its "
                                        "metrics are logged when the tracking server answers again"))  # fmt: skip

    def _event(self, job: JobRecord, event: ev.Event) -> None:
        try:
            self.store.append_events(job.id, [event])  # dropped when the job has ended
        except Exception:  # noqa: BLE001 - a closed store at shutdown: the log line says it
            log.warning("could not add to job %s: %s", job.id, getattr(event, "message", event))

    # ------------------------------------------------------------------ MLflow
    def _client(self, uri: str):
        client = self._clients.get(uri)
        if client is None:
            for name, value in _CLIENT_ENVIRONMENT.items():
                os.environ.setdefault(name, value)
            from mlflow import MlflowClient  # a large import: only when a job is tracked

            client = self._clients[uri] = MlflowClient(tracking_uri=uri)
        return client

    def _call(self, uri: str, what: str, *args, **kwargs):
        """Return client.what(*args, **kwargs); any failure is TrackingUnavailable naming the call."""
        try:
            return getattr(self._client(uri), what)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - MLflow raises its own, requests' and OS errors alike
            text = " ".join(str(error).split())
            raise TrackingUnavailable(f"{what}: {text[:300] or type(error).__name__}") from None

    def _experiment(self, uri: str) -> str:
        if uri not in self._experiments:
            found = self._call(uri, "get_experiment_by_name", EXPERIMENT)
            if found is None:
                try:
                    self._experiments[uri] = self._client(uri).create_experiment(EXPERIMENT)
                except Exception:  # noqa: BLE001 - made meanwhile by another server: read it back
                    found = self._call(uri, "get_experiment_by_name", EXPERIMENT)
                    if found is None:
                        raise TrackingUnavailable(f"cannot create the experiment {EXPERIMENT!r}") from None
            if found is not None:
                self._experiments[uri] = found.experiment_id
        return self._experiments[uri]

    def _open_run(self, job: JobRecord, state: RunState, uri: str) -> None:
        """Find the job's run (by its gansvc.job_id tag) or create it with the spec as params."""
        experiment = self._experiment(uri)
        runs = self._call(uri, "search_runs", [experiment], filter_string=f"tags.`gansvc.job_id` = '{job.id}'",
                          max_results=1)  # fmt: skip
        if runs:
            run_id = runs[0].info.run_id
        else:
            tags = {"gansvc.job_id": job.id, "gansvc.kind": job.kind, "gansvc.state": job.state,
                    "mlflow.source.name": "gansvc"}  # fmt: skip
            if job.sweep_id:
                tags.update({"gansvc.sweep_id": job.sweep_id, "gansvc.trial": str(job.trial_number)})
                parent = self._parent_run(job.sweep_id, uri)
                if parent:
                    tags["mlflow.parentRunId"] = parent
            start = job.started_at or job.created_at
            run = self._call(uri, "create_run", experiment, start_time=int(start * 1000), tags=tags, run_name=job.id)
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in spec_params(job.spec).items()]
            for first in range(0, len(params), 100):  # MLflow's limit of params per request
                self._call(uri, "log_batch", run_id, params=params[first : first + 100])
        state.uri, state.run_id, state.experiment_id, state.sequence = uri, run_id, experiment, 0
        log.info("job %s is tracked in MLflow run %s at %s", job.id, run_id, uri)
        self._event(job, ev.Log(message=f"tracked in MLflow run {run_id} (experiment {EXPERIMENT}) at {uri}"))

    def _parent_run(self, sweep_id: str, uri: str) -> str:
        """Return the run id of a sweep's run on `uri`, creating it first ("" when the sweep is tracked elsewhere)."""
        sweep = self.store.get_job(sweep_id)
        if sweep is None or tracking_uri(sweep) != uri:
            return ""
        path = self.jobs_dir / sweep_id / STATE_FILE
        state = self._states.get(sweep_id) or RunState.read(path)
        self._states[sweep_id] = state
        if state.uri != uri or not state.run_id:
            (self.jobs_dir / sweep_id).mkdir(parents=True, exist_ok=True)
            self._open_run(sweep, state, uri)
            state.write(path)
        return state.run_id

    def _log_events(self, job: JobRecord, state: RunState, path: Path) -> None:
        """Log the job's events after state.sequence, a batch per store read; state.sequence follows."""
        from mlflow.entities import Metric, RunTag

        uri, run_id = state.uri, state.run_id
        run_dir = self.jobs_dir / job.id
        objective = ((job.spec.get("objective") or {}).get("metric") or "objective") if job.kind == "sweep" else ""
        while True:
            stored = self.store.events_after(job.id, state.sequence, EVENTS_PER_READ)
            if not stored:
                return
            metrics, tags, files, steps = [], {}, [], dict(state.steps)  # state changes once the batch is logged
            for item in stored:
                event, at = item.event, int(item.time * 1000)
                if isinstance(event, ev.Metrics):
                    for key, value in event.values.items():
                        if event.step > steps.get(key, -1):
                            metrics.append(Metric(key, float(value), at, event.step))
                            steps[key] = event.step
                elif isinstance(event, ev.Rollback):
                    steps = {key: min(step, event.to_step) for key, step in steps.items()}
                elif isinstance(event, ev.Samples) and event.path:
                    files.append((run_dir / event.path, "samples"))
                elif isinstance(event, ev.State):
                    tags["gansvc.state"] = event.state
                elif isinstance(event, ev.Best):
                    tags.update({"gansvc.best_step": str(event.step), "gansvc.best_metric": event.metric})
                elif isinstance(event, ev.TrialFinished) and event.state == "COMPLETE" and event.value is not None:
                    metrics.append(Metric(objective, float(event.value), at, event.trial))
                elif isinstance(event, ev.SweepBest):
                    tags.update({"gansvc.best_trial": str(event.trial), "gansvc.best_job_id": event.job_id})
            for first in range(0, len(metrics), 1000):  # MLflow's limit of metrics per request
                self._call(uri, "log_batch", run_id, metrics=metrics[first : first + 1000])
            if tags:
                self._call(uri, "log_batch", run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            for file, folder in files:
                if file.is_file():  # a grid a rollback removed is gone: nothing to log
                    self._call(uri, "log_artifact", run_id, str(file), folder)
            state.sequence, state.steps = stored[-1].sequence, steps
            state.write(path)

    def _log_end(self, job: JobRecord, state: RunState) -> None:
        """Log a training job's best (or last) checkpoint and exported generator, then end the run."""
        uri, run_id = state.uri, state.run_id
        if job.kind == "training":
            run_dir = self.jobs_dir / job.id
            best = best_checkpoint_path(run_dir)
            checkpoint = best if best.is_file() else latest_checkpoint(run_dir)
            if checkpoint is not None and checkpoint.is_file():
                self._call(uri, "log_artifact", run_id, str(checkpoint), "checkpoints")
                for file in self._export(job, best.is_file()):
                    self._call(uri, "log_artifact", run_id, str(file), "exports")
        self._call(uri, "set_tag", run_id, "gansvc.state", job.state)
        end = int((job.finished_at or time.time()) * 1000)
        self._call(uri, "set_terminated", run_id, _STATUS.get(job.state, "FINISHED"), end_time=end)

    def _export(self, job: JobRecord, best: bool) -> list[Path]:
        """Return the generator exported as TorchScript and its contract (none when it cannot be exported)."""
        from gansvc.service.exports import export_job_generator
        from gansvc.service.messages import pb

        run_dir = self.jobs_dir / job.id
        request = pb.ExportGeneratorRequest(format=pb.EXPORT_FORMAT_TORCHSCRIPT, best=best)
        try:
            exported = export_job_generator(run_dir, request)
        except Exception as error:  # noqa: BLE001 - an unexportable plugin: the run keeps its checkpoint
            log.warning("job %s: its generator was not exported for MLflow: %s", job.id, error)
            return []
        return [run_dir / exported.artifact, run_dir / exported.contract_artifact]

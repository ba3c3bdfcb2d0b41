"""The scheduler: queued jobs get devices and a worker each; worker events go to the store.

The executor (service/executor.py; the local one runs worker processes) starts each attempt from the
scheduler's one long-lived thread and relays the worker's events, which the scheduler stores.
When a worker ends, its last word (Finished / Failed) or its exit status decides the job's next state:

- finished          -> SUCCEEDED (or CANCELLED / back to QUEUED when it stopped because it was asked to)
- failed            -> FAILED with the worker's reason (divergence, OOM, bad data, ...)
- died without word -> QUEUED again from the last checkpoint (up to max_attempts; a rank of a distributed
                       run killed by a signal counts too), then FAILED naming each attempt's signal or exit code
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from gansvc.atomic import atomic_write_text
from gansvc.runtime import events
from gansvc.service.artifacts import latest_checkpoint_step
from gansvc.service.devices import Allocation, DevicePool
from gansvc.service.errors import WrongState
from gansvc.service.executor import ATTEMPT_BANNER, Attempt, Executor, group_name
from gansvc.service.local_executor import LocalExecutor
from gansvc.runtime.rundir import clean_leftovers
from gansvc.service.store import InvalidTransition, JobRecord, JobStore

log = logging.getLogger(__name__)
DEATHS_FILE = "worker_deaths.json"  # the job directory's record of its workers that died without a word
ROUND_SECONDS = 2.0  # how often the loop looks at the queue without being woken (a job ended, one submitted)


def describe_exit(returncode: int) -> str:
    """Return a worker's exit status in words: the signal or exit code, nothing guessed."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"the worker process was killed by {name} (signal {-returncode})"
    return f"the worker process exited with code {returncode} without reporting a result"


def last_log_lines(path: Path, count: int = 5, limit: int = 600) -> str:
    """Return the last `count` non-empty lines the current attempt wrote to a worker log, joined with
    ' | ' (at most `limit` characters, the end kept), or '' when there are none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 16384))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    banners = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_BANNER)]
    lines = lines[banners[-1] + 1 :] if banners else lines
    text = " | ".join(lines[-count:])
    return text if len(text) <= limit else "..." + text[-limit:]


def record_death(job_dir: Path, attempt: int, what: str, tail: str) -> list[dict]:
    """Add one dead attempt to the job directory's record (atomically); return the whole record."""
    path = job_dir / DEATHS_FILE
    try:
        deaths = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        deaths = []
    deaths.append({"attempt": attempt, "exit": what, "last_output": tail})
    atomic_write_text(path, json.dumps(deaths, indent=1) + "\n")
    return deaths


class Scheduler:
    """Starts queued jobs on free devices, stops and cancels them, and recovers after a crash."""

    def __init__(self, store: JobStore, pool: DevicePool, jobs_dir: Path, cancel_timeout: float = 120.0,
                 max_attempts: int = 3, executor: Executor | None = None, uploads=None):  # fmt: skip
        # Starts the attempts: worker processes of this server by default (service/executor.py).
        self.executor = executor or LocalExecutor()
        self.store = store
        self.pool = pool
        self.jobs_dir = Path(jobs_dir)
        self.cancel_timeout = cancel_timeout
        self.max_attempts = max_attempts  # a worker that dies without a word is started again up to this
        self.uploads = uploads  # gansvc.service.uploads.CheckpointUploads: the files of init_from upload:SHA256
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._workers: dict[str, Attempt] = {}
        self._draining = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover jobs a crashed server left RUNNING, sweep crash leftovers, then start the scheduling thread."""
        self.recover()
        # No other worker runs now (recover killed any a dead server left): every temp file is a leftover.
        for job_dir in sorted(p for p in self.jobs_dir.iterdir() if p.is_dir()) if self.jobs_dir.is_dir() else ():
            if job_dir.name in self._workers:  # re-attached: its worker is writing there
                continue
            for path in clean_leftovers(job_dir):
                log.info("removed the crash leftover %s", path)
        self._thread = threading.Thread(target=self._loop, name="gansvc-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Make the scheduler look at the queue now (a job was submitted)."""
        with self._lock:
            self._changed.notify_all()

    @property
    def draining(self) -> bool:
        """Return whether the scheduler is shutting down (no new starts)."""
        return self._draining

    def running_workers(self) -> dict[str, int]:
        """Return {job id: worker pid} of the running workers."""
        with self._lock:
            return {job_id: w.pid for job_id, w in self._workers.items()}

    def kill_all(self) -> list[str]:
        """SIGKILL every running worker (they resume from their last checkpoint); return their job ids."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        return [worker.job_id for worker in workers]

    def drain(self, timeout: float) -> None:
        """Stop starting jobs; ask running ones to checkpoint and stop (back to QUEUED), then end the thread.

        Workers still running after `timeout` seconds are killed; they resume from their last periodic
        checkpoint on the next start.
        """
        with self._lock:
            self._draining = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._workers and time.monotonic() < deadline:
                self._changed.wait(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            late = list(self._workers.values())
        for worker in late:
            log.warning("job %s did not stop within %.0f s: killing it", worker.job_id, timeout)
            worker.kill()
        with self._lock:
            end = time.monotonic() + 15.0
            while self._workers and time.monotonic() < end:
                self._changed.wait(timeout=0.5)
            self._stopped = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if hasattr(self.pool, "forget_placing"):  # placements asked for jobs that now wait for the next start
            self.pool.forget_placing()

    # ------------------------------------------------------------------ requests
    def cancel(self, job_id: str, reason: str = "") -> JobRecord:
        """Cancel a job: a queued one at once, a running one by a checkpoint-and-stop; return the job. `reason`
        (e.g. a sweep's pruner) goes into the job's log line of the request."""
        with self._lock:
            job = self.store.require_job(job_id)
            if job.state == "CANCELLED":
                return job
            if job.terminal:
                raise WrongState(f"job {job_id} already ended ({job.state}); there is nothing to cancel")
            why = f" ({reason})" if reason else ""
            if job.state == "QUEUED":
                self.store.set_state(job_id, "CANCELLED", _cancel_reason(self.jobs_dir / job_id, "while queued" + why))
                return self.store.require_job(job_id)
            if job.cancel_requested:
                return job
            what = "writes a checkpoint and stops" if job.kind == "training" else "stops"
            self.store.set_cancel_requested(job_id, f"cancel requested{why}: the job {what}")
            worker = self._workers.get(job_id)
            if worker is not None:
                worker.request_stop()
            self._changed.notify_all()
            return self.store.require_job(job_id)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                try:
                    if not self._draining:
                        self._start_queued()
                    self._enforce_cancel_timeouts()
                except Exception:  # the scheduler must outlive any one job's trouble
                    log.exception("scheduler error")
                quick = getattr(self.pool, "round_seconds", None)  # a cluster: sooner after a slot was freed
                self._changed.wait(timeout=quick(ROUND_SECONDS) if quick else ROUND_SECONDS)

    def _start_queued(self) -> None:
        queued = [job for job in self.store.jobs_in_state("QUEUED")
                  if job.id not in self._workers and job.kind != "sweep"]  # a sweep runs as a thread (sweeps.py)
        for job in queued:
            device = job.spec.get("device", "auto") or "auto"
            asks = {"nproc": int(job.spec.get("nproc", 1) or 1), "nnodes": int(job.spec.get("nnodes", 1) or 1),
                    "threads": int(job.spec.get("threads", 0) or 0)}  # fmt: skip
            try:
                problem = self.pool.check(device, **asks)
            except (ValueError, WrongState) as error:  # WrongState: a cluster that can no longer hold it
                problem = str(error)
            if problem:  # e.g. restarted with fewer GPUs than the job was accepted for
                self.store.set_state(job.id, "FAILED", f"cannot run here: {problem}")
                continue
            allocation = self.pool.allocate(device, **asks, name=group_name(job.id, job.attempts + 1))
            if allocation is not None:
                self._launch(job, allocation)
            elif hasattr(self.pool, "waiting_for"):  # a cluster: say what the job waits for, once per change
                waiting = self.pool.waiting_for(device, **asks)
                if waiting and waiting != job.message:
                    self.store.note_queued(job.id, waiting)
        if hasattr(self.pool, "forget_placing"):  # a cluster: no placement kept for a job cancelled meanwhile
            self.pool.forget_placing({group_name(job.id, job.attempts + 1) for job in queued})

    def _launch(self, job: JobRecord, allocation: Allocation) -> None:
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        attempt = job.attempts + 1
        resume_step = latest_checkpoint_step(job_dir) if job.kind == "training" else None
        spec = dict(job.spec)
        worker_input = {"kind": job.kind, "job_id": job.id, "device": allocation.spec_device}
        if job.kind == "training":
            spec["device"] = allocation.spec_device
            init_file = self.uploads.file_of(spec.get("init_from") or "") if self.uploads is not None else None
            if init_file is not None:  # upload:SHA256 (issue 21): the stored file the worker reads
                spec["init_from"] = str(init_file)
            if allocation.kind == "cpu" and not spec.get("threads"):
                # nproc > 1: the worker starts that many processes (torchrun, gloo) sharing the slot's threads
                spec["threads"] = max(1, allocation.cpu_threads // max(1, int(spec.get("nproc", 1) or 1)))
        else:
            if spec.get("source") == "checkpoint":
                worker_input["source_run_dir"] = str(self.jobs_dir / spec["job_id"])
        worker_input["spec"] = spec
        atomic_write_text(job_dir / "worker_input.json", json.dumps(worker_input, indent=2) + "\n")
        try:
            worker = self.executor.start(job, job_dir, allocation, attempt, self)
        except OSError as error:
            self.pool.release(allocation)
            self.store.set_state(job.id, "FAILED", f"could not start a worker process: {error}")
            return
        reason = f"running on {allocation.label}"
        if attempt > 1:
            where = f"the checkpoint at step {resume_step}" if resume_step else "the start (no checkpoint was saved)"
            reason += (
                f" (attempt {attempt}, resuming from {where})" if job.kind == "training" else f" (attempt {attempt})"
            )
        self.store.set_state(
            job.id, "RUNNING", reason, attempt=attempt, device=allocation.label, worker_pid=worker.pid,
            resume_step=resume_step if attempt > 1 else None, nodes=allocation.addresses,
        )  # fmt: skip
        self._workers[job.id] = worker
        worker.watch()

    def _enforce_cancel_timeouts(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            started = worker.stop_requested_at
            if started is not None and not worker.killed and not self._draining and now - started > self.cancel_timeout:
                log.warning("job %s ignored its stop request: killing it", worker.job_id)
                worker.kill()

    # ------------------------------------------------------------------ what the executor reports
    def worker_events(self, worker: Attempt, batch: list[events.Event], relayed: int | None = None) -> None:
        """Store events a worker sent (called by the executor as they come), with the relay's position."""
        self.store.append_events(worker.job_id, batch, relayed=relayed)

    def worker_exited(self, worker: Attempt, returncode: int) -> None:
        """Record how a worker ended (called by the executor once), free its devices, and wake the loop."""
        with self._lock:
            try:
                self._finish(worker, returncode)
            except InvalidTransition as error:
                log.warning("%s", error)
            finally:
                self._workers.pop(worker.job_id, None)
                worker.close()
                self.pool.release(worker.allocation)
                self._changed.notify_all()

    def _finish(self, worker: Attempt, returncode: int) -> None:
        job = self.store.require_job(worker.job_id)
        if job.state != "RUNNING":
            return
        final = worker.final
        finished = isinstance(final, events.Finished)
        summary = final.summary if finished and final.summary else None
        step = _step_of(summary)
        if finished and not final.stopped:
            message = "completed"
            if summary and summary.get("status") == "max_minutes":
                message = f"stopped at the max_minutes limit, step {step} of {summary.get('total_steps', '?')}"
            self.store.set_state(job.id, "SUCCEEDED", message, summary=summary)
        elif isinstance(final, events.Failed) and final.died and not job.cancel_requested:
            self._worker_died(job, worker, returncode, what=final.reason)  # a killed rank: retried like a worker
        elif isinstance(final, events.Failed) and not job.cancel_requested:
            self.store.set_state(job.id, "FAILED", final.reason or "failed")
        elif job.cancel_requested:
            self.store.set_state(job.id, "CANCELLED", _cancel_reason(worker.job_dir, f"at step {step}" if step else ""))
        elif self._draining or (finished and final.stopped):
            resume = latest_checkpoint_step(worker.job_dir)
            where = f"resumes from the checkpoint at step {resume}" if resume else "restarts from the beginning"
            if self._draining:
                self.store.set_state(job.id, "QUEUED", f"interrupted by a server shutdown; {where} on the next start")
            else:  # someone sent the worker SIGTERM: it checkpointed; run it again
                self.store.set_state(job.id, "QUEUED", f"the worker was stopped from outside (SIGTERM); {where}")
        else:
            self._worker_died(job, worker, returncode)

    def _worker_died(self, job: JobRecord, worker: Attempt, returncode: int, what: str = "") -> None:
        """A worker died without a word (OOM killer, a signal, a crash), or said a process of its job was killed
        (`what`: a rank of a distributed run): retry from the last checkpoint while attempts remain, else fail
        naming every attempt."""
        what = what or describe_exit(returncode)
        tail = last_log_lines(worker.job_dir / "worker.log")
        deaths = record_death(worker.job_dir, job.attempts, what, tail)
        said = f"{what}; its last output: {tail}" if tail else f"{what}; it wrote nothing"
        # Only deaths count: a restart after a server shutdown or a SIGTERM is no failure of the job's.
        if len(deaths) < self.max_attempts:
            resume = latest_checkpoint_step(worker.job_dir) if job.kind == "training" else None
            where = f"from the checkpoint at step {resume}" if resume else "from the beginning"
            self.store.set_state(job.id, "QUEUED", f"attempt {job.attempts} died ({len(deaths)} of "
                                                   f"{self.max_attempts} allowed): {said}; retrying {where}")  # fmt: skip
            return
        history = "; ".join(f"attempt {d['attempt']}: {d['exit'].removeprefix('the worker process ')}" for d in deaths)
        self.store.set_state(job.id, "FAILED", f"the worker died {len(deaths)} times ({history}); "
                                               f"the last one's output: {tail or 'nothing'}")  # fmt: skip

    # ------------------------------------------------------------------ crash recovery
    def recover(self) -> None:
        """Re-attach to the workers a crashed server left running where the executor can (a Ray actor still runs
        the attempt), else requeue their jobs (killing any worker of theirs still alive)."""
        for job in self.store.jobs_in_state("RUNNING"):
            job_dir = self.jobs_dir / job.id
            attempt = None if job.cancel_requested else self.executor.reattach(job, job_dir, self.pool, self)
            if attempt is not None:
                log.info("job %s: re-attached to its running attempt %d", job.id, job.attempts)
                self.store.append_events(job.id, [events.Log(message="the server restarted and re-attached to "
                                                                     f"attempt {job.attempts}")])  # fmt: skip
                self._workers[job.id] = attempt
                attempt.watch()
                continue
            self.executor.kill_stale(job, job_dir)
            if job.cancel_requested:
                self.store.set_state(job.id, "CANCELLED", _cancel_reason(job_dir, "(the server stopped meanwhile)"))
                continue
            resume = latest_checkpoint_step(job_dir) if job.kind == "training" else None
            where = f"resumes from the checkpoint at step {resume}" if resume else "starts again"
            self.store.set_state(job.id, "QUEUED", f"the server stopped unexpectedly; the job {where}")


def _cancel_reason(job_dir: Path, when: str) -> str:
    step = latest_checkpoint_step(job_dir)
    kept = f"; its checkpoint at step {step} is kept" if step else ""
    return f"cancelled {when}".rstrip() + kept


def _step_of(summary: dict | None) -> int:
    try:
        return int((summary or {}).get("step") or 0)
    except (TypeError, ValueError):
        return 0


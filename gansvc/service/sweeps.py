"""Hyperparameter sweeps on Optuna: one sweep job whose trials are ordinary training jobs.

Where the driver runs: a thread in the server, one per running sweep (SweepDriver). A sweep does no
computing of its own; it only asks Optuna for settings, submits training jobs, reads their metric events
from the store and tells Optuna the results. A worker process would hold a device slot of the pool
while waiting for trials that need one (a one-slot CPU server would never run them).

Durability: the sweep's Optuna study lives in STATE_DIR/sweeps/<sweep id>.db (Optuna's RDB storage on
SQLite), holding every trial's settings, intermediate values, state and its training job's id (a user
attribute). Trial jobs are created with the request id "<sweep id>.trial-<n>", so a driver interrupted
between creating a job and recording its id finds the same job again. A graceful shutdown stops the
drivers first (the sweep goes back to QUEUED), then the scheduler checkpoints the trials; after a crash
Scheduler.recover requeues the sweep. Either way SweepManager.start() resumes every queued sweep where
it was: its running trials keep their jobs (which resume from their checkpoints), values already
reported are not reported twice (a resumed trial redoes the steps after its checkpoint), and new trials
continue the sampler (seeded by the sweep's seed plus the number of trials so far).

Trials share the cached reference statistics: every worker inherits the server's GANSVC_CACHE_DIR
(made absolute by the scheduler, as workers run in their job directories), so the real split's
statistics are computed by the first trial that evaluates and read from the cache by the others.

Objective: the value of `objective.metric` the trial's job reported last (the final evaluation);
intermediate values are every evaluation during training, which the pruner (median or ASHA) reads.
A pruned trial's job is cancelled (it writes a checkpoint and stops; its cancel request says why); the sweep's
events say so (TrialPruned, then TrialFinished with state PRUNED) and its summary counts the trials by state.
The pruner can only stop a trial whose job is still running when the driver reads its value: a trial that
ended before then completed, and counts as such.

A trial's settings are the base settings the sweep gave plus its own (sweep_spec.trial_settings): the base's
defaults are left to the trial's model, so a search over `model` gives each model its own optimiser settings.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gansvc.atomic import atomic_write_text
from gansvc.runtime import events as ev
from gansvc.service import validation
from gansvc.service.errors import InvalidField, WrongState
from gansvc.service.messages import pb, training_spec_from_dict
from gansvc.service.store import JobRecord
from gansvc.sweep_spec import SweepSpecError, check_sweep, concurrency, sweep_spec_to_raw, trial_settings

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # how often a driver looks at its trials' jobs
MAX_TRIALS_LISTED = 5000


def checked_sweep(message: pb.SweepSpec, roots: validation.DataRoots, pool, init_sources=None,
                  default_track: str = "") -> dict:  # fmt: skip
    """Return the checked sweep spec of a SweepSpec message; InvalidField names a bad field."""
    try:
        base_message, raw = sweep_spec_to_raw(message)
        try:
            base = validation.training_spec(base_message, roots, pool, init_sources, default_track)
        except InvalidField as error:
            raise InvalidField(f"base.{error.field}", error.message) from None
        return check_sweep(raw, base)
    except SweepSpecError as error:
        raise InvalidField(error.field, error.message) from None


def distributions(space: dict) -> dict:
    """Return the Optuna distribution of each searched setting."""
    import optuna.distributions as d

    found = {}
    for name, parameter in space.items():
        if "choices" in parameter:
            found[name] = d.CategoricalDistribution(parameter["choices"])
        elif isinstance(parameter["low"], int):
            found[name] = d.IntDistribution(parameter["low"], parameter["high"], log=parameter["log"],
                                            step=parameter["step"] or 1)  # fmt: skip
        else:
            found[name] = d.FloatDistribution(parameter["low"], parameter["high"], log=parameter["log"],
                                              step=parameter["step"])  # fmt: skip
    return found


def _sampler(spec: dict, done: int):
    import optuna.samplers as s

    seed = (spec["seed"] + done) % 2**32  # a resumed sweep's sampler must not repeat the first trials' draws
    if spec["method"] == "grid":
        return _grid_sampler({name: p["choices"] for name, p in spec["space"].items()}, seed)
    if spec["method"] == "random":
        return s.RandomSampler(seed=seed)
    # TPE's default of 10 random start-up trials would make a short sweep a random one
    return s.TPESampler(seed=seed, n_startup_trials=max(1, min(10, spec["trials"] // 2)))


def _grid_sampler(search_space: dict, seed: int):
    import optuna.samplers as s

    class GridSampler(s.GridSampler):
        """Optuna's grid sampler without its study.stop() at the grid's end (which works only inside
        study.optimize; the driver stops after `trials`, at most the grid's size)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridSampler(search_space, seed=seed)


def _pruner(spec: dict):
    import optuna.pruners as p

    pruner = spec["pruner"]
    if pruner.get("method") == "median":
        return p.MedianPruner(n_startup_trials=pruner["startup_trials"], n_warmup_steps=pruner["warmup_steps"])
    if pruner.get("method") == "asha":
        return p.SuccessiveHalvingPruner(min_resource=pruner["min_resource"],
                                         reduction_factor=pruner["reduction_factor"])  # fmt: skip
    return p.NopPruner()


@dataclass
class TrialRun:
    """A trial whose training job is running: the Optuna trial, the job, the events read so far."""

    trial: object  # optuna.trial.Trial
    job_id: str
    sequence: int = 0
    reported: set[int] = field(default_factory=set)

    @property
    def number(self) -> int:
        """Return the trial's number in the study."""
        return self.trial.number


class SweepDriver(threading.Thread):
    """Drives one sweep: asks Optuna for trials, runs them as training jobs, tells Optuna their results."""

    def __init__(self, manager: SweepManager, job_id: str):
        super().__init__(name=f"gansvc-sweep-{job_id}", daemon=True)
        self.manager, self.job_id = manager, job_id
        self.store, self.scheduler = manager.store, manager.scheduler
        self.stop_event = threading.Event()
        self.best_number: int | None = None

    def run(self) -> None:
        """Run the sweep to its end (or until the server stops); a failure fails the sweep job."""
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - a sweep's trouble must not take the server down
            log.exception("sweep %s failed", self.job_id)
            job = self.store.get_job(self.job_id)
            if job is not None and not job.terminal:
                self.manager.cancel_trials(self.job_id)
                self._set_state("FAILED", f"the sweep's driver failed: {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        job = self.store.require_job(self.job_id)
        if job.terminal:
            return
        spec = job.spec
        path = self.manager.sweeps_dir / f"{self.job_id}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})
        study = optuna.create_study(
            storage=storage, study_name=self.job_id, load_if_exists=True, pruner=_pruner(spec),
            direction=spec["objective"]["direction"], sampler=optuna.samplers.RandomSampler(),
        )  # fmt: skip
        done = len(study.trials)
        study.sampler = _sampler(spec, done)
        space = distributions(spec["space"])
        running = {run.number: run for run in self._resume(study, spec)}
        self.best_number = self._best(study)
        if job.state == "QUEUED":
            what = f"{done} of {spec['trials']} trials so far" if done else f"{spec['trials']} trials"
            limit = concurrency(spec, self._room(spec))
            at_once = f"{limit} at a time" if spec.get("max_concurrent", spec.get("parallel")) else \
                f"as many at a time as fit ({limit} now)"
            self._set_state("RUNNING", f"{spec['method']} sweep: {what}, {at_once}")
        while True:
            job = self.store.require_job(self.job_id)
            if job.terminal:  # cancelled while queued
                return
            if self.stop_event.is_set():
                self._set_state("QUEUED", "interrupted by a server shutdown; the sweep resumes on the next start")
                return
            if job.cancel_requested:
                self.manager.cancel_trials(self.job_id)
                for run in running.values():
                    study.tell(run.trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    self._event(ev.TrialFinished(trial=run.number, job_id=run.job_id, state="CANCELLED",
                                                 reason="the sweep was cancelled"))  # fmt: skip
                self._finish(study, spec, "CANCELLED", "cancelled; its trials were cancelled")
                return
            for run in list(running.values()):
                if self._poll(study, spec, run):
                    del running[run.number]
            limit = concurrency(spec, self._room(spec))
            while len(running) < limit and len(study.trials) < spec["trials"]:
                run = self._start_trial(study, spec, space)
                if run is not None:
                    running[run.number] = run
            if not running and len(study.trials) >= spec["trials"] and not self._trials_ending():
                self._finish(study, spec, "SUCCEEDED", "")
                return
            self.stop_event.wait(POLL_SECONDS)

    def _room(self, spec: dict) -> int:
        """Return how many trials the devices (or the cluster's nodes that may get work) hold at once, from the base
        settings' request (a sweep's default number of trials at once)."""
        base = spec["base"]
        try:
            return self.manager.pool.capacity(base.get("device", "auto") or "auto", int(base.get("nproc", 1) or 1),
                                              int(base.get("nnodes", 1) or 1), int(base.get("threads", 0) or 0))
        except (ValueError, RuntimeError):  # a device the pool no longer has: one at a time; the trial says why
            return 1

    # ------------------------------------------------------------------ trials
    def _resume(self, study, spec: dict) -> list[TrialRun]:
        """Return the runs of the trials an earlier driver left running (their jobs created if need be)."""
        import optuna

        runs = []
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, frozen._trial_id)
            job_id = frozen.user_attrs.get("job_id") or self._create_job(study, spec, trial)
            if job_id:
                runs.append(TrialRun(trial, job_id, reported=set(frozen.intermediate_values)))
        return runs

    def _start_trial(self, study, spec: dict, space: dict) -> TrialRun | None:
        trial = study.ask(space)
        job_id = self._create_job(study, spec, trial)
        if job_id is None:
            return None
        self._event(ev.TrialStarted(trial=trial.number, job_id=job_id, params=dict(trial.params)))
        return TrialRun(trial, job_id)

    def _create_job(self, study, spec: dict, trial) -> str | None:
        """Create the trial's training job (the same one again for a retried trial); None when its settings
        are invalid (the trial fails, saying why)."""
        import optuna

        try:
            message = training_spec_from_dict(trial_settings(spec, trial.params))
            # the sweep's own resolved track (its run is the trials' parent), whatever the server's default is now
            settings = validation.training_spec(message, self.manager.roots, self.manager.pool,
                                                getattr(self.manager, "init_sources", None),
                                                spec["base"].get("track", ""))  # fmt: skip
        except (InvalidField, ValueError) as error:
            reason = f"invalid settings {trial.params}: {error}"
            trial.set_user_attr("reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._event(ev.TrialFinished(trial=trial.number, state="FAILED", reason=reason))
            return None
        digest = validation.request_hash({"training": settings})
        job, _ = self.store.create_job("training", settings, f"{self.job_id}.trial-{trial.number}", digest,
                                       sweep_id=self.job_id, trial_number=trial.number)  # fmt: skip
        trial.set_user_attr("job_id", job.id)
        self.scheduler.wake()
        return job.id

    def _poll(self, study, spec: dict, run: TrialRun) -> bool:
        """Report the trial's new values (pruning it if the pruner says so); finish it when its job ended.
        Return whether the trial is over."""
        import optuna

        metric = spec["objective"]["metric"]
        job = self.store.require_job(run.job_id)  # read before the events: an ended job's events are all there
        for stored in self.store.events_after(run.job_id, run.sequence, 1000):
            run.sequence = stored.sequence
            event = stored.event
            if not isinstance(event, ev.Metrics) or metric not in event.values or event.step in run.reported:
                continue
            value = float(event.values[metric])
            if not math.isfinite(value):
                continue
            run.reported.add(event.step)
            run.trial.report(value, event.step)
            self._event(ev.TrialReported(trial=run.number, job_id=run.job_id, step=event.step, value=value))
            # asked also when the job has ended: ASHA records each rung's value as it answers, and the trials
            # after this one compete with those values (an ended job is not stopped, it completes)
            if run.trial.should_prune() and not job.terminal:
                self._cancel(run.job_id, f"pruned by sweep {self.job_id}: trial {run.number}, {metric} {value:.4g} "
                                         f"at step {event.step}")  # fmt: skip
                study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
                self._event(ev.TrialPruned(trial=run.number, job_id=run.job_id, step=event.step, value=value))
                self._event(ev.TrialFinished(trial=run.number, job_id=run.job_id, state="PRUNED", value=value,
                                             reason=f"pruned at step {event.step}"))  # fmt: skip
                return True
        if not job.terminal:
            return False
        value = job.latest_metrics.get(metric)
        if job.state == "SUCCEEDED" and isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(run.trial, float(value))
            self._event(ev.TrialFinished(trial=run.number, job_id=run.job_id, state="COMPLETE", value=float(value)))
            self._maybe_best(study)
            return True
        reason = job.message if job.state != "SUCCEEDED" else f"the trial reported no finite {metric}"
        run.trial.set_user_attr("reason", reason)
        study.tell(run.trial, state=optuna.trial.TrialState.FAIL)
        self._event(ev.TrialFinished(trial=run.number, job_id=run.job_id,
                                     state="FAILED" if job.state != "CANCELLED" else "CANCELLED", reason=reason))
        return True

    def _trials_ending(self) -> bool:
        """Return whether a trial's job has not ended yet (a pruned trial's job writes its checkpoint and stops):
        the sweep ends after its trials' jobs, so that none still holds a device when it has."""
        return any(not job.terminal for job in self.store.list_jobs(sweep_id=self.job_id, limit=MAX_TRIALS_LISTED))

    def _cancel(self, job_id: str, reason: str) -> None:
        try:
            self.scheduler.cancel(job_id, reason)
        except WrongState:  # it ended meanwhile
            pass

    # ------------------------------------------------------------------ results
    def _best(self, study) -> int | None:
        try:
            return study.best_trial.number
        except ValueError:  # no trial completed yet
            return None

    def _maybe_best(self, study) -> None:
        best = self._best(study)
        if best is not None and best != self.best_number:
            self.best_number = best
            trial = study.best_trial
            self._event(ev.SweepBest(trial=best, job_id=trial.user_attrs.get("job_id", ""), value=trial.value,
                                     params=dict(trial.params)))  # fmt: skip

    def _finish(self, study, spec: dict, state: str, message: str) -> None:
        summary = sweep_summary(study, spec, self.store)
        summary["status"] = "completed" if state == "SUCCEEDED" else state.lower()
        best = summary.get("best")
        if state == "SUCCEEDED":
            message = (f"best: trial {best['trial']} ({best['job_id']}) with {spec['objective']['metric']} "
                       f"{best['value']:.4g}" if best else "no trial completed")  # fmt: skip
            message += f"; {count_line(summary['counts'])}"
        job_dir = self.manager.jobs_dir / self.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        self._set_state(state, message, summary=summary)

    def _event(self, event: ev.Event) -> None:
        self.store.append_events(self.job_id, [event])

    def _set_state(self, state: str, reason: str, **extra) -> None:
        self.store.set_state(self.job_id, state, reason, **extra)


def count_line(counts: dict) -> str:
    """Return a summary's trial counts by state as words, e.g. '3 complete, 2 pruned'."""
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no trials"


def sweep_summary(study, spec: dict, store) -> dict:
    """Return a sweep's summary: the table of trials (settings, state, value, job), their number in each state
    (Optuna's: COMPLETE, PRUNED, FAIL, ...) and the best trial's spec."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        steps = sorted(trial.intermediate_values)
        rows.append({
            "trial": trial.number, "job_id": trial.user_attrs.get("job_id", ""), "state": trial.state.name,
            "value": trial.value, "params": dict(trial.params), "last_reported_step": steps[-1] if steps else None,
            "reason": trial.user_attrs.get("reason", ""),
        })  # fmt: skip
    counts = dict(Counter(row["state"] for row in rows))
    summary = {"metric": spec["objective"]["metric"], "direction": spec["objective"]["direction"],
               "method": spec["method"], "trials": rows, "counts": counts}  # fmt: skip
    try:
        best = study.best_trial
    except ValueError:
        return summary
    job = store.get_job(best.user_attrs.get("job_id", ""))
    summary["best"] = {"trial": best.number, "job_id": job.id if job else "", "value": best.value,
                       "params": dict(best.params), "spec": job.spec if job else None}  # fmt: skip
    return summary


class SweepManager:
    """The server's sweeps: submits them, runs a driver thread for each, cancels them with their trials."""

    def __init__(self, store, scheduler, roots: validation.DataRoots, pool, state_dir: Path, init_sources=None,
                 default_track: str = "", jobs_dir: Path | None = None):  # fmt: skip
        self.store, self.scheduler, self.roots, self.pool = store, scheduler, roots, pool
        self.init_sources = init_sources  # resolves a base's init_from (issue 21)
        self.default_track = default_track  # gansvc serve --mlflow-uri: the base's track when it sets none
        self.state_dir = Path(state_dir)
        self.sweeps_dir = self.state_dir / "sweeps"
        self.jobs_dir = Path(jobs_dir) if jobs_dir else self.state_dir / "jobs"  # gansvc serve --jobs-dir
        self._drivers: dict[str, SweepDriver] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        """Resume every queued sweep (interrupted by a shutdown, or requeued after a crash)."""
        for job in self.store.jobs_in_state("QUEUED"):
            if job.kind == "sweep":
                self._drive(job.id)

    def submit(self, message: pb.SweepSpec) -> JobRecord:
        """Check and queue a sweep, and start its driver; return the sweep job (or a retried request's)."""
        request_id = validation.check_request_id("request_id", message.request_id)
        spec = checked_sweep(message, self.roots, self.pool, self.init_sources, self.default_track)
        job, created = self.store.create_job("sweep", spec, request_id, validation.request_hash({"sweep": spec}))
        if created:
            self._drive(job.id)
        return job

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a sweep and its trials (the driver records the trials' end and the sweep's); return the sweep."""
        self.scheduler.cancel(job_id)
        self.cancel_trials(job_id)
        return self.store.require_job(job_id)

    def cancel_trials(self, sweep_id: str) -> None:
        """Cancel every trial job of the sweep that has not ended."""
        for trial in self.store.list_jobs(sweep_id=sweep_id, limit=MAX_TRIALS_LISTED):
            if not trial.terminal:
                try:
                    self.scheduler.cancel(trial.id)
                except WrongState:
                    pass

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every driver (their sweeps go back to QUEUED, to resume on the next start)."""
        with self._lock:
            self._stopped = True
            drivers = list(self._drivers.values())
        for driver in drivers:
            driver.stop_event.set()
        for driver in drivers:
            driver.join(timeout)

    def _drive(self, job_id: str) -> None:
        with self._lock:
            if self._stopped or (job_id in self._drivers and self._drivers[job_id].is_alive()):
                return
            driver = self._drivers[job_id] = SweepDriver(self, job_id)
        driver.start()

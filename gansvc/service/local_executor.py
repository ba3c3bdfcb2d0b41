"""The local executor: each attempt is a worker process of this server (`python -m gansvc.service.worker`).

The worker runs in its own session and process group, with an event pipe (JSON lines, gansvc.runtime.events)
and a control pipe ("stop"); a reader thread per worker decodes its lines and reports them to the scheduler.
One long-lived thread (the scheduler's) starts every worker: Linux ties PR_SET_PDEATHSIG to the thread that
forked.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import gansvc
from gansvc.runtime import events
from gansvc.runtime.process import command_line, kill_if
from gansvc.service.devices import Allocation
from gansvc.service.executor import ATTEMPT_BANNER, Attempt, AttemptListener, Executor
from gansvc.service.store import JobRecord

log = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """Runs each attempt as a worker process on this machine."""

    def start(self, job: JobRecord, job_dir: Path, allocation: Allocation, attempt: int,
              listener: AttemptListener) -> WorkerProcess:  # fmt: skip
        """Start the worker process; return it (OSError when it cannot start)."""
        worker = WorkerProcess(job, job_dir, allocation, listener)
        worker.start(attempt)
        return worker

    def kill_stale(self, job: JobRecord, job_dir: Path) -> bool:
        """SIGKILL the worker a dead server left (the pid the store kept), if that pid is still one of this job."""
        return bool(job.worker_pid) and kill_stale_worker(job.worker_pid, job_dir)


class WorkerProcess(Attempt):
    """One worker: the process, its event and control pipes, and the thread reading its events."""

    def __init__(self, job: JobRecord, job_dir: Path, allocation: Allocation, listener: AttemptListener):
        super().__init__(job, job_dir, allocation)
        self.listener = listener
        self.process: subprocess.Popen | None = None
        self._event_fd = -1
        self._control_fd = -1
        # The control pipe is written by request threads (cancel, drain) and closed once the worker is
        # gone: one lock, so a "stop" never goes to a closed fd or to a file that reused its number.
        self._control_lock = threading.Lock()

    @property
    def pid(self) -> int:
        """Return the worker's process id."""
        return self.process.pid if self.process else 0

    def start(self, attempt: int) -> int:
        """Start the worker process; return its pid."""
        event_read, event_write = os.pipe()
        control_read, control_write = os.pipe()
        env = dict(os.environ)
        env.update(self.allocation.worker_env())
        # The worker imports the same gansvc as this server, installed or not.
        package_parent = str(Path(gansvc.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if env.get("GANSVC_CACHE_DIR"):  # workers run in their job directories: a relative cache would not be shared
            env["GANSVC_CACHE_DIR"] = str(Path(env["GANSVC_CACHE_DIR"]).expanduser().resolve())
        command = [
            sys.executable, "-m", "gansvc.service.worker", "--job-dir", str(self.job_dir),
            "--event-fd", str(event_write), "--control-fd", str(control_read), "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        try:
            with open(self.job_dir / "worker.log", "ab") as log:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"\n{ATTEMPT_BANNER}{attempt} on {self.allocation.label}, {stamp} =====\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(event_write, control_read),
                    start_new_session=True,  # the terminal's Ctrl-C is for the server, which stops jobs cleanly
                    env=env,
                    cwd=self.job_dir,
                )
        except BaseException:
            for fd in (event_read, control_write):
                os.close(fd)
            raise
        finally:
            os.close(event_write)
            os.close(control_read)
        self._event_fd, self._control_fd = event_read, control_write
        return self.process.pid

    def watch(self) -> None:
        """Start the thread that relays the worker's events and reports its exit."""
        threading.Thread(target=self._read_events, name=f"gansvc-events-{self.job_id}", daemon=True).start()

    def _send_stop(self) -> None:
        """Write "stop" down the worker's control pipe."""
        with self._control_lock:
            if self._control_fd < 0:  # already gone: its exit finishes the job
                return
            try:
                os.write(self._control_fd, b"stop\n")
            except OSError:  # exiting: its exit finishes the job
                pass

    def close(self) -> None:
        """Close the control pipe (the worker has exited); later stop requests do nothing."""
        with self._control_lock:
            fd, self._control_fd = self._control_fd, -1
        if fd >= 0:
            os.close(fd)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (its own process group)."""
        self.killed = True
        process = self.process
        if process is None or process.poll() is not None:
            return
        # poll() said it runs, and only this object reaps it: the pid is still the worker's.
        kill_if(process.pid, lambda pid: process.returncode is None, group=True)

    def _read_events(self) -> None:
        buffer = b""
        try:
            while True:
                ready, _, _ = select.select([self._event_fd], [], [], 1.0)
                if not ready:
                    # A grandchild holding the pipe must not keep a dead worker's job RUNNING.
                    if self.process.poll() is not None:
                        break
                    continue
                chunk = os.read(self._event_fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                self._record(lines)
            if buffer.strip():
                self._record([buffer])
        except Exception:  # a store failure must not leave the job RUNNING forever
            log.exception("reading the events of %s failed", self.job_id)
            self.kill()
        finally:
            returncode = self.process.wait()
            os.close(self._event_fd)
            # The control pipe stays open until worker_exited has removed this worker under the
            # scheduler's lock (which then calls close, under the worker's own lock: see request_stop).
            self.listener.worker_exited(self, returncode)

    def _record(self, lines: list[bytes]) -> None:
        batch = []
        for line in lines:
            if not line.strip():
                continue
            event = events.decode(line)  # typed and coerced; a bad line becomes a Log quoting it
            if isinstance(event, (events.Finished, events.Failed)):
                self.final = event
            elif event.stored:
                batch.append(event)
        if batch:
            self.listener.worker_events(self, batch)


def kill_stale_worker(pid: int, job_dir: Path, timeout: float = 10.0) -> bool:
    """SIGKILL a worker of `job_dir` left by a dead server, if that pid is still one; return whether one was."""

    def is_its_worker(pid: int) -> bool:
        # The pid may belong to some other process by now: only a worker of this job directory is killed.
        command = command_line(pid)
        return bool(command) and b"gansvc.service.worker" in command and str(job_dir).encode() in command

    return kill_if(pid, is_its_worker, group=True, wait=timeout)

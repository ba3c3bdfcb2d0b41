"""Start a training run on several processes (and nodes) with torchrun, and see it through to one clear ending.

`launch(config, args)` runs `python -m torch.distributed.run <config> -m gansvc.train <args>` as a
child process group and waits for it. Around torchrun it adds what a user and the service need:

- one answer: exit code 0, or the failing rank with its error and exit code (`RankFailure`), not a
  wall of tracebacks from every rank — each rank writes its failure to GANSVC_LAUNCH_DIR/failures
  and the earliest one is the cause; the others were torn down because of it;
- no orphans: torchrun tears the other ranks down when one fails; beyond that each rank dies with
  the torchrun agent and the agent with this process (Linux PR_SET_PDEATHSIG), and whatever rank is
  still alive when the agent ends is killed here;
- a graceful stop: `should_stop()` (or a first Ctrl-C with `forward_signals`) creates the `stop` file
  that every rank polls; the ranks agree on a step, rank 0 writes a checkpoint and they exit 0.
  A second Ctrl-C, or SIGTERM, is forwarded to torchrun, which stops the ranks at once;
- events: with `on_event`, rank 0's trainer events arrive here over a Unix socket.

Multi-node: run the same command on every node with `nnodes`, `rdzv_endpoint` (host:port of one node,
which hosts the c10d store) and the same `rdzv_id`; see docs/distributed.md.

`python -m gansvc.train.launch --parent-pid PID -- TORCHRUN-ARGS` is the agent process itself:
torchrun's own `run()` after tying itself to its parent (not for direct use).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gansvc.atomic import atomic_write_text
from gansvc.runtime import process
from gansvc.runtime.events import Event
from gansvc.train.errors import DistributedRunFailed, FailureKind, RankFailure
from gansvc.train.sidechannel import (
    ENV_AGENT_PID, ENV_EVENT_SOCKET, ENV_LAUNCH_DIR, EventServer, is_consequential, rank_failure, read_failures,
)  # fmt: skip
from gansvc.train.world import launched_by_torchrun

__all__ = [
    "DistributedRunFailed", "FailureKind", "LaunchConfig", "LaunchResult", "RankFailure", "launch",
    "launched_by_torchrun",
]  # fmt: skip

SHUTDOWN_TIMEOUT = 15  # seconds torchrun gives ranks to exit after SIGTERM before SIGKILL
POLL_SECONDS = 0.1


@dataclass
class LaunchConfig:
    """How torchrun starts the ranks: processes on this node and, for several nodes, the c10d rendezvous."""

    nproc_per_node: int = 1
    nnodes: str = "1"  # "N" or "MIN:MAX"
    rdzv_endpoint: str = ""  # host:port of the rendezvous (several nodes); "" = a private one on this node
    rdzv_id: str = "gansvc-train"  # the same on every node of one run
    local_addr: str = ""  # this node's address as the other nodes reach it ("" = torchrun's guess)
    shutdown_timeout: int = SHUTDOWN_TIMEOUT
    # >= 0: a static rendezvous instead of c10d's: this node is node `node_rank` of exactly `nnodes`, node 0 hosts
    # the store at rdzv_endpoint and holds global rank 0 (the Ray backend: rank 0 beside the actor that relays)
    node_rank: int = -1

    def validate(self) -> LaunchConfig:
        """Return self, or raise ValueError naming the bad option and its value."""
        if self.nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node: got {self.nproc_per_node}, expected >= 1")
        parts = self.nnodes.split(":")
        if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts) or int(parts[0]) > int(parts[-1]):
            raise ValueError(f"--nnodes: got {self.nnodes!r}, expected N or MIN:MAX with 1 <= MIN <= MAX")
        if self.max_nodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"--rdzv-endpoint: {self.nnodes} nodes need the HOST:PORT of a rendezvous all nodes reach "
                "(e.g. the first node's address and a free port)"
            )
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"--rdzv-endpoint: got {self.rdzv_endpoint!r}, expected HOST:PORT")
        if self.node_rank >= 0 and not (self.nnodes.isdigit() and self.node_rank < int(self.nnodes)):
            raise ValueError(f"--node-rank: got {self.node_rank}, expected 0 <= rank < a fixed number of nodes "
                             f"(--nnodes {self.nnodes})")  # fmt: skip
        if not self.rdzv_id or any(c.isspace() for c in self.rdzv_id):
            raise ValueError(f"--rdzv-id: got {self.rdzv_id!r}, expected a non-empty name without spaces")
        return self

    @property
    def max_nodes(self) -> int:
        """Return the largest number of nodes this run may have."""
        return int(self.nnodes.split(":")[-1])

    def torchrun_args(self) -> list[str]:
        """Return torchrun's options for this configuration."""
        args = [f"--nproc-per-node={self.nproc_per_node}", "--max-restarts=0",
                f"--shutdown-timeout={self.shutdown_timeout}"]  # fmt: skip
        if self.rdzv_endpoint and self.node_rank >= 0:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            args += [f"--nnodes={self.nnodes}", "--rdzv-backend=static", f"--node-rank={self.node_rank}",
                     f"--master-addr={host}", f"--master-port={port}", f"--rdzv-id={self.rdzv_id}"]  # fmt: skip
        elif self.rdzv_endpoint:
            args += [f"--nnodes={self.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}",
                     f"--rdzv-id={self.rdzv_id}"]  # fmt: skip
        else:
            args.append("--standalone")  # a c10d store on a free port of this node: runs never collide
        if self.local_addr:
            args.append(f"--local-addr={self.local_addr}")
        return args


@dataclass
class LaunchResult:
    """How a launched run ended: exit code 0 (finished or stopped on request) or the failure that ended it."""

    exit_code: int
    failure: RankFailure | None = None
    interrupted: bool = False  # ended by a forwarded SIGINT/SIGTERM, not by itself
    seconds: float = 0.0
    events: int = 0  # events received from rank 0
    swept: list[int] = field(default_factory=list)  # pids of ranks still alive after torchrun, killed here


def launch(
    config: LaunchConfig,
    module_args: list[str],
    *,
    module: str = "gansvc.train",
    env: dict[str, str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    forward_signals: bool = False,
    cwd: str | os.PathLike | None = None,
    stdout=None,
    stderr=None,
) -> LaunchResult:
    """Run `python -m <module> <module_args>` on every rank under torchrun; return how it ended.

    env: the ranks' environment (default: this process's). on_event: called here with each event rank 0's
    trainer emits (a gansvc.runtime.events.Event). should_stop: polled; when true the ranks checkpoint and stop.
    forward_signals (main thread only): a first SIGINT stops gracefully, a second SIGINT or a SIGTERM aborts
    the ranks.
    The call returns only when the agent and every rank it started are gone.
    """
    config.validate()
    started = time.monotonic()
    control = Path(tempfile.mkdtemp(prefix="gansvc-launch-"))
    (control / "failures").mkdir()
    (control / "pids").mkdir()
    child_env = dict(os.environ if env is None else env)
    child_env[ENV_LAUNCH_DIR] = str(control)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun would set OMP_NUM_THREADS=1 with a warning; the trainer sets its own thread count per rank.
    child_env.setdefault("OMP_NUM_THREADS", "1")
    package_parent = str(Path(__file__).resolve().parents[2])  # the ranks import this same gansvc
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, child_env.get("PYTHONPATH", "")) if p)
    events = EventServer(on_event) if on_event is not None else None
    if events is not None:
        child_env[ENV_EVENT_SOCKET] = events.address
    command = [
        sys.executable, "-m", "gansvc.train.launch", "--parent-pid", str(os.getpid()), "--",
        # torchrun's per-run folders go under the control folder, which is removed at the end (without
        # --log-dir every run leaves a torchelastic_* folder in the system's temp directory)
        *config.torchrun_args(), "--log-dir", str(control / "torchrun"), "-m", module, *module_args,
    ]  # fmt: skip
    stop_file = control / "stop"
    state = {"interrupts": 0, "terminate": None}
    previous = {}

    def on_signal(signum, frame):
        if signum == signal.SIGINT and state["interrupts"] == 0:
            state["interrupts"] += 1
            stop_file.touch()
            print("\ngansvc train: stopping every rank after this step and writing a checkpoint "
                  "(Ctrl-C again to abort)", file=sys.stderr)  # fmt: skip
            return
        state["terminate"] = signum

    agent = None
    try:
        if forward_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        agent = subprocess.Popen(
            command, env=child_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True,  # a terminal's Ctrl-C comes here first; the ranks stop by the stop file
        )  # fmt: skip
        terminated_at = None
        while agent.poll() is None:
            if should_stop is not None and not stop_file.exists() and should_stop():
                stop_file.touch()
            if state["terminate"] is not None and terminated_at is None:
                terminated_at = time.monotonic()
                process.signal_group(agent.pid, signal.SIGTERM)
            if terminated_at is not None and time.monotonic() - terminated_at > config.shutdown_timeout + 10:
                process.signal_group(agent.pid, signal.SIGKILL)
            time.sleep(POLL_SECONDS)
        exit_code = agent.returncode
    except BaseException:
        if agent is not None and agent.poll() is None:
            process.signal_group(agent.pid, signal.SIGKILL)  # the ranks die with it (parent-death signal), or are swept
            agent.wait()
        _sweep_ranks(control / "pids")
        shutil.rmtree(control, ignore_errors=True)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        swept = _sweep_ranks(control / "pids")
        if events is not None:
            events.close()
    result = LaunchResult(
        exit_code=exit_code, interrupted=state["terminate"] is not None, seconds=time.monotonic() - started,
        events=events.count if events is not None else 0, swept=swept,
    )  # fmt: skip
    if exit_code != 0:
        result.failure = _first_failure(control)
        if result.failure is not None and result.failure.exit_code > 0:
            result.exit_code = result.failure.exit_code
        elif result.interrupted:
            result.exit_code = 128 + int(state["terminate"])
    shutil.rmtree(control, ignore_errors=True)
    return result


def _sweep_ranks(pids_dir: Path) -> list[int]:
    """SIGKILL every rank registered in pids_dir that is still alive; return their pids."""
    try:
        pids = [int(entry.name) for entry in pids_dir.iterdir() if entry.name.isdigit()]
    except OSError:
        return []
    marker = str(pids_dir.parent).encode()  # every rank's environment names this launch's folder

    def ours(pid: int) -> bool:  # the pid may have been reused by some other process since
        environ = process.environment(pid)
        return bool(environ) and marker in environ and bool(process.command_line(pid))

    return [pid for pid in pids if process.kill_if(pid, ours)]


def _first_failure(control: Path) -> RankFailure | None:
    """Return the failure that ended a run: the cause, not the errors it provoked in the other ranks.

    In order: the earliest error a rank recorded that is not a lost peer; else the earliest rank that
    torchrun saw die without recording anything (a signal such as the out-of-memory killer's, or a
    crash), ranks torchrun itself terminated (SIGTERM) last; else the earliest lost-peer error (gloo's
    "connection closed by peer", NCCL aborts, timeouts).
    """
    records = read_failures(control)
    causes = [r for r in records if not is_consequential(r)]
    if causes:
        return rank_failure(min(causes, key=lambda r: (r.get("time", 0.0), r.get("rank", 0))))
    try:
        agent = json.loads((control / "agent.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        agent = {}
    recorded = {r.get("rank") for r in records}
    silent = [f for f in agent.get("failures") or [] if f.get("rank") not in recorded]
    if silent:
        # SIGTERM is what torchrun sends the survivors when it tears a failed run down (and its
        # timestamps are whole seconds): a rank it killed is not the cause when another one died
        first = min(silent, key=lambda f: (f.get("exit_code") == -signal.SIGTERM, f.get("time", 0.0), f.get("rank", 0)))
        return RankFailure(rank=first.get("rank"), exit_code=int(first.get("exit_code", 1)),
                           message=first.get("message", ""))  # fmt: skip
    if records:
        return rank_failure(min(records, key=lambda r: (r.get("time", 0.0), r.get("rank", 0))))
    return None


# ---------------------------------------------------------------------- the agent process
def _agent_main(argv: list[str]) -> int:
    """Run torchrun's agent tied to the launching process; return torchrun's exit code, quietly on failure."""
    if len(argv) < 3 or argv[0] != "--parent-pid" or argv[2] != "--":
        print("usage: python -m gansvc.train.launch --parent-pid PID -- TORCHRUN-ARGS", file=sys.stderr)
        return 2
    process.die_with_parent(int(argv[1]))
    os.environ[ENV_AGENT_PID] = str(os.getpid())  # ranks inherit it and die with this process
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv[3:]))
        return 0
    except ChildFailedError as error:
        # The ranks' own records say why; keep torchrun's view for ranks that died without a word.
        failures = [
            {"rank": rank, "exit_code": failure.exitcode, "time": failure.timestamp,
             "message": _agent_message(failure)}
            for rank, failure in error.failures.items()
        ]  # fmt: skip
        folder = os.environ.get(ENV_LAUNCH_DIR)
        if folder:
            atomic_write_text(Path(folder, "agent.json"), json.dumps({"failures": failures}))
        return 1
    except SignalException as error:
        return 128 + int(error.sigval)


def _agent_message(failure) -> str:
    if failure.exitcode < 0:  # RankFailure.describe() names the signal
        return "most likely the out-of-memory killer" if failure.exitcode == -signal.SIGKILL else ""
    message = failure.message if isinstance(failure.message, str) else json.dumps(failure.message)
    return message if message and "To enable traceback" not in message else ""


if __name__ == "__main__":
    sys.exit(_agent_main(sys.argv[1:]))

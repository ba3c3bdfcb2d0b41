"""The process that runs one job (`python -m gansvc.service.worker`), started by the server's scheduler.

It reads its job from JOB_DIR/worker_input.json, runs the real Trainer (or an evaluation) and sends
every event as one JSON line on --event-fd; the last line is {"type": "finished", ...} or
{"type": "failed", "reason": ...}. The server sends "stop" on --control-fd to make a training run
write a checkpoint and return (cancel, server shutdown).

It never outlives its server: the kernel kills it when the server's thread that started it dies
(PR_SET_PDEATHSIG, Linux), it exits at once when the control pipe reaches end-of-file (the server's
end closes however the server dies), and a flock on the job directory keeps a second worker off the
same run directory until the first one is gone.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from gansvc.runtime import events
from gansvc.runtime.process import EXIT_ORPHANED, die_with_parent

LOCK_TIMEOUT_SECONDS = 120.0


class EventChannel:
    """Sends typed events to the server as JSON lines on a pipe; a closed pipe means the server is gone."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, event: events.Event) -> None:
        """Write one typed event."""
        data = events.encode(event)
        with self.lock:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
            except OSError:  # BrokenPipeError included
                os._exit(EXIT_ORPHANED)


class StopRequests:
    """Reads the server's control pipe: 'stop' sets the flag; end-of-file means the server died."""

    def __init__(self, fd: int):
        self.flag = threading.Event()
        self._fd = fd
        thread = threading.Thread(target=self._read, name="gansvc-control", daemon=True)
        thread.start()

    def _read(self) -> None:
        with os.fdopen(self._fd, "rb", buffering=0) as pipe:
            buffer = b""
            while True:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if any(line.strip() == b"stop" for line in lines):
                    self.flag.set()
        # The server's end closed without a word: it died. Stop at once; its successor resumes the
        # job from the last checkpoint (a checkpoint written now could race with that successor).
        os._exit(EXIT_ORPHANED)

    def is_set(self) -> bool:
        """Return whether the server asked this job to stop."""
        return self.flag.is_set()


def lock_run_dir(job_dir: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> int:
    """Take the job directory's lock (waiting while an older worker of the job still exits); return its fd."""
    fd = os.open(job_dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another worker still holds {job_dir}/worker.lock after {timeout:.0f} s") from None
            time.sleep(0.2)


def run_training(job: dict, job_dir: Path, channel: EventChannel, stop: StopRequests, node_rank: int = 0,
                 rdzv_endpoint: str = "") -> dict:  # fmt: skip
    """Run the Trainer on the job's spec in the job directory; return its summary."""
    from gansvc.train import Trainer, TrainSpec

    spec = TrainSpec.from_dict(job["spec"])
    if spec.nproc > 1 or spec.nnodes > 1:
        return run_distributed_training(spec, job_dir, channel, stop, node_rank, rdzv_endpoint)
    # The trainer's events (a resume announces itself with a Log carrying resume_step) go out as they come.
    return Trainer(spec, job_dir, on_event=channel.send, should_stop=stop.is_set).run()


def run_distributed_training(spec, job_dir: Path, channel: EventChannel, stop: StopRequests, node_rank: int = 0,
                             rdzv_endpoint: str = "") -> dict:  # fmt: skip
    """Run the job on spec.nproc processes with torchrun on this worker's devices; return rank 0's summary.

    The devices are the allocation's (CUDA_VISIBLE_DEVICES is already this process's): rank r takes
    the r-th visible GPU, or is a CPU process with gloo. Rank 0's events come back over a local socket;
    a stop request becomes a checkpoint-and-stop of every rank. A failing rank raises
    DistributedRunFailed naming it and its error, after torchrun has torn the other ranks down.

    With spec.nnodes > 1 (the Ray backend: one worker per node) this worker is node `node_rank` of a static
    rendezvous at `rdzv_endpoint` on node 0, which holds global rank 0: node 0's worker relays the events and
    alone writes the run directory (through rank 0); another node's worker returns a summary of its own.
    """
    from gansvc.atomic import atomic_write_text
    from gansvc.train.errors import DistributedRunFailed
    from gansvc.train.launch import LaunchConfig, launch

    config = LaunchConfig(nproc_per_node=spec.nproc)
    spec_file = job_dir / "rank_spec.json"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    where = f"GPUs {devices}" if devices else "CPU processes (gloo)"
    if spec.nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes {spec.nnodes}: this worker was given no rendezvous (the Ray backend's)")
        config = LaunchConfig(nproc_per_node=spec.nproc, nnodes=str(spec.nnodes), rdzv_endpoint=rdzv_endpoint,
                              rdzv_id=job_dir.name, node_rank=node_rank)  # fmt: skip
        where += f", node {node_rank} of {spec.nnodes} (rendezvous at {rdzv_endpoint})"
        if node_rank:  # the same spec; a file of its own, so that no two nodes write one file
            spec_file = job_dir / f"rank_spec.node{node_rank}.json"
    atomic_write_text(spec_file, json.dumps(spec.to_dict(), indent=2) + "\n")
    channel.send(_log(f"starting {spec.nproc} processes with torchrun on {where}"))
    result = launch(
        config, ["--spec", str(spec_file), "--out", str(job_dir), "--quiet"],
        on_event=channel.send, should_stop=stop.is_set, cwd=job_dir,
    )  # fmt: skip
    if result.exit_code != 0:
        raise DistributedRunFailed(result)
    if node_rank:  # rank 0, on node 0, writes summary.json (maybe after this node's ranks have exited)
        return {"status": "completed", "node_rank": node_rank, "stopped": stop.is_set()}
    return json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))


def run_evaluation(job: dict, job_dir: Path, channel: EventChannel, stop: StopRequests) -> dict:
    """Score a checkpoint's samples or uploaded images with gansvc.metrics.evaluate; return the result."""
    import numpy as np

    spec, device = job["spec"], job["device"]
    # Uploaded images are read before torch is imported: a missing upload fails in a fraction of a second.
    uploaded = np.load(spec["samples_file"]) if spec["source"] != "checkpoint" else None
    import torch

    from gansvc.atomic import atomic_write_text
    from gansvc.metrics import evaluate

    step = 0
    if spec["source"] == "checkpoint":
        from gansvc.service.artifacts import best_file, checkpoint_file
        from gansvc.train.sampling import generate, load_generator

        source_dir = Path(job["source_run_dir"])
        path = best_file(source_dir) if spec.get("best") else checkpoint_file(source_dir, int(spec["step"]))
        step = int(spec["step"]) or _generator_step(path)
        name = path.relative_to(source_dir).as_posix()
        channel.send(_log(f"generating {spec['num_samples']} images from {spec['job_id']}/{name} (step {step})"))
        generator, _ = load_generator(path, device)
        labels = _checkpoint_labels(generator, spec)
        fake = generate(generator, int(spec["num_samples"]), int(spec.get("seed", 0)), device, labels=labels)
    else:
        fake = torch.from_numpy(uploaded)
        labels = torch.tensor(spec["sample_labels"], dtype=torch.int64) if spec.get("sample_labels") else None
    if stop.is_set():
        return {"status": "stopped", "stopped": True}
    channel.send(_log(f"scoring {fake.shape[0]} images against {spec['real']} with {spec['extractor']}"))
    result = evaluate(
        fake,
        real=spec["real"],
        extractor=spec["extractor"],
        data_root=spec.get("data_root") or None,
        inception_weights=spec.get("inception_weights") or None,
        device=device,
        n_real=spec.get("num_real"),
        progress=False,
        precision_recall=bool(spec.get("precision_recall", False)),
        bootstrap=int(spec.get("bootstrap", 0)),
    )
    if labels is not None:  # a conditional checkpoint or labelled uploads: intra-class FID, class agreement
        result.update(_per_class_scores(fake, labels, spec, device, channel))
    values = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    channel.send(events.Metrics(step=step, values=values))
    summary = events.to_dict(events.Finished(summary={"status": "completed", "stopped": False, "step": step, **result}))
    atomic_write_text(job_dir / "result.json", json.dumps(summary["summary"], indent=2) + "\n")
    return summary["summary"]


def _checkpoint_labels(generator, spec: dict):
    """Return the labels to generate a conditional checkpoint's samples with (None: unconditional)."""
    import torch

    from gansvc.train.conditional import check_class, sample_labels

    count = getattr(generator, "num_classes", 0)
    classes = spec.get("class_labels") or []
    if not classes:
        return sample_labels(generator, int(spec["num_samples"]), int(spec.get("seed", 0)))
    for label in classes:
        check_class(label, count, "class_labels")
    n = int(spec["num_samples"])
    return torch.tensor(classes, dtype=torch.int64).repeat(n // len(classes) + 1)[:n]


def _per_class_scores(fake, labels, spec: dict, device: str, channel: EventChannel) -> dict:
    """Return intra-class FID and class agreement where the real side is a labelled data set, else say why not."""
    from gansvc.metrics.per_class import evaluate_per_class
    from gansvc.metrics.reference import NoClassLabels

    channel.send(_log(f"scoring {fake.shape[0]} images per class against {spec['real']}"))
    try:
        scores = evaluate_per_class(
            fake, labels, spec["real"], spec["extractor"], data_root=spec.get("data_root") or None,
            inception_weights=spec.get("inception_weights") or None, device=device,
        )  # fmt: skip
    except NoClassLabels as error:
        channel.send(_log(f"no per-class scores: {error}", "warning"))
        return {}
    # per-class dicts with string keys: the summary is JSON
    return {k: ({str(c): v for c, v in value.items()} if isinstance(value, dict) else value)
            for k, value in scores.items()}  # fmt: skip


def _generator_step(path: Path) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state.get("step", 0)) if isinstance(state, dict) else 0


def _log(message: str, level: str = "info") -> events.Log:
    return events.Log(level=level, message=message)


def failure_reason(error: BaseException) -> str:
    """Return a one-line reason for a failed job, in a user's words, by the error's FailureKind
    (a distributed run's failure names the rank)."""
    from gansvc.train.errors import DistributedRunFailed, FailureKind, failure_kind

    kind = failure_kind(error)
    failure = error.failure if isinstance(error, DistributedRunFailed) else None
    if isinstance(error, DistributedRunFailed) and failure is None:
        return f"the distributed run failed (torchrun exit code {error.result.exit_code}) without a rank saying why"
    text = failure.message if failure is not None else str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text or type(error).__name__
    where = "" if failure is None else f" on rank {failure.rank}" if failure.rank is not None else " on a rank"
    if kind is FailureKind.DIVERGED:
        return text if "diverged" in text else f"training diverged{where}: {text}"
    if kind is FailureKind.GPU_OUT_OF_MEMORY:
        return f"out of GPU memory{where}: {text}"
    if kind is FailureKind.HOST_OUT_OF_MEMORY:
        return f"out of memory (host RAM){where}"
    if kind is FailureKind.INVALID_SPEC:
        return f"invalid spec: {text}"
    if failure is not None:
        return failure.describe()
    if isinstance(error, FileNotFoundError):
        return text
    return f"{type(error).__name__}: {text}"


def process_died(error: BaseException) -> bool:
    """Return whether the job ended because one of its processes was killed (a rank of a distributed run, by a
    signal): the scheduler then retries it from the last checkpoint like a worker that died."""
    from gansvc.train.errors import DistributedRunFailed

    return isinstance(error, DistributedRunFailed) and error.process_died


def main(argv: list[str] | None = None) -> int:
    """Run the job of --job-dir; return the process exit code (0 finished, 1 failed)."""
    parser = argparse.ArgumentParser(prog="python -m gansvc.service.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--event-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    # a job across nodes (spec.nnodes > 1, the Ray backend): this worker's node and the rendezvous on node 0
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--rdzv-endpoint", default="")
    args = parser.parse_args(argv)

    die_with_parent(args.parent_pid)
    stop = StopRequests(args.control_fd)
    # systemd and `kill` on the process group send SIGTERM to every process: treat it as "stop", so
    # the run still checkpoints. The terminal's SIGINT is the server's to handle.
    signal.signal(signal.SIGTERM, lambda *_: stop.flag.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = EventChannel(args.event_fd)
    try:
        if args.node_rank == 0:  # only node 0's worker (the one whose rank 0 writes the run directory) holds it
            lock_run_dir(args.job_dir)
        job = json.loads((args.job_dir / "worker_input.json").read_text(encoding="utf-8"))
        channel.send(events.Hello(pid=os.getpid()))
        if job["kind"] == "training":
            summary = run_training(job, args.job_dir, channel, stop, args.node_rank, args.rdzv_endpoint)
        else:
            summary = run_evaluation(job, args.job_dir, channel, stop)
        channel.send(events.Finished(stopped=bool(summary.get("stopped")), summary=summary))
        return 0
    except BaseException as error:  # noqa: BLE001 - every failure is reported, then the process ends
        traceback.print_exc()
        sys.stderr.flush()
        reason = failure_reason(error) if isinstance(error, Exception) else f"{type(error).__name__}"
        channel.send(events.Failed(reason=reason, error=type(error).__name__, died=process_died(error)))
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`gansvc serve | submit | watch | jobs | samples | cancel` (and `download`, `health`): the service's commands.

Client commands find the server with --server (or $GANSVC_SERVER, default 127.0.0.1:50051) and a token
with --token-file (or $GANSVC_TOKEN_FILE / $GANSVC_TOKEN); --tls-ca (or $GANSVC_TLS_CA) switches to TLS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from gansvc.cli import UsageError

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_STATE_DIR = "runs/service"
CLIENT_COMMANDS = ("submit", "watch", "jobs", "samples", "cancel", "download", "health")


# ---------------------------------------------------------------------- arguments
def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the options of command `name` to its parser."""
    if name == "serve":
        _serve_arguments(parser)
        return
    _client_arguments(parser)
    if name == "submit":
        _submit_arguments(parser)
    elif name == "watch":
        parser.add_argument("job", help="job id")
        parser.add_argument("--after", type=int, default=0, metavar="N", help="start after event N (default: all)")
        parser.add_argument("--json", action="store_true", help="print each event as one JSON line, no bar")
    elif name == "jobs":
        parser.add_argument(
            "--state",
            action="append",
            default=[],
            metavar="STATE",
            help="only jobs in this state (repeatable): queued, running, succeeded, failed, cancelled",
        )
        parser.add_argument("--kind", choices=("training", "evaluation"), help="only this kind of job")
        parser.add_argument("--limit", type=int, default=20, help="at most this many jobs, newest first (default 20)")
        parser.add_argument("--json", action="store_true", help="print the jobs as JSON lines")
    elif name == "samples":
        parser.add_argument("job", help="job id")
        parser.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
        parser.add_argument("--step", type=int, default=0, help="a checkpoint / grid step (default: the latest)")
        parser.add_argument("--seed", type=int, help="generate fresh images with this noise seed")
        parser.add_argument("--count", type=int, help="generate this many images (default 64)")
        parser.add_argument("--nrow", type=int, default=0, help="images per row of a generated grid")
        parser.add_argument(
            "--tensor", type=Path, metavar="FILE.npy", help="also save the raw images (float32, [-1, 1])"
        )
    elif name == "cancel":
        parser.add_argument("job", help="job id")
        parser.add_argument(
            "--no-wait", action="store_true", help="return at once instead of waiting for the job to stop"
        )
    elif name == "download":
        parser.add_argument("job", help="job id")
        parser.add_argument("name", nargs="?", help="artifact, e.g. generator.pt or checkpoints/latest.pt")
        parser.add_argument("-o", "--output", type=Path, help="file to write (default: the artifact's file name)")
        parser.add_argument("--list", action="store_true", help="list the job's artifacts instead")
    elif name == "health":
        parser.add_argument("--service", default="", help="service name to ask about (default: the server)")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:50051; port 0 picks a free one)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("GANSVC_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"jobs database and run directories (default $GANSVC_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--devices",
        default="cpu",
        help="GPUs jobs may use: cpu (none), all, or a list like cuda:0,cuda:1 (default cpu)",
    )
    parser.add_argument("--cpu-jobs", type=int, default=1, help="CPU jobs run at the same time (default 1)")
    parser.add_argument(
        "--data-root",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder clients may name data paths in (repeatable); paths elsewhere are refused",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        default=os.environ.get("GANSVC_AUTH_TOKEN_FILE") or None,
        help="accepted bearer tokens, one per line (default $GANSVC_AUTH_TOKEN_FILE; none = no auth)",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--max-message-mb", type=int, default=64, help="largest message in or out (default 64 MiB)")
    parser.add_argument("--max-watchers", type=int, default=64, help="concurrent WatchJob streams (default 64)")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        help="seconds running jobs get to checkpoint on SIGTERM before they are killed (default 60)",
    )
    parser.add_argument(
        "--cancel-timeout",
        type=float,
        default=120.0,
        help="seconds a cancelled job gets to checkpoint before it is killed (default 120)",
    )
    parser.add_argument(
        "--allow-unauthenticated", action="store_true", help="listen beyond loopback without --auth-token-file"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {address, port, pid} as JSON here once serving (for scripts using port 0)",
    )


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("GANSVC_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"the service (default $GANSVC_SERVER or {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("GANSVC_TOKEN_FILE") or None,
        help="file whose first line is the bearer token (default $GANSVC_TOKEN_FILE, or the token in $GANSVC_TOKEN)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("GANSVC_TLS_CA") or None,
        help="CA certificate (PEM) to verify the server with: use TLS (default $GANSVC_TLS_CA)",
    )
    group.add_argument(
        "--tls-server-name",
        default=os.environ.get("GANSVC_TLS_SERVER_NAME") or None,
        help="name the server certificate must carry, if not its address (default $GANSVC_TLS_SERVER_NAME)",
    )
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    from gansvc.service.messages import training_spec_fields

    parser.add_argument("--spec", type=Path, help="training spec file (.json or .toml); flags override its values")
    parser.add_argument("--request-id", help="makes a retried submit return the same job")
    parser.add_argument("--watch", action="store_true", help="follow the job until it ends (as `gansvc watch`)")
    group = parser.add_argument_group("training settings (TrainSpec fields; unset ones take the trainer's defaults)")
    types = {FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_FLOAT: float}
    for name, descriptor in training_spec_fields().items():
        if descriptor.type == FieldDescriptor.TYPE_BOOL:
            group.add_argument(_option(name), dest=f"spec_{name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(
                _option(name),
                dest=f"spec_{name}",
                type=types.get(descriptor.type, int),
                default=None,
                metavar=name.upper(),
            )
    evaluation = parser.add_argument_group("evaluation instead of training (uses --data-root, --seed, --device too)")
    evaluation.add_argument("--evaluate", metavar="JOB", help="score this training job's checkpoint (FID, IS, KID)")
    evaluation.add_argument(
        "--evaluate-images",
        type=Path,
        metavar="PATH",
        help="score these images: a folder of PNGs or a .npy [N, C, H, W] file",
    )
    evaluation.add_argument("--step", type=int, default=0, help="checkpoint step of --evaluate (default: the latest)")
    evaluation.add_argument("--real", default="", help="reference data set and split (default fashion-mnist:test)")
    evaluation.add_argument("--extractor", default="", help="fmnist-cnn (default) or inception-v3")
    evaluation.add_argument("--inception-weights", default="", help="Inception weights file under a data root")
    evaluation.add_argument("--num-samples", type=int, help="images generated from the checkpoint (default 5000)")
    evaluation.add_argument("--num-real", type=int, help="reference images used (default: the whole split)")


# ---------------------------------------------------------------------- dispatch
def run(name: str, args) -> int:
    """Run command `name`; return its exit code."""
    if name == "serve":
        return serve(args)
    import grpc

    try:
        with _connect(args) as client:
            return {
                "submit": submit, "watch": watch, "jobs": jobs, "samples": samples, "cancel": cancel,
                "download": download, "health": health,
            }[name](client, args)  # fmt: skip
    except grpc.RpcError as error:
        code = error.code()
        print(f"gansvc {name}: {code.name if code else 'error'}: {error.details()}", file=sys.stderr)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return 2
        return 1


def _connect(args):
    from gansvc.client import GanClient

    token = os.environ.get("GANSVC_TOKEN")
    if args.token_file:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError) as error:
            raise UsageError(f"--token-file {args.token_file}: cannot read a token ({error})") from None
    ca = None
    if args.tls_ca:
        if not args.tls_ca.is_file():
            raise UsageError(f"--tls-ca {args.tls_ca}: no such file")
        ca = args.tls_ca.read_bytes()
    return GanClient(args.server, token=token, tls_ca=ca, tls_server_name=args.tls_server_name, timeout=args.timeout)


# ---------------------------------------------------------------------- serve
def serve(args) -> int:
    """Run the server until SIGTERM / SIGINT; return 0 after a clean shutdown."""
    from gansvc.atomic import atomic_write_text
    from gansvc.service.server import GanServer, ServerConfig

    config = ServerConfig(
        state_dir=args.state_dir, listen=args.listen, devices=args.devices, cpu_jobs=args.cpu_jobs,
        data_roots=args.data_root, auth_token_file=args.auth_token_file, tls_cert=args.tls_cert,
        tls_key=args.tls_key, max_message_mb=args.max_message_mb, max_watchers=args.max_watchers,
        shutdown_timeout=args.shutdown_timeout, cancel_timeout=args.cancel_timeout,
        allow_unauthenticated=args.allow_unauthenticated,
    )  # fmt: skip
    try:
        server = GanServer(config)
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from None
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(number, _frame):
        signals["count"] += 1
        stop.set()
        if signals["count"] > 1:  # a second Ctrl-C / SIGTERM: do not wait for checkpoints
            print("gansvc serve: stopping now: killing running jobs (they resume from their last checkpoint)",
                  file=sys.stderr, flush=True)  # fmt: skip
            for worker in list(server.scheduler._workers.values()):
                worker.kill()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except RuntimeError as error:
        print(f"gansvc serve: error: {error}", file=sys.stderr)
        return 1
    security = ("TLS" if config.tls_cert else "plaintext") + (", bearer tokens" if server.tokens else ", no auth")
    print(f"gansvc serve: listening on {server.address} ({security}); state {server.state_dir}; "
          f"{server.pool.describe()}", flush=True)  # fmt: skip
    if args.ready_file:
        ready = {"address": server.address, "port": server.port, "pid": os.getpid()}
        atomic_write_text(args.ready_file, json.dumps(ready) + "\n")
    while not stop.wait(1.0):
        pass
    running = server.scheduler.running_workers()
    print(f"gansvc serve: shutting down: {len(running)} running job(s) checkpoint and resume on the next start",
          file=sys.stderr, flush=True)  # fmt: skip
    server.shutdown()
    if args.ready_file:
        args.ready_file.unlink(missing_ok=True)
    print("gansvc serve: stopped", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------------- submit
def _spec_settings(args) -> dict:
    from gansvc.service.messages import training_spec_fields

    settings: dict = {}
    if args.spec:
        from gansvc.train.spec import SpecError, TrainSpec

        try:
            settings = {k: v for k, v in TrainSpec.from_file(args.spec).to_dict().items()}
        except SpecError as error:
            raise UsageError(f"--spec {args.spec}: {error}") from None
    for name in training_spec_fields():
        value = getattr(args, f"spec_{name}", None)
        if value is not None:
            settings[name] = value
    return settings


def _load_images(path: Path):
    import numpy as np

    if path.is_dir():
        from gansvc.images import load_png_folder

        try:
            return load_png_folder(path).numpy()
        except ValueError as error:
            raise UsageError(f"--evaluate-images {path}: {error}") from None
    if path.suffix == ".npy" and path.is_file():
        return np.load(path, allow_pickle=False)
    raise UsageError(f"--evaluate-images {path}: expected a folder of images or a .npy file")


def submit(client, args) -> int:
    """Submit a training (or evaluation) job; print its id on stdout; return 0 (or watch's code)."""
    from gansvc.client import state_name

    if args.evaluate and args.evaluate_images:
        raise UsageError("--evaluate and --evaluate-images exclude each other")
    if args.evaluate or args.evaluate_images:
        job = client.submit_evaluation(
            job_id=args.evaluate, step=args.step,
            samples=_load_images(args.evaluate_images) if args.evaluate_images else None,
            real=args.real, extractor=args.extractor, num_samples=args.num_samples, num_real=args.num_real,
            seed=args.spec_seed, data_root=args.spec_data_root or "", inception_weights=args.inception_weights,
            device=args.spec_device or "", request_id=args.request_id,
        )  # fmt: skip
        what = "evaluation"
    else:
        try:
            job = client.submit_training(_spec_settings(args), request_id=args.request_id)
        except ValueError as error:
            raise UsageError(str(error)) from None
        spec = job.training
        length = f"{spec.steps} steps" if spec.steps else f"{spec.epochs:g} epochs"
        what = f"training: {spec.model} / {spec.loss} on {spec.dataset}, {length}"
    print(job.id, flush=True)
    print(f"gansvc submit: {job.id} {state_name(job.state)} ({what})", file=sys.stderr)
    if args.watch:
        return follow(client, job.id, 0)
    return 0


# ---------------------------------------------------------------------- watch
def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def _event_line(event) -> str | None:
    """Return a one-line description of an event worth printing above the bar, or None."""
    from gansvc.client import state_name

    kind = event.WhichOneof("payload")
    if kind == "state":
        s = event.state
        return f"[{event.sequence}] {state_name(s.state)}" + (f": {s.reason}" if s.reason else "")
    if kind == "warning":
        return f"[{event.sequence}] warning {event.warning.code} (step {event.warning.step}): {event.warning.message}"
    if kind == "log":
        return f"[{event.sequence}] {event.log.message}"
    if kind == "samples":
        return f"[{event.sequence}] samples ready: {event.samples.artifact}"
    if kind == "checkpoint":
        return f"[{event.sequence}] checkpoint: {event.checkpoint.artifact}"
    if kind == "metrics":
        eval_keys = [k for k in ("fid", "is_mean", "kid_mean") if k in event.metrics.values]
        if eval_keys:
            text = ", ".join(f"{k} {_number(event.metrics.values[k])}" for k in eval_keys)
            return f"[{event.sequence}] evaluation at step {event.metrics.step}: {text}"
    return None


def _event_json(event) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(event, preserving_proto_field_name=True))


def follow(client, job_id: str, after: int, as_json: bool = False) -> int:
    """Follow a job with a progress bar (or JSON lines) until it ends, print a summary; return 0 if it succeeded."""
    from tqdm import tqdm

    from gansvc.client import pb

    bar = None
    try:
        for event in client.watch(job_id, after_sequence=after):
            if as_json:
                print(_event_json(event), flush=True)
                continue
            kind = event.WhichOneof("payload")
            if kind == "progress":
                p = event.progress
                if bar is None and p.total_steps:
                    bar = tqdm(total=p.total_steps, unit="step", dynamic_ncols=True, desc=job_id, file=sys.stderr)
                if bar is not None:
                    bar.total = p.total_steps
                    bar.n = p.step
                    bar.set_postfix_str(
                        f"d {_number(p.d_loss)} g {_number(p.g_loss)} {p.images_per_sec:.0f} img/s"
                        + (f" eta {_duration(p.eta_seconds)}" if p.eta_seconds > 0 else ""),
                        refresh=True,
                    )
                continue
            line = _event_line(event)
            if line:
                tqdm.write(line)  # stdout, above the bar (which is on stderr)
    finally:
        if bar is not None:
            bar.close()
    job = client.get_job(job_id)
    if not as_json:
        print_summary(client, job)
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def print_summary(client, job) -> None:
    """Print a finished job's outcome, final metrics and where its results are."""
    from gansvc.client import pb, state_name

    took = ""
    if job.HasField("started_at") and job.HasField("finished_at"):
        took = f" in {_duration(job.finished_at.ToNanoseconds() / 1e9 - job.started_at.ToNanoseconds() / 1e9)}"
    print(f"job {job.id} {state_name(job.state)}{took}" + (f" on {job.device}" if job.device else "")
          + (f": {job.message}" if job.message else ""))  # fmt: skip
    metrics = dict(job.latest_metrics)
    if metrics:
        shown = []
        for name, label in (("fid", "FID"), ("is_mean", "IS"), ("kid_mean", "KID"), ("d_loss", "D loss"),
                            ("g_loss", "G loss"), ("d_real", "D(x)"), ("d_fake", "D(G(z))"),
                            ("images_per_sec", "img/s")):  # fmt: skip
            if name in metrics:
                value = _number(metrics[name])
                spread = {"is_mean": "is_std", "kid_mean": "kid_std"}.get(name)
                if spread and spread in metrics:
                    value += f" ± {_number(metrics[spread])}"
                shown.append(f"{label} {value}")
        print("final metrics: " + ", ".join(shown))
    if job.kind == pb.JOB_KIND_TRAINING and job.state == pb.JOB_STATE_SUCCEEDED:
        from gansvc.cli import COMMANDS

        download = "gansvc download" if "download" in COMMANDS else "python -m gansvc.service.cli download"
        print(f"results: gansvc samples {job.id} -o grid.png; {download} {job.id} generator.pt")


def watch(client, args) -> int:
    """Follow a job; return 0 if it succeeded, else 1."""
    return follow(client, args.job, args.after, args.json)


# ---------------------------------------------------------------------- jobs
def jobs(client, args) -> int:
    """Print the service's jobs as a table (or JSON lines); return 0."""
    from google.protobuf.json_format import MessageToDict

    from gansvc.client import pb, state_name

    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    states = [s.upper() for s in args.state]
    for state in states:
        if state not in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
            raise UsageError(f"--state {state.lower()!r}: expected queued, running, succeeded, failed or cancelled")
    rows = []
    for job in client.list_jobs(states, args.kind, page_size=min(args.limit, 500)):
        if len(rows) >= args.limit:
            break
        if args.json:
            print(json.dumps(MessageToDict(job, preserving_proto_field_name=True)))
            rows.append(None)
            continue
        progress = ""
        if job.progress.total_steps:
            progress = f"{job.progress.step}/{job.progress.total_steps}"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at.seconds))
        fid = job.latest_metrics.get("fid")
        note = f"fid {fid:.2f}" if fid is not None else job.message
        rows.append((job.id, "train" if job.kind == pb.JOB_KIND_TRAINING else "eval", state_name(job.state), progress, job.device, created,
                     note[:60]))  # fmt: skip
    if args.json:
        return 0
    header = ("ID", "KIND", "STATE", "PROGRESS", "DEVICE", "CREATED", "NOTE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


# ---------------------------------------------------------------------- samples, download, cancel, health
def samples(client, args) -> int:
    """Write a job's sample grid PNG (and optionally the raw images); return 0."""
    from gansvc.atomic import atomic_write, atomic_write_bytes

    grid = client.samples(
        args.job, step=args.step, seed=args.seed, count=args.count, include_tensor=args.tensor is not None,
        nrow=args.nrow,
    )  # fmt: skip
    atomic_write_bytes(args.output, grid.png)
    print(f"wrote {args.output} (step {grid.step}, from {grid.source})", file=sys.stderr)
    if args.tensor is not None:
        import numpy as np

        atomic_write(args.tensor, lambda f: np.save(f, grid.images, allow_pickle=False))
        print(f"wrote {args.tensor} {list(grid.images.shape)} float32", file=sys.stderr)
    return 0


def download(client, args) -> int:
    """Download one of a job's artifacts (or list them); return 0."""
    if args.list or not args.name:
        for artifact in client.list_artifacts(args.job):
            print(f"{artifact.size_bytes:>12}  {artifact.name}")
        return 0
    output = args.output or Path(Path(args.name).name)
    client.download(args.job, args.name, output)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def cancel(client, args) -> int:
    """Cancel a job and (unless --no-wait) wait until it has stopped; return 0 if it ended CANCELLED."""
    from gansvc.client import TERMINAL, pb, state_name

    job = client.cancel(args.job)
    if not args.no_wait and job.state not in TERMINAL:
        print(f"gansvc cancel: {job.id}: waiting for it to checkpoint and stop", file=sys.stderr)
        job = client.wait(job.id)
    print(f"job {job.id} {state_name(job.state)}" + (f": {job.message}" if job.message else ""))
    return 0 if job.state in (pb.JOB_STATE_CANCELLED,) or args.no_wait else 1


def health(client, args) -> int:
    """Print the server's health status; return 0 when SERVING, else 1."""
    import grpc

    try:
        status = client.health(args.service, timeout=args.timeout)
    except grpc.RpcError as error:
        print(f"UNREACHABLE: {error.code().name}: {error.details()}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    """Run one of these commands as `python -m gansvc.service.cli COMMAND ...` (e.g. health checks); return its code."""
    parser = argparse.ArgumentParser(prog="python -m gansvc.service.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", *CLIENT_COMMANDS):
        add_arguments(name, sub.add_parser(name))
    args = parser.parse_args(argv)
    try:
        return run(args.command, args)
    except UsageError as error:
        print(f"gansvc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`gansvc sweep --spec FILE.toml [--watch]`: submit a hyperparameter sweep to a running service.

The file's format is in gansvc.sweep_spec; it is checked here first (exit code 2 naming the field), then by
the server. With --watch the sweep's events are followed (trial started / reported / pruned / finished, the
best so far) and the table of trials is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from gansvc.runtime.console import UsageError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Declare the options of `gansvc sweep` (the client options plus the sweep's)."""
    from gansvc.clients.cli_args import add_arguments as client_arguments

    client_arguments(name, parser)  # a name it does not know gets the connection options only
    parser.add_argument("--spec", required=True, type=Path, metavar="FILE.toml",
                        help="the sweep: [base], [search], [search.space], [objective], [pruner]")  # fmt: skip
    parser.add_argument("--watch", action="store_true", help="follow the sweep until it ends, then print its trials")
    parser.add_argument("--request-id", default=None, help="makes a retried submit return the same sweep")


def build_request(path: Path, request_id: str | None = None):
    """Return the SweepSpec of a sweep file, checked as the server will check it (UsageError naming the field)."""
    from gansvc.sweep_spec import SweepSpecError, check_sweep, load_sweep_file, sweep_spec_to_proto
    from gansvc.train.spec import SpecError, TrainSpec

    try:
        raw = load_sweep_file(path)
        try:
            base = TrainSpec.from_dict(raw.get("base", {})).to_dict()
        except SpecError as error:
            raise SweepSpecError(f"base.{error.field}", error.message) from None
        check_sweep(raw, base)
        return sweep_spec_to_proto(raw, request_id or f"cli-{uuid.uuid4()}")
    except (SweepSpecError, ValueError) as error:
        raise UsageError(f"--spec {path}: {error}") from None


def trial_table(job) -> list[str]:
    """Return a finished sweep's trials as table lines (best marked), from its summary."""
    from google.protobuf.json_format import MessageToDict

    from gansvc.clients import render

    summary = MessageToDict(job.summary) if job.HasField("summary") else {}
    best = (summary.get("best") or {}).get("trial")
    rows = []
    for row in summary.get("trials", []):
        params = ", ".join(f"{k}={v}" for k, v in (row.get("params") or {}).items())
        value = row.get("value")
        rows.append((("*" if row.get("trial") == best else "") + str(int(row.get("trial", 0))), row.get("state", ""),
                     render.number(value if isinstance(value, (int, float)) else None), row.get("job_id", ""),
                     params))  # fmt: skip
    header = ("TRIAL", "STATE", summary.get("metric", "VALUE").upper(), "JOB", "SETTINGS")
    return render.table(rows, header) if rows else []


def run(name: str, args) -> int:
    """Submit the sweep (and follow it with --watch); return 0, or watch's code (0 when it succeeded)."""
    import grpc

    from gansvc.clients.cli import _connect
    from gansvc.clients.commands import follow
    from gansvc.api.convert import state_name

    request = build_request(args.spec, args.request_id)
    try:
        with _connect(args) as client:
            job = client.submit_sweep(request)
            print(job.id, flush=True)
            limit = job.sweep.max_concurrent or job.sweep.parallel
            at_once = f"{limit} at a time" if limit else "as many at a time as fit"
            print(f"gansvc sweep: {job.id} {state_name(job.state)} ({job.sweep.method} sweep of {job.sweep.trials} "
                  f"trials, {at_once})", file=sys.stderr)  # fmt: skip
            if not args.watch:
                return 0
            code = follow(client, job.id, 0)
            for line in trial_table(client.get_job(job.id)):
                print(line)
            return code
    except grpc.RpcError as error:
        code = error.code()
        print(f"gansvc {name}: {code.name if code else 'error'}: {error.details()}", file=sys.stderr)
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1

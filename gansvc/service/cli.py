"""`gansvc serve`: the server's command (its options here, the serving loop in serve).

The client commands (submit, watch, jobs, ..., health) are gansvc.clients.cli.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gansvc.runtime import registry
from gansvc.runtime.console import run_commands, size_argument

DEFAULT_STATE_DIR = "runs/service"
LOG_LEVELS = ("debug", "info", "warning", "error")

__all__ = ["DEFAULT_STATE_DIR", "add_arguments", "main", "run"]


def run(name: str, args) -> int:
    """Run `gansvc serve`; return its exit code."""
    from gansvc.service.serve import serve

    return serve(args)


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add `gansvc serve`'s options to its parser."""
    parser.add_argument(
        "--listen",
        default=registry.DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"address to listen on (default {registry.DEFAULT_ADDRESS}; port 0 picks a free one)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("GANSVC_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"jobs database and run directories (default $GANSVC_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--jobs-dir",
        type=Path,
        default=None,
        help="run directories: checkpoints, samples, logs (default STATE_DIR/jobs). With --backend ray it must be on "
        "storage every node sees; the jobs database stays in --state-dir (docs/cluster.md)",
    )
    parser.add_argument(
        "--devices",
        default="cpu",
        help="GPUs jobs may use: cpu (none), all, or a list like cuda:0,cuda:1 (default cpu)",
    )
    parser.add_argument("--cpu-jobs", type=int, default=1, help="CPU jobs run at the same time (default 1)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="where jobs run: local (worker processes on this machine, --devices / --cpu-jobs) "
                        "or ray (placed by Ray on the nodes of --ray-address; docs/cluster.md) (default local)",
                        )  # fmt: skip
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="the Ray cluster's head (GCS) address for --backend ray (default $RAY_ADDRESS)",
                        )  # fmt: skip
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
    parser.add_argument(
        "--inception-weights",
        type=Path,
        default=os.environ.get("GANSVC_INCEPTION_WEIGHTS") or None,
        metavar="FILE",
        help="FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05 file) that score training runs on "
        "data sets other than 28x28 grey ones, and evaluations naming no weights (default $GANSVC_INCEPTION_WEIGHTS)",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--max-message-mb", type=int, default=64, help="largest message in or out (default 64 MiB)")
    parser.add_argument("--max-watchers", type=int, default=64, help="concurrent WatchJob streams (default 64)")
    parser.add_argument("--max-upload-mb", type=int, default=1024, metavar="MB",
                        help="largest checkpoint `gansvc upload` (UploadCheckpoint) may send, in MiB; larger ones are "
                        "refused with RESOURCE_EXHAUSTED (default 1024)")  # fmt: skip
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
        "--max-dataset-memory",
        type=size_argument,
        default=None,
        metavar="SIZE",
        help="training data sets larger than this (decoded) stream from disk through a DataLoader instead of "
        "being held in memory; e.g. 4G, 512M (default a quarter of RAM)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="times a job is started when its worker process dies without a word (OOM killer, a signal); "
        "each retry resumes from the last checkpoint (default 3)",
    )
    parser.add_argument(
        "--mlflow-uri",
        default=os.environ.get("GANSVC_MLFLOW_URI", ""),
        metavar="URI",
        help="MLflow tracking server (http[s]://HOST[:PORT]) that jobs whose spec sets no `track` log to: params, "
        "metrics, samples, best checkpoint, exported generator, final state; best-effort, never failing a job "
        "(default $GANSVC_MLFLOW_URI; none = not tracked; docs/tracking.md)",
    )
    parser.add_argument(
        "--allow-unauthenticated", action="store_true", help="listen beyond loopback without --auth-token-file"
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the server's log messages (and grpc's) at this level and above, on stderr (default info)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {address, port, pid} as JSON here once serving (for scripts using port 0)",
    )
    parser.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="also start the web dashboard (`gansvc web`, a client of this server with its token) on this address, "
        "e.g. 127.0.0.1:8080 (port 0 picks a free one); its URL is printed and written to --ready-file as web_url",
    )
    parser.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 alone, in plaintext and without tokens, on this loopback address "
        "(container health checks that hold no TLS CA or token; the image uses 127.0.0.1:50052)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the server as `python -m gansvc.service.cli serve ...`; return its exit code."""
    return run_commands("python -m gansvc.service.cli", __doc__.splitlines()[0], ["serve"], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""`gansvc submit | watch | jobs | samples | cancel | download | upload | health`: the client commands.

They find the server with --server (or $GANSVC_SERVER, default 127.0.0.1:50051) and a token with
--token-file (or $GANSVC_TOKEN_FILE / $GANSVC_TOKEN); --tls-ca (or $GANSVC_TLS_CA) switches to TLS.

The options are in cli_args, the commands in commands, their output in render. `python -m gansvc.clients.cli
health` is the health check of scripts/run.sh and the Dockerfile (no top-level dispatcher, no server code).
"""

from __future__ import annotations

import os
import sys

from gansvc.clients.cli_args import CLIENT_COMMANDS, DEFAULT_SERVER, add_arguments
from gansvc.runtime.console import UsageError, run_commands

__all__ = ["CLIENT_COMMANDS", "DEFAULT_SERVER", "add_arguments", "main", "run"]


def run(name: str, args) -> int:
    """Run client command `name`; return its exit code."""
    import grpc

    from gansvc.clients.commands import COMMANDS

    try:
        with _connect(args) as client:
            return COMMANDS[name](client, args)
    except grpc.RpcError as error:
        code = error.code()
        print(f"gansvc {name}: {code.name if code else 'error'}: {error.details()}", file=sys.stderr)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return 2
        return 1


def _connect(args, retry_attempts: int | None = None):
    from gansvc.clients.python import DEFAULT_RETRY_ATTEMPTS, GanClient

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
    return GanClient(args.server, token=token, tls_ca=ca, tls_server_name=args.tls_server_name, timeout=args.timeout,
                     retry_attempts=retry_attempts or DEFAULT_RETRY_ATTEMPTS)


def main(argv: list[str] | None = None) -> int:
    """Run a client command as `python -m gansvc.clients.cli COMMAND ...` (e.g. health checks); return its code."""
    return run_commands(
        "python -m gansvc.clients.cli", __doc__.splitlines()[0], CLIENT_COMMANDS, add_arguments, run, argv
    )


if __name__ == "__main__":
    sys.exit(main())

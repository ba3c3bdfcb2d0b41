"""`gansvc web`: serve the dashboard (gansvc.web.app) on uvicorn, as a client of the server at --server.

The connection options (--server, --token-file / $GANSVC_TOKEN, --tls-ca, --tls-server-name, --timeout) are
the client commands' own (gansvc.clients.cli_args), and the connection is theirs too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gansvc.runtime.console import UsageError, run_commands

DEFAULT_LISTEN = "127.0.0.1:8080"
_PREFIX = "gansvc web: "


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add `gansvc web`'s options: the client connection's and where to listen."""
    from gansvc.clients.cli_args import add_arguments as client_arguments

    client_arguments(name, parser)  # a command it does not know: the connection options only
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"the dashboard's address (default {DEFAULT_LISTEN}; port 0 picks a free one); when "
                        "the server needs a token each browser logs in with one, else whoever reaches the "
                        "dashboard acts with its connection: keep it on loopback unless the network is "
                        "trusted")  # fmt: skip
    parser.add_argument("--ready-file", type=Path,
                        help="write {url, address, port, pid} as JSON here once listening")  # fmt: skip
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                        help="uvicorn's log level (default warning)")  # fmt: skip
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # gansvc serve --web: die with it


def parse_listen(text: str) -> tuple[str, int]:
    """Return (host, port) of HOST:PORT; UsageError naming --listen otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen: got {text!r}, expected HOST:PORT such as {DEFAULT_LISTEN}")
    return host, int(port)


def run(name: str, args) -> int:
    """Run the dashboard until SIGINT / SIGTERM; return its exit code."""
    host, port = parse_listen(args.listen)  # before the imports: a typo is answered at once
    import socket

    import uvicorn

    from gansvc.atomic import atomic_write_text
    from gansvc.clients.cli import _connect
    from gansvc.web.app import create_app

    if args.parent_pid:
        from gansvc.runtime.process import die_with_parent

        die_with_parent(args.parent_pid)
    # A bad --token-file / --tls-ca is answered before anything listens. One retry (after 0.2 s) for the
    # dashboard's calls, not the client's default five (~3 s): a page or a scrape while the server is down is
    # answered 503 / gansvc_up 0 at once, and the browser's next refresh is the retry.
    client = _connect(args, retry_attempts=2)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        client.close()
        raise UsageError(f"--listen {args.listen}: cannot listen there ({error.strerror or error})") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{port}/"
    app = create_app(client)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    print(f"{_PREFIX}dashboard on {url} (server {args.server})", flush=True)
    if args.ready_file:
        ready = {"url": url, "address": f"{host}:{port}", "port": port, "pid": os.getpid()}
        atomic_write_text(args.ready_file, json.dumps(ready) + "\n")
    try:
        server.run(sockets=[sock])
    finally:
        client.close()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `python -m gansvc.web [options]` (no subcommand word); return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_commands("python -m gansvc.web", __doc__.splitlines()[0], ["web"], add_arguments, run, ["web", *argv])

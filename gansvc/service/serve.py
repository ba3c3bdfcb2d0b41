"""`gansvc serve`: run the server until SIGTERM / SIGINT, logging through `logging` (grpc's logger too)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from gansvc.runtime.console import UsageError
from gansvc.runtime.registry import DATASET_MEMORY_ENV

log = logging.getLogger("gansvc.service")
_PREFIX = "gansvc serve: "


class _Formatter(logging.Formatter):
    """'gansvc serve: message', with 'warning: ' / 'error: ' before worse than info, and grpc's name on its own."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        origin = "grpc: " if record.name == "grpc" or record.name.startswith("grpc.") else ""
        text = f"{_PREFIX}{origin}{level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(level: str = "info", stream=None) -> logging.Handler:
    """Send gansvc's and grpc's log records at `level` and above to stderr (or `stream`); return the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    for name in ("gansvc", "grpc"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, whatever the root logger does
    return handler


def serve(args) -> int:
    """Run the server until SIGTERM / SIGINT; return 0 after a clean shutdown."""
    from gansvc.atomic import atomic_write_text
    from gansvc.service.server import GanServer, ServerConfig

    configure_logging(args.log_level)
    if getattr(args, "max_dataset_memory", None):  # the training workers inherit it (gansvc.data.streaming)
        os.environ[DATASET_MEMORY_ENV] = args.max_dataset_memory
    config = ServerConfig(
        state_dir=args.state_dir, listen=args.listen, devices=args.devices, cpu_jobs=args.cpu_jobs,
        data_roots=args.data_root, auth_token_file=args.auth_token_file, tls_cert=args.tls_cert,
        tls_key=args.tls_key, max_message_mb=args.max_message_mb, max_watchers=args.max_watchers,
        max_upload_mb=args.max_upload_mb,
        shutdown_timeout=args.shutdown_timeout, cancel_timeout=args.cancel_timeout, max_attempts=args.max_attempts,
        allow_unauthenticated=args.allow_unauthenticated, inception_weights=args.inception_weights,
        health_listen=getattr(args, "health_listen", None), mlflow_uri=getattr(args, "mlflow_uri", "") or "",
        backend=getattr(args, "backend", "local"),
        ray_address=getattr(args, "ray_address", None) or "",
        jobs_dir=getattr(args, "jobs_dir", None),
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
            log.info("stopping now: killing running jobs (they resume from their last checkpoint)")
            server.kill_running_jobs()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except RuntimeError as error:
        log.error("%s", error)
        return 1
    security = ("TLS" if config.tls_cert else "plaintext") + (", bearer tokens" if server.tokens else ", no auth")
    # The command's own output (scripts read the address here), not a log record.
    jobs = "" if server.jobs_dir == server.state_dir / "jobs" else f"; jobs {server.jobs_dir}"
    print(f"{_PREFIX}listening on {server.address} ({security}); state {server.state_dir}{jobs}; "
          f"{server.pool.describe()}", flush=True)  # fmt: skip
    web = None
    ready = {"address": server.address, "port": server.port, "pid": os.getpid()}
    if getattr(args, "web", None):
        try:
            web, ready["web_url"] = _start_web(args, server)
        except RuntimeError as error:
            log.error("%s", error)
            server.shutdown()
            return 1
        print(f"{_PREFIX}web dashboard on {ready['web_url']}", flush=True)
    if args.ready_file:
        atomic_write_text(args.ready_file, json.dumps(ready) + "\n")
    while not stop.wait(1.0):
        if web is not None and web.poll() is not None:
            log.warning("the web dashboard exited with status %s; the server goes on without it", web.returncode)
            web = None
    if web is not None:
        _stop_web(web)
    running = server.running_jobs()
    log.info("shutting down: %d running job(s) checkpoint and resume on the next start", len(running))
    server.shutdown()
    if args.ready_file:
        args.ready_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


def _start_web(args, server, timeout: float = 60.0):
    """Start `gansvc web` beside the server (its own process, a client like any other); return (process, URL).

    It connects with the server's first accepted token and, with TLS, trusts the server's certificate as its CA
    (a certificate that names the listen host; otherwise run `gansvc web --tls-server-name` separately). It dies
    with this process (PR_SET_PDEATHSIG) and is stopped with it."""
    import subprocess
    import time

    host, _, port = server.address.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):  # listening everywhere: the dashboard connects over loopback
        host = "127.0.0.1"
    ready_file = server.state_dir / "web.json"
    ready_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "gansvc.web", "--server", f"{host}:{port}", "--listen", args.web,
               "--ready-file", str(ready_file), "--parent-pid", str(os.getpid())]  # fmt: skip
    if args.auth_token_file:
        command += ["--token-file", str(args.auth_token_file)]
    if args.tls_cert:
        command += ["--tls-ca", str(args.tls_cert)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.is_file():
            try:
                return process, json.loads(ready_file.read_text(encoding="utf-8"))["url"]
            except (ValueError, KeyError, OSError):
                pass  # written atomically, so this is a file of another run: wait for ours
        if process.poll() is not None:
            raise RuntimeError(f"--web {args.web}: the web dashboard did not start (exit status {process.returncode})")
        time.sleep(0.1)
    _stop_web(process)
    raise RuntimeError(f"--web {args.web}: the web dashboard did not start within {timeout:.0f} s")


def _stop_web(process, timeout: float = 10.0) -> None:
    """Stop the dashboard process (SIGTERM, then SIGKILL after `timeout` seconds)."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

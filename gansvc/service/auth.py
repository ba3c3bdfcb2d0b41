"""Bearer-token authentication: a server interceptor that aborts UNAUTHENTICATED (health is exempt).

Tokens come from a file, one per line (blank lines and # comments ignored); the file is read again
when it changes, so tokens can be rotated without a restart. Clients send `authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
_RELOAD_CHECK_SECONDS = 1.0


class TokenFile:
    """The accepted tokens, re-read when the file's modification time changes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._tokens: tuple[bytes, ...] = ()
        try:
            self._load()
        except OSError as error:
            raise ValueError(f"--auth-token-file {self.path}: cannot read it ({error.strerror or error})") from None
        if not self._tokens:
            raise ValueError(f"--auth-token-file {self.path}: no tokens in it (one per line)")

    def _load(self) -> None:
        stat = self.path.stat()
        text = self.path.read_text(encoding="utf-8")
        tokens = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if any(c.isspace() for c in line) or not line.isprintable():
                raise ValueError(
                    f"--auth-token-file {self.path}, line {number}: a token has no spaces or control characters"
                )
            tokens.append(line.encode())
        self._tokens = tuple(tokens)
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def tokens(self) -> tuple[bytes, ...]:
        """Return the current tokens (re-reading the file at most once a second when it changed)."""
        now = time.monotonic()
        if now - self._checked >= _RELOAD_CHECK_SECONDS:
            with self._lock:
                self._checked = now
                try:
                    stat = self.path.stat()
                    if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                        self._load()
                except (OSError, ValueError):
                    pass  # keep the last good set while the file is being rewritten or is broken
        return self._tokens

    def accepts(self, token: str) -> bool:
        """Return whether `token` is one of the tokens (constant time per token)."""
        candidate = token.encode()
        matched = False
        for known in self.tokens():
            matched |= hmac.compare_digest(candidate, known)
        return matched


def check_authorization(header: str | None, tokens: TokenFile) -> str | None:
    """Return why an `authorization` header is refused, or None when it carries a valid token."""
    if not header:
        return "missing 'authorization: Bearer <token>' metadata"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "the authorization metadata must be 'Bearer <token>'"
    if not tokens.accepts(token.strip()):
        return "invalid token"
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Lets through calls with a valid bearer token (and health checks); aborts the rest UNAUTHENTICATED."""

    def __init__(self, tokens: TokenFile):
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        """Return the method's handler, or one that aborts with UNAUTHENTICATED."""
        if handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value
                break
        problem = check_authorization(header, self.tokens)
        if problem is None:
            return continuation(handler_call_details)
        return _refusal(continuation(handler_call_details), problem)


def _refusal(handler, message: str):
    """Return a handler of the same streaming shape as `handler` that aborts with UNAUTHENTICATED."""

    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)

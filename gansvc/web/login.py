"""The dashboard's login, for a gansvc server that needs a token.

Whether it does is asked of the server itself: a ListJobs without a token refused UNAUTHENTICATED (asked again at
most every PROBE_SECONDS, so a restarted server with or without --auth-token-file is followed). When it does, every
request except the login form needs one of:

- a session: `POST /login` with a token the server accepts (checked with one ListJobs carrying it) opens one; its id
  (random, 256 bits) goes to the browser in an HttpOnly, SameSite=Strict cookie, the token stays in this process.
  The session's requests reach the server with that token (the user acts as themselves), and a token the server
  stops accepting ends the session;
- `Authorization: Bearer TOKEN` (a Prometheus scrape, a script): checked the same way, the answer kept a minute.

Anything else is 401: the login form for a page, JSON under /api/, plain text elsewhere (/metrics, /static/).
When the server needs no token nothing changes: no login, the dashboard's own connection (and its own token, if it
was given one) serves everyone.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import html
import secrets
import threading
import time
import urllib.parse

import grpc
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

COOKIE = "gansvc_session"
SESSION_SECONDS = 12 * 3600  # a session lasts this long after its last request
PROBE_SECONDS = 10.0  # how long "the server needs a token" (or not) is believed
BEARER_SECONDS = 60.0  # how long a checked Authorization header's token is believed
REFUSED_DELAY = 0.5  # a refused login waits this long: guessing tokens through the form is slow
MAX_TOKEN_BYTES = 4096
OPEN_PATHS = ("/login", "/logout")  # served without a session (logout of no session is harmless)

# the client of the request being answered (the session's); None: the dashboard's own
REQUEST_CLIENT: contextvars.ContextVar = contextvars.ContextVar("gansvc_web_request_client", default=None)


class ClientOfRequest:
    """Stands for a GanClient: each attribute is the request's own client's (its session's token), else the
    dashboard's. The dashboard's code calls `self.client.get_job(...)` and reaches the server as the user."""

    def __init__(self, own):
        self._own = own

    def __getattr__(self, name: str):
        return getattr(REQUEST_CLIENT.get() or self._own, name)


class _Session:
    def __init__(self, client, token_hash: str):
        self.client = client
        self.token_hash = token_hash
        self.last_used = time.monotonic()


class LoginGate:
    """The sessions, the login routes, and the guard (`Guarded`, an ASGI middleware) that lets a request through
    only with a session when the server needs a token (see the module's docstring)."""

    def __init__(self, client, cross_site, error_response):
        self.client = client  # the dashboard's own GanClient (its channel is shared by every session's client)
        self.cross_site = cross_site  # request -> why it is refused as cross-site ("" when not)
        self.error_response = error_response  # (request, status, message, code) -> the dashboard's error answer
        self._sessions: dict[str, _Session] = {}
        self._bearers: dict[str, tuple[float, object]] = {}  # token hash -> (checked until, client)
        self._guard = threading.Lock()
        self._required: bool | None = None
        self._probed = 0.0

    # ------------------------------------------------------------------ does the server need a token?
    def _probe(self) -> bool:
        """Return whether the server refuses a request without a token (blocking; gRPC errors other than
        UNAUTHENTICATED propagate)."""
        try:
            self.client.with_token(None).list_jobs_page((), None, 1, "")
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return True
            raise
        return False

    async def required(self) -> bool:
        """Return whether requests need a login (asked of the server at most every PROBE_SECONDS)."""
        now = time.monotonic()
        if self._required is None or now - self._probed >= PROBE_SECONDS:
            self._required = await run_in_threadpool(self._probe)
            self._probed = now
        return self._required

    # ------------------------------------------------------------------ tokens and sessions
    def _accepted(self, token: str):
        """Return a client carrying `token` when the server accepts it, else None (blocking)."""
        client = self.client.with_token(token)
        try:
            client.list_jobs_page((), None, 1, "")
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return None
            raise
        return client

    def _session_of(self, request: Request) -> tuple[str, _Session] | None:
        session_id = request.cookies.get(COOKIE, "")
        now = time.monotonic()
        with self._guard:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_used > SESSION_SECONDS:
                del self._sessions[session_id]
                return None
            session.last_used = now
            return session_id, session

    async def _bearer_client(self, request: Request):
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_BYTES:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._guard:
            checked = self._bearers.get(key)
        if checked is not None and checked[0] > now:
            return checked[1]
        client = await run_in_threadpool(self._accepted, token)
        if client is None:
            return None
        with self._guard:
            self._bearers[key] = (now + BEARER_SECONDS, client)
        return client

    def forget(self, token_hash: str) -> None:
        """End every session (and forget every checked header) of a token the server refused."""
        with self._guard:
            for session_id in [i for i, s in self._sessions.items() if s.token_hash == token_hash]:
                del self._sessions[session_id]
            self._bearers.pop(token_hash, None)

    # ------------------------------------------------------------------ the guard
    async def guard(self, app, scope, receive, send) -> None:
        """Answer one ASGI request: through `app` when it may pass (as its session's client), else a refusal."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = scope["path"]
        if path in OPEN_PATHS:
            await app(scope, receive, send)  # the login routes look after themselves
            return
        try:
            required = await self.required()
        except grpc.RpcError as error:
            if self._required is not None:  # the server is down now: what it said last still holds
                required = self._required
            elif path == "/metrics":  # it says only that the server is down (gansvc_up 0)
                required = False
            else:  # cannot tell whether a login is needed: serve nothing
                message = f"the gansvc server at {self.client.address} is unavailable: {error.details()}"
                await self.error_response(request, 503, message, "UNAVAILABLE")(scope, receive, send)
                return
        if not required:
            await app(scope, receive, send)
            return
        found = self._session_of(request)
        client = found[1].client if found else await self._bearer_client(request)
        if client is None:
            await _refusal(request, 401, "log in first: the gansvc server needs a token",
                           "UNAUTHENTICATED")(scope, receive, send)  # fmt: skip
            return
        reset = REQUEST_CLIENT.set(client)
        try:
            await app(scope, receive, send)
        finally:
            REQUEST_CLIENT.reset(reset)

    # ------------------------------------------------------------------ the routes
    async def login_page(self, request: Request) -> Response:
        """GET /login: the form (or, when the server needs no token, straight to the jobs page)."""
        if not await self.required() or self._session_of(request):
            return RedirectResponse(_local(request.query_params.get("next")), status_code=303)
        return login_form(_local(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        """POST /login (form field `token`, optional `next`): a session cookie when the server accepts the token."""
        refusal = self.cross_site(request)
        if refusal:
            return PlainTextResponse(refusal, status_code=403)
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (fields.get("token") or [""])[0].strip()
        target = _local((fields.get("next") or [""])[0])
        if not await self.required():
            return RedirectResponse(target, status_code=303)
        if not token or len(token) > MAX_TOKEN_BYTES:
            return login_form(target, "give the token the gansvc server accepts", status=401)
        client = await run_in_threadpool(self._accepted, token)
        if client is None:
            await asyncio.sleep(REFUSED_DELAY)
            return login_form(target, "the gansvc server refused this token", status=401)
        session_id = secrets.token_urlsafe(32)
        with self._guard:
            self._sessions[session_id] = _Session(client, hashlib.sha256(token.encode()).hexdigest())
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=SESSION_SECONDS, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        """POST /logout: end the session (same-origin only) and go to the login form."""
        refusal = self.cross_site(request)
        if refusal:
            return PlainTextResponse(refusal, status_code=403)
        with self._guard:
            self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def session_ended(self, request: Request) -> None:
        """Forget the request's token: the server answered UNAUTHENTICATED to it (it was revoked)."""
        found = self._session_of(request)
        if found:
            self.forget(found[1].token_hash)


class Guarded:
    """The ASGI middleware of a LoginGate: Starlette(middleware=[Middleware(Guarded, gate=gate)])."""

    def __init__(self, app, gate: LoginGate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send):
        await self.gate.guard(self.app, scope, receive, send)


def _local(target: str | None) -> str:
    """Return `target` when it is a path of this site, else "/" (no redirect elsewhere after a login)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _refusal(request: Request, status: int, message: str, code: str) -> Response:
    """Return a 401: JSON under /api/, the login form for a page, plain text for /metrics and assets."""
    path = request.url.path
    if path.startswith("/api/"):
        return JSONResponse({"error": message, "code": code}, status_code=status)
    if request.method == "GET" and not path.startswith("/static/") and path != "/metrics":
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return login_form(target, status=status)
    return PlainTextResponse(message, status_code=status)


def login_form(target: str = "/", error: str = "", status: int = 200) -> HTMLResponse:
    """Return the login page: self-contained (no asset is served before the login)."""
    shown = f'<p class="error" id="login-error">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in - gansvc</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>
body {{ font: 15px system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }}
form {{ max-width: 26rem; margin: 12vh auto; padding: 1.5rem 2rem; background: #fff; border: 1px solid #d8dce3;
        border-radius: 8px; }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }} label {{ display: block; margin-bottom: .4rem; }}
input[type=password] {{ width: 100%; box-sizing: border-box; padding: .5rem; font: inherit; }}
button {{ margin-top: 1rem; padding: .5rem 1.2rem; font: inherit; }} .error {{ color: #b3261e; }}
p.hint {{ color: #5b6372; font-size: .9rem; }}
</style></head><body><form method="post" action="/login" id="login">
<h1>gansvc</h1>{shown}
<label for="token">The gansvc server needs a token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{html.escape(target)}">
<button type="submit" id="login-submit">Log in</button>
<p class="hint">One of the server's <code>--auth-token-file</code> tokens. It stays in the dashboard's process;
this browser keeps only a session cookie.</p></form></body></html>"""
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

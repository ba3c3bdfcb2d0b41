"""The dashboard's routes: HTML pages and their JSON / server-sent-event endpoints, all answered through one
GanClient (the gRPC API, nothing else).

    /                       jobs page            /api/jobs               one ListJobs page as JSON
    /jobs/{id}              job page             /api/jobs/stream        that page pushed (SSE) when it changes
    /server                 server page          /api/jobs/{id}          GetJob
    /metrics                Prometheus           /api/jobs/{id}/events   WatchJob as SSE (resumes at Last-Event-ID)
    /static/...             assets               /api/jobs/{id}/series   GetMetrics, downsampled keeping min/max
                                                 /api/jobs/{id}/best     the job's latest `best` event
                                                 /api/jobs/{id}/artifacts       ListArtifacts
                                                 /api/jobs/{id}/files/{name}    DownloadArtifact, streamed
                                                 POST /api/jobs/{id}/cancel               CancelJob (same origin only)
                                                 /api/server             GetServerInfo
    /compare?jobs=A,B       compare page         /api/compare?jobs=A,B   GetMetrics of each (with times), spec diff
    /sweeps/{id}            sweep page           /api/sweeps             ListJobs of kind sweep
    /submit                 submit page          /api/sweeps/{id}        the sweep's trials (its events + GetJob)
                                                 /api/spec/fields        GetServerInfo.training_fields
                                                 POST /api/submit        SubmitTraining (same origin only)
    /login                  login form (POST: a session cookie), only when the server needs a token; POST /logout
When the server needs a token, every other route needs a session (gansvc.web.login): 401 without one.
A gRPC error becomes its HTTP status (NOT_FOUND 404, INVALID_ARGUMENT 400, FAILED_PRECONDITION 409,
UNAVAILABLE 503, ...) with the server's message: JSON {"error", "code"} under /api, an HTML page elsewhere.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import mimetypes
import threading
from pathlib import Path, PurePosixPath

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gansvc.api.convert import KIND_TO_PROTO
from gansvc.runtime import registry
from gansvc.web import shapes, views
from gansvc.web.login import REQUEST_CLIENT, ClientOfRequest, Guarded, LoginGate
from gansvc.web.relay import Relay

STATIC = Path(__file__).resolve().parent / "static"
JOBS_POLL_SECONDS = 1.0  # the jobs page's push interval: a new job shows within this (plus one ListJobs)
KEEPALIVE_SECONDS = 15.0  # an SSE comment this often: proxies keep the stream, and a gone page is noticed
SERIES_POINTS = 2000  # default points per metric series sent to a page
MAX_SERIES_POINTS = 100_000
KINDS = ("training", "evaluation", "sweep")
MAX_COMPARE = 12  # jobs on one compare page
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # the dashboard's own token was refused: the server is fine, this gateway is misconfigured
    grpc.StatusCode.UNAUTHENTICATED: 502,
}


class BadRequest(Exception):
    """A query parameter of the request is wrong: 400 naming it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _error_response(request: Request, status: int, message: str, code: str) -> Response:
    """Return the error as JSON under /api (and /metrics), as a small HTML page elsewhere."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message, "code": code}, status_code=status)
    title = {404: "Not found", 503: "gansvc server unavailable", 502: "Bad gateway"}.get(status, "Error")
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} - gansvc</title>
<link rel="stylesheet" href="/static/app.css"></head><body><header><a href="/">gansvc</a></header>
<main><h1>{status} {html.escape(title)}</h1><p class="error" id="error">{html.escape(message)}</p>
<p><a href="/">jobs</a> · <a href="/server">server</a></p></main></body></html>"""
    return HTMLResponse(body, status_code=status)


def _grpc_error(request: Request, error: grpc.RpcError, address: str) -> Response:
    code = error.code() if hasattr(error, "code") else None
    status = _HTTP_STATUS.get(code, 502)
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"the gansvc server at {address} is unavailable: {details}"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"the gansvc server at {address} refused the dashboard's token: {details}"
    else:
        message = details or (code.name if code else "error")
    return _error_response(request, status, message, code.name if code else "UNKNOWN")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(name, f"got {text!r}, expected a whole number") from None
    if not low <= value <= high:
        raise BadRequest(name, f"got {value}, expected {low} to {high}")
    return value


def _sse(data, event: str | None = None, event_id: int | None = None) -> str:
    """Return one server-sent event (data as JSON on one line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(shapes.finite(data), separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Dashboard:
    """The app's state: the client, caches of what never changes for a job's past, and the routes."""

    def __init__(self, client):
        # each request's calls carry its session's token when the server needs one (gansvc.web.login)
        self.client = ClientOfRequest(client)
        self.address = client.address
        self._best_fid: dict[str, tuple[float | None, float | None]] = {}  # job -> (latest fid seen, best)
        self._best_events: dict[str, tuple[int, dict | None]] = {}  # job -> (events scanned, last best event)
        self._scan_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._metrics_registry = None
        self._fields: list[dict] | None = None

    # ------------------------------------------------------------------ helpers
    async def call(self, function, *args, **kwargs):
        """Run one blocking client call on the thread pool."""
        return await run_in_threadpool(function, *args, **kwargs)

    def _jobs_query(self, request: Request) -> dict:
        states = []
        for value in request.query_params.getlist("state"):
            for part in value.split(","):
                if part.strip():
                    state = part.strip().upper()
                    if state not in registry.JOB_STATES:
                        raise BadRequest("state", f"got {part!r}, expected one of {', '.join(registry.JOB_STATES)}")
                    states.append(state)
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise BadRequest("kind", f"got {kind!r}, expected one of {', '.join(KINDS)}")
        return {"states": states, "kind": kind, "page_size": _int_param(request, "page_size", 50, 1, 500),
                "page_token": request.query_params.get("page_token", ""),
                "sweep": request.query_params.get("sweep") or None}  # fmt: skip

    def jobs_page(self, states, kind, page_size, page_token, sweep=None) -> dict:
        """Return one ListJobs page as JSON, each job with its best FID (blocking); with `sweep`, that sweep's
        trials (newest first; the page token is an offset)."""
        if sweep:
            messages, next_token = self._trial_page(sweep, states, kind, page_size, page_token)
        else:
            page = self.client.list_jobs_page(states, kind, page_size, page_token)
            messages, next_token = page.jobs, page.next_page_token
        jobs = []
        for message in messages:
            job = shapes.job(message)
            job["best_fid"] = self._best_fid_of(message)
            jobs.append(job)
        return {"jobs": jobs, "next_page_token": next_token}

    def _trial_page(self, sweep_id, states, kind, page_size, page_token):
        """Return (trial jobs, next token) of one page of a sweep's trials, newest (highest trial number) first.

        ListJobs has no sweep filter: the trials are the ones the sweep's TrialStarted events name."""
        try:
            offset = int(page_token or 0)
        except ValueError:
            raise BadRequest("page_token", f"got {page_token!r}, expected one from the previous page") from None
        sweep = self.client.get_job(sweep_id)
        if sweep.kind != KIND_TO_PROTO["sweep"]:
            raise BadRequest("sweep", f"job {sweep_id} is a {shapes.job(sweep)['kind']} job, not a sweep")
        started = {}
        for event in self.client.watch_call(sweep_id, history_only=True):
            if event.WhichOneof("payload") == "trial_started":
                started[event.trial_started.trial] = event.trial_started.trial_job_id
        ids = [started[n] for n in sorted(started, reverse=True)]
        if kind not in (None, "training"):  # trials are training jobs
            return [], ""
        if states:  # the state filter needs every trial's job before paging
            jobs = [j for j in map(self.client.get_job, ids) if shapes.job(j)["state"] in states]
            end = offset + page_size
            return jobs[offset:end], str(end) if end < len(jobs) else ""
        end = offset + page_size
        return [self.client.get_job(i) for i in ids[offset:end]], str(end) if end < len(ids) else ""

    def compare(self, job_ids: list[str], names: list[str], points: int) -> dict:
        """Return the jobs' metric series (each downsampled to at most `points`, with each point's wall time) and
        the spec fields that differ between them (blocking)."""
        jobs, series, specs = [], {}, {}
        for job_id in job_ids:
            job = shapes.job(self.client.get_job(job_id))
            jobs.append({k: job[k] for k in ("id", "kind", "state", "created_at", "started_at", "sweep_id",
                                             "trial_number")})  # fmt: skip
            specs[job_id] = job["spec"]
            by_name: dict[str, dict[str, list]] = {}
            # downsampled by the server (GetMetrics max_points), each series on its own
            for step, time, values in self.client.metric_points(job_id, names=names, max_points=points):
                for name, value in values.items():
                    kept = by_name.setdefault(name, {"step": [], "time": [], "value": []})
                    kept["step"].append(step)
                    kept["time"].append(time)
                    kept["value"].append(value if math.isfinite(value) else None)
            series[job_id] = {name: by_name[name] for name in sorted(by_name)}
        metrics = sorted({name for job in series.values() for name in job})
        return {"jobs": jobs, "metrics": metrics, "series": series, "diff": views.spec_diff(specs)}

    def sweep(self, sweep_id: str) -> dict:
        """Return the sweep's trials (views.sweep_trials) from its events and its trials' jobs (blocking)."""
        job = self.client.get_job(sweep_id)
        if job.kind != KIND_TO_PROTO["sweep"]:
            raise BadRequest("sweep", f"job {sweep_id} is a {shapes.job(job)['kind']} job, not a sweep")
        events = list(self.client.watch_call(sweep_id, history_only=True))
        ids = {e.trial_started.trial_job_id for e in events if e.WhichOneof("payload") == "trial_started"}
        return views.sweep_trials(job, events, {i: self.client.get_job(i) for i in sorted(ids)})

    def training_fields(self) -> list[dict]:
        """Return the server's training settings (GetServerInfo.training_fields), asked once."""
        if self._fields is None:
            self._fields = views.field_list(self.client.server_info())
        return self._fields

    def _best_fid_of(self, job) -> float | None:
        """Return the lowest FID in the job's history; GetMetrics is asked again only when the latest FID changed."""
        latest = job.latest_metrics.get("fid")
        if latest is None:
            return None
        cached = self._best_fid.get(job.id)
        if cached is not None and (cached[0] == latest or (math.isnan(latest) and cached[0] is None)):
            return cached[1]
        # the lowest FID survives the server's downsampling (every bucket keeps its minimum)
        history = self.client.metrics(job.id, names=["fid"], max_points=SERIES_POINTS)
        values = [v["fid"] for _, v in history if "fid" in v and math.isfinite(v["fid"])]
        best = min(values) if values else None
        self._best_fid[job.id] = (None if math.isnan(latest) else latest, best)
        return best

    def best_event(self, job_id: str) -> dict | None:
        """Return the job's best checkpoint (step, metric, value, artifact, generator), or None.

        A finished job's summary names it; a running job's comes from its latest `best` event: the history is
        scanned once, later calls read only the events after the last one scanned."""
        job = self.client.get_job(job_id)
        summary = shapes.message(job)["summary"] or {}
        best = summary.get("best")
        if isinstance(best, dict):
            return {"step": int(best.get("step", 0)), "metric": best.get("metric", ""), "value": best.get("value"),
                    "artifact": best.get("checkpoint", ""), "generator": best.get("generator", "")}  # fmt: skip
        with self._locks_guard:
            lock = self._scan_locks.setdefault(job_id, threading.Lock())
        with lock:
            scanned, best = self._best_events.get(job_id, (0, None))
            for event in self.client.watch_call(job_id, after_sequence=scanned, history_only=True):
                scanned = event.sequence
                if event.WhichOneof("payload") == "best":
                    best = shapes.message(event.best)
            self._best_events[job_id] = (scanned, best)
            return best

    def series(self, job_id: str, names: list[str], points: int) -> dict:
        """Return the job's metric series, each downsampled by the server to at most `points` points (blocking)."""
        history = self.client.metric_history(job_id, names=names, max_points=points)
        by_name: dict[str, dict[str, list]] = {}
        for point in history.points:
            for name, value in point.values.items():
                kept = by_name.setdefault(name, {"step": [], "value": []})
                kept["step"].append(point.step)
                kept["value"].append(value if math.isfinite(value) else None)
        return {"job_id": job_id, "points": points, "total": dict(sorted(history.total_points.items())),
                "series": {name: by_name[name] for name in sorted(by_name)}}

    # ------------------------------------------------------------------ pages
    async def page_jobs(self, request: Request) -> Response:
        await self.call(self.client.list_jobs_page, (), None, 1, "")  # a clear 503 page when the server is down
        return FileResponse(STATIC / "jobs.html")

    async def page_job(self, request: Request) -> Response:
        await self.call(self.client.get_job, request.path_params["job_id"])  # 404 for an unknown job
        return FileResponse(STATIC / "job.html")

    async def page_server(self, request: Request) -> Response:
        return FileResponse(STATIC / "server.html")

    async def page_compare(self, request: Request) -> Response:
        return FileResponse(STATIC / "compare.html")

    async def page_sweep(self, request: Request) -> Response:
        await self.call(self.sweep, request.path_params["sweep_id"])  # 404 / 400 before the page
        return FileResponse(STATIC / "sweep.html")

    async def page_submit(self, request: Request) -> Response:
        return FileResponse(STATIC / "submit.html")

    # ------------------------------------------------------------------ JSON
    async def api_jobs(self, request: Request) -> Response:
        query = self._jobs_query(request)
        return JSONResponse(shapes.finite(await self.call(self.jobs_page, **query)))

    async def api_jobs_stream(self, request: Request) -> Response:
        query = self._jobs_query(request)
        first = await self.call(self.jobs_page, **query)  # errors before the stream starts get their status

        async def stream():
            yield "retry: 2000\n\n"
            last, page, quiet = None, first, 0.0
            while True:
                if page is not None:
                    text = json.dumps(shapes.finite(page), separators=(",", ":"))
                    if text != last:
                        yield f"data: {text}\n\n"
                        last, quiet = text, 0.0
                await asyncio.sleep(JOBS_POLL_SECONDS)
                quiet += JOBS_POLL_SECONDS
                if quiet >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                try:
                    page = await self.call(self.jobs_page, **query)
                except grpc.RpcError as error:
                    page = None
                    yield _sse({"error": _describe(error, self.address)}, event="upstream")

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def api_job(self, request: Request) -> Response:
        job = await self.call(self.client.get_job, request.path_params["job_id"])
        return JSONResponse(shapes.finite(shapes.job(job)))

    async def api_events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        # EventSource sends the id of the last event it saw when it reconnects; that wins over ?after=
        header = request.headers.get("last-event-id")
        if header:
            try:
                after = int(header)
            except ValueError:
                raise BadRequest("Last-Event-ID", f"got {header!r}, expected an event sequence number") from None
            if after < 0:
                raise BadRequest("Last-Event-ID", f"got {after}, expected >= 0")
        else:
            after = _int_param(request, "after", 0, 0, 2**62)
        job = await self.call(self.client.get_job, job_id)  # 404 before the stream starts
        if after > job.last_sequence:
            field = "Last-Event-ID" if header else "after"
            raise BadRequest(field, f"got {after}, but the job's last event is {job.last_sequence}")
        relay = Relay(self.client.watch_call(job_id, after_sequence=after))

        async def stream():
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        event = await relay.next(timeout=KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    except StopAsyncIteration:  # the job ended: the page closes its EventSource
                        yield _sse({"reason": "the job ended"}, event="end")
                        return
                    except grpc.RpcError as error:  # the page reconnects with Last-Event-ID: nothing is lost
                        yield _sse({"error": _describe(error, self.address)}, event="upstream")
                        return
                    yield _sse(shapes.event(event), event_id=event.sequence)
            finally:
                relay.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def api_series(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        points = _int_param(request, "points", SERIES_POINTS, 4, MAX_SERIES_POINTS)
        names = [n for part in request.query_params.getlist("names") for n in part.split(",") if n.strip()]
        return JSONResponse(await self.call(self.series, job_id, names, points))

    async def api_best(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return JSONResponse(shapes.finite({"best": await self.call(self.best_event, job_id)}))

    async def api_artifacts(self, request: Request) -> Response:
        artifacts = await self.call(self.client.list_artifacts, request.path_params["job_id"])
        return JSONResponse({"artifacts": [shapes.message(a) for a in artifacts]})

    async def api_file(self, request: Request) -> Response:
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        relay = Relay(self.client.download_call(job_id, name))
        try:
            first = await relay.next()
        except StopAsyncIteration:
            first = None
        except BaseException:
            relay.cancel()
            raise
        filename = PurePosixPath(name).name
        media = mimetypes.guess_type(filename)[0] or ""
        if not media.startswith(("image/", "text/", "application/json")):  # .pt is no "page table"
            media = "application/octet-stream"
        inline = media.startswith("image/") and request.query_params.get("download") is None
        disposition = "inline" if inline else "attachment"
        headers = {"Content-Disposition": f'{disposition}; filename="{filename}"'}
        if first is not None:
            headers["Content-Length"] = str(first.total_size)
            headers["X-Checksum-SHA256"] = first.sha256
            if inline:  # grids never change once written
                headers["Cache-Control"] = "max-age=3600"
        client = self.client

        async def body():
            nonlocal relay
            if first is None:
                return
            sent, total, expected = 0, first.total_size, first.sha256
            chunk, retries = first, 0
            try:
                while True:
                    sent += len(chunk.data)
                    yield chunk.data
                    try:
                        chunk = await relay.next()
                    except StopAsyncIteration:
                        return
                    except grpc.RpcError as error:
                        # a dropped connection: continue at the byte reached, as `gansvc download` does
                        if error.code() != grpc.StatusCode.UNAVAILABLE or retries >= 5 or sent >= total:
                            raise
                        retries += 1
                        await asyncio.sleep(min(0.2 * 2**retries, 5.0))
                        relay = Relay(client.download_call(job_id, name, offset=sent))
                        chunk = await relay.next()
                        if chunk.sha256 and chunk.sha256 != expected:
                            raise OSError(f"{name} changed during the download") from None
            finally:
                relay.cancel()

        return StreamingResponse(body(), media_type=media, headers=headers)

    async def api_cancel(self, request: Request) -> Response:
        refusal = _cross_site(request)
        if refusal:
            return JSONResponse({"error": refusal, "code": "CROSS_SITE"}, status_code=403)
        job = await self.call(self.client.cancel, request.path_params["job_id"])
        return JSONResponse(shapes.finite(shapes.job(job)))

    async def api_compare(self, request: Request) -> Response:
        ids = [i.strip() for part in request.query_params.getlist("jobs") for i in part.split(",") if i.strip()]
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise BadRequest("jobs", "give one or more job ids, e.g. ?jobs=A,B")
        if len(ids) > MAX_COMPARE:
            raise BadRequest("jobs", f"got {len(ids)} jobs, at most {MAX_COMPARE} compare at once")
        names = [n for part in request.query_params.getlist("names") for n in part.split(",") if n.strip()]
        points = _int_param(request, "points", SERIES_POINTS, 4, MAX_SERIES_POINTS)
        return JSONResponse(shapes.finite(await self.call(self.compare, ids, names, points)))

    async def api_sweeps(self, request: Request) -> Response:
        query = self._jobs_query(request)
        query["kind"] = "sweep"
        return JSONResponse(shapes.finite(await self.call(self.jobs_page, **query)))

    async def api_sweep(self, request: Request) -> Response:
        return JSONResponse(shapes.finite(await self.call(self.sweep, request.path_params["sweep_id"])))

    async def api_fields(self, request: Request) -> Response:
        return JSONResponse(shapes.finite({"fields": await self.call(self.training_fields)}))

    async def api_submit(self, request: Request) -> Response:
        """SubmitTraining from JSON {"settings": {name: value}} (a form's text values are typed by the field
        list) or {"toml": TEXT}, with an optional request_id. A bad value is 400 with the field it names."""
        refusal = _cross_site(request)
        if refusal:
            return JSONResponse({"error": refusal, "code": "CROSS_SITE"}, status_code=403)
        fields = await self.call(self.training_fields)
        known = {f["name"] for f in fields}
        try:
            body = await request.json()
        except ValueError:
            return _field_error("body", "expected a JSON object {settings} or {toml}")
        if not isinstance(body, dict):
            return _field_error("body", "expected a JSON object {settings} or {toml}")
        request_id = body.get("request_id") or None
        try:
            if body.get("toml"):
                settings = views.form_settings(fields, views.toml_settings(str(body["toml"])))
            else:
                form = body.get("settings") or {}
                if not isinstance(form, dict):
                    raise views.FormError("settings", "expected a JSON object of settings")
                settings = views.form_settings(fields, form)
            job = await self.call(self.client.submit_training, settings, request_id=request_id)
        except views.FormError as error:
            return _field_error(error.field, str(error))
        except ValueError as error:  # the client's own check of a value's type (names the field)
            return _field_error(views.error_field(str(error), known), str(error))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return _field_error(views.error_field(error.details() or "", known), error.details() or "")
        return JSONResponse(shapes.finite(shapes.job(job)))

    async def api_server(self, request: Request) -> Response:
        info = await self.call(self.client.server_info)
        return JSONResponse(shapes.finite(shapes.message(info)))

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from gansvc.web.prometheus import make_registry

        if self._metrics_registry is None:
            self._metrics_registry = make_registry(self.client)
        body = await self.call(generate_latest, self._metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _describe(error: grpc.RpcError, address: str) -> str:
    code = error.code() if hasattr(error, "code") else None
    name = code.name if code else "error"
    return f"{name} from the gansvc server at {address}: {error.details() if hasattr(error, 'details') else error}"


def _field_error(field: str, message: str) -> Response:
    """Return a 400 naming the field a submitted value is wrong in ("" when the message names no known field)."""
    return JSONResponse({"error": message, "code": "INVALID_ARGUMENT", "field": field}, status_code=400)


def _cross_site(request: Request) -> str:
    """Return why a state-changing request is refused as cross-site ("" when it is same-origin or not a browser's).

    Browsers send Origin on every POST (and Sec-Fetch-Site); a page elsewhere cannot make them lie. A client
    without either (curl, a script) is no cross-site request."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own:
        return f"cross-site request refused: Origin {origin} is not {own}"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused: Sec-Fetch-Site {site}"
    return ""


def create_app(client) -> Starlette:
    """Return the dashboard's ASGI app, answering through `client` (a GanClient)."""
    board = Dashboard(client)
    gate = LoginGate(client, _cross_site, _error_response)
    routes = [
        Route("/login", gate.login_page),
        Route("/login", gate.login, methods=["POST"]),
        Route("/logout", gate.logout, methods=["POST"]),
        Route("/", board.page_jobs),
        Route("/jobs/{job_id}", board.page_job),
        Route("/server", board.page_server),
        Route("/compare", board.page_compare),
        Route("/sweeps/{sweep_id}", board.page_sweep),
        Route("/submit", board.page_submit),
        Route("/metrics", board.metrics),
        Route("/api/jobs", board.api_jobs),
        Route("/api/jobs/stream", board.api_jobs_stream),
        Route("/api/jobs/{job_id}", board.api_job),
        Route("/api/jobs/{job_id}/events", board.api_events),
        Route("/api/jobs/{job_id}/series", board.api_series),
        Route("/api/jobs/{job_id}/best", board.api_best),
        Route("/api/jobs/{job_id}/artifacts", board.api_artifacts),
        Route("/api/jobs/{job_id}/files/{name:path}", board.api_file),
        Route("/api/jobs/{job_id}/cancel", board.api_cancel, methods=["POST"]),
        Route("/api/server", board.api_server),
        Route("/api/compare", board.api_compare),
        Route("/api/sweeps", board.api_sweeps),
        Route("/api/sweeps/{sweep_id}", board.api_sweep),
        Route("/api/spec/fields", board.api_fields),
        Route("/api/submit", board.api_submit, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    async def on_grpc_error(request: Request, error: Exception) -> Response:
        code = error.code() if hasattr(error, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED and REQUEST_CLIENT.get() is not None:
            # the user's own token, refused now (the server's token file changed): log in again
            gate.session_ended(request)
            return _error_response(request, 401, "the gansvc server no longer accepts this token: log in again",
                                   "UNAUTHENTICATED")  # fmt: skip
        return _grpc_error(request, error, board.address)

    async def on_bad_request(request: Request, error: Exception) -> Response:
        return _error_response(request, 400, str(error), "INVALID_ARGUMENT")

    async def on_not_found(request: Request, error: Exception) -> Response:
        return _error_response(request, 404, f"no page {request.url.path}", "NOT_FOUND")

    handlers = {grpc.RpcError: on_grpc_error, BadRequest: on_bad_request, 404: on_not_found}
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=[Middleware(Guarded, gate=gate)])
    app.state.dashboard = board
    app.state.login = gate
    return app

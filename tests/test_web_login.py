"""The dashboard in front of a server that needs a token (`gansvc serve --auth-token-file`): a real gRPC server with a
token file, `python -m gansvc.web` started WITHOUT a token of its own, and plain HTTP requests (no browser):

- without a session every page, API, asset and /metrics is 401 (the pages answer with the login form); /login is
  the only thing served;
- a wrong token posted to /login is 401 and sets no cookie; the right one sets an HttpOnly, SameSite=Strict cookie
  that does not hold the token, and with it the pages and the JSON (ListJobs through the user's token) are served;
- a made-up session id is 401; `Authorization: Bearer` with the token works for scripts; a wrong one is 401;
- a cross-site POST (cancel, submit, login) is refused even with the session's cookie, a same-origin cancel works;
- logout ends the session; a token removed from the server's file ends its session at the next request.
The dashboard without login (a server that needs no token) is tests/test_web.py.
"""

from __future__ import annotations

import http.client
import http.cookies
import json
import time
import urllib.parse

import pytest

from gansvc.client import GanClient, state_name
from gansvc.service.server import GanServer, ServerConfig

from test_web import TINY, start_web, stop  # tests/test_web.py's helpers

TOKEN = "s3cret-token-for-the-web-test"
OTHER = "another-accepted-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, fashion_mnist_root):
    state = tmp_path_factory.mktemp("state")
    tokens = state / "tokens.txt"
    tokens.write_text(f"{TOKEN}\n{OTHER}\n")
    server = GanServer(ServerConfig(state_dir=state / "s", listen="127.0.0.1:0", cpu_jobs=1,
                                    auth_token_file=tokens, data_roots=[fashion_mnist_root]))  # fmt: skip
    server.start()
    server.scheduler._start_queued = lambda: None  # no workers: a submitted job stays QUEUED
    process, url = start_web(server.address, tmp_path_factory.mktemp("web"))  # no --token-file: it has none
    try:
        yield server, url, tokens
    finally:
        stop(process)
        server.shutdown(timeout=10)


def get(url: str, headers: dict | None = None, method: str = "GET", data: bytes | None = None):
    """Return (status, headers, body) of one request, redirects not followed."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request(method, parsed.path + (f"?{parsed.query}" if parsed.query else ""), body=data,
                           headers=headers or {})  # fmt: skip
        response = connection.getresponse()
        # an event stream never ends: its first bytes are enough
        body = response.read(200) if response.getheader("content-type", "").startswith("text/event") else response.read()
        return response.status, dict(response.getheaders()), body
    finally:
        connection.close()


def post(url: str, fields: dict | None = None, body: bytes | None = None, headers: dict | None = None):
    data = body if body is not None else urllib.parse.urlencode(fields or {}).encode()
    content_type = "application/json" if body is not None else "application/x-www-form-urlencoded"
    return get(url, method="POST", headers={"Content-Type": content_type, **(headers or {})}, data=data)


def login(base: str, token: str, **headers):
    """Return (status, headers, body) of posting the login form (redirects not followed)."""
    return post(f"{base}/login", {"token": token, "next": "/server"}, headers={"Origin": base, **headers})


def session_cookie(headers) -> tuple[str, str]:
    """Return (the Set-Cookie header, the session id) of a login answer."""
    (line,) = [v for k, v in headers.items() if k.lower() == "set-cookie"]  # one Set-Cookie: the session
    cookie = http.cookies.SimpleCookie(line)
    return line, cookie["gansvc_session"].value


GUARDED = ["/", "/server", "/submit", "/compare?jobs=x", "/api/jobs", "/api/server", "/api/spec/fields",
           "/api/jobs/stream", "/metrics", "/static/app.css", "/static/jobs.js", "/static/vendor/uplot/uPlot.iife.min.js"]


def test_nothing_but_the_login_form_without_a_session(secured):
    _, base, _ = secured
    for path in GUARDED:
        status, headers, body = get(base + path)
        assert status == 401, (path, status, body[:200])
        if path.startswith("/api/"):
            assert json.loads(body)["code"] == "UNAUTHENTICATED"
        elif path in ("/", "/server", "/submit", "/compare?jobs=x"):
            assert b'<form method="post" action="/login"' in body and b"/static/" not in body
        else:
            assert b"log in" in body and b"{" not in body[:1]  # plain text: no data, no asset
    status, _, body = get(base + "/login")
    assert status == 200 and b'name="token"' in body
    status, _, _ = post(f"{base}/api/jobs/train-x/cancel", headers={"Origin": base})
    assert status == 401


def test_a_wrong_token_is_401_the_right_one_a_session(secured):
    server, base, _ = secured
    status, headers, body = login(base, "not-the-token")
    assert status == 401 and b"refused this token" in body
    assert not [k for k in headers if k.lower() == "set-cookie"]
    status, headers, _ = login(base, TOKEN)
    assert status == 303 and headers["location"] == "/server"  # the `next` page
    line, session = session_cookie(headers)
    attributes = {part.strip().split("=")[0].lower() for part in line.split(";")}
    assert {"httponly", "samesite", "path"} <= attributes and "samesite=strict" in line.lower()
    assert TOKEN not in line and len(session) >= 40
    cookie = {"Cookie": f"gansvc_session={session}"}
    with GanClient(server.address, token=TOKEN, timeout=30) as client:
        expected = [j.id for j in client.list_jobs()]
        job = client.submit_training(TINY)
    status, _, body = get(base + "/api/jobs", headers=cookie)
    assert status == 200 and [j["id"] for j in json.loads(body)["jobs"]] == [job.id, *expected]
    for path in ("/", "/server", "/static/app.css", "/metrics", f"/jobs/{job.id}"):
        assert get(base + path, headers=cookie)[0] == 200, path
    # a session id nobody was given, and scripts' bearer header
    assert get(base + "/api/jobs", headers={"Cookie": "gansvc_session=" + "A" * 43})[0] == 401
    assert get(base + "/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert get(base + "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401


def test_cross_site_posts_are_refused_same_origin_cancel_works(secured):
    server, base, _ = secured
    _, headers, _ = login(base, TOKEN)
    cookie = f"gansvc_session={session_cookie(headers)[1]}"
    with GanClient(server.address, token=TOKEN, timeout=30) as client:
        job = client.submit_training(TINY)
        before = [j.id for j in client.list_jobs()]
        url = f"{base}/api/jobs/{job.id}/cancel"
        status, _, body = post(url, headers={"Cookie": cookie, "Origin": "http://evil.example"})
        assert status == 403 and b"cross-site" in body
        status, _, _ = post(url, headers={"Cookie": cookie, "Origin": base, "Sec-Fetch-Site": "cross-site"})
        assert status == 403
        status, _, _ = post(f"{base}/api/submit", body=json.dumps({"settings": TINY}).encode(),
                            headers={"Cookie": cookie, "Origin": "http://evil.example"})  # fmt: skip
        assert status == 403
        assert state_name(client.get_job(job.id).state) == "QUEUED"  # nothing cross-site reached the server
        assert [j.id for j in client.list_jobs()] == before
        status, _, _ = login(base, TOKEN, Origin="http://evil.example")  # no session forced on a victim
        assert status == 403
        status, _, body = post(url, headers={"Cookie": cookie, "Origin": base})
        assert status == 200 and json.loads(body)["id"] == job.id
        assert state_name(client.get_job(job.id).state) == "CANCELLED"


def test_logout_and_a_revoked_token_end_the_session(secured):
    _, base, tokens = secured
    _, headers, _ = login(base, TOKEN)
    first = {"Cookie": f"gansvc_session={session_cookie(headers)[1]}"}
    status, _, _ = post(f"{base}/logout", headers={**first, "Origin": base})
    assert status == 303 and get(base + "/api/jobs", headers=first)[0] == 401
    _, headers, _ = login(base, OTHER)
    other = {"Cookie": f"gansvc_session={session_cookie(headers)[1]}"}
    assert get(base + "/api/jobs", headers=other)[0] == 200
    tokens.write_text(f"{TOKEN}\n")  # the server re-reads its file: OTHER is no longer accepted
    deadline = time.monotonic() + 10
    while get(base + "/api/jobs", headers=other)[0] != 401:
        assert time.monotonic() < deadline, "the revoked token's session still served"
        time.sleep(0.3)
    assert get(base + "/api/jobs", headers=other)[0] == 401  # and the session is gone for good


@pytest.mark.slow
def test_the_login_page_in_a_browser(secured, tmp_path):
    """Headless Chromium: the jobs page asks for the token, a wrong one is refused on the form, the right one opens
    the jobs page live; the page's scripts cannot read the session cookie (HttpOnly)."""
    import devtools  # tests/devtools.py

    from test_web import ARTIFACTS

    if not devtools.available():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    _, base, _ = secured
    with devtools.Browser(base + "/", tmp_path / "profile") as page:
        page.wait("document.getElementById('token') !== null", 60, "the login form")
        page.screenshot(ARTIFACTS / "login.png")
        fill = ("(t) => { document.getElementById('token').value = t;"
                " document.getElementById('login').submit(); }")  # fmt: skip
        page.evaluate(f"({fill})({json.dumps('wrong-token')})")
        page.wait("document.getElementById('login-error') !== null", 60, "the refusal on the form")
        assert "refused" in page.evaluate("document.getElementById('login-error').textContent")
        page.evaluate(f"({fill})({json.dumps(TOKEN)})")
        page.wait("document.getElementById('live') !== null && "
                  "document.getElementById('live').textContent === 'live'", 60, "the jobs page's live stream")  # fmt: skip
        assert page.evaluate("document.location.pathname") == "/"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script of any page reads the session
        page.screenshot(ARTIFACTS / "jobs-after-login.png")

"""Headless Chromium driven over the DevTools protocol with the standard library only (a WebSocket client of
~60 lines): open a page, evaluate JavaScript in it, wait for what it shows, take screenshots.

Used by tests/test_web.py; needs Debian's `chromium` (apt-get install -y chromium).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def available() -> bool:
    """Return whether a chromium binary is on PATH."""
    return shutil.which("chromium") is not None


class Browser:
    """One headless Chromium showing one page; `evaluate` runs JavaScript in it and returns the value."""

    def __init__(self, url: str, profile: Path, width: int = 1400, height: int = 1000):
        profile.mkdir(parents=True, exist_ok=True)
        # Chromium puts its org.chromium.* scratch folders, and the SingletonSocket inside one, in TMPDIR. A Unix
        # socket path holds at most 107 bytes, so a pytest tmp_path there kills it at start ("Socket path too
        # long"): a short folder of its own under the system's temp folder, removed by close().
        self._scratch = tempfile.mkdtemp(prefix="cr-")
        self._log = profile / "chromium.log"
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                 "--remote-allow-origins=*", f"--user-data-dir={profile}", f"--window-size={width},{height}", url],
                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "TMPDIR": self._scratch},
            )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                tail = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium did not open its DevTools port; its log ends:\n{tail}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = None
        while page is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                page = next((t for t in json.load(reply) if t["type"] == "page"), None)
            time.sleep(0.1)
        if page is None:
            self.close()
            raise RuntimeError("chromium shows no page")
        self._socket = _connect(page["webSocketDebuggerUrl"])
        self._next_id = 0

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command; return its result (events in between are skipped)."""
        self._next_id += 1
        _send(self._socket, json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(_receive(self._socket))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """Return the value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0, what: str = ""):
        """Return the expression's value once it is truthy (TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        problem = ""
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError as error:  # the page is still loading: its elements are not there yet
                value, problem = None, f" (last error: {error})"
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {what or expression}{problem}")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        """Load another URL in the page and wait until its document is complete."""
        self.call("Page.navigate", url=url)
        time.sleep(0.2)
        self.wait(f"document.readyState === 'complete' && location.href === {json.dumps(url)}", 60, url)

    def screenshot(self, path: Path) -> Path:
        """Save the page as a PNG."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser."""
        if getattr(self, "_socket", None) is not None:
            self._socket.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _connect(url: str) -> socket.socket:
    """Open a WebSocket (RFC 6455 handshake) to ws://host:port/path."""
    parsed = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the DevTools socket closed during the handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")
    return sock


def _send(sock: socket.socket, text: str) -> None:
    """Send one masked text frame (clients must mask)."""
    payload = text.encode()
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    elif len(payload) < 1 << 16:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
    mask = os.urandom(4)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the DevTools socket closed")
        data += chunk
    return data


def _receive(sock: socket.socket) -> str:
    """Return the next whole text message (continuation frames joined; the server does not mask)."""
    parts = []
    while True:
        first, second = _exactly(sock, 2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", _exactly(sock, 2))[0]
        elif length == 127:
            length = struct.unpack(">Q", _exactly(sock, 8))[0]
        payload = _exactly(sock, length)
        opcode = first & 0x0F
        if opcode in (0x1, 0x0):
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts).decode()
        elif opcode == 0x8:
            raise ConnectionError("the DevTools socket was closed by chromium")
        # ping / pong frames: nothing to answer for a short-lived test client

"""Drive a headless Chromium over the DevTools protocol, with the stdlib only.

L{chromium_argv} is the command line (the flags that work in containers and
CI, a fresh profile, DevTools on an ephemeral loopback port);
L{page_websocket} finds the page's DevTools address once Chromium is up;
L{DevTools} is a small blocking websocket client (RFC 6455, client frames
masked) for C{Runtime.evaluate} and C{Page.captureScreenshot}. Blocking:
tests call it through C{deferToThread}.
"""
import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import urllib.request
from urllib.parse import urlsplit

__all__ = ["find_chromium", "chromium_argv", "page_websocket", "DevTools", "DevToolsError"]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class DevToolsError(Exception):
    """Chromium answered a DevTools call with an error, or the page threw."""


def find_chromium():
    """The Chromium executable ($DRAGONFLY_CHROMIUM, else on PATH), or None."""
    configured = os.environ.get("DRAGONFLY_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_argv(exe, profile, url, size=(1440, 1100)):
    """Headless Chromium on C{url} with a fresh profile directory C{profile}."""
    return [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", url]


def page_websocket(profile):
    """The DevTools websocket URL of the first page, or None while Chromium starts."""
    try:
        with open(os.path.join(profile, "DevToolsActivePort")) as f:
            port = int(f.readline().strip())
    except (OSError, ValueError):
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
        targets = json.load(r)
    pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
    return pages[0]["webSocketDebuggerUrl"] if pages else None


class DevTools:
    """One DevTools session on a page target (blocking calls)."""

    def __init__(self, ws_url, timeout=15.0):
        u = urlsplit(ws_url)
        self._sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self._buf = b""
        self._id = 0
        key = base64.b64encode(os.urandom(16))
        self._sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (u.path.encode(), u.hostname.encode(), u.port, key))
        while b"\r\n\r\n" not in self._buf:
            self._buf += self._read()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            raise DevToolsError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self):
        data = self._sock.recv(65536)
        if not data:
            raise DevToolsError("DevTools connection closed")
        return data

    def _exact(self, n):
        while len(self._buf) < n:
            self._buf += self._read()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send(self, payload, opcode=1):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
        self._sock.sendall(head + mask + masked)

    def _message(self):
        """The next text message (pings answered, fragments joined)."""
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 8:
                raise DevToolsError("DevTools closed the websocket")
            if opcode == 9:
                self._send(payload, opcode=10)
                continue
            if opcode in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode("utf-8")

    def call(self, method, **params):
        """Send one command; return its result (events in between are dropped)."""
        self._id += 1
        self._send(json.dumps({"id": self._id, "method": method, "params": params}).encode())
        while True:
            msg = json.loads(self._message())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise DevToolsError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression):
        """The JSON value of C{expression} evaluated in the page."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise DevToolsError(f"page threw: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def screenshot(self, path):
        """Save the page as a PNG at C{path}."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

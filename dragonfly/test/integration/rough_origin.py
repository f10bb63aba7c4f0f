"""An origin that ends its bodies the hard way, run as its own process.

    python -m dragonfly.test.integration.rough_origin --port-file F [--size N] [--cut N]

Raw sockets (one thread per connection), so each connection ends exactly as
told. Every answer is ``200`` to a ``GET`` whatever its ``Range``, with no
``ETag`` and no ``Last-Modified``, and closes the connection. By path prefix:

- ``/reset/<name>``: no ``Content-Length`` and no chunked encoding; the body
  (``--size`` bytes of L{body_of}, version 1), then a reset (``SO_LINGER`` 0:
  RST, no FIN) once the bytes left the send queue, so the client has them;
- ``/clean/<name>``: the same, then a clean close (FIN);
- ``/flip/<name>``: ``Content-Length: --size``; the first request gets the
  first ``--cut`` bytes of version 1 and a clean close (a body cut short),
  every later one the whole of version 2;
- ``/flip-lm/<name>``: the same, each version with its own ``Last-Modified``
  (and still no ``ETag``).

``GET /__log`` answers the requests so far as JSON ``[{"path", "range",
"if_range"}, ...]``.
Once listening it writes ``{"port": N}`` to the port file (temp name, then
rename); SIGTERM ends it with status 0.
"""
import argparse
import fcntl
import json
import os
import random
import signal
import socket
import struct
import sys
import termios
import threading
import time

__all__ = ["body_of", "LAST_MODIFIED"]

#: The Last-Modified of each version of a /flip-lm/ file.
LAST_MODIFIED = {1: b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n",
                 2: b"Last-Modified: Tue, 02 Jan 2024 00:00:00 GMT\r\n"}


def body_of(path, version, size):
    """The C{size} bytes of C{version} (1 or 2) of C{path}, the same in every process."""
    return random.Random(f"{version}:{path}").randbytes(size)


class _Origin:
    def __init__(self, size, cut):
        self.size = size
        self.cut = cut
        self.log = []
        self.seen = {}
        self.lock = threading.Lock()

    def serve(self, conn):
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.answer(conn, path.split("?")[0], headers.get("range"), headers.get("if-range"))
        except OSError:
            pass
        finally:
            conn.close()

    def answer(self, conn, path, rng, if_range):
        if path == "/__log":
            with self.lock:
                body = json.dumps(self.log).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            conn.shutdown(socket.SHUT_WR)
            return
        with self.lock:
            self.log.append({"path": path, "range": rng, "if_range": if_range})
            nth = self.seen[path] = self.seen.get(path, 0) + 1
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"
        if path.startswith(("/flip/", "/flip-lm/")):
            body = body_of(path, 1, self.size)[:self.cut] if nth == 1 \
                else body_of(path, 2, self.size)
            if path.startswith("/flip-lm/"):
                head += LAST_MODIFIED[min(nth, 2)]
            conn.sendall(head + b"Content-Length: %d\r\n\r\n" % self.size + body)
            conn.shutdown(socket.SHUT_WR)
            return
        if path.startswith(("/reset/", "/clean/")):
            conn.sendall(head + b"\r\n" + body_of(path, 1, self.size))
            if path.startswith("/clean/"):
                conn.shutdown(socket.SHUT_WR)
                return
            _wait_sent(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return   # the close in serve() resets the connection
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _wait_sent(conn, limit=30.0):
    """Until the kernel's send queue of C{conn} is empty (the peer acked every
    byte), at most C{limit} seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pending = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ,
                                                 struct.pack("i", 0)))[0]
        if pending == 0:
            return
        time.sleep(0.01)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--size", type=int, default=10 * 1024 * 1024 + 123)
    p.add_argument("--cut", type=int, default=9 * 1024 * 1024)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    origin = _Origin(args.size, args.cut)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": listener.getsockname()[1]}, f)
    os.replace(tmp, args.port_file)
    print(f"rough origin on port {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=origin.serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

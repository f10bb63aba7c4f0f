"""The processes of bench/bound.py: the least work each role must do under issue 20's Rules.

Not dragonfly: no Twisted, no scheduler, no store bookkeeping; blocking
sockets, ``recv_into`` or ``splice(2)``, ``pwrite``/``preadv``,
``os.sendfile``, ``blake3`` and ``hashlib``, one process per role as in the
product. What each role still does is what the Rules require:

- ``seed`` (the supernode): takes one downstream connection, then fetches
  the origin URL (nginx or the registry), cuts the body into pieces, stores
  each in its file, computes its BLAKE3 from the bytes it holds (and, with
  ``--sha256``, the whole body's sha256 in order; the last piece is released
  only once it matches, as the supernode's whole-content check gates the
  blob) and sends it on (``!QI`` total bytes and piece size first, then per
  piece its 32-byte digest and the bytes by ``sendfile`` from the file) as
  soon as it is hashed.
- ``peer`` (peer B, peer A, a dfdaemon): takes the pieces from ``--upstream``
  (``http://...``: a sendfile source whose piece digests the supernode gave,
  ``--digests``; ``seed:HOST:PORT``: the seed's frames), checks each piece's
  BLAKE3 against its digest, stores it; with ``--serve`` it is a dfdaemon:
  it answers one HTTP client (curl) and sends it the verified pieces in
  order by ``sendfile`` from its file (``--out copy``: read and written from a
  256 KiB buffer). Without ``--serve`` the output is the
  stored file (dfget links it: free).

``--take`` is how a receiving role takes a piece off its socket:

- ``recv``: ``recv_into`` a 4 MiB buffer (``MSG_WAITALL``: one call per
  piece), BLAKE3 (and sha256) of the buffer, then ``pwrite`` (the piece is
  verified before it is written);
- ``splice``: ``splice(2)`` socket -> pipe -> file, then read back in 1 MiB
  ``preadv``s and hash (the bytes hashed are the bytes stored; the piece is
  used only after its digest matched);
- ``recv2`` / ``splice2``: the same with the hashing (and the ``pwrite``)
  in a second thread, so the next piece comes in while one is hashed.

Sending downstream is always in a thread of its own. Each process reports
its own CPU (``getrusage``, all threads; and each thread's own,
``thread_cpu_s``) from the moment it is set up
(listening, buffers allocated) to its last byte, and ``time.monotonic()``
(CLOCK_MONOTONIC, one clock for every process) when it was done, in
``--result`` (JSON).
"""
import argparse
import fcntl
import hashlib
import json
import os
import queue
import resource
import socket
import struct
import sys
import threading
import time
import urllib.parse

from blake3 import blake3

TAKES = ("recv", "recv2", "splice", "splice2")
PREAMBLE = struct.Struct("!QI")
DIGEST = 32
#: Bytes per splice into the pipe (its size) and per read-back for hashing.
PIPE_BYTES = 1 << 20
READ_BACK = 1 << 20
#: pwrite slice (the store's WRITE_SLICE is 256 KiB; one call per piece is fewer syscalls).
WRITE_SLICE = 4 << 20
#: --out copy: bytes per read and send.
COPY_BYTES = 256 << 10
_F_SETPIPE_SZ = 1031


#: CPU seconds of each thread that ended (``time.thread_time()`` at its end), by name.
THREAD_CPU = {}


class Failed(Exception):
    """A piece or the whole body failed its check, or a peer broke the protocol."""


# ---------------------------------------------------------------- sockets

def read_head(sock):
    """Bytes of an HTTP head up to and including the blank line, read one byte at
    a time so that no body byte is taken from the socket (splice reads on)."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        b = sock.recv(1)
        if not b:
            raise Failed("connection closed in the HTTP head")
        head += b
        if len(head) > 65536:
            raise Failed("HTTP head over 64 KiB")
    return bytes(head)


def http_open(url):
    """(socket, body length) of a plain GET of ``url``; the socket is left at the body's first byte."""
    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 80))
    path = u.path + ("?" + u.query if u.query else "")
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: dragonfly-bench-bound\r\n"
                  "Accept: */*\r\n\r\n" % (path, u.netloc)).encode())
    lines = read_head(sock).decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or status[1] != "200":
        raise Failed("GET %s: %s" % (url, lines[0]))
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:] if x))
    if "content-length" not in headers:
        raise Failed("GET %s: no Content-Length" % url)
    return sock, int(headers["content-length"])


def recv_exact(sock, view):
    """Fill ``view`` from ``sock`` (MSG_WAITALL: one call unless a signal or the end comes first)."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        if k == 0:
            raise Failed("connection closed %d bytes into a %d-byte read" % (got, n))
        got += k


def send_file(sock, fd, offset, count):
    while count:
        n = os.sendfile(sock.fileno(), fd, offset, count)
        if n == 0:
            raise Failed("sendfile: end of file at %d" % offset)
        offset += n
        count -= n


# ---------------------------------------------------------------- taking a piece

class Recv:
    """recv_into a buffer, hash it, then pwrite it: verified before it is written."""

    def __init__(self, sock, fd, piece, buffers=1):
        self.sock, self.fd = sock, fd
        self.free = queue.Queue()
        for _ in range(buffers):
            self.free.put(memoryview(bytearray(piece)))

    def take(self, offset, length):
        buf = self.free.get()
        recv_exact(self.sock, buf[:length])
        return buf

    def finish(self, offset, length, buf, check, sha):
        try:
            view = buf[:length]
            check(blake3(view).digest())
            if sha is not None:
                sha.update(view)
            pos = 0
            while pos < length:
                pos += os.pwrite(self.fd, view[pos:pos + WRITE_SLICE], offset + pos)
        finally:
            self.release(buf)

    def release(self, buf):
        self.free.put(buf)


class Splice:
    """splice socket -> pipe -> file, then read the piece back and hash what is stored."""

    def __init__(self, sock, fd, piece, buffers=1):
        self.sock, self.fd = sock, fd
        self.r, self.w = os.pipe()
        try:
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        self.free = queue.Queue()
        for _ in range(buffers):
            self.free.put(memoryview(bytearray(READ_BACK)))

    def take(self, offset, length):
        sfd, left, pos = self.sock.fileno(), length, offset
        while left:
            n = os.splice(sfd, self.w, min(left, PIPE_BYTES), flags=os.SPLICE_F_MOVE)
            if n == 0:
                raise Failed("connection closed %d bytes into a piece" % (length - left))
            left -= n
            while n:
                m = os.splice(self.r, self.fd, n, offset_dst=pos, flags=os.SPLICE_F_MOVE)
                pos += m
                n -= m
        return None

    def release(self, _unused):
        pass

    def finish(self, offset, length, _unused, check, sha):
        buf = self.free.get()
        try:
            h = blake3()
            pos, end = offset, offset + length
            while pos < end:
                n = os.preadv(self.fd, [buf[:min(end - pos, len(buf))]], pos)
                if n <= 0:
                    raise Failed("short read-back at %d" % pos)
                h.update(buf[:n])
                if sha is not None:
                    sha.update(buf[:n])
                pos += n
            check(h.digest())
        finally:
            self.free.put(buf)


def taker(kind, sock, fd, piece):
    threaded = kind.endswith("2")
    cls = Recv if kind.startswith("recv") else Splice
    return cls(sock, fd, piece, buffers=3 if threaded else 1), threaded


class Sender(threading.Thread):
    """Sends (header, offset, length) items in order: the header, then the file range by
    sendfile, or with ``copy`` read (``preadv``, 256 KiB) and written from one buffer (the
    product's path for a cached blob to a client on this host: the client's copy out of
    loopback is cheaper from a recycled buffer than from page-cache pages)."""

    def __init__(self, sock, fd, copy=False):
        threading.Thread.__init__(self, name="sender", daemon=True)
        self.sock, self.fd = sock, fd
        self.items = queue.Queue()
        self.error = None
        self.buf = memoryview(bytearray(COPY_BYTES)) if copy else None

    def run(self):
        try:
            while True:
                item = self.items.get()
                if item is None:
                    return
                header, offset, length = item
                if header:
                    self.sock.sendall(header, socket.MSG_MORE)
                if self.buf is None:
                    send_file(self.sock, self.fd, offset, length)
                else:
                    self._copy(offset, length)
        except Exception as e:   # noqa: BLE001 - reported by the main thread
            self.error = e
        finally:
            THREAD_CPU["sender"] = time.thread_time()

    def _copy(self, offset, length):
        end = offset + length
        while offset < end:
            n = os.preadv(self.fd, [self.buf[:min(end - offset, len(self.buf))]], offset)
            if n <= 0:
                raise Failed("short read at %d" % offset)
            self.sock.sendall(self.buf[:n])
            offset += n

    def finish(self):
        self.items.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class Pipeline:
    """Take every piece of a body off ``sock`` into ``fd``, check it, hand it on.

    ``expect(i)`` -> the piece's digest, or None to compute it (the seed);
    ``on_piece(i, offset, length, digest)`` runs once the piece is checked
    (in order). ``sha``: a hashlib object fed the body in order.
    """

    def __init__(self, take, sock, fd, total, piece, expect, on_piece, sha=None):
        self.t, self.threaded = taker(take, sock, fd, piece)
        self.total, self.piece = total, piece
        self.expect, self.on_piece, self.sha = expect, on_piece, sha
        self.work = queue.Queue(maxsize=2)
        self.error = None

    def run(self):
        worker = None
        if self.threaded:
            worker = threading.Thread(target=self._work, name="hash", daemon=True)
            worker.start()
        try:
            for i in range((self.total + self.piece - 1) // self.piece):
                offset = i * self.piece
                length = min(self.piece, self.total - offset)
                expected = self.expect(i)
                held = self.t.take(offset, length)
                if worker is None:
                    self._finish(i, offset, length, held, expected)
                else:
                    if self.error is not None:
                        raise self.error
                    self.work.put((i, offset, length, held, expected))
        finally:
            if worker is not None:
                self.work.put(None)
                worker.join()
        if self.error is not None:
            raise self.error

    def _work(self):
        try:
            self._work_on()
        finally:
            THREAD_CPU["hash"] = time.thread_time()

    def _work_on(self):
        while True:
            item = self.work.get()
            if item is None:
                return
            if self.error is not None:
                self.t.release(item[3])     # the taker must not wait for a buffer
                continue
            try:
                self._finish(*item)
            except Exception as e:   # noqa: BLE001 - raised again by run()
                self.error = e

    def _finish(self, i, offset, length, held, expected):
        got = []

        def check(digest):
            if expected is not None and digest != expected:
                raise Failed("piece %d: digest mismatch" % i)
            got.append(digest)
        self.t.finish(offset, length, held, check, self.sha)
        self.on_piece(i, offset, length, got[0])


# ---------------------------------------------------------------- roles

class Meter:
    """CPU (all threads) and time from set-up to done, written as JSON."""

    def __init__(self):
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.monotonic()
        self.main0 = time.thread_time()

    def write(self, path, **extra):
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        threads = dict(THREAD_CPU, main=time.thread_time() - self.main0)
        out = dict(extra, t_ready=self.t0, t_done=time.monotonic(), thread_cpu_s=threads,
                   cpu_user_s=r1.ru_utime - self.r0.ru_utime, cpu_sys_s=r1.ru_stime - self.r0.ru_stime,
                   voluntary_switches=r1.ru_nvcsw - self.r0.ru_nvcsw)
        out["cpu_s"] = out["cpu_user_s"] + out["cpu_sys_s"]
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)


def listen():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def seed(args):
    server = listen()
    fd = os.open(args.store, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    write_json(args.port_file, {"port": server.getsockname()[1]})
    meter = Meter()
    down, _ = server.accept()
    t_first = time.monotonic()
    up, total = http_open(args.origin)
    n = (total + args.piece - 1) // args.piece
    sha = hashlib.sha256() if args.sha256 else None
    sender = Sender(down, fd)
    sender.start()
    down.sendall(PREAMBLE.pack(total, args.piece))

    def on_piece(i, offset, length, digest):
        if sha is not None and i == n - 1 and sha.hexdigest() != args.sha256:
            raise Failed("the body's sha256 is not %s" % args.sha256)
        sender.items.put((digest, offset, length))
    Pipeline(args.take, up, fd, total, args.piece, lambda i: None, on_piece, sha).run()
    sender.finish()
    down.shutdown(socket.SHUT_WR)
    down.recv(1)            # the peer closes once it has every byte
    meter.write(args.result, role="seed", bytes=total, t_request=t_first)


def peer(args):
    fd = os.open(args.store, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    digests = None
    if args.digests:
        with open(args.digests, "rb") as f:
            raw = f.read()
        digests = [raw[i:i + DIGEST] for i in range(0, len(raw), DIGEST)]
    server = listen() if args.serve else None
    write_json(args.port_file, {"port": server.getsockname()[1] if server else None})
    meter = Meter()
    client = None
    if server is not None:
        client, _ = server.accept()           # the HTTP client (curl)
        read_head(client)
        client.sendall(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n" % args.size).encode())
    else:
        with open(args.go, "rb") as f:        # the driver's start signal (dfget asking)
            f.read(1)
    t_first = time.monotonic()
    if args.upstream.startswith("seed:"):
        _, host, port = args.upstream.split(":")
        up = socket.create_connection((host, int(port)))
        head = bytearray(PREAMBLE.size)
        recv_exact(up, memoryview(head))
        total, piece = PREAMBLE.unpack(head)
        frame = memoryview(bytearray(DIGEST))

        def expect(i):
            recv_exact(up, frame)
            return bytes(frame)
    else:
        up, total = http_open(args.upstream)
        piece = args.piece
        if digests is None or len(digests) != (total + piece - 1) // piece:
            raise Failed("need one digest per piece (--digests)")
        expect = digests.__getitem__
    if total != args.size:
        raise Failed("upstream has %d bytes, expected %d" % (total, args.size))
    sender = None
    if client is not None:
        sender = Sender(client, fd, copy=args.out == "copy")
        sender.start()

    def on_piece(i, offset, length, digest):
        if sender is not None:
            sender.items.put((b"", offset, length))
    Pipeline(args.take, up, fd, total, piece, expect, on_piece).run()
    if sender is not None:
        sender.finish()
        client.shutdown(socket.SHUT_WR)
    up.close()
    meter.write(args.result, role="peer", bytes=total, t_request=t_first)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.boundroles")
    ap.add_argument("role", choices=("seed", "peer"))
    ap.add_argument("--take", choices=TAKES, default="recv")
    ap.add_argument("--store", required=True, help="the role's piece file")
    ap.add_argument("--piece", type=int, default=4 << 20)
    ap.add_argument("--port-file", required=True, help="JSON written once set up: {\"port\": ...}")
    ap.add_argument("--result", required=True)
    ap.add_argument("--origin", help="seed: the origin URL")
    ap.add_argument("--sha256", help="seed: the body's sha256 (hex); gates the last piece")
    ap.add_argument("--upstream", help="peer: http://... (with --digests) or seed:HOST:PORT")
    ap.add_argument("--digests", help="peer: the piece digests, 32 bytes each (the supernode's list)")
    ap.add_argument("--size", type=int, help="peer: the body's length")
    ap.add_argument("--serve", action="store_true", help="peer: a dfdaemon answering one HTTP client")
    ap.add_argument("--out", choices=("sendfile", "copy"), default="sendfile",
                    help="peer --serve: how the verified pieces go to the client")
    ap.add_argument("--go", help="peer without --serve: a FIFO; a byte there starts the download")
    args = ap.parse_args(argv)
    try:
        (seed if args.role == "seed" else peer)(args)
    except Failed as e:
        print("%s: %s" % (args.role, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

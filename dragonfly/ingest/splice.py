"""A large origin body spliced from its socket into the data file: no byte through Python.

The cold path's cost was copies (issue 20): the reactor's C{recv} copied each
256 KiB into a new bytes object, Twisted's HTTP client parser handed it on,
and a runner thread copied it again into the page cache with C{pwrite}. For
a body of known length (Content-Length, not chunked) of at least
L{SPLICE_MIN} bytes from a plain TCP origin with no rate limit, the
pipeline takes the socket instead, once Twisted parsed the headers: the
reactor stops reading it, and for each piece in turn one of the body's
threads (L{DEPTH}, kept for the body: L{_Workers})
moves the bytes with C{splice(2)} socket -> pipe -> data file (one kernel
copy), then reads the piece back from the file in 1 MiB reads and hashes
them: the piece's BLAKE3 and, when it is next in order, the whole file's
content hash (L{dragonfly.ingest.contenthash}). The next piece's thread,
started beforehand and waiting, takes the socket as soon as the bytes are
in the file, so the hashing of one piece overlaps the splicing of the next
and no trip through the reactor separates them (L{DEPTH} pieces in flight;
a content hash fed in order takes them in turn: a piece's thread hashes only
after the previous piece's has). So every piece digest is
computed from exactly the bytes stored, as before; the piece is marked held
and announced only after that. The thread waits for the socket with
C{poll} (the body's own threads, not runner threads: a slow origin must not
hold the store's threads), with C{SO_RCVLOWAT} set to the bytes it wants
next (up to 1 MiB), so each wake-up moves a large run. The connection is closed after the body: its
HTTP parser never saw the body, so it cannot go back to the pool.

Anything else (chunked, TLS, a limiter, small bodies, held pieces in the
range, a reactor without threads) takes the ordinary path
(L{dragonfly.ingest.cutter}). Memory: a pipe and a 1 MiB read-back buffer
per piece in flight, per body.
"""
import fcntl
import os
import queue
import select
import socket
import threading
from collections import deque
from contextlib import contextmanager

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from dragonfly.digest import piece_hasher

__all__ = ["SPLICE_MIN", "RawBody", "take_body", "splice_into"]

#: Bodies shorter than this take the ordinary path (and keep their pooled connection).
SPLICE_MIN = 64 << 20
#: Bytes per splice into the pipe (its size), and per read-back for hashing.
PIPE_BYTES = 1 << 20
READ_BACK = 1 << 20
#: Pieces spliced and hashed at once.
DEPTH = 2
#: The waiting thread looks at its stop flag this often (ms).
POLL_MS = 250
_F_SETPIPE_SZ = 1031


class _Ended(Exception):
    """The body broke off in the splicing thread (reported as the caller's error)."""


def _plain_tcp(response):
    """The TCP connection under a (treq or Twisted) response's body, if plain TCP."""
    original = getattr(response, "original", response)
    conn = getattr(getattr(original, "_transport", None), "_producer", None)
    if not isinstance(conn, tcp.Connection) or ISSLTransport.providedBy(conn):
        return None
    return conn


class _Grab(Protocol):
    """Takes a response's body delivery: keeps what the parser already read."""

    def __init__(self):
        self.head = []
        self.lost = False

    def dataReceived(self, data):
        self.head.append(data)

    def connectionLost(self, reason=None):
        self.lost = True


def take_body(response, length, reactor, idle_timeout, on_bytes, broken):
    """The body of C{response} (C{length} bytes) as a L{RawBody}, or None when
    it must take the ordinary path (then C{deliverBody} was not called)."""
    if not hasattr(os, "splice") or length < SPLICE_MIN \
            or not IReactorFromThreads.providedBy(reactor):
        return None
    conn = _plain_tcp(response)
    if conn is None:
        return None
    grab = _Grab()
    response.deliverBody(grab)
    conn.stopReading()   # ours from here; the parser never sees the rest
    return RawBody(conn, grab, length, reactor, idle_timeout, on_bytes, broken)


class _Workers:
    """The threads of one spliced body: up to C{count}, each started on first
    need and kept until L{close}; a piece's work is handed over a queue.

    Not a thread per piece: C{Thread.start} blocks its caller (the reactor)
    until the new thread runs, and with both cores busy (the cold mirror's
    steady state) that took ms per piece: 27% of the supernode reactor's busy
    time in a 1 GiB cold mirror pull (py-spy, issue 20 round six), a stall
    for every piece served and every long-poll answered meanwhile.
    """

    def __init__(self, reactor, count):
        self._reactor = reactor
        self._count = count
        self._jobs = queue.SimpleQueue()
        self._threads = 0
        self._busy = 0

    def run(self, f, *args):
        """C{f(*args)} in one of the threads; a Deferred of its result."""
        d = Deferred()
        self._busy += 1
        if self._busy > self._threads and self._threads < self._count:
            self._threads += 1
            threading.Thread(target=self._work, name="dragonfly-splice", daemon=True).start()
        self._jobs.put((d, f, args))
        d.addBoth(self._idle)
        return d

    def _idle(self, result):
        self._busy -= 1
        return result

    def _work(self):
        while self._one(self._jobs.get()):
            pass

    def _one(self, job):
        """Run one job (a thread's loop; the job's references die with this
        call); False for the end marker."""
        if job is None:
            return False
        d, f, args = job
        try:
            result = f(*args)
        except BaseException:
            self._reactor.callFromThread(d.errback, Failure())
        else:
            self._reactor.callFromThread(d.callback, result)
        return True

    def close(self):
        """Let every thread end once the jobs before are done."""
        for _ in range(self._threads):
            self._jobs.put(None)


class RawBody:
    """The rest of a response body, read from its socket by L{splice_into}.

    Call L{settle} first (on a later reactor turn than L{take_body}'s).
    """

    def __init__(self, conn, grab, length, reactor, idle_timeout, on_bytes, broken):
        self._conn = conn
        self._grab = grab
        self.length = length
        self._reactor = reactor
        self.idle_timeout = idle_timeout
        self._on_bytes = on_bytes
        self._broken = broken
        self.stopping = False
        self.sock = -1
        self.sockobj = None
        self._pipe = None
        self._bufs = {}
        self._workers = _Workers(reactor, DEPTH)

    def settle(self):
        """The body's first bytes, which the parser read with the headers.

        The parser may hand over the response while it still holds bytes of
        the same read, and delivers them once its call returns: so wait one
        reactor turn (no read happens meanwhile: the socket is not read)."""
        return deferLater(self._reactor, 0, self._settled)

    def _settled(self):
        if not self._grab.lost:
            self.sockobj = self._conn.socket
            self.sock = self.sockobj.fileno()
        return b"".join(self._grab.head)

    def run(self, f, *args):
        return self._workers.run(f, *args)

    def buffer(self, slot):
        """Read-back buffer C{slot} (one per piece in flight), made on first use."""
        buf = self._bufs.get(slot)
        if buf is None:
            buf = self._bufs[slot] = bytearray(READ_BACK)
        return buf

    def pipe(self):
        """The (read, write) pipe, made on first use (in the thread)."""
        if self._pipe is None:
            r, w = os.pipe()
            try:
                os.set_blocking(w, False)
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass   # a smaller pipe only means more splices
            self._pipe = (r, w)
        return self._pipe

    def counted(self, nbytes):
        if self._on_bytes is not None:
            self._on_bytes(nbytes)

    def broken(self, message):
        return self._broken(message)

    def stop(self):
        self.stopping = True

    def close(self):
        """Drop the connection and the pipe (after the last piece's thread ended)."""
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        self._workers.close()
        self._conn.abortConnection()


def _set_lowat(sock, nbytes):
    """Wake C{poll} only once C{nbytes} are there (or the peer closed): a
    slower origin otherwise sends in small runs, each a trip through here."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
    except OSError:
        pass
    return nbytes


def _wait(raw, poller, idle):
    """Wait for the socket; the idle time so far (ms). Raises when stopped or idle too long."""
    if raw.stopping:
        raise CancelledError()
    if poller.poll(POLL_MS):
        return 0
    idle += POLL_MS
    if raw.idle_timeout and idle >= raw.idle_timeout * 1000:
        raise _Ended(f"origin sent nothing for {raw.idle_timeout:g}s")
    return idle


@contextmanager
def _settles(settle):
    """Call C{settle(True)} after the block, or C{settle(False)} if it
    raised (and re-raise); C{settle} None: nothing."""
    if settle is None:
        yield
        return
    try:
        yield
    except BaseException:
        settle(False)
        raise
    settle(True)


class _Turn:
    """The socket's turn, handed from one piece's thread to the next's once
    the earlier piece's bytes are all in the file (thread to thread: no trip
    through the reactor between two pieces)."""
    __slots__ = ("_done", "ok")

    def __init__(self):
        self._done = threading.Event()
        self.ok = False

    def pass_on(self, ok):
        self.ok = ok
        self._done.set()

    def wait(self, raw):
        """Block until the earlier piece is spliced; raise when it failed or we stop."""
        while not self._done.wait(POLL_MS / 1000):
            if raw.stopping:
                raise CancelledError()
        if not self.ok:
            raise _Ended("an earlier piece of the body failed")


def _splice_piece(raw, head, content, buf, prev, mine, turns, fd, offset, length, lock):
    """Thread: write one piece (C{head}, then spliced bytes), hash it back.

    The socket is ours once C{prev} (the previous piece's L{_Turn}, or None)
    is passed on; C{mine} is passed on as soon as this piece's bytes are in
    the file, before the read-back and hashing, which then overlap the next
    piece's splicing. C{buf}: this thread's read-back buffer. C{turns}: with
    a content hash (C{content}), the previous inline piece's hashing turn (or
    None) and this piece's: the content hash sees the pieces in order.
    """
    ctx_prev, ctx_mine = turns
    with _settles(ctx_mine.pass_on if ctx_mine is not None else None):
        with _settles(mine.pass_on):
            if prev is not None:
                prev.wait(raw)
            _splice_bytes(raw, head, fd, offset, length, lock)
        if ctx_prev is not None:
            ctx_prev.wait(raw)
        return _hash_back(buf, fd, offset, length, content)


def _splice_bytes(raw, head, fd, offset, length, lock):
    """Write C{head}, then the piece's other bytes spliced from the socket."""
    if raw.sock < 0:
        raise _Ended("connection lost")
    r, w = raw.pipe()
    if head:
        with lock:
            view = memoryview(head)
            pos = offset
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
    pos, left = offset + len(head), length - len(head)
    poller = select.poll()
    poller.register(raw.sock, select.POLLIN)
    idle = lowat = 0
    while left:
        want = min(left, PIPE_BYTES)
        if want != lowat:
            lowat = _set_lowat(raw.sockobj, want)
        idle = _wait(raw, poller, idle)
        if idle:
            continue
        try:
            n = os.splice(raw.sock, w, want, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            continue
        except OSError as e:
            raise _Ended(f"connection lost: {e.strerror}")
        if n == 0:
            raise _Ended(f"connection closed {left} bytes before the end of the piece at {offset}")
        idle = 0
        with lock:
            while n:
                m = os.splice(r, fd, n, offset_dst=pos)
                pos, n, left = pos + m, n - m, left - m


def _hash_back(buf, fd, offset, length, content):
    """The piece digest of the C{length} stored bytes at C{offset} (and C{content} fed them)."""
    h = piece_hasher()
    view = memoryview(buf)
    while length:
        n = os.preadv(fd, [view[:min(length, len(buf))]], offset)
        if n <= 0:
            raise OSError(f"data file is short at byte {offset}")
        h.update(view[:n])
        if content is not None:
            content.update(view[:n])
        offset, length = offset + n, length - n
    return h.hexdigest()


async def splice_into(raw, tf, first, stop, events, track, content=None):
    """Fill pieces C{first}..C{stop}-1 of C{tf} from C{raw}, in order.

    Each piece is marked held and announced (C{events.stored}) once written
    and hashed. C{track}: as in L{dragonfly.ingest.pipeline}; cancelling the
    Deferred it gets stops the body. Fails with C{raw.broken(...)} when the
    body breaks off, stalls or the connection fails.
    """
    stopper = Deferred(lambda _: raw.stop())
    stopper.addErrback(lambda f: f.trap(CancelledError) and None)
    track(stopper)
    # Pieces in flight: the next piece's thread splices while this one's
    # hashes; a content hash fed in order (inline) takes the pieces in turn.
    pending = deque()   # (index, size, Deferred of the digest, inline hash)
    try:
        head = await raw.settle()
        index, prev, ctx = first, None, None
        while index < stop or pending:
            while index < stop and len(pending) < DEPTH:
                size = tf.piece_range(index)[1]
                part, head = head[:size], head[size:]
                h = content.inline(index) if content is not None else None
                mine, buf = _Turn(), raw.buffer(index % DEPTH)
                turns = (ctx, _Turn()) if h is not None else (None, None)
                d = tf.fill_new_piece(
                    index, lambda *a, part=part, h=h, buf=buf, prev=prev, mine=mine, turns=turns:
                    _splice_piece(raw, part, h, buf, prev, mine, turns, *a), raw.run)
                pending.append((index, size, d, h))
                index, prev, ctx = index + 1, mine, turns[1]
            done, size, d, h = pending.popleft()
            with _settles(content.inline_done if h is not None else None):
                digest = await d
            events.received(size)
            raw.counted(size)
            events.stored(tf, done, size, digest)
    except _Ended as e:
        raise raw.broken(str(e))
    finally:
        await _drain(raw, content, pending)
        track(None)
        raw.close()
    if not stopper.called:
        stopper.callback(None)


async def _drain(raw, content, pending):
    """After a failure: stop the pieces still in flight and wait for their
    threads (the pipe and the socket are closed only after that)."""
    if not pending:
        return
    raw.stop()
    while pending:
        _, _, d, h = pending.popleft()
        try:
            await d
        except BaseException:
            pass
        if h is not None:
            content.inline_done(False)

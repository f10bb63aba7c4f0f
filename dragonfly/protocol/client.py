"""The piece client: fetches pieces from other nodes' piece servers.

L{PieceClientPool} keeps one connection per (source, task), pipelines
requests on it (the server answers them in order), keeps each piece's body as
the slices the socket delivered (L{PieceClientPool.fetch_piece} also hashes
them as they arrive, so the caller can verify and write the piece without
joining or copying it), and fails every outstanding request of a connection
that breaks, times out or misbehaves with L{PieceFetchError}.
"""
import ctypes
import platform
import socket
from collections import deque

from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dragonfly.digest import piece_hasher
from dragonfly.interfaces import IPieceSource
from dragonfly.protocol import codec

#: Requests sent ahead on one connection; more wait locally.
MAX_PIPELINE = 16
#: Bytes asked of the socket per read on piece connections (Twisted's default is
#: 64 KiB). 1 MiB measured a few per cent faster but cost the peer ~7 MiB RSS.
READ_SIZE = 256 * 1024
#: Body slices shorter than this are copied together rather than kept one by one.
_MIN_PART = 32 * 1024


_allocator_tuned = False


def tune_allocator():
    """Make glibc keep multi-MiB piece buffers on its heap (once per process).

    By default glibc serves each piece-sized allocation with a fresh mmap and
    returns it on free, so every piece received costs a page fault per 4 KiB
    (measured: about half the client's CPU at 500 MB/s). Raising the mmap and
    trim thresholds lets freed piece buffers be reused. Harmless elsewhere.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 128 * 1024 * 1024)


class PieceFetchError(Exception):
    """Fetching piece C{index} from C{source} failed for C{reason}.

    C{code} is the server's error code (codec.NOT_FOUND, BUSY, ...) when the
    server answered with an Error, else None (network, timeout, protocol).
    """

    def __init__(self, source, index, reason, code=None):
        super().__init__(source, index, reason, code)
        self.source = source
        self.index = index
        self.reason = reason
        self.code = code

    def __str__(self):
        src = self.source
        where = f"{src.peer_id}@{src.host}:{src.port}" if hasattr(src, "peer_id") else str(src)
        return f"piece {self.index} from {where}: {self.reason}"


# Request states.
_PENDING = "pending"        # waiting locally for a pipeline slot
_SENT = "sent"              # on the wire; the server owes an answer
_RECEIVING = "receiving"    # its body is arriving
_CANCELLED = "cancelled"    # caller gave up; Cancel sent, the server may still answer
_DISCARD = "discard"        # caller gave up; its answer will be read and dropped
_DONE = "done"


class ReceivedPiece:
    """A piece as received: its body in order as a list of bytes-like chunks.

    C{digest} is the hex piece digest (L{dragonfly.digest}) of the body, computed while it arrived.
    Pass C{chunks} to a L{dragonfly.storage.taskfile.TaskFile} write method as they
    are; C{tobytes()} joins them (one copy) for callers that need one object.
    """

    __slots__ = ("index", "chunks", "nbytes", "digest")

    def __init__(self, index, chunks, nbytes, digest):
        self.index = index
        self.chunks = chunks
        self.nbytes = nbytes
        self.digest = digest

    def __len__(self):
        return self.nbytes

    def tobytes(self):
        return b"".join(self.chunks)


class _Request:
    __slots__ = ("index", "length", "deferred", "state", "timer", "chunks", "hasher")

    def __init__(self, index, length, chunks=False, hashed=False):
        self.index = index
        self.length = length
        self.deferred = None
        self.state = _PENDING
        self.timer = None
        self.chunks = chunks    # answer with a ReceivedPiece (else one bytes object)
        self.hasher = piece_hasher() if hashed else None


class PieceClientProtocol(Protocol):
    """One connection to one source for one task."""

    log = Logger()

    def __init__(self, pool, source, task_id):
        self.pool = pool
        self.source = source
        self.task_id = task_id
        self.version = None
        self.ready = False
        self.closed = False
        self.connecting = None  # the endpoint's connect Deferred, until connected
        self._pending = deque()  # _Request not yet sent
        self._sent = deque()     # _Request sent, in the order answers come
        self._decoder = codec.FrameDecoder(max_piece=pool.max_piece)
        self._recv = None        # _Request whose body is arriving
        self._parts = []         # its body so far: slices of what the socket gave us
        self._small = bytearray()  # small slices, coalesced
        self._idle_call = None
        self._resume_call = None
        self._paused = False
        self._sock = None      # the socket, where SO_RCVLOWAT can be set
        self._lowat = 1
        self._close_reason = None
        self._gone = []

    # -- API used by the pool -------------------------------------------------

    def fetch(self, index, length, chunks=False, hashed=False):
        req = _Request(index, length, chunks, hashed)
        req.deferred = defer.Deferred(lambda d: self._cancelled(req))
        if self.closed:
            req.state = _DONE
            req.deferred.errback(PieceFetchError(
                self.source, index, self._close_reason or "connection closed"))
            return req.deferred
        self._cancel_idle()
        self._pending.append(req)
        if self.ready:
            self._send_more()
        self._arm_head()
        return req.deferred

    def close(self, reason="pool closed"):
        """Drop the connection; the Deferred fires once it is gone."""
        d = defer.Deferred()
        if self.closed and self.connecting is None and self.transport is None:
            return defer.succeed(None)
        self._gone.append(d)
        self._shutdown(reason)
        return d

    # -- connection events --------------------------------------------------

    def connectionMade(self):
        self.connecting = None
        if self.closed:
            self.transport.abortConnection()
            return
        transport = self.transport
        nodelay = getattr(transport, "setTcpNoDelay", None)
        if nodelay is not None:
            try:
                nodelay(True)
            except OSError:
                pass
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket) and hasattr(socket, "SO_RCVLOWAT"):
            self._sock = handle
        transport.write(codec.encode_hello(
            codec.Hello(codec.VERSION, self.task_id, self.pool.peer_id)))

    def connect_failed(self, failure):
        self.connecting = None
        self.closed = True
        if self._close_reason is None:
            self._close_reason = f"connect failed: {failure.getErrorMessage()}"
        self._fail_all(self._close_reason)
        self._gone_now()

    def connectionLost(self, reason=None):
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        if self._close_reason is None:
            if reason is None or reason.check(ConnectionDone):
                self._close_reason = "connection closed by the source"
            else:
                self._close_reason = f"connection lost: {reason.getErrorMessage()}"
        self.closed = True
        self.ready = False
        self._fail_all(self._close_reason)
        self._gone_now()

    def dataReceived(self, data):
        if self.closed:
            return
        limiter = self.pool.download_limiter
        if limiter is not None:
            delay = limiter.consume(len(data))
            if delay > 0 and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
                self._resume_call = self.pool.clock.callLater(delay, self._resume)
        try:
            for event in self._decoder.feed(data):
                if type(event) is codec.PieceData:
                    self._body(event)
                else:
                    self._message(event)
                if self.closed:
                    return
            self._set_lowat(min(self._decoder.body_left, READ_SIZE) or 1)
        except codec.ProtocolError as e:
            self.log.info("dropping piece connection to {source}: {error}",
                          source=self.source, error=e)
            self._shutdown(f"protocol error: {e}")

    def _set_lowat(self, nbytes):
        # Inside a piece body the server owes us body_left more bytes: wake
        # up only once min(body_left, READ_SIZE) of them are here (SO_RCVLOWAT;
        # Linux grows the receive buffer to fit), so each read, and each trip
        # through the reactor and the decoder, moves ~READ_SIZE instead of
        # whatever loopback delivered (~64 KiB). Outside a body: any byte.
        if nbytes == self._lowat or self._sock is None:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            self._sock = None   # not supported here: leave it
            return
        self._lowat = nbytes

    def _resume(self):
        self._resume_call = None
        self._paused = False
        if not self.closed:
            self.transport.resumeProducing()

    # -- incoming -------------------------------------------------------------

    def _message(self, msg):
        kind = type(msg)
        if not self.ready:
            if kind is codec.HelloAck:
                if not codec.MIN_VERSION <= msg.version <= codec.VERSION:
                    raise codec.ProtocolError(f"server chose unsupported version {msg.version}")
                self.version = msg.version
                self.ready = True
                self._send_more()
                self._arm_head()
                self._check_idle()
            elif kind is codec.Error and msg.index is None:
                self._shutdown(f"handshake refused: {msg.name}: {msg.message}", msg.code)
            else:
                raise codec.ProtocolError(f"expected HelloAck, got {kind.__name__}")
        elif kind is codec.Piece:
            req = self._answer_for(msg.index)
            if req.state == _SENT:
                if msg.length != req.length:
                    self._fail(req, f"server sent {msg.length} bytes, expected {req.length}")
                    self._shutdown(f"piece {msg.index} length mismatch")
                    return
                req.state = _RECEIVING
            else:
                req.state = _DISCARD
            self._recv = req
        elif kind is codec.Error:
            if msg.index is None:
                self._shutdown(f"{msg.name}: {msg.message}", msg.code)
                return
            req = self._answer_for(msg.index)
            self._sent.popleft()
            if req.state == _SENT:
                self._fail(req, f"{msg.name}: {msg.message}", msg.code)
            self._advance()
        else:
            raise codec.ProtocolError(f"unexpected {kind.__name__} from a server")

    def _answer_for(self, index):
        """The sent request that an answer for C{index} belongs to.

        Answers come in request order; a cancelled request may have been
        dropped by the server without an answer, so skip those.
        """
        sent = self._sent
        while sent:
            head = sent[0]
            if head.index == index:
                return head
            if head.state != _CANCELLED:
                break
            sent.popleft()
        raise codec.ProtocolError(f"unexpected answer for piece {index}")

    def _body(self, event):
        # The body is kept as the slices the socket delivered (no copy, no
        # zero-filled buffer): fetch_piece hands them over as they are (with
        # their digest, hashed here as they arrive: hashlib drops the GIL
        # for big buffers), fetch joins them once. Small slices are coalesced
        # so a trickling sender cannot make the list huge.
        req = self._recv
        if req.state == _RECEIVING:
            data = event.data
            if req.hasher is not None:
                req.hasher.update(data)
            if len(data) >= _MIN_PART:
                if self._small:
                    self._parts.append(self._small)
                    self._small = bytearray()
                self._parts.append(data)
            else:
                small = self._small
                small += data
                if len(small) >= _MIN_PART:
                    self._parts.append(small)
                    self._small = bytearray()
        if not event.last:
            return
        self._recv = None
        self._sent.popleft()
        if req.state == _RECEIVING:
            if self._small:
                self._parts.append(self._small)
                self._small = bytearray()
            parts, self._parts = self._parts, []
            if req.chunks:
                piece = ReceivedPiece(req.index, parts, req.length,
                                      req.hasher.hexdigest() if req.hasher is not None else None)
            else:
                piece = b"".join(parts)
            req.state = _DONE
            self._stop_timer(req)
            req.deferred.callback(piece)
        else:
            req.state = _DONE
        self._advance()

    def _advance(self):
        if self.closed:
            return
        self._send_more()
        self._arm_head()
        self._check_idle()

    # -- outgoing -------------------------------------------------------------

    def _send_more(self):
        if not self.ready or self.closed:
            return
        limit = self.pool.max_pipeline
        out = []
        sent = self._sent
        while self._pending and len(sent) < limit:
            req = self._pending.popleft()
            req.state = _SENT
            sent.append(req)
            out.append(codec.encode_request(codec.Request(req.index)))
        if out:
            self.transport.write(b"".join(out))

    # -- timeouts, cancellation, failure --------------------------------------

    def _head(self):
        for req in self._sent:
            if req.state in (_SENT, _RECEIVING):
                return req
        if not self._sent and self._pending:
            return self._pending[0]
        return None

    def _arm_head(self):
        """Start the piece timer of the request the server works on now."""
        timeout = self.pool.piece_timeout
        req = self._head()
        if req is not None and req.timer is None and timeout:
            req.timer = self.pool.clock.callLater(timeout, self._timed_out, req)

    def _stop_timer(self, req):
        if req.timer is not None:
            if req.timer.active():
                req.timer.cancel()
            req.timer = None

    def _timed_out(self, req):
        req.timer = None
        if req.state in (_DONE, _CANCELLED, _DISCARD):
            return
        timeout = self.pool.piece_timeout
        self._fail(req, f"timed out after {timeout:g}s")
        # The source is stalled: everything queued behind it would be too.
        self._shutdown(f"piece {req.index} timed out after {timeout:g}s")

    def _cancelled(self, req):
        """The caller cancelled C{req}'s Deferred (it then fails with CancelledError)."""
        self._stop_timer(req)
        if req.state == _PENDING:
            req.state = _DONE
            try:
                self._pending.remove(req)
            except ValueError:
                pass
        elif req.state == _RECEIVING:
            req.state = _DISCARD  # read the rest of its body and drop it
            self._parts = []
            self._small = bytearray()
        elif req.state == _SENT:
            if self._owed_before(req):
                # Still queued at the server: it will drop it without an answer.
                req.state = _CANCELLED
                self.transport.write(codec.encode_cancel(codec.Cancel(req.index)))
            else:
                # The server may be sending it already; a Cancel would make it
                # close the connection. Read its answer and drop it instead.
                req.state = _DISCARD
        if not self.closed:
            self._arm_head()
            self._check_idle()

    def _owed_before(self, req):
        """True when the server owes an answer to a request sent before C{req}."""
        for other in self._sent:
            if other is req:
                return False
            if other.state != _CANCELLED:
                return True
        return False

    def _fail(self, req, reason, code=None):
        self._stop_timer(req)
        if req.state in (_DONE, _CANCELLED, _DISCARD):
            return
        req.state = _DONE
        req.deferred.errback(Failure(PieceFetchError(self.source, req.index, reason, code)))

    def _fail_all(self, reason, code=None):
        reqs = list(self._sent) + list(self._pending)
        self._sent.clear()
        self._pending.clear()
        self._recv = None
        self._parts = []
        self._small = bytearray()
        self._cancel_idle()
        for req in reqs:
            self._fail(req, reason, code)

    def _shutdown(self, reason, code=None):
        """Fail everything outstanding with C{reason} and drop the connection."""
        if self._close_reason is None:
            self._close_reason = reason
        self.closed = True
        self.ready = False
        self.pool._forget(self)
        self._fail_all(reason, code)
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    def _gone_now(self):
        self.transport = None
        self.pool._forget(self)
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)

    # -- idle -----------------------------------------------------------------

    def _check_idle(self):
        if self.closed or self._pending or self._sent or self._idle_call is not None:
            return
        timeout = self.pool.idle_timeout
        if timeout:
            self._idle_call = self.pool.clock.callLater(timeout, self._idle)

    def _cancel_idle(self):
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None

    def _idle(self):
        self._idle_call = None
        if not self._pending and not self._sent:
            self._shutdown("idle")


class _OneShotFactory(Factory):
    """Hands the endpoint our prebuilt protocol exactly once."""

    noisy = False

    def __init__(self, proto):
        self._proto = proto

    def buildProtocol(self, addr):
        proto, self._proto = self._proto, None
        return proto


def default_endpoint(reactor, host, port, timeout):
    """A TCP endpoint for an IPv4/IPv6 literal (no resolver involved) or a name."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    if all(part.isdigit() for part in host.split(".")):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


@implementer(IPieceSource)
class PieceClientPool:
    """Fetches pieces over one connection per (source, task).

    @param reactor: IReactorTCP + IReactorTime (connections, timers).
    @param peer_id: our own peer id, sent in every Hello.
    @param download_limiter: optional TokenBucket; when it runs dry the
        connection's transport is paused until the debt is paid.
    @param piece_timeout: seconds a piece may take from the moment the
        source is due to serve it (connecting counts) until its last byte.
    @param endpoint_factory: C{(host, port) -> IStreamClientEndpoint}
        (tests wire the pool to an in-memory server with it).
    """

    log = Logger()

    def __init__(self, reactor, peer_id, download_limiter=None, piece_timeout=30,
                 connect_timeout=10, idle_timeout=30, max_pipeline=MAX_PIPELINE,
                 max_piece=codec.MAX_PIECE, endpoint_factory=None):
        tune_allocator()
        self.reactor = reactor
        self.clock = reactor
        self.peer_id = peer_id
        self.download_limiter = download_limiter
        self.piece_timeout = piece_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_pipeline = max_pipeline
        self.max_piece = max_piece
        if endpoint_factory is None:
            def endpoint_factory(host, port):
                return default_endpoint(reactor, host, port, connect_timeout)
        self._endpoint_factory = endpoint_factory
        self._conns = {}
        self._all = set()
        self._closed = False

    def fetch(self, source, task_id, index, length):
        """A Deferred firing with piece C{index} of C{task_id} (C{length}
        bytes) from C{source}, or failing with L{PieceFetchError}."""
        return self._fetch(source, task_id, index, length, False, False)

    def fetch_piece(self, source, task_id, index, length, hashed=True):
        """Like L{fetch}, but fires with a L{ReceivedPiece}: the body as the
        chunks received (not joined) and its piece digest, hashed as it arrived
        (C{digest} is None with C{hashed=False}: the caller hashes it)."""
        return self._fetch(source, task_id, index, length, True, hashed)

    def _fetch(self, source, task_id, index, length, chunks, hashed):
        if self._closed:
            return defer.fail(PieceFetchError(source, index, "pool closed"))
        if not isinstance(index, int) or not 0 <= index <= codec.MAX_INDEX:
            return defer.fail(PieceFetchError(source, index, "bad piece index"))
        if not isinstance(length, int) or not 0 <= length <= self.max_piece:
            return defer.fail(PieceFetchError(source, index, f"bad piece length {length!r}"))
        key = (source, task_id)
        proto = self._conns.get(key)
        if proto is None or proto.closed:
            try:
                codec.Hello(codec.VERSION, task_id, self.peer_id)
            except ValueError as e:
                return defer.fail(PieceFetchError(source, index, str(e)))
            proto = self._connect(source, task_id)
        return proto.fetch(index, length, chunks, hashed)

    def _connect(self, source, task_id):
        proto = PieceClientProtocol(self, source, task_id)
        self._conns[(source, task_id)] = proto
        self._all.add(proto)
        try:
            endpoint = self._endpoint_factory(source.host, source.port)
            d = endpoint.connect(_OneShotFactory(proto))
        except Exception:
            d = defer.fail()
        if not d.called:
            proto.connecting = d
        d.addCallbacks(lambda _: None, proto.connect_failed)
        return proto

    def _forget(self, proto):
        key = (proto.source, proto.task_id)
        if self._conns.get(key) is proto:
            del self._conns[key]
        if proto.transport is None and proto.connecting is None and proto.closed:
            self._all.discard(proto)

    @property
    def connections(self):
        """Open (or opening) connections."""
        return len(self._conns)

    def close(self):
        """Fail everything outstanding, drop every connection.

        @return: a Deferred that fires once all connections are gone.
        """
        self._closed = True
        protos = list(self._all)
        self._all.clear()
        self._conns.clear()
        waits = [p.close() for p in protos]
        return defer.DeferredList(waits).addCallback(lambda _: None)

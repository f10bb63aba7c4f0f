"""The piece client pool: fetches pieces from other nodes' piece servers.

L{PieceClientPool} keeps one connection (a L{PieceClientProtocol}) per
(source, task), opened on demand through an injected endpoint factory,
forgotten when it breaks, times out, idles or misbehaves, and all closed by
L{PieceClientPool.close}. It checks a fetch's arguments before any
connection exists, and hands every connection the shared download limiter
and timeouts. Fetched pieces come as bytes (L{PieceClientPool.fetch}) or as
the slices the socket delivered with their digest
(L{PieceClientPool.fetch_piece}), so the caller can verify and write a piece
without joining or copying it; failures are L{PieceFetchError}. On plain TCP
connections the latter arrive as one view of a pooled buffer the body was
read into (L{dragonfly.protocol.recvbuf}): the pool keeps those buffers while
it has connections.
"""
from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.interfaces import IPieceSource
from dragonfly.protocol import codec
from dragonfly.protocol.client import MAX_PIPELINE, PieceClientProtocol
from dragonfly.protocol.clientstate import PieceFetchError
from dragonfly.protocol.recvbuf import RecvBuffers
from dragonfly.runtime.tuning import tune_allocator

#: Seconds a source due to serve a piece has to begin its answer.
FIRST_BYTE_TIMEOUT = 3.0


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
    @param first_byte_timeout: seconds within which a source due to serve a
        piece (connecting counts) must begin its answer, else the piece and
        the connection fail (a source that accepts and never answers costs
        this long, not C{piece_timeout}); 0 = no such deadline.
    @param endpoint_factory: C{(host, port) -> IStreamClientEndpoint}
        (tests wire the pool to an in-memory server with it).
    @param tokens: where our admission tokens come from: C{token_for(task_id)}
        -> the token a new connection presents in its Hello, or None.
    """

    log = Logger()

    def __init__(self, reactor, peer_id, download_limiter=None, piece_timeout=30,
                 connect_timeout=10, idle_timeout=30, max_pipeline=MAX_PIPELINE,
                 max_piece=codec.MAX_PIECE, endpoint_factory=None,
                 first_byte_timeout=FIRST_BYTE_TIMEOUT, tokens=None):
        tune_allocator()
        self.reactor = reactor
        self.clock = reactor
        self.peer_id = peer_id
        self.download_limiter = download_limiter
        self.piece_timeout = piece_timeout
        self.first_byte_timeout = first_byte_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_pipeline = max_pipeline
        self.max_piece = max_piece
        if endpoint_factory is None:
            def endpoint_factory(host, port):
                return default_endpoint(reactor, host, port, connect_timeout)
        self._endpoint_factory = endpoint_factory
        self._tokens = tokens
        #: Buffers chunked piece bodies are read into on plain TCP (None: the
        #: slices Twisted's reads delivered, as under TLS).
        self.recv_buffers = RecvBuffers()
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

    def token_for(self, task_id):
        """The admission token a new connection for C{task_id} presents, or None."""
        return None if self._tokens is None else self._tokens.token_for(task_id)

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
        if not self._conns and self.recv_buffers is not None:
            self.recv_buffers.clear()   # (idle: those still in use go with their views)

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

"""``CONNECT host:port``: a raw TCP tunnel to an allowed host, nothing of P2P inside.

L{open_tunnel} connects through the egress guard (only to addresses the
policy allowed, never re-resolving the name), then answers
``200 Connection established`` and takes the client connection over from
the HTTP channel: from then on every byte from the client goes to the
target and back. Each side's transport is registered as the push producer
of the other's, so a slow reader pauses the writer (memory stays at the
socket buffers). When either side closes, the other is closed after its
pending bytes are written; a tunnel silent in both directions for
C{idle_timeout} seconds is closed.
"""
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.client import URI

from dragonfly.egressguard import GuardedEndpointFactory
from dragonfly.runtime.idle import IdleTimer

__all__ = ["open_tunnel", "TunnelFailed", "Splice"]


class TunnelFailed(Exception):
    """The target could not be reached (the client gets a 502)."""


class _Side(Protocol):
    """One end of a splice: bytes received here are written to the other end."""

    def __init__(self, splice, name):
        self.splice = splice
        self.name = name
        self.other = None
        self.closed = False

    def dataReceived(self, data):
        self.splice.moved(self.name, len(data))
        self.other.transport.write(data)

    def connectionLost(self, reason=None):
        self.closed = True
        self.splice.lost(self)


class Splice:
    """Two connections joined: the client's (taken over from an HTTP channel) and the target's.

    @param on_bytes: called with C{(direction, n)}, direction "up" or "down".
    @param on_close: called once, when both sides are closed.
    """

    log = Logger()

    def __init__(self, clock, on_bytes=None, on_close=None, idle_timeout=600):
        self.client = _Side(self, "up")
        self.target = _Side(self, "down")
        self.client.other, self.target.other = self.target, self.client
        self._on_bytes = on_bytes or (lambda direction, n: None)
        self._on_close = on_close
        self._idle = IdleTimer(clock, self._timed_out)
        self._idle_timeout = idle_timeout

    def moved(self, direction, n):
        self._idle.touch()
        self._on_bytes(direction, n)

    def start(self, client_transport, early=b""):
        """Join: C{client_transport} is the client's, already told 200; C{early}
        the bytes it sent after its request (forwarded first)."""
        self.client.makeConnection(client_transport)
        target = self.target.transport
        client_transport.registerProducer(target, True)
        target.registerProducer(client_transport, True)
        self._idle.start(self._idle_timeout)
        if early:
            self.client.dataReceived(early)

    def lost(self, side):
        other = side.other
        if other.transport is not None and not other.closed:
            other.transport.loseConnection()
        if self.client.closed and self.target.closed:
            self._idle.stop()
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()

    def _timed_out(self):
        self.log.info("tunnel idle for {seconds}s: closing", seconds=self._idle_timeout)
        for side in (self.client, self.target):
            if side.transport is not None and not side.closed:
                side.transport.loseConnection()

    def abort(self):
        """Close both sides now (the client went away before the tunnel opened)."""
        if self.target.transport is not None and not self.target.closed:
            self.target.transport.abortConnection()


def _target_uri(host, port):
    shown = f"[{host}]" if ":" in host else host
    return URI.fromBytes(f"http://{shown}:{port}/".encode("ascii"))


async def open_tunnel(reactor, guard, target, splice, connect_timeout=30):
    """Connect C{splice}'s target side to C{target} (a CONNECT
    L{dragonfly.dfdaemon.proxyrules.Target}) through the L{EgressGuard}
    C{guard}; raises L{dragonfly.origin.OriginRefused} or L{TunnelFailed}."""
    from dragonfly.origin import OriginRefused

    endpoint = GuardedEndpointFactory(reactor, guard, connect_timeout=connect_timeout) \
        .endpointForURI(_target_uri(target.host, target.port))
    try:
        await endpoint.connect(Factory.forProtocol(lambda: splice.target))
    except OriginRefused:
        raise
    except Exception as e:  # noqa: BLE001 - any connection failure
        from dragonfly.httpio import describe
        raise TunnelFailed(f"cannot connect to {target.authority}: {describe(e)}")


def take_over(request, splice, via):
    """Answer C{request} (a CONNECT) with 200 and hand its connection to C{splice}.

    The HTTP channel stops seeing the connection: its C{dataReceived} and
    C{connectionLost} now go to the splice (as Twisted's own websocket
    upgrade does), and the request never finishes (nothing more is written
    through it)."""
    channel = request.channel
    transport = channel.transport
    early = b"".join(getattr(channel, "_dataBuffer", None) or [])
    if hasattr(channel, "_dataBuffer"):
        channel._dataBuffer = []
    channel.setTimeout(None)
    transport.unregisterProducer()          # the channel was the transport's producer
    transport.write(b"HTTP/1.1 200 Connection established\r\nVia: " + via + b"\r\n\r\n")
    channel.dataReceived = splice.client.dataReceived
    channel.connectionLost = splice.client.connectionLost
    transport.resumeProducing()             # the channel may have paused reading
    splice.start(transport, early)

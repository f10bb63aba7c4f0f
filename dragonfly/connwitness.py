"""Why an HTTP client connection ended: the reason Twisted's HTTP client drops.

An origin's body without Content-Length and without chunked encoding ends
where the connection ends (RFC 9112 6.3, item 8). Twisted's HTTP client
(C{twisted.web._newclient}) hands the body's protocol C{PotentialDataLoss}
whenever such a connection is lost, whatever the reason: a clean close (FIN,
or a TLS close_notify) and a reset (RST), a TLS EOF without close_notify, or
the client giving up on the connection all look the same to the body. Only
the first is the body's end; the others are a truncated body, and taking it
for the whole file would cut, hash and publish a truncated task.

The reason does exist one layer down: it is what the transport passes to
its protocol's C{connectionLost}. So the origin client's connections are
witnessed there. L{WitnessEndpointFactory} wraps an C{IAgentEndpointFactory}
(the public seam C{Agent.usingEndpointFactory} takes): each endpoint it makes
connects with a protocol factory whose protocols are the HTTP client's own,
with a thin L{_Witness} in front. The witness receives the connection from
the transport, hands the I{same} transport on to the HTTP protocol (so the
HTTP protocol's transport is still the TCP connection or the TLS layer:
the body's larger reads and the splice path, L{dragonfly.ingest.splice},
find it as before), forwards every event, and on C{connectionLost} records
the reason in a L{ConnectionEnd} I{before} the HTTP protocol hears of it.
The endpoint's C{connect} still fires with the HTTP protocol, so the
connection pool sees nothing different.

Why here and not elsewhere: the HTTP protocol, its parser and the pool's
protocol factory are private classes of C{twisted.web}, and a wrapper that
stood in for the transport instead (C{policies.ProtocolWrapper}) would hide
the TCP connection from the code that tunes and splices it. An endpoint
factory and a protocol in front of another use only public interfaces
(C{IAgentEndpointFactory}, C{IStreamClientEndpoint}, C{IProtocolFactory},
C{IProtocol}).

The body's side (L{dragonfly.ingest.receiver.BodyReceiver}) looks the record
up with L{connection_end}, by the transport the HTTP protocol was given: the
body's transport proxy keeps it while the body is read (the same object the
splice path takes; a C{twisted.web} detail this project already relies on).
A body is taken as ended only when the record says the connection was closed
cleanly (C{ConnectionDone}); with no record (an HTTP client built without a
witness, e.g. a test double) the body's protocol decides as before.
"""
import weakref

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

__all__ = ["ConnectionEnd", "WitnessEndpointFactory", "WitnessEndpoint", "connection_end"]

#: transport -> its ConnectionEnd. Weak keys: an entry lives as long as its
#: connection object; the value never refers to the key.
_ENDS = weakref.WeakKeyDictionary()


class ConnectionEnd:
    """How one witnessed connection ended.

    @ivar reason: the Failure the transport gave its protocol's
        C{connectionLost}, or None while the connection is open.
    """

    def __init__(self):
        self.reason = None

    @property
    def ended(self):
        return self.reason is not None

    @property
    def clean(self):
        """True once the connection was closed cleanly (FIN, or TLS close_notify
        then FIN); False while open, and after a reset or any other loss."""
        return self.reason is not None and self.reason.check(ConnectionDone) is not None


def connection_end(transport):
    """The L{ConnectionEnd} of the connection under C{transport}, or None when
    it was not witnessed. C{transport} is a protocol's transport: the HTTP
    protocol's own, or the proxy a response body is delivered through (its
    C{_producer} is the former while the body is read)."""
    if transport is None:
        return None
    inner = getattr(transport, "_producer", None)
    for t in (inner, transport):
        if t is None:
            continue
        try:
            end = _ENDS.get(t)
        except TypeError:   # not weak-referenceable: never witnessed
            end = None
        if end is not None:
            return end
    return None


class _Witness(Protocol):
    """In front of C{wrapped}: the same transport, every event forwarded, the
    loss reason recorded in C{end} before C{wrapped} hears of it."""

    def __init__(self, wrapped):
        self.wrapped = wrapped
        self.end = ConnectionEnd()

    def logPrefix(self):
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else self.wrapped.__class__.__name__

    def makeConnection(self, transport):
        self.connected = 1
        self.transport = transport
        try:
            _ENDS[transport] = self.end
        except TypeError:
            pass
        # The transport calls protocol.dataReceived for every read: go to the
        # HTTP protocol directly, no call through us.
        self.dataReceived = self.wrapped.dataReceived
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data):
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason=None):
        self.connected = 0
        if self.end.reason is None:
            self.end.reason = reason
        self.transport = None
        self.wrapped.connectionLost(reason)


class _WitnessFactory(Factory):
    """Builds C{factory}'s protocols with a L{_Witness} in front of each."""

    def __init__(self, factory):
        self.factory = factory

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        wrapped = self.factory.buildProtocol(addr)
        if wrapped is None:
            return None
        return _Witness(wrapped)


@implementer(IStreamClientEndpoint)
class WitnessEndpoint:
    """C{endpoint}, its connections witnessed; C{connect} fires with the
    protocol C{protocol_factory} built (not the witness)."""

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def __repr__(self):
        return f"<WitnessEndpoint {self._endpoint!r}>"

    def connect(self, protocol_factory):
        return self._endpoint.connect(_WitnessFactory(protocol_factory)).addCallback(
            lambda witness: witness.wrapped)


@implementer(IAgentEndpointFactory)
class WitnessEndpointFactory:
    """An C{IAgentEndpointFactory}: C{factory}'s endpoints, each a L{WitnessEndpoint}."""

    def __init__(self, factory):
        self._factory = factory

    def endpointForURI(self, uri):
        return WitnessEndpoint(self._factory.endpointForURI(uri))

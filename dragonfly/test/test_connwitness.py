"""The connection witness: why an origin connection ended, and what a body
without a length makes of it (a reset is a broken body, a clean close its end)."""
import socket
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface.verify import verifyObject

from dragonfly.connwitness import (
    WitnessEndpoint, WitnessEndpointFactory, _Witness, connection_end)
from dragonfly.egress import EgressPolicy
from dragonfly.ingest.receiver import BodyError, BodyReceiver
from dragonfly.origin import BodyBroken, OriginClient, make_http_client

LOOPBACK = "127.0.0.1"


class Recorder(Protocol):
    """An inner protocol that records what it was told, and in what order."""

    def __init__(self, log=None):
        self.events = [] if log is None else log
        self.data = []

    def connectionMade(self):
        self.events.append(("made", self.transport))

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason=None):
        self.events.append(("lost", reason))


class FakeEndpoint:
    """Connects any factory to a StringTransport at once."""

    def __init__(self):
        self.transport = StringTransport()
        self.protocol = None

    def connect(self, factory):
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Sink:
    def __init__(self):
        self.data = []

    def write(self, data):
        self.data.append(data)


class WitnessTests(SynchronousTestCase):

    def test_same_transport_events_forwarded(self):
        """The witness hands the inner protocol the very transport it got (not
        itself), forwards data and the loss, and its endpoint fires with the
        inner protocol, so a connection pool sees nothing different."""
        fake = FakeEndpoint()
        inner = Recorder()
        got = self.successResultOf(
            WitnessEndpoint(fake).connect(Factory.forProtocol(lambda: inner)))
        self.assertIs(got, inner)
        self.assertIsInstance(fake.protocol, _Witness)
        self.assertIs(inner.transport, fake.transport)
        fake.protocol.dataReceived(b"abc")
        self.assertEqual(inner.data, [b"abc"])
        reason = Failure(ConnectionLost())
        fake.protocol.connectionLost(reason)
        self.assertEqual(inner.events, [("made", fake.transport), ("lost", reason)])

    def test_reason_recorded_before_inner_hears(self):
        """The loss reason is in the connection's record when the inner protocol
        hears of the loss (the body's protocol is told from inside that call)."""
        seen = []
        transport = StringTransport()

        class Inner(Protocol):
            def connectionLost(self, reason=None):
                seen.append(connection_end(transport).reason)
        w = _Witness(Inner())
        w.makeConnection(transport)
        end = connection_end(transport)
        self.assertFalse(end.ended)
        self.assertFalse(end.clean)
        reason = Failure(ConnectionLost())
        w.connectionLost(reason)
        self.assertEqual(seen, [reason])
        self.assertTrue(end.ended)
        self.assertFalse(end.clean)

    def test_clean_only_for_connection_done(self):
        """Only ConnectionDone (FIN, TLS close_notify) counts as a clean close."""
        for reason, clean in ((ConnectionDone(), True), (ConnectionLost(), False),
                              (ValueError("tls eof"), False)):
            transport = StringTransport()
            w = _Witness(Protocol())
            w.makeConnection(transport)
            w.connectionLost(Failure(reason))
            self.assertEqual(connection_end(transport).clean, clean, reason)

    def test_found_through_the_body_proxy(self):
        """The record is found by the transport itself or by a proxy whose
        C{_producer} is that transport (the response body's transport); an
        unwitnessed transport has none."""
        transport = StringTransport()
        _Witness(Protocol()).makeConnection(transport)

        class Proxy:
            _producer = transport
        self.assertIs(connection_end(Proxy()), connection_end(transport))
        self.assertIsNone(connection_end(StringTransport()))
        self.assertIsNone(connection_end(None))

    def test_endpoint_factory(self):
        """WitnessEndpointFactory is an IAgentEndpointFactory whose endpoints
        wrap the given factory's."""
        from twisted.web.iweb import IAgentEndpointFactory

        fake = FakeEndpoint()

        class Inner:
            def endpointForURI(self, uri):
                self.uri = uri
                return fake
        inner = Inner()
        factory = WitnessEndpointFactory(inner)
        self.assertTrue(verifyObject(IAgentEndpointFactory, factory))
        endpoint = factory.endpointForURI("uri")
        self.assertEqual(inner.uri, "uri")
        proto = Recorder()
        self.assertIs(self.successResultOf(
            endpoint.connect(Factory.forProtocol(lambda: proto))), proto)


class ReceiverEndTests(SynchronousTestCase):
    """BodyReceiver and the witness: how a body without a length ends."""

    def receive(self, loss, expected=None, witnessed=True):
        transport = StringTransport()
        witness = _Witness(Protocol())
        if witnessed:
            witness.makeConnection(transport)
        sink = Sink()
        r = BodyReceiver(sink, expected, Clock())
        r.makeConnection(transport)
        r.dataReceived(b"x" * 10)
        if witnessed and loss is not None:
            witness.connectionLost(Failure(loss))
        r.connectionLost(Failure(PotentialDataLoss() if expected is None else ResponseDone()))
        return r

    def test_reset_breaks_a_lengthless_body(self):
        """When the connection under a body without a length was reset, the body
        fails (the bytes so far are not the whole file), naming the reset."""
        f = self.failureResultOf(self.receive(ConnectionLost()).done, BodyError)
        self.assertIn("connection lost after 10 bytes of a body without a length", str(f.value))
        self.assertIn("non-clean", str(f.value))

    def test_not_closed_yet_breaks_a_lengthless_body(self):
        """When the HTTP client ends a body without a length while the
        connection was not closed by the origin (it gave up), the body fails."""
        f = self.failureResultOf(self.receive(None).done, BodyError)
        self.assertIn("not closed by the origin", str(f.value))

    def test_clean_close_ends_a_lengthless_body(self):
        """When the connection under a body without a length was closed cleanly,
        the body ends there and is whole."""
        self.assertEqual(self.successResultOf(self.receive(ConnectionDone()).done), 10)

    def test_unwitnessed_as_before(self):
        """Without a witness (an HTTP client built without one) the end of a
        body without a length is taken as the HTTP client reports it."""
        self.assertEqual(self.successResultOf(self.receive(None, witnessed=False).done), 10)

    def test_length_known_unaffected(self):
        """A body of known length is judged by its length, as before."""
        self.assertEqual(self.successResultOf(
            self.receive(ConnectionLost(), expected=10).done), 10)


class _LengthlessOrigin(Protocol):
    """Answers one request: 200 with neither Content-Length nor chunked
    encoding, C{body}, then a reset (SO_LINGER 0) or a clean close."""

    body = b"b" * 100_000
    reset = True

    def dataReceived(self, data):
        if b"\r\n\r\n" not in data or self.transport.disconnecting:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Connection: close\r\n\r\n" + self.body)
        if self.reset:
            # Unsent bytes would be dropped by an abort: wait until they left.
            self._when_flushed(self._reset)
        else:
            self.transport.loseConnection()

    def _when_flushed(self, then):
        if self.transport.dataBuffer or self.transport._tempDataBuffer:
            reactor.callLater(0.01, self._when_flushed, then)
        else:
            then()

    def _reset(self):
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class LoopbackTests(TestCase):
    """A real origin on 127.0.0.1 through the origin client the roles build."""

    timeout = 30

    async def fetch(self, reset):
        origin = type("Origin", (_LengthlessOrigin,), {"reset": reset})
        port = await TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(
            Factory.forProtocol(origin))
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = make_http_client(reactor, pool, egress=EgressPolicy(allow=[LOOPBACK]))
        client = OriginClient(reactor, http)
        response = await client.get(f"http://{LOOPBACK}:{port.getHost().port}/f")
        self.assertIsNone(response.length)
        sink = Sink()
        try:
            n = await response.deliver(sink)
        except BodyBroken as e:
            return None, e, b"".join(sink.data)
        return n, None, b"".join(sink.data)

    async def test_reset_fails_the_body(self):
        """An origin that sends a body without a length and then resets the
        connection fails the delivery with BodyBroken (retryable), not a whole
        body of the bytes that came."""
        n, error, _ = await self.fetch(reset=True)
        self.assertIsNone(n)
        self.assertTrue(error.retryable)
        self.assertIn("body without a length", str(error))

    async def test_clean_close_ends_the_body(self):
        """An origin that sends a body without a length and closes cleanly
        delivers the whole body."""
        n, error, data = await self.fetch(reset=False)
        self.assertIsNone(error)
        self.assertEqual(n, len(_LengthlessOrigin.body))
        self.assertEqual(data, _LengthlessOrigin.body)

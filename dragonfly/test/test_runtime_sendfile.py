"""FileSender: file ranges to a plain TCP socket with os.sendfile, on a real reactor."""
import os
import socket
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from twisted.internet.address import IPv4Address, IPv6Address

from dragonfly.runtime.sendfile import FileSender, buffered, on_this_host, socket_of

SIZE = 16 * 1024 * 1024 + 12345   # well over the socket buffers: sendfile must wait


def _poll(predicate, timeout=20.0, step=0.01):
    """A Deferred firing once predicate() is true; fails after the deadline."""
    deadline = reactor.seconds() + timeout

    async def wait():
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("condition not reached before the deadline")
            await task.deferLater(reactor, step, lambda: None)
    return defer.Deferred.fromCoroutine(wait())


class _Reader(Protocol):
    """Client side: starts paused (nothing read) and collects what arrives."""

    def __init__(self):
        self.got = bytearray()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.pauseProducing()

    def dataReceived(self, data):
        self.got += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class _Server(Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)

    def connectionLost(self, reason):
        self.factory.lost.callback(None)


class FileSenderTests(TestCase):
    copy = False

    def _sender(self, server, **kw):
        return FileSender(reactor, server.transport, socket_of(server.transport), copy=self.copy,
                          **kw)

    def setUp(self):
        self.data = os.urandom(SIZE)
        f = tempfile.NamedTemporaryFile(delete=False)
        self.addCleanup(os.unlink, f.name)
        f.write(self.data)
        f.close()
        self.fd = os.open(f.name, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    async def _connect(self):
        factory = Factory.forProtocol(_Server)
        factory.connected = defer.Deferred()
        factory.lost = defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        reader = _Reader()
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              reader)
        server = await factory.connected

        async def close():
            if server.transport.connected:
                server.transport.abortConnection()
            await factory.lost
            await reader.lost
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(close()))
        return server, reader

    async def test_sends_after_the_transports_own_bytes(self):
        """When bytes were written to the transport before, they go out first;
        the range follows exactly, the sender waits for writability while the
        client does not read, and the Deferred fires once all is sent."""
        server, reader = await self._connect()
        self.assertIsNotNone(socket_of(server.transport))
        sent = []
        sender = self._sender(server, on_sent=sent.append)
        self.addCleanup(sender.stop)
        server.transport.write(b"HEADERS\r\n\r\n")
        self.assertTrue(buffered(server.transport))
        d = sender.send(self.fd, 5, SIZE - 10)
        await _poll(lambda: sender._watching and not buffered(server.transport))
        self.assertNoResult(d)      # the client reads nothing yet: sendfile hit EAGAIN
        reader.transport.resumeProducing()
        await d
        self.assertEqual(sum(sent), SIZE - 10)
        await _poll(lambda: len(reader.got) >= SIZE - 10 + 11)
        self.assertEqual(bytes(reader.got), b"HEADERS\r\n\r\n" + self.data[5:SIZE - 5])
        self.assertFalse(sender._watching)

    async def test_connection_lost_fails_the_send(self):
        """When the connection goes while a send waits, it fails with ConnectionLost."""
        server, reader = await self._connect()
        sender = self._sender(server)
        self.addCleanup(sender.stop)
        d = sender.send(self.fd, 0, SIZE)
        await _poll(lambda: sender._watching)
        server.transport.loseConnection()
        reader.transport.resumeProducing()
        await _poll(lambda: d.called)
        self.failureResultOf(d, ConnectionLost)

    async def test_stop_cancels(self):
        """stop() fails a waiting send with CancelledError and closes the duplicate."""
        server, reader = await self._connect()
        sender = self._sender(server)
        d = sender.send(self.fd, 0, SIZE)
        await _poll(lambda: sender._watching)
        sender.stop()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(sender.fileno(), -1)
        self.assertFalse(sender._watching)
        sender.stop()   # twice is fine
        reader.transport.resumeProducing()

    async def test_short_file_fails(self):
        """A range past the end of the file fails with OSError, not a hang."""
        server, reader = await self._connect()
        reader.transport.resumeProducing()
        sender = self._sender(server)
        self.addCleanup(sender.stop)
        d = sender.send(self.fd, SIZE - 10, 20)
        await _poll(lambda: d.called)
        self.failureResultOf(d, OSError)

    async def test_ranges_one_after_another(self):
        """When several ranges are sent in turn (a short one, one from
        another place in the file), the client gets exactly those bytes in order."""
        server, reader = await self._connect()
        reader.transport.resumeProducing()
        sender = self._sender(server)
        self.addCleanup(sender.stop)
        await sender.send(self.fd, 7, 3)
        await sender.send(self.fd, SIZE // 2, SIZE // 2)
        await sender.send(self.fd, 0, 1)
        want = self.data[7:10] + self.data[SIZE // 2:SIZE // 2 * 2] + self.data[:1]
        await _poll(lambda: len(reader.got) >= len(want))
        self.assertEqual(bytes(reader.got), want)


class CopyFileSenderTests(FileSenderTests):
    """The same through the copy path (read into a buffer, written from it)."""

    copy = True

    async def test_cancelled_send_leaves_no_bytes_behind(self):
        """When a send is cancelled with bytes read but not written, the next
        send starts from its own range, not from the leftovers."""
        server, reader = await self._connect()
        sent = []
        sender = self._sender(server, on_sent=sent.append)
        self.addCleanup(sender.stop)
        d = sender.send(self.fd, 0, SIZE)
        await _poll(lambda: sender._watching)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertLess(sum(sent), SIZE)
        reader.transport.resumeProducing()
        await _poll(lambda: len(reader.got) >= sum(sent))
        await sender.send(self.fd, 5, 10)
        await _poll(lambda: len(reader.got) >= sum(sent))
        self.assertEqual(len(reader.got), sum(sent))
        self.assertEqual(bytes(reader.got), self.data[:sum(sent) - 10] + self.data[5:15])


@implementer(ISSLTransport)
class _TLSTransport(StringTransport):
    dataBuffer, offset, _tempDataLen = b"", 0, 0


class _SocketTransport(StringTransport):
    """Looks like a TCP transport: a buffer Twisted-style, a handle."""

    dataBuffer, offset, _tempDataLen = b"", 0, 0

    def __init__(self, handle):
        super().__init__()
        self.handle = handle

    def getHandle(self):
        return self.handle


class SocketOfTests(SynchronousTestCase):
    def test_other_transports_keep_the_buffered_path(self):
        """When the transport is TLS (an SSL transport, a TCP transport that
        started TLS, a handle that is not a socket), or not a socket transport
        Twisted can tell the buffer of, there is no socket to sendfile to."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        self.assertIs(socket_of(_SocketTransport(sock)), sock)
        started_tls = _SocketTransport(sock)
        started_tls.TLS = True
        self.assertIsNone(socket_of(started_tls))
        self.assertIsNone(socket_of(_SocketTransport(object())))
        self.assertIsNone(socket_of(_TLSTransport()))
        self.assertIsNone(socket_of(StringTransport()))
        self.assertIsNone(buffered(StringTransport()))

    def test_on_this_host(self):
        """When the peer is a loopback address or the address it connected
        to, it is on this host; another address, or none known, is not."""
        def transport(peer, host):
            return StringTransport(hostAddress=host, peerAddress=peer)
        self.assertTrue(on_this_host(transport(IPv4Address("TCP", "127.0.0.1", 4000),
                                               IPv4Address("TCP", "127.0.0.1", 65000))))
        self.assertTrue(on_this_host(transport(IPv6Address("TCP", "::1", 4000),
                                               IPv6Address("TCP", "::1", 65000))))
        self.assertTrue(on_this_host(transport(IPv6Address("TCP", "::ffff:127.0.0.1", 4000),
                                               IPv6Address("TCP", "::ffff:10.1.2.3", 65000))))
        self.assertTrue(on_this_host(transport(IPv4Address("TCP", "10.1.2.3", 4000),
                                               IPv4Address("TCP", "10.1.2.3", 65000))))
        self.assertFalse(on_this_host(transport(IPv4Address("TCP", "10.1.2.4", 4000),
                                                IPv4Address("TCP", "10.1.2.3", 65000))))
        self.assertFalse(on_this_host(object()))

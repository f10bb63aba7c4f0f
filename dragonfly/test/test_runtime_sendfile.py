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

from dragonfly.runtime.sendfile import FileSender, buffered, socket_of

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
        sock = socket_of(server.transport)
        self.assertIsNotNone(sock)
        sent = []
        sender = FileSender(reactor, server.transport, sock, on_sent=sent.append)
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
        sender = FileSender(reactor, server.transport, socket_of(server.transport))
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
        sender = FileSender(reactor, server.transport, socket_of(server.transport))
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
        sender = FileSender(reactor, server.transport, socket_of(server.transport))
        self.addCleanup(sender.stop)
        d = sender.send(self.fd, SIZE - 10, 20)
        await _poll(lambda: d.called)
        self.failureResultOf(d, OSError)


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

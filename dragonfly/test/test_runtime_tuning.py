"""Tests for process and socket tuning (dragonfly.runtime.tuning)."""
import socket

from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.tuning import (
    HIGH_PRIORITY, DownloadEndpoint, ReceiveLowWater, prioritise, tune_allocator,
    tune_receiver)


def _tcp_socket(case):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(sock.close)
    return sock


class _SocketTransport(StringTransport):
    def __init__(self, sock):
        super().__init__()
        self.sock = sock

    def getHandle(self):
        return self.sock


class _Wrapper:
    """A TLS-like transport: its handle is not a socket, its transport is."""

    def __init__(self, transport):
        self.transport = transport

    def getHandle(self):
        return object()


def _priority(sock):
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY)


class MarkDownloadTests(SynchronousTestCase):
    def setUp(self):
        if not hasattr(socket, "SO_PRIORITY"):
            raise self.skipTest("no SO_PRIORITY here")

    def test_socket(self):
        """When the transport has a socket, its priority becomes HIGH_PRIORITY."""
        sock = _tcp_socket(self)
        self.assertEqual(_priority(sock), 0)
        prioritise(_SocketTransport(sock))
        self.assertEqual(_priority(sock), HIGH_PRIORITY)

    def test_under_a_wrapper(self):
        """When the socket is under a wrapping transport (TLS), it is found and marked."""
        sock = _tcp_socket(self)
        prioritise(_Wrapper(_SocketTransport(sock)))
        self.assertEqual(_priority(sock), HIGH_PRIORITY)

    def test_no_socket(self):
        """When there is no socket (a memory transport, None), nothing happens."""
        prioritise(StringTransport())
        prioritise(None)

    def test_refused(self):
        """When the socket refuses the option, the error is swallowed."""
        sock = _tcp_socket(self)
        sock.close()
        prioritise(_SocketTransport(sock))

    def test_tune_receiver_marks(self):
        """When a piece connection is tuned, it is marked as a download too."""
        sock = _tcp_socket(self)
        tune_receiver(_SocketTransport(sock), 1024)
        self.assertEqual(_priority(sock), HIGH_PRIORITY)

    def test_endpoint(self):
        """When a DownloadEndpoint connects, the protocol's socket is marked
        and the protocol handed on."""
        sock = _tcp_socket(self)
        proto = Protocol()

        class Inner:
            def connect(self, factory):
                proto.makeConnection(_SocketTransport(sock))
                return succeed(proto)

        got = self.successResultOf(DownloadEndpoint(Inner()).connect(Factory()))
        self.assertIs(got, proto)
        self.assertEqual(_priority(sock), HIGH_PRIORITY)


class TuneReceiverTests(SynchronousTestCase):
    def test_no_socket(self):
        """When the transport has no socket, the read size is set where it can
        be and there is no low-water mark to follow."""
        tr = StringTransport()
        tr.bufferSize = 65536
        self.assertIsNone(tune_receiver(tr, 256 * 1024))
        self.assertEqual(tr.bufferSize, 256 * 1024)

    def test_socket(self):
        """When the transport has a socket, TCP_NODELAY is asked for and its
        low-water mark can be followed."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        nodelay = []

        class SocketTransport(StringTransport):
            def getHandle(self):
                return a

            def setTcpNoDelay(self, enabled):
                nodelay.append(enabled)

        lowat = tune_receiver(SocketTransport(), 1024)
        self.assertEqual(nodelay, [True])
        if not hasattr(socket, "SO_RCVLOWAT"):
            self.assertIsNone(lowat)
            return
        self.assertIsInstance(lowat, ReceiveLowWater)


class ReceiveLowWaterTests(SynchronousTestCase):
    def test_follows(self):
        """When set, the socket's SO_RCVLOWAT changes and C{value} tells it."""
        if not hasattr(socket, "SO_RCVLOWAT"):
            raise self.skipTest("no SO_RCVLOWAT here")
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        lowat = ReceiveLowWater(a)
        self.assertEqual(lowat.value, 1)
        lowat.set(4096)
        self.assertEqual(lowat.value, 4096)
        self.assertEqual(a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT), 4096)

    def test_unsupported(self):
        """When the socket refuses the option, the mark is left alone from then on."""
        class Refusing:
            calls = 0

            def setsockopt(self, *args):
                self.calls += 1
                raise OSError("not supported")

        sock = Refusing()
        lowat = ReceiveLowWater(sock)
        lowat.set(4096)
        lowat.set(8192)
        self.assertEqual((lowat.value, sock.calls), (1, 1))


class TuneAllocatorTests(SynchronousTestCase):
    def test_idempotent(self):
        """Tuning the allocator twice is harmless (it acts once per process)."""
        tune_allocator()
        tune_allocator()

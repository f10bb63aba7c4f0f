"""Tests for process and socket tuning (dragonfly.runtime.tuning)."""
import socket

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.tuning import ReceiveLowWater, tune_allocator, tune_receiver


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

"""Tests for dragonfly.protocol.uplink: kernel pacing of the running uploads."""
import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dragonfly.protocol.uplink import UplinkPacer, pacing_option, socket_of


class FakeTransport:
    def __init__(self, handle, inner=None):
        self.handle = handle
        self.transport = inner

    def getHandle(self):
        return self.handle


class UplinkPacerTests(SynchronousTestCase):
    def setUp(self):
        if pacing_option() is None:
            raise SkipTest("no SO_MAX_PACING_RATE on this platform")
        self.socks = []

    def tearDown(self):
        for s in self.socks:
            s.close()

    def sock(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(s)
        return s

    def cap(self, s):
        return s.getsockopt(socket.SOL_SOCKET, pacing_option())

    def test_shared_cap(self):
        """When uploads start and end, each running upload's socket is capped at the rate over the number running."""
        pacer = UplinkPacer(1200000)
        a, b, c = self.sock(), self.sock(), self.sock()
        self.assertTrue(pacer.add("a", FakeTransport(a)))
        self.assertEqual(self.cap(a), 1200000)
        self.assertTrue(pacer.add("b", FakeTransport(b)))
        self.assertTrue(pacer.add("c", FakeTransport(c)))
        self.assertEqual([self.cap(s) for s in (a, b, c)], [400000] * 3)
        pacer.remove("b")
        self.assertEqual([self.cap(s) for s in (a, c)], [600000] * 2)
        pacer.remove("b")
        pacer.remove("a")
        self.assertEqual(self.cap(c), 1200000)
        self.assertEqual(pacer.running(), 1)

    def test_through_tls_wrapper(self):
        """When the transport is a wrapper (TLS) whose handle is no socket, the socket under it is paced."""
        s = self.sock()
        wrapper = FakeTransport(object(), inner=FakeTransport(s))
        self.assertIs(socket_of(wrapper), s)
        self.assertTrue(UplinkPacer(5000).add("k", wrapper))
        self.assertEqual(self.cap(s), 5000)

    def test_no_socket(self):
        """When no socket is under the transport, or the option is unknown, the pacer declines and the caller paces."""
        self.assertFalse(UplinkPacer(5000).add("k", object()))
        self.assertFalse(UplinkPacer(5000).add("k", FakeTransport(object())))
        s = self.sock()
        pacer = UplinkPacer(5000)
        pacer.option = None
        self.assertFalse(pacer.add("k", FakeTransport(s)))
        self.assertEqual(pacer.running(), 0)

    def test_closed_socket(self):
        """When setsockopt fails (the socket is closed), the pacer declines that upload and keeps the others' caps."""
        pacer = UplinkPacer(9000)
        a, b = self.sock(), self.sock()
        self.assertTrue(pacer.add("a", FakeTransport(a)))
        b.close()
        self.assertFalse(pacer.add("b", FakeTransport(b)))
        self.assertEqual(self.cap(a), 9000)
        self.assertEqual(pacer.running(), 1)

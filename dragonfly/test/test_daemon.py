"""Tests for dragonfly.runtime.daemon: timers that survive, listeners that tell their port."""
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.daemon import ListeningService, safe_timer


class SafeTimerTests(SynchronousTestCase):
    def test_exceptions_do_not_stop_the_timer(self):
        """A timer body that raises is logged and the timer keeps running."""
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        clock = Clock()
        calls = []

        def body():
            calls.append(1)
            raise RuntimeError("boom")

        t = safe_timer(10, body, clock, "boom", Logger())
        t.startService()
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(calls), 3)
        self.assertTrue(t.running)
        t.stopService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)


class _PendingEndpoint:
    def __init__(self):
        self.pending = Deferred()

    def listen(self, factory):
        return self.pending


class ListeningServiceTests(SynchronousTestCase):

    def test_when_listening(self):
        """whenListening fires with the bound port, before and after binding;
        stopping stops listening."""
        reactor = MemoryReactor()
        s = ListeningService(TCP4ServerEndpoint(reactor, 4100), Factory(), "x")
        early = s.whenListening()
        s.startService()
        port = self.successResultOf(early)
        self.assertEqual(port.getHost().port, 4100)
        self.assertIs(self.successResultOf(s.whenListening()), port)
        stopped = []
        port.stopListening = lambda: stopped.append(True)
        s.stopService()
        self.assertEqual(stopped, [True])
        self.assertIsNone(s.port)

    def test_listen_fails(self):
        """A failed listen errbacks the waiters and is logged."""
        e = _PendingEndpoint()
        s = ListeningService(e, Factory(), "x")
        d = s.whenListening()
        s.startService()
        e.pending.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
        self.failureResultOf(d, CannotListenError)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_stop_before_bound(self):
        """Stopping before the port is bound cancels the listen."""
        e = _PendingEndpoint()
        s = ListeningService(e, Factory(), "x")
        s.startService()
        s.stopService()
        self.assertTrue(e.pending.called)
        self.flushLoggedErrors()

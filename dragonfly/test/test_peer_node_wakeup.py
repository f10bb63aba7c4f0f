"""The Signal the peer's waits are built on."""
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.wakeup import Signal


class SignalTests(SynchronousTestCase):

    def test_fire_wakes_every_waiter(self):
        """fire(value) wakes every current waiter with value; later waiters wait."""
        s = Signal(Clock())
        a, b = s.wait(), s.wait()
        s.fire("x")
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("x", "x"))
        c = s.wait()
        self.assertNoResult(c)

    def test_timeout(self):
        """wait(timeout) fires with False after timeout; its timer is gone when fired."""
        clock = Clock()
        s = Signal(clock)
        d = s.wait(5)
        clock.advance(4)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertIs(self.successResultOf(d), False)
        e = s.wait(5)
        s.fire()
        self.assertIs(self.successResultOf(e), True)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_and_fail(self):
        """A cancelled waiter is dropped; fail() errbacks the others."""
        s = Signal(Clock())
        a, b = s.wait(), s.wait()
        a.cancel()
        self.failureResultOf(a)
        s.fail(Failure(ValueError("x")))
        self.failureResultOf(b, ValueError)

"""Tests for dragonfly.peer.pacing: one download's pace from its callers' limits."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.pacing import DownloadPace, pace_rate


class PaceRateTests(SynchronousTestCase):

    def test_rate(self):
        """The fastest caller's limit; unlimited with no caller or an unlimited one."""
        self.assertEqual(pace_rate([]), 0)
        self.assertEqual(pace_rate([100, 300, 200]), 300)
        self.assertEqual(pace_rate([100, 0]), 0)


class DownloadPaceTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.pace = DownloadPace(self.clock)

    def test_unlimited(self):
        """Without a limited caller, every wait fires at once and no timer runs."""
        self.pace.add("a", 0)
        self.successResultOf(self.pace.wait(10 ** 9))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paced_from_the_first_byte(self):
        """With a limit, N bytes take N/limit seconds: no burst up front."""
        self.pace.add("a", 1000)
        d = self.pace.wait(500)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.successResultOf(d)
        d = self.pace.wait(1000)
        self.clock.advance(0.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.successResultOf(d)

    def test_fastest_caller_sets_the_pace(self):
        """A faster caller joining speeds the fetch up; when it leaves, the
        pace falls back to the callers left; an unlimited caller lifts it."""
        self.pace.add("slow", 1000)
        self.assertEqual(self.pace.rate, 1000)
        self.pace.add("fast", 4000)
        self.assertEqual(self.pace.rate, 4000)
        d = self.pace.wait(4000)
        self.clock.advance(1)
        self.successResultOf(d)
        self.pace.remove("fast")
        self.assertEqual(self.pace.rate, 1000)
        self.pace.add("free", 0)
        self.assertEqual(self.pace.rate, 0)
        self.successResultOf(self.pace.wait(10 ** 9))
        self.pace.remove("free")
        self.pace.remove("nobody")
        self.assertEqual(self.pace.rate, 1000)

    def test_cancel(self):
        """Cancelling a wait drops its timer."""
        self.pace.add("a", 10)
        d = self.pace.wait(100)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

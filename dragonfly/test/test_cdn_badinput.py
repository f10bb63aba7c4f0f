"""Tests for the CDN against an origin that breaks off mid-body."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.origin import BodyBroken, OriginError
from dragonfly.test.test_cdn import PIECE, TASK, URL, CDNTestMixin


class BrokenBodyTests(CDNTestMixin, SynchronousTestCase):
    def test_repeated_break_fails_fast(self):
        """When every answer breaks off at the same place, the job fails
        after max_body_retries more tries (a few seconds), not after the
        whole backoff schedule for network trouble."""
        self.origin.breaks["/f"] = [PIECE // 2] * 20
        d = self.cdn.ensure_complete(TASK, URL, {})
        waited = 0
        while not d.called and waited < 60:
            self.clock.advance(1)
            waited += 1
        f = self.failureResultOf(d, BodyBroken)
        self.assertLessEqual(waited, 3)
        self.assertEqual(len(self.origin.gets("/f")), 1 + self.cdn.max_body_retries)
        self.assertEqual(self.cdn.status(TASK)["state"], "failed")
        self.assertIn("connection lost", f.value.message)

    def test_breaks_with_progress_keep_going(self):
        """A body that breaks again but brought new pieces each time is resumed
        until it completes."""
        self.origin.breaks["/f"] = [PIECE + 10, PIECE + 10, PIECE + 10]
        d = self.cdn.ensure_complete(TASK, URL, {})
        for _ in range(20):
            self.clock.advance(1)
        self.successResultOf(d)
        self.assertSeeded()

    def test_more_body_retries(self):
        """max_body_retries is a knob: with 3, four attempts are made."""
        self.start(max_body_retries=3)
        self.origin.breaks["/f"] = [10] * 20
        d = self.cdn.ensure_complete(TASK, URL, {})
        for _ in range(60):
            self.clock.advance(1)
        self.failureResultOf(d, OriginError)
        self.assertEqual(len(self.origin.gets("/f")), 4)

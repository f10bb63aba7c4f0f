"""Tests for dragonfly.runtime.ratelimit.TokenBucket."""
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.ratelimit import TokenBucket


class TokenBucketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def test_unlimited(self):
        """When the rate is 0, every take is allowed at once and wait() has already fired."""
        bucket = TokenBucket(self.clock, 0)
        for _ in range(10):
            self.assertEqual(bucket.consume(10 ** 12), 0)
        self.successResultOf(bucket.wait(10 ** 12))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_burst(self):
        """When no burst is given, it is a quarter second of rate, but at least 64 KiB."""
        self.assertEqual(TokenBucket(self.clock, 4 * 1024 * 1024).burst, 1024 * 1024)
        self.assertEqual(TokenBucket(self.clock, 1000).burst, 64 * 1024)

    def test_burst_allowed_at_once(self):
        """When a new bucket is asked for up to its burst, no wait is needed."""
        bucket = TokenBucket(self.clock, 1000, burst=5000)
        self.assertEqual(bucket.consume(3000), 0)
        self.assertEqual(bucket.consume(2000), 0)

    def test_debt_means_waiting(self):
        """When a take exceeds the tokens left, the wait is the debt divided by the rate."""
        bucket = TokenBucket(self.clock, 1000, burst=1000)
        self.assertEqual(bucket.consume(1000), 0)
        self.assertAlmostEqual(bucket.consume(500), 0.5)
        # The debt carries over: the next taker waits for both.
        self.assertAlmostEqual(bucket.consume(500), 1.0)

    def test_large_take_granted_then_paid(self):
        """When one take is larger than the burst, it is granted with a wait covering the excess."""
        bucket = TokenBucket(self.clock, 1000, burst=100)
        self.assertAlmostEqual(bucket.consume(2100), 2.0)

    def test_refill_over_time(self):
        """When time passes, tokens come back at the rate."""
        bucket = TokenBucket(self.clock, 1000, burst=1000)
        bucket.consume(1000)
        self.clock.advance(0.3)
        self.assertEqual(bucket.consume(300), 0)
        self.assertGreater(bucket.consume(1), 0)

    def test_refill_capped_at_burst(self):
        """When the bucket sits idle for long, it holds no more than the burst."""
        bucket = TokenBucket(self.clock, 1000, burst=1000)
        self.clock.advance(3600)
        self.assertEqual(bucket.consume(1000), 0)
        self.assertAlmostEqual(bucket.consume(1000), 1.0)

    def test_average_rate(self):
        """When takes are spaced by the waits they are told, the long-run rate matches."""
        bucket = TokenBucket(self.clock, 10000, burst=1000)
        sent = 0
        while self.clock.seconds() < 10:
            delay = bucket.consume(1000)
            sent += 1000
            self.clock.advance(delay or 0.001)
        rate = sent / self.clock.seconds()
        self.assertTrue(9500 <= rate <= 10500, rate)

    def test_wait_fires_after_delay(self):
        """When wait() is asked for more than is available, it fires only after the delay."""
        bucket = TokenBucket(self.clock, 1000, burst=1000)
        self.successResultOf(bucket.wait(1000))
        d = bucket.wait(500)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertIsNone(self.successResultOf(d))

    def test_wait_cancel(self):
        """When a pending wait is cancelled, its timer is cancelled too."""
        bucket = TokenBucket(self.clock, 1000, burst=1000)
        bucket.consume(1000)
        d = bucket.wait(500)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

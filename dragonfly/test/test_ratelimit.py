"""Tests for dragonfly.runtime.ratelimit: TokenBucket, all_of."""
from twisted.internet.defer import CancelledError, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.ratelimit import TokenBucket, all_of


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


class SetRateTests(SynchronousTestCase):

    def test_set_rate(self):
        """set_rate credits the time so far at the old rate, then charges at the new one."""
        clock = Clock()
        bucket = TokenBucket(clock, 1000, burst=0)
        self.assertEqual(bucket.consume(1000), 1.0)
        clock.advance(0.5)                      # half the debt paid at 1000/s
        bucket.set_rate(4000)
        self.assertEqual(bucket.consume(0), 500 / 4000)
        self.assertEqual(bucket.rate, 4000)

    def test_from_unlimited(self):
        """A bucket made with rate 0 starts counting when given a rate."""
        clock = Clock()
        bucket = TokenBucket(clock, 0, burst=0)
        clock.advance(100)
        bucket.set_rate(1000)
        self.assertEqual(bucket.consume(1000), 1.0)


class AllOfTests(SynchronousTestCase):

    def test_waits_for_every_limiter(self):
        """all_of waits until the slowest of its limiters allows the bytes; None
        limiters are skipped; with one limiter it is that limiter; with none, None."""
        clock = Clock()
        fast, slow = TokenBucket(clock, 1000, burst=0), TokenBucket(clock, 100, burst=0)
        both = all_of(fast, None, slow)
        d = both.wait(100)
        clock.advance(0.5)
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertIsNone(self.successResultOf(d))
        self.assertIs(all_of(None, fast), fast)
        self.assertIsNone(all_of(None, None))

        class _Now:
            def wait(self, n):
                return succeed(None)
        self.successResultOf(all_of(_Now(), _Now()).wait(5))


class InitialTests(SynchronousTestCase):

    def test_starts_empty(self):
        """With initial=0 the first bytes already wait; the burst then absorbs
        lateness: a late taker is not charged again for time it slept."""
        clock = Clock()
        bucket = TokenBucket(clock, 1000, burst=500, initial=0)
        self.assertEqual(bucket.consume(100), 0.1)
        clock.advance(0.5)                       # 0.4 s late: 400 tokens banked
        self.assertEqual(bucket.consume(400), 0)
        self.assertEqual(bucket.consume(100), 0.1)

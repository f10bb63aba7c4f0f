"""Tests for dragonfly.runtime.signals: SIGTERM and a timeout as exceptions."""
import os
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.signals import Interrupted, TimedOut, raising_signals


class RaisingSignalsTests(SynchronousTestCase):

    def handlers(self):
        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)

    def test_none_touches_nothing(self):
        """With timeout None no handler is installed."""
        before = self.handlers()
        with raising_signals(None):
            self.assertEqual(self.handlers(), before)

    def test_sigterm_raises(self):
        """SIGTERM inside the block raises Interrupted; the old handlers come back."""
        before = self.handlers()
        with self.assertRaises(Interrupted):
            with raising_signals(0):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        self.assertEqual(self.handlers(), before)

    def test_timeout_raises(self):
        """When the timeout runs out inside the block, TimedOut is raised."""
        before = self.handlers()
        started = time.monotonic()
        with self.assertRaises(TimedOut):
            with raising_signals(0.05):
                time.sleep(5)
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(self.handlers(), before)
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))

    def test_finished_run_disarms_the_timer(self):
        """A block that ends in time leaves no timer armed."""
        with raising_signals(30):
            pass
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))

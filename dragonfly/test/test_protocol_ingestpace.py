"""Tests for dragonfly.protocol.ingestpace: a task's uploads paced at its
ingest rate while its origin body still arrives."""
import socket
import struct

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dragonfly.protocol.ingestpace import IngestPacing
from dragonfly.protocol.uplink import _MAX, pacing_option

MIB = 1 << 20


class FakeTransport:
    def __init__(self, handle):
        self.handle = handle

    def getHandle(self):
        return self.handle


class IngestPacingTests(SynchronousTestCase):
    def setUp(self):
        if pacing_option() is None:
            raise SkipTest("no SO_MAX_PACING_RATE on this platform")
        self.clock = Clock()
        self.fetching = {"t": True, "u": True}
        self.pacing = IngestPacing(self.clock, window=1.0, idle=0.5,
                                   fetching=lambda tid: self.fetching.get(tid, False))
        self.socks = []

    def tearDown(self):
        for s in self.socks:
            s.close()

    def sock(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(s)
        return s

    def cap(self, s):
        return struct.unpack("I", s.getsockopt(socket.SOL_SOCKET, pacing_option(), 4))[0]

    def ingest(self, task_id, seconds, per_tick, tick=0.25):
        for _ in range(int(round(seconds / tick))):
            self.clock.advance(tick)
            self.pacing.received(task_id, per_tick)

    def test_no_rate_before_a_whole_window(self):
        """When less than a window of a task's body has arrived, its uploads are not paced."""
        self.ingest("t", 0.75, MIB)
        self.assertEqual(self.pacing.rate("t"), 0)
        s = self.sock()
        self.assertFalse(self.pacing.add("k", "t", FakeTransport(s)))
        self.assertEqual(self.pacing.paced(), 0)

    def test_best_window_rate_shared(self):
        """When a task's body arrives, its running uploads share the highest rate its ingest reached over a window, and keep it when the ingest slows."""
        self.ingest("t", 2.0, MIB)             # 4 MiB/s
        self.assertEqual(self.pacing.rate("t"), 4 * MIB)
        a, b = self.sock(), self.sock()
        self.assertTrue(self.pacing.add("a", "t", FakeTransport(a)))
        self.assertEqual(self.cap(a), 4 * MIB)
        self.assertTrue(self.pacing.add("b", "t", FakeTransport(b)))
        self.assertEqual([self.cap(a), self.cap(b)], [2 * MIB, 2 * MIB])
        self.ingest("t", 2.0, MIB // 2)        # slower now: the best rate stays
        self.assertEqual(self.pacing.rate("t"), 4 * MIB)
        self.ingest("t", 2.0, 2 * MIB)         # faster: the caps rise with it
        self.assertEqual([self.cap(a), self.cap(b)], [4 * MIB, 4 * MIB])
        self.pacing.remove("b")
        self.assertEqual(self.cap(a), 8 * MIB)
        self.assertEqual(self.pacing.paced("t"), 1)

    def test_other_tasks_unpaced(self):
        """When one task is being fetched, the uploads of another task (a complete one) are not paced."""
        self.ingest("t", 2.0, MIB)
        s = self.sock()
        before = self.cap(s)
        self.assertFalse(self.pacing.add("k", "cached", FakeTransport(s)))
        self.assertEqual(self.cap(s), before)
        self.assertEqual(self.pacing.paced(), 0)

    def test_fetch_ended(self):
        """When a task's fetch has ended, its next upload on the same connection is uncapped."""
        self.ingest("t", 2.0, MIB)
        s = self.sock()
        self.assertTrue(self.pacing.add("k", "t", FakeTransport(s)))
        self.assertEqual(self.cap(s), 4 * MIB)
        self.pacing.remove("k")
        self.fetching["t"] = False
        self.assertEqual(self.pacing.rate("t"), 0)
        self.assertFalse(self.pacing.add("k", "t", FakeTransport(s)))
        self.assertEqual(self.cap(s), _MAX - 1)

    def test_body_paused(self):
        """When no body byte came for longer than idle, the task's uploads are not paced; when bytes come again, the best rate is measured anew from a fresh window."""
        self.ingest("t", 2.0, MIB)
        self.clock.advance(0.6)
        self.assertEqual(self.pacing.rate("t"), 0)
        s = self.sock()
        self.assertFalse(self.pacing.add("k", "t", FakeTransport(s)))
        self.pacing.received("t", 64 * MIB)    # the first byte after the pause opens a window
        self.assertEqual(self.pacing.rate("t"), 4 * MIB)
        self.ingest("t", 1.0, 3 * MIB)
        self.assertEqual(self.pacing.rate("t"), 12 * MIB)

    def test_stale_tasks_forgotten(self):
        """When a new task's body starts, tasks with no byte for a minute are forgotten."""
        self.ingest("t", 2.0, MIB)
        self.clock.advance(61)
        self.pacing.received("u", MIB)
        self.assertEqual(sorted(self.pacing._tasks), ["u"])

    def test_connection_lost(self):
        """When a paced upload's connection is lost, the task's other uploads share its part."""
        self.ingest("t", 2.0, MIB)
        a, b = self.sock(), self.sock()
        self.pacing.add("a", "t", FakeTransport(a))
        self.pacing.add("b", "t", FakeTransport(b))
        self.pacing.forget("a")
        self.assertEqual(self.cap(b), 4 * MIB)
        self.assertEqual(self.pacing.paced(), 1)

    def test_no_option(self):
        """When the platform has no pacing option, nothing is paced."""
        self.ingest("t", 2.0, MIB)
        self.pacing.option = None
        self.assertFalse(self.pacing.add("k", "t", FakeTransport(self.sock())))

"""Tests for dragonfly.ingest: the origin -> store pipeline, piece by piece."""
import os

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from dragonfly.digest import piece_digest
from dragonfly.ingest import spool as spool_module
from dragonfly.ingest.cutter import PieceCutter
from dragonfly.ingest.events import IngestError, IngestEvents
from dragonfly.ingest.pipeline import spool_into, stream_into
from dragonfly.ingest.receiver import BodyError, BodyReceiver
from dragonfly.ingest.spool import Spool
from dragonfly.ingest.writer import StoreWriter
from dragonfly.storage.store import PieceStore
from dragonfly.runtime.threads import SyncRunner

PIECE = 1024
DATA = os.urandom(PIECE * 4 + 100)   # 5 pieces, the last one short
TASK = "a" * 64


class RecordingEvents(IngestEvents):
    def __init__(self):
        self.bytes = 0
        self.stored_pieces = []
        self.skipped_pieces = []

    def received(self, nbytes):
        self.bytes += nbytes

    def stored(self, tf, index, size, digest):
        self.stored_pieces.append((index, size, digest))

    def skipped(self, index, size):
        self.skipped_pieces.append((index, size))


class FakeWriter:
    """A writer whose piece writes wait until the test fires them."""

    def __init__(self):
        self.pending = []
        self.pieces = {}

    def cut(self, index, chunks, size):
        d = Deferred()
        self.pieces[index] = b"".join(bytes(c) for c in chunks)
        self.pending.append(d)
        return d

    def land(self):
        self.pending.pop(0).callback(None)


class FakeResponse:
    """An OriginResponse stand-in whose body is fed to the consumer at once
    (honouring the consumer's Deferreds, like the real receiver)."""

    def __init__(self, body, offset=0, chunk=300):
        self.offset = offset
        self._chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]

    def deliver(self, consumer):
        return Deferred.fromCoroutine(self._pump(consumer))

    async def _pump(self, consumer):
        n = 0
        for c in self._chunks:
            r = consumer.write(c)
            if isinstance(r, Deferred):
                await r
            n += len(c)
        return n


class StoreMixin:
    def setUp(self):
        self.runner = SyncRunner()
        self.root = self.mktemp()
        self.store = PieceStore(self.root, clock=Clock(), runner=self.runner)
        self.tf = self.store.create(TASK, "http://origin.test/f", len(DATA), PIECE)
        self.events = RecordingEvents()

    def piece(self, index):
        return DATA[index * PIECE:(index + 1) * PIECE]


class PieceCutterTests(StoreMixin, SynchronousTestCase):
    def test_window_pauses_the_body(self):
        """When max_writes piece writes are pending, write returns a Deferred
        (the origin pauses) that fires once one of them lands."""
        w = FakeWriter()
        c = PieceCutter(self.tf, 0, 2, w, self.events)
        self.assertIsNone(c.write(DATA[:PIECE]))
        r = c.write(DATA[PIECE:2 * PIECE])
        self.assertIsInstance(r, Deferred)
        self.assertNoResult(r)
        w.land()
        self.successResultOf(r)
        self.assertEqual(self.events.bytes, 2 * PIECE)

    def test_large_chunk_waits_for_room(self):
        """A chunk spanning more pieces than the window cuts what fits, then
        waits for room before cutting the rest."""
        w = FakeWriter()
        c = PieceCutter(self.tf, 0, 1, w, self.events)
        r = c.write(DATA)
        self.assertEqual(sorted(w.pieces), [0])
        w.land()
        self.assertEqual(sorted(w.pieces), [0, 1])
        while w.pending:
            w.land()
        self.successResultOf(r)
        self.assertEqual([w.pieces[i] for i in range(5)],
                         [DATA[i:i + PIECE] for i in range(0, len(DATA), PIECE)])
        self.successResultOf(Deferred.fromCoroutine(c.finish()))

    def test_overflow_short_misaligned(self):
        """Bytes past the task, a body ending early and a start off a piece
        boundary raise the events' errors."""
        w = FakeWriter()
        c = PieceCutter(self.tf, 4 * PIECE, 2, w, self.events)
        self.assertRaises(IngestError, c.write, DATA[4 * PIECE:] + b"x")
        c = PieceCutter(self.tf, 0, 9, w, self.events)
        c.write(DATA[:PIECE + 10])
        while w.pending:
            w.land()
        f = self.failureResultOf(Deferred.fromCoroutine(c.finish()), IngestError)
        self.assertIn(f"byte {PIECE + 10}", str(f.value))
        self.assertRaises(IngestError, PieceCutter, self.tf, 10, 2, w, self.events)

    def test_write_error_kept(self):
        """A failed piece write fails the next write and finish()."""
        w = FakeWriter()
        c = PieceCutter(self.tf, 0, 2, w, self.events)
        c.write(DATA[:PIECE])
        w.pending.pop(0).errback(OSError("disk full"))
        self.assertRaises(OSError, c.write, b"x")
        self.failureResultOf(Deferred.fromCoroutine(c.finish()), OSError)


class StoreWriterTests(StoreMixin, SynchronousTestCase):
    def test_new_piece(self):
        """A piece cut from a body is hashed and written; stored() hears its digest."""
        w = StoreWriter(self.tf, self.runner, self.events)
        digest = self.successResultOf(w.cut(0, [self.piece(0)[:10], self.piece(0)[10:]], PIECE))
        self.assertEqual(digest, piece_digest(self.piece(0)))
        self.assertEqual(self.tf.digest(0), digest)
        self.assertEqual(self.events.stored_pieces, [(0, PIECE, digest)])

    def test_held_piece_skipped(self):
        """Without recheck_held a held piece is skipped, not rewritten."""
        w = StoreWriter(self.tf, self.runner, self.events)
        self.successResultOf(w.cut(0, [self.piece(0)], PIECE))
        self.assertIsNone(w.cut(0, [b"y" * PIECE], PIECE))
        self.assertEqual(self.events.skipped_pieces, [(0, PIECE)])

    def test_held_piece_rechecked(self):
        """With recheck_held a held piece is hashed: the same bytes are
        skipped, other bytes fail with events.changed."""
        w = StoreWriter(self.tf, self.runner, self.events, recheck_held=True)
        self.successResultOf(w.cut(0, [self.piece(0)], PIECE))
        self.successResultOf(w.cut(0, [self.piece(0)], PIECE))
        self.assertEqual(self.events.skipped_pieces, [(0, PIECE)])
        f = self.failureResultOf(w.cut(0, [b"y" * PIECE], PIECE), IngestError)
        self.assertIn("piece 0", str(f.value))

    def test_spooled_piece(self):
        """A piece read back from a spool is written with its digest."""
        w = StoreWriter(self.tf, self.runner, self.events)
        self.successResultOf(w.spooled(1, self.piece(1), piece_digest(self.piece(1))))
        self.assertEqual(self.tf.completed(), [1])
        self.assertEqual(self.events.stored_pieces, [(1, PIECE, piece_digest(self.piece(1)))])


class SpoolTests(StoreMixin, SynchronousTestCase):
    def open(self, max_bytes=0):
        self.dir = self.mktemp()
        return self.successResultOf(Spool.open(self.runner, self.dir, self.events, max_bytes))

    def test_provides_body_sink(self):
        """A spool and a piece cutter are both L{IBodySink}s: what an origin body
        is delivered into."""
        from zope.interface.verify import verifyObject

        from dragonfly.interfaces import IBodySink
        s = self.open()
        self.addCleanup(s.close)
        self.assertTrue(verifyObject(IBodySink, s))
        self.assertTrue(verifyObject(IBodySink, PieceCutter(self.tf, 0, 2, FakeWriter(),
                                                            self.events)))

    def test_spool_and_cut(self):
        """Chunks are gathered, spooled, then cut into the task's pieces;
        closing leaves no file behind."""
        s = self.open()
        for i in range(0, len(DATA), 100):
            s.write(DATA[i:i + 100])
        self.assertEqual(s.length, len(DATA))
        self.assertEqual(self.events.bytes, len(DATA))
        self.successResultOf(Deferred.fromCoroutine(
            s.cut_into(StoreWriter(self.tf, self.runner, self.events))))
        self.successResultOf(s.close())
        self.assertTrue(self.tf.is_complete)
        with open(self.tf.path, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(os.listdir(self.dir), [])

    def test_flush_pauses(self):
        """Once FLUSH bytes are gathered, write returns the disk write's Deferred."""
        self.patch(spool_module, "FLUSH", 250)
        s = self.open()
        self.assertIsNone(s.write(b"x" * 200))
        self.assertIsInstance(s.write(b"x" * 100), Deferred)
        self.successResultOf(s.close())

    def test_too_large(self):
        """A body growing past max_bytes raises events.too_large."""
        s = self.open(max_bytes=100)
        s.write(b"x" * 100)
        self.assertRaises(IngestError, s.write, b"x")
        self.successResultOf(s.close())


class PipelineTests(StoreMixin, SynchronousTestCase):
    def test_stream_into(self):
        """stream_into fills the task from the body, tracking the delivery."""
        tracked = []
        self.successResultOf(Deferred.fromCoroutine(stream_into(
            FakeResponse(DATA), self.tf, self.runner, self.events, track=tracked.append)))
        self.assertTrue(self.tf.is_complete)
        self.assertEqual(len(tracked), 2)
        self.assertIsInstance(tracked[0], Deferred)
        self.assertIsNone(tracked[1])
        self.assertEqual([p[0] for p in self.events.stored_pieces], [0, 1, 2, 3, 4])

    def test_stream_resumed(self):
        """A body starting at a later piece fills the pieces from there on."""
        self.successResultOf(Deferred.fromCoroutine(stream_into(
            FakeResponse(DATA[2 * PIECE:], offset=2 * PIECE), self.tf, self.runner, self.events)))
        self.assertEqual(self.tf.completed(), [2, 3, 4])

    def test_spool_into(self):
        """spool_into makes the task once the length is known and fills it."""
        made = []

        def make(length):
            made.append(length)
            return self.tf
        tf = self.successResultOf(Deferred.fromCoroutine(spool_into(
            FakeResponse(DATA), make, self.runner, self.mktemp(), self.events)))
        self.assertIs(tf, self.tf)
        self.assertEqual(made, [len(DATA)])
        self.assertTrue(tf.is_complete)

    def test_spool_into_failure_closes(self):
        """When make_task fails the spool file is closed anyway (and so gone)."""
        d = self.mktemp()
        calls = []

        class Recording(SyncRunner):
            def run(self, f, *a, **kw):
                calls.append(getattr(f, "__name__", f))
                return SyncRunner.run(self, f, *a, **kw)

        def make(length):
            raise IngestError("no room")
        self.failureResultOf(Deferred.fromCoroutine(spool_into(
            FakeResponse(DATA), make, Recording(), d, self.events)), IngestError)
        self.assertEqual(calls[-1], "close")
        self.assertEqual(os.listdir(d), [])


class BusyConsumer:
    """write() returns a pending Deferred until the test releases it."""

    def __init__(self):
        self.data = []
        self.waiting = None

    def write(self, data):
        self.data.append(data)
        self.waiting = Deferred()
        return self.waiting

    def release(self):
        d, self.waiting = self.waiting, None
        d.callback(None)


class BodyReceiverTests(SynchronousTestCase):
    def make(self, expected=None, idle=None, broken=None):
        self.clock = Clock()
        self.consumer = BusyConsumer()
        self.transport = StringTransport()   # the fake producer: records pause/resume
        r = BodyReceiver(self.consumer, expected, self.clock, idle_timeout=idle, broken=broken)
        r.makeConnection(self.transport)
        return r

    def test_back_pressure(self):
        """While the consumer's write is pending the producer is paused and
        later chunks queue in order; each release feeds the next chunk, and
        the producer resumes once the queue is empty."""
        r = self.make(expected=6)
        r.dataReceived(b"ab")
        self.assertEqual(self.transport.producerState, "paused")
        r.dataReceived(b"cd")
        r.dataReceived(b"ef")
        self.assertEqual(self.consumer.data, [b"ab"])
        self.consumer.release()
        self.assertEqual(self.consumer.data, [b"ab", b"cd"])
        self.consumer.release()
        self.consumer.release()
        self.assertEqual(self.transport.producerState, "producing")
        r.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(r.done), 6)

    def test_short_body_default_error(self):
        """A body ending before its announced length fails with BodyError."""
        r = self.make(expected=10)
        r.dataReceived(b"ab")
        self.consumer.release()
        r.connectionLost(Failure(ResponseDone()))
        f = self.failureResultOf(r.done, BodyError)
        self.assertIn("2 of 10", str(f.value))

    def test_broken_factory(self):
        """A lost connection fails done with broken(message, reason)."""
        seen = []

        def broken(message, reason=None):
            seen.append((message, reason))
            return IngestError(message)
        r = self.make(broken=broken)
        r.dataReceived(b"ab")
        self.consumer.release()
        r.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(r.done, IngestError)
        self.assertEqual(seen[0][0], "connection lost after 2 bytes")
        self.assertTrue(seen[0][1].check(ConnectionLost))

    def test_idle_only_while_producing(self):
        """The idle timeout runs while the producer is not paused, not while
        the consumer holds it up."""
        r = self.make(idle=5)
        r.dataReceived(b"ab")
        self.clock.advance(10)
        self.assertNoResult(r.done)
        self.consumer.release()
        self.clock.advance(5)
        self.failureResultOf(r.done, BodyError)
        self.assertTrue(self.transport.disconnecting or self.transport.producerState == "stopped")

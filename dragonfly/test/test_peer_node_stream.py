"""PeerNode.stream: the in-order push producer, its cursor and its back-pressure."""
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.node import DownloadError, StreamStopped
from dragonfly.peer.stream import OrderedPushProducer
from dragonfly.test.peerfakes import PEER_A
from dragonfly.test.peernodes import DATA, PIECE, URL, NodeMixin


class _PausingConsumer:
    """A consumer whose buffer is "full" after every write: it pauses its producer."""

    def __init__(self):
        self.data = []
        self.producer = None
        self.streaming = None

    def registerProducer(self, producer, streaming):
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data.append(data)
        self.producer.pauseProducing()

    def value(self):
        return b"".join(self.data)


class _FileConsumer(_PausingConsumer):
    """A consumer taking held pieces as file ranges (what the mirror's sink
    does with sendfile); each send completes when the test says so."""

    def __init__(self):
        super().__init__()
        self.ranges = []     # (offset, length, Deferred)

    def write(self, data):
        self.data.append(data)

    def send_file(self, task_file, offset, length):
        task_file.pin()
        try:
            self.data.append(os.pread(task_file.fileno(), length, offset))
        finally:
            task_file.unpin()
        d = Deferred()
        self.ranges.append((offset, length, d))
        return d


class StreamTests(NodeMixin, SynchronousTestCase):

    def test_stream_file_ranges(self):
        """When the consumer has send_file, held pieces are handed over as file
        ranges (consecutive held pieces as one range, the next one only once
        the previous was sent), in order, waiting for pieces still fetched."""
        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        started = []
        d = node.download(URL, on_start=started.append)
        tf = started[0]
        consumer = _FileConsumer()
        sd = node.stream(tf, consumer, start=10)
        held = self.pool.held
        self.pool.held = []
        for i in (2, 1):
            held[i][0].callback(held[i][1])
        self.assertEqual(consumer.ranges, [])      # piece 0 is missing
        held[0][0].callback(held[0][1])
        self.assertEqual([r[:2] for r in consumer.ranges], [(10, 3 * PIECE - 10)])
        for d_, data in held[3:]:
            d_.callback(data)
        while self.pool.held:
            self.pool.release()
        self.assertEqual(len(consumer.ranges), 1)  # the next waits for this one
        consumer.ranges[0][2].callback(None)
        self.assertEqual([r[:2] for r in consumer.ranges[1:]],
                         [(3 * PIECE, len(DATA) - 3 * PIECE)])
        self.assertNoResult(sd)
        consumer.ranges[1][2].callback(None)
        self.successResultOf(sd)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[10:])
        self.assertIsNone(consumer.producer)

    def test_stream_sends_cursor(self):
        """While a stream reads a task (started from on_start, as the dfdaemon
        mirror does), every schedule call carries the piece the stream is at as
        "cursor"; without a stream there is no cursor."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        consumer = StringTransport()
        streams = []
        started = Deferred()
        started.addCallback(lambda tf: streams.append(node.stream(tf, consumer)))
        d = node.download(URL, on_start=started)
        self.assertEqual(self.supernode.schedules[0].get("cursor"), 0)
        self.pool.release()      # piece 0 (or whichever came first)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)
        self.successResultOf(streams[0])
        cursors = [s["cursor"] for s in self.supernode.schedules if "cursor" in s]
        self.assertEqual(cursors, sorted(cursors))
        n = len(self.supernode.schedules)
        node2 = self.make()
        self.successResultOf(node2.download(URL))
        self.assertTrue(all("cursor" not in s for s in self.supernode.schedules[n:]))

    def test_stream_in_order_as_pieces_arrive(self):
        """stream() writes bytes in order, waiting for pieces still being fetched, and
        fires when the last byte is out."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        started = []
        d = node.download(URL, on_start=started.append)
        tf = started[0]
        consumer = StringTransport()
        sd = node.stream(tf, consumer, start=10)
        self.assertTrue(consumer.streaming)
        self.assertEqual(consumer.value(), b"")
        # Release pieces out of order: nothing beyond a gap is written.
        held = self.pool.held
        self.pool.held = []
        held[1][0].callback(held[1][1])
        self.assertEqual(consumer.value(), b"")
        held[0][0].callback(held[0][1])
        self.assertEqual(consumer.value(), DATA[10:2 * PIECE])
        for d_, data in held[2:]:
            d_.callback(data)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(sd)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[10:])
        self.assertIsNone(consumer.producer)

    def test_back_pressure(self):
        """While the consumer has paused the stream, nothing more is written."""
        node = self.make()
        node.download(URL)
        tf = self.successResultOf(node.download(URL))
        self.patch(OrderedPushProducer, "chunk", 16)
        consumer = _PausingConsumer()
        sd = node.stream(tf, consumer, start=5, end=200)
        n = len(consumer.data)
        self.assertEqual(n, 1)
        while not sd.called:
            self.assertEqual(len(consumer.data), n)
            consumer.producer.resumeProducing()
            n += 1
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA[5:200])
        self.assertTrue(all(len(c) <= 16 for c in consumer.data))

    def test_stream_fails_with_download(self):
        """When the download fails, a waiting stream fails with DownloadError."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        started = []
        d = node.download(URL, back_source=False, on_start=started.append)
        consumer = StringTransport()
        sd = node.stream(started[0], consumer)
        self.supernode.schedule_answer = (400, {"error": "nope"})
        self.pool.release(2)   # the next schedule call (a pair of pieces to report) fails
        self.failureResultOf(d, DownloadError)
        self.failureResultOf(sd, DownloadError)
        self.assertIsNone(consumer.producer)

    def test_consumer_stops(self):
        """When the consumer stops the producer, the stream fails with StreamStopped."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        consumer = _PausingConsumer()
        sd = node.stream(tf, consumer)
        consumer.producer.stopProducing()
        self.failureResultOf(sd, StreamStopped)


class PassThroughTests(NodeMixin, SynchronousTestCase):

    def test_stream_passes_through(self):
        """When the store cannot hold the pieces, the download still completes:
        a stream gets every byte in order (held pieces from disk, the others from
        memory, bounded by pass_limit), the task is not complete in the store, the
        peer leaves the swarm (the task is not shared from here), it is counted,
        and its partial gives its space back once streamed."""
        from twisted.internet.testing import StringTransport

        from dragonfly.metrics import sample
        from dragonfly.test.test_storage_diskspace import full_disk_after
        node = self.make(sources=(PEER_A,))
        self.store.pass_through = True
        full_disk_after(self, self.store, 3 * PIECE)
        self.store.pass_limit = 2 * PIECE
        self.pool.manual = True
        started = []
        d = node.download(URL, on_start=started.append)
        tf = started[0]
        consumer = StringTransport()
        sd = node.stream(tf, consumer)
        for _ in range(200):
            if not self.pool.held:
                break
            self.pool.release()
        self.assertEqual(self.pool.held, [])
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA)
        got = self.successResultOf(d)
        self.assertTrue(got.uncached)
        self.assertFalse(got.is_complete)
        self.assertEqual(got.completed(), [0, 1, 2])
        self.assertEqual([t for t, _ in self.supernode.leaves], [tf.task_id])   # not shared
        self.assertEqual(sample(self.metrics, "dragonfly_peer_uncached_downloads_total"), 1)
        self.assertIsNone(self.store.get(tf.task_id))   # streamed and unused: space back

    def test_back_source_waits_for_the_stream(self):
        """From the origin too, passed-through pieces wait in memory up to
        pass_limit: while the client is paused the origin body waits, and every
        byte arrives in order once it reads again."""
        from dragonfly.test.test_storage_diskspace import full_disk_after
        node = self.make(piece_size=PIECE)
        self.store.pass_through = True
        full_disk_after(self, self.store, 2 * PIECE)
        self.store.pass_limit = 2 * PIECE
        started = []
        d = node.download(URL, pattern="source", on_start=started.append)
        tf = started[0]
        consumer = _PausingConsumer()
        sd = node.stream(tf, consumer)
        peak = 0
        for _ in range(100):
            if tf._pass is not None:
                peak = max(peak, tf._pass.nbytes)
            if sd.called:
                break
            consumer.producer.resumeProducing()
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA)
        got = self.successResultOf(d)
        self.assertTrue(got.uncached)
        self.assertLessEqual(peak, 3 * PIECE)   # the limit, plus the one a stream waits for

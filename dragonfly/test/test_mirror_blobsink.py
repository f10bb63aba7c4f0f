"""BlobSink with file ranges (the sendfile path): what is sent, what waits for the digest."""
import hashlib
import os
import tempfile

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon.blobhash import BlobHasher
from dragonfly.dfdaemon.blobsink import GONE, HOLD, BlobSink, StreamFailed, stream_checked
from dragonfly.runtime.threads import SyncRunner

BLOB = os.urandom(3 * HOLD + 1234)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class _Request:
    channel = None

    def __init__(self):
        self.written = []
        self.sentLength = 0

    def write(self, data):
        self.written.append(data)


class _Sender:
    """Records (offset, length) of each send and reads those bytes back."""

    def __init__(self):
        self.sent = []
        self.stopped = False
        self.body = bytearray()

    def send(self, fd, offset, length):
        self.sent.append((offset, length))
        self.body += os.pread(fd, length, offset)
        return succeed(None)

    def stop(self):
        self.stopped = True


class _Task:
    def __init__(self, data):
        f = tempfile.NamedTemporaryFile(delete=False)
        f.write(data)
        f.close()
        self.path = f.name
        self.fd = os.open(f.name, os.O_RDONLY)
        self.pins = 0

    def pin(self):
        self.pins += 1

    def unpin(self):
        self.pins -= 1

    def fileno(self):
        assert self.pins > 0
        return self.fd

    def close(self):
        os.close(self.fd)
        os.unlink(self.path)


class FileSinkTests(SynchronousTestCase):
    def sink(self, data=BLOB, **kw):
        task = _Task(data)
        self.addCleanup(task.close)
        request, sender = _Request(), _Sender()
        sink = BlobSink(request, DIGEST, len(BLOB), sender=sender, **kw)
        return sink, task, request, sender

    def test_tail_waits_for_the_digest(self):
        """When the whole blob comes as file ranges, all but its last HOLD
        bytes are sent at once; the rest only by release() after check()."""
        sink, task, request, sender = self.sink()
        self.successResultOf(sink.send_file(task, 0, 2 * HOLD))
        self.successResultOf(sink.send_file(task, 2 * HOLD, len(BLOB) - 2 * HOLD))
        self.assertEqual(bytes(sender.body), BLOB[:-HOLD])
        self.assertEqual(request.written, [b"", b""])     # the headers, nothing else
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body), BLOB)
        self.assertEqual(request.sentLength, len(BLOB))
        sink.finish()
        self.assertEqual(task.pins, 0)
        self.assertTrue(sender.stopped)

    def test_corrupt_blob_tail_never_sent(self):
        """When the file does not match the digest, check() is False and the
        last HOLD bytes have not been sent."""
        bad = BLOB[:100] + b"!" + BLOB[101:]
        sink, task, request, sender = self.sink(bad)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertFalse(self.successResultOf(sink.check()))
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)
        sink.close()
        self.assertEqual(task.pins, 0)

    def test_bytes_and_ranges_mixed(self):
        """Pieces passed through (bytes) and held (ranges) are hashed in order together."""
        sink, task, request, sender = self.sink()
        sink.write(BLOB[:1000])
        self.successResultOf(sink.send_file(task, 1000, len(BLOB) - 1000))
        self.assertEqual(request.written[0], BLOB[:1000])
        self.assertTrue(self.successResultOf(sink.check()))

    def test_out_of_order_range_refused(self):
        """A range not at the sink's offset is never sent: the sink closes."""
        sink, task, request, sender = self.sink()
        self.successResultOf(sink.send_file(task, 10, 100))
        self.assertEqual(sender.sent, [])
        self.assertTrue(sink.overflow)
        self.assertFalse(self.successResultOf(sink.check()))

    def test_known_good_is_not_hashed(self):
        """A copy verified before is sent whole at once, with nothing held back."""
        sink, task, request, sender = self.sink(BLOB[:-1] + b"!", known_good=True)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertEqual(sender.sent, [(0, len(BLOB))])
        self.assertTrue(self.successResultOf(sink.check()))

    def test_window(self):
        """A window of verified pieces (not whole) is sent as it comes, no hold."""
        task = _Task(BLOB)
        self.addCleanup(task.close)
        sender = _Sender()
        sink = BlobSink(_Request(), DIGEST, len(BLOB), first=7, last=HOLD + 20, whole=False,
                        sender=sender)
        self.successResultOf(sink.send_file(task, 7, HOLD + 14))
        self.assertEqual(bytes(sender.body), BLOB[7:HOLD + 21])
        self.assertTrue(self.successResultOf(sink.check()))


class _Runner:
    """Runs each job when the test says so."""

    def __init__(self):
        self.jobs = []

    def run(self, f, *args):
        d = Deferred()
        self.jobs.append((d, f, args))
        return d

    def step(self):
        d, f, args = self.jobs.pop(0)
        d.callback(f(*args))


class BlobHasherTests(SynchronousTestCase):
    def test_hashes_in_order_batched(self):
        """Everything fed while a job runs goes into the next job; the digest
        fires once all is hashed."""
        runner = _Runner()
        h = BlobHasher(runner, "sha256")
        h.feed_bytes(BLOB[:10])
        h.feed_bytes(BLOB[10:20])
        h.feed_bytes(BLOB[20:])
        d = h.hexdigest()
        self.assertEqual(len(runner.jobs), 1)
        runner.step()
        self.assertNoResult(d)
        self.assertEqual(len(runner.jobs), 1)
        runner.step()
        self.assertEqual(self.successResultOf(d), DIGEST.partition(":")[2])

    def test_read_error(self):
        """A file shorter than fed fails the digest instead of a wrong answer."""
        task = _Task(BLOB[:100])
        self.addCleanup(task.close)
        h = BlobHasher(SyncRunner(), "sha256")
        h.feed_file(task.fd, 0, 200)
        self.failureResultOf(h.hexdigest(), OSError)


class _Exchange:
    def __init__(self, request):
        self.request = request
        self.on_gone = []
        self.gone = False
        self.kind = "blob"


class _Peer:
    """stream() returns a Deferred the test fires; records its arguments."""

    def __init__(self):
        self.calls = []
        self.d = Deferred()

    def stream(self, task_file, consumer, start, end):
        self.calls.append((start, end))
        return self.d


class _Log:
    def __init__(self):
        self.lines = []

    def warn(self, fmt, **kw):
        self.lines.append(fmt.format(**kw))


class StreamCheckedTests(SynchronousTestCase):
    """stream_checked: the mirror's and the proxy's one stream-then-verify."""

    def setUp(self):
        self.request = _Request()
        self.request.startedWriting = False
        self.ex = _Exchange(self.request)
        self.peer = _Peer()
        self.log = _Log()

    def run_it(self, sink, **kw):
        return Deferred.fromCoroutine(
            stream_checked(self.peer, self.ex, sink, object(), self.log, "the-blob", **kw))

    def test_window_streamed_and_complete(self):
        """A window streams from its first byte to its end; complete: True."""
        sink = BlobSink(self.request, DIGEST, len(BLOB), 10, 19, whole=False)
        d = self.run_it(sink)
        self.assertEqual(self.peer.calls, [(10, 20)])
        self.assertEqual(len(self.ex.on_gone), 1)      # the stream's cancel
        sink.write(BLOB[10:20])
        self.peer.d.callback(None)
        self.assertIs(self.successResultOf(d), True)

    def test_whole_blob_mismatch(self):
        """The whole blob streams from 0 and a wrong one answers False."""
        sink = BlobSink(self.request, DIGEST, len(BLOB))
        d = self.run_it(sink)
        self.assertEqual(self.peer.calls, [(0, None)])
        sink.write(b"x" * len(BLOB))
        self.peer.d.callback(None)
        self.assertIs(self.successResultOf(d), False)

    def test_failure_before_the_first_byte_raises(self):
        """Nothing written yet: StreamFailed, the caller still answers."""
        sink = BlobSink(self.request, DIGEST, len(BLOB), 10, 19, whole=False)
        d = self.run_it(sink, failed_kind="failed")
        self.peer.d.errback(RuntimeError("swarm on fire"))
        self.assertIn("swarm on fire", str(self.failureResultOf(d, StreamFailed).value))
        self.assertEqual(self.ex.kind, "blob")
        self.assertTrue(sink.closed)

    def test_failure_after_the_headers_cuts_the_answer(self):
        """Bytes already out: the response is cut (GONE), its kind set."""
        aborted = []

        class Transport:
            def abortConnection(self):
                aborted.append(True)

        class Channel:
            transport = Transport()
        self.request.channel = Channel()
        self.request.startedWriting = True
        sink = BlobSink(self.request, DIGEST, len(BLOB), 10, 19, whole=False)
        d = self.run_it(sink, failed_kind="failed")
        self.peer.d.errback(RuntimeError("swarm on fire"))
        self.assertIs(self.successResultOf(d), GONE)
        self.assertEqual(aborted, [True])
        self.assertEqual(self.ex.kind, "failed")
        self.assertIn("P2P stream of the-blob failed", self.log.lines[0])

    def test_client_gone(self):
        """The client left meanwhile: GONE, nothing logged."""
        sink = BlobSink(self.request, DIGEST, len(BLOB), 10, 19, whole=False)
        d = self.run_it(sink)
        self.ex.gone = True
        self.peer.d.errback(RuntimeError("cancelled"))
        self.assertIs(self.successResultOf(d), GONE)
        self.assertEqual(self.log.lines, [])

"""The spliced origin body (dragonfly.ingest.splice) against a real TCP origin."""
import errno
import hashlib
import os
import threading

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from dragonfly.digest import piece_digest
from dragonfly.ingest import pipeline
from dragonfly.ingest import splice
from dragonfly.ingest.contenthash import ContentHash
from dragonfly.ingest.pipeline import stream_into
from dragonfly.origin import BodyBroken, OriginClient, make_http_client
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.errors import StoreFull
from dragonfly.storage.store import PieceStore
from dragonfly.test.fakeorigin import FakeOrigin
from dragonfly.test.test_ingest import RecordingEvents

PIECE = 256 * 1024
DATA = os.urandom(PIECE * 12 + 1000)   # 13 pieces, the last one short
TASK = "b" * 64


class _Stalls(Resource):
    """Announces the whole file, sends C{sent} bytes, then nothing more."""

    isLeaf = True

    def __init__(self, sent):
        Resource.__init__(self)
        self.sent = sent
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        request.setHeader(b"content-length", str(len(DATA)).encode())
        request.write(DATA[:self.sent])
        return NOT_DONE_YET


def _spy_on_splicing(case):
    """Splice bodies from PIECE bytes up, and record each body spliced (the list returned)."""
    case.patch(splice, "SPLICE_MIN", PIECE)
    spliced = []
    real = pipeline.splice_into

    def spy(raw, *args, **kwargs):
        spliced.append(raw)
        return real(raw, *args, **kwargs)
    case.patch(pipeline, "splice_into", spy)
    return spliced


def _probe_overlap(case):
    """Piece 0's hashing waits (with a deadline, not a sleep) until piece 1's
    bytes are in the file. Returns (overlapped, order): whether that happened
    before the deadline, and the pieces in the order they were hashed."""
    one_in = threading.Event()
    real_bytes, real_hash = splice._splice_bytes, splice._hash_back
    overlapped, order = [], []

    def splice_bytes(raw, head, fd, offset, *args):
        real_bytes(raw, head, fd, offset, *args)
        if offset == PIECE:
            one_in.set()

    def hash_back(buf, fd, offset, *args):
        if offset == 0:
            overlapped.append(one_in.wait(30))
        order.append(offset // PIECE)
        return real_hash(buf, fd, offset, *args)
    case.patch(splice, "_splice_bytes", splice_bytes)
    case.patch(splice, "_hash_back", hash_back)
    return overlapped, order


class SpliceTests(TestCase):
    def setUp(self):
        self.spliced = _spy_on_splicing(self)
        self.origin = FakeOrigin()
        self.origin.add("/o/f", DATA)
        self.stalls = _Stalls(PIECE + PIECE // 2)
        root = Resource()
        root.putChild(b"o", self.origin)
        root.putChild(b"stall", self.stalls)
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self._hang_up)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = OriginClient(reactor, make_http_client(reactor, pool), idle_timeout=0.5)
        self.runner = SyncRunner()
        self.store = PieceStore(self.mktemp(), clock=reactor, runner=self.runner)
        self.addCleanup(self.store.close)
        self.tf = self.store.create(TASK, "http://origin.test/f", len(DATA), PIECE)
        self.events = RecordingEvents()

    def _hang_up(self):
        for request in self.stalls.requests:
            if not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port.getHost().port, path)

    def assertPieces(self, indexes):
        for i in indexes:
            self.assertTrue(self.tf.has(i), i)
            self.assertEqual(self.tf.digest(i), piece_digest(DATA[i * PIECE:(i + 1) * PIECE]))
            offset, size = self.tf.piece_range(i)
            self.assertEqual(self.tf.read(offset, size), DATA[offset:offset + size])

    async def test_whole_body_spliced_and_hashed(self):
        content = ContentHash(self.tf, self.runner)
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events, content=content, splice=True)
        self.assertEqual(len(self.spliced), 1)
        self.assertPieces(range(self.tf.piece_count))
        self.assertTrue(self.tf.is_complete)
        self.assertEqual(self.events.bytes, len(DATA))
        self.assertEqual([i for i, _, _ in self.events.stored_pieces], list(range(13)))
        # the whole file's hash was fed as the pieces landed: nothing read back
        self.assertEqual(await content.digest(), "sha256:" + hashlib.sha256(DATA).hexdigest())
        self.assertEqual(content.read_back, 0)

    async def test_next_piece_spliced_while_one_hashes(self):
        # Without an in-order content hash, piece 1's bytes go into the file
        # while piece 0 is still being read back and hashed (its own thread).
        overlapped, _ = _probe_overlap(self)
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events, splice=True)
        self.assertEqual(overlapped, [True])
        self.assertPieces(range(self.tf.piece_count))
        self.assertTrue(self.tf.is_complete)
        self.assertEqual([i for i, _, _ in self.events.stored_pieces], list(range(13)))

    async def test_overlap_with_the_content_hash_in_order(self):
        # With an in-order content hash too, piece 1 is spliced while piece 0
        # is hashed, yet the content hash sees piece 0 before piece 1 (piece
        # 1's thread waits for piece 0's hashing): right digest, nothing read back.
        overlapped, order = _probe_overlap(self)
        content = ContentHash(self.tf, self.runner)
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events, content=content, splice=True)
        self.assertEqual(overlapped, [True])
        self.assertEqual(order, list(range(13)))
        self.assertPieces(range(self.tf.piece_count))
        self.assertEqual(await content.digest(), "sha256:" + hashlib.sha256(DATA).hexdigest())
        self.assertEqual(content.read_back, 0)

    async def test_a_few_threads_per_body(self):
        # The pieces run in DEPTH threads kept for the body, not one thread
        # started per piece (a start blocks the reactor until the thread runs).
        threads = []   # the Thread objects (held: identities are never reused)
        real_bytes = splice._splice_bytes

        def splice_bytes(*args):
            me = threading.current_thread()
            if not any(t is me for t in threads):
                threads.append(me)
            return real_bytes(*args)
        self.patch(splice, "_splice_bytes", splice_bytes)
        content = ContentHash(self.tf, self.runner)
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events, content=content, splice=True)
        self.assertPieces(range(self.tf.piece_count))
        self.assertGreaterEqual(len(threads), 1)
        self.assertLessEqual(len(threads), splice.DEPTH)
        # and they end with the body
        deadline = reactor.seconds() + 30
        while reactor.seconds() < deadline and any(t.is_alive() for t in threads):
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([t for t in threads if t.is_alive()], [])

    async def test_range_spliced(self):
        resp = await self.client.get(self.url("/o/f"), offset=4 * PIECE, end=8 * PIECE - 1)
        self.assertEqual(resp.status, 206)
        await stream_into(resp, self.tf, self.runner, self.events, splice=True)
        self.assertEqual(len(self.spliced), 1)
        self.assertPieces(range(4, 8))
        self.assertEqual(sorted(self.tf.completed()), [4, 5, 6, 7])

    async def test_not_without_opting_in_nor_below_the_minimum(self):
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events)
        self.patch(splice, "SPLICE_MIN", len(DATA) + 1)
        tf2 = self.store.create("c" * 64, "http://origin.test/f", len(DATA), PIECE)
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, tf2, self.runner, self.events, splice=True)
        self.assertEqual(self.spliced, [])
        self.assertPieces(range(self.tf.piece_count))
        self.assertTrue(tf2.is_complete)

    async def test_held_piece_in_range_takes_the_parser_path(self):
        self.tf.write_trusted_piece(2, DATA[2 * PIECE:3 * PIECE], piece_digest(DATA[2 * PIECE:3 * PIECE]))
        resp = await self.client.get(self.url("/o/f"))
        await stream_into(resp, self.tf, self.runner, self.events, recheck_held=True, splice=True)
        self.assertEqual(self.spliced, [])
        self.assertPieces(range(self.tf.piece_count))

    async def test_chunked_body_is_not_taken(self):
        self.origin.chunked.add("/o/f")
        resp = await self.client.get(self.url("/o/f"))
        self.assertIsNone(resp.body_length)
        self.assertIsNone(resp.take_body())
        await resp.discard()

    async def test_body_broken_off(self):
        self.origin.breaks["/o/f"] = [2 * PIECE + 10]
        resp = await self.client.get(self.url("/o/f"))
        with self.assertRaises(BodyBroken):
            await stream_into(resp, self.tf, self.runner, self.events, splice=True)
        self.assertEqual(len(self.spliced), 1)
        self.assertPieces([0, 1])
        self.assertEqual(sorted(self.tf.completed()), [0, 1])

    async def test_stalled_body_fails_after_the_idle_timeout(self):
        resp = await self.client.get(self.url("/stall/x"))
        with self.assertRaises(BodyBroken) as e:
            await stream_into(resp, self.tf, self.runner, self.events, splice=True)
        self.assertIn("sent nothing", str(e.exception))
        self.assertEqual(sorted(self.tf.completed()), [0])

    async def test_cancel_stops_the_body(self):
        self.client.idle_timeout = None
        tracked = []
        resp = await self.client.get(self.url("/stall/x"))
        body = Deferred.fromCoroutine(stream_into(resp, self.tf, self.runner, self.events,
                                                  track=tracked.append, splice=True))
        while not self.tf.has(0):     # the first piece lands, then the origin stalls
            await _turn()
        tracked[0].cancel()
        with self.assertRaises(CancelledError):
            await body
        self.assertEqual(tracked[-1], None)
        self.assertEqual(sorted(self.tf.completed()), [0])


def _turn():
    d = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


class FillNewPieceTests(TestCase):
    """TaskFile.fill_new_piece, which the spliced path writes through."""

    def setUp(self):
        self.store = PieceStore(self.mktemp(), clock=reactor, runner=SyncRunner())
        self.addCleanup(self.store.close)
        self.tf = self.store.create(TASK, "http://origin.test/f", len(DATA), PIECE)

    @staticmethod
    def in_place(f, *args):
        from twisted.internet.defer import maybeDeferred
        return maybeDeferred(f, *args)

    def test_filled_and_marked_held(self):
        def fill(fd, offset, length, lock):
            os.pwrite(fd, DATA[offset:offset + length], offset)
            return piece_digest(DATA[offset:offset + length])
        digest = self.successResultOf(self.tf.fill_new_piece(3, fill, self.in_place))
        self.assertEqual(digest, piece_digest(DATA[3 * PIECE:4 * PIECE]))
        self.assertTrue(self.tf.has(3))
        self.assertEqual(self.tf.digest(3), digest)
        self.failureResultOf(self.tf.fill_new_piece(3, fill, self.in_place), ValueError)

    def test_full_disk_fails_without_retry(self):
        calls = []

        def fill(fd, offset, length, lock):
            calls.append(offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        self.failureResultOf(self.tf.fill_new_piece(1, fill, self.in_place), StoreFull)
        self.assertEqual(len(calls), 1)
        self.assertFalse(self.tf.has(1))
        self.assertTrue(self.tf.can_close())


class SplicedCDNTests(TestCase):
    """The supernode's CDN opts in: a blob named by its digest is spliced and
    still complete only once its whole content matched."""

    GOOD = "sha256:" + hashlib.sha256(DATA).hexdigest()

    def setUp(self):
        from dragonfly.interfaces import PeerInfo
        from dragonfly.metrics import SupernodeMetrics
        from dragonfly.supernode.cdn import CDN
        from dragonfly.supernode.scheduler import Scheduler
        self.spliced = _spy_on_splicing(self)
        origin = FakeOrigin()
        origin.add("/f", DATA)
        self.port = reactor.listenTCP(0, Site(origin), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        runner = SyncRunner()
        self.store = PieceStore(self.mktemp(), clock=reactor, runner=runner)
        self.addCleanup(self.store.close)
        self.cdn = CDN(reactor, self.store, OriginClient(reactor, make_http_client(reactor, pool)),
                       Scheduler(reactor), PIECE, SupernodeMetrics(), runner,
                       seed=PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001))
        self.url = "http://127.0.0.1:%d/f" % self.port.getHost().port

    async def test_digest_matched(self):
        tf = await self.cdn.ensure_complete(self.GOOD, self.url)
        self.assertEqual(len(self.spliced), 1)
        self.assertTrue(tf.is_complete)
        with open(tf.path, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.cdn._jobs[self.GOOD].content.read_back, 0)

    async def test_digest_mismatch_fails(self):
        from dragonfly.supernode.cdn import ContentMismatch
        wrong = "sha256:" + "0" * 64
        with self.assertRaises(ContentMismatch):
            await self.cdn.ensure_complete(wrong, self.url)
        self.assertEqual(len(self.spliced), 1)
        self.assertIsNone(self.store.get(wrong))

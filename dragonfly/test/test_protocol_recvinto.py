"""Tests for piece bodies read with recv_into into pooled buffers (issue 20,
round five): the buffer pool (dragonfly.protocol.recvbuf), the request state
machine's buffered bodies, the decoder's help for a reader that takes body
bytes itself, and whole transfers over real TCP (plain: the new path; mutual
TLS: today's path, explicitly)."""
import gc

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.digest import piece_digest
from dragonfly.interfaces import PeerInfo
from dragonfly.protocol import codec
from dragonfly.protocol.client import plain_socket
from dragonfly.protocol.clientstate import (
    Deliver, PieceFetchError, PieceRequest, ReceivedPiece, RequestQueue,
)
from dragonfly.protocol.pool import PieceClientPool
from dragonfly.protocol.recvbuf import RecvBuffers
from dragonfly.protocol.server import PieceServerFactory
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.protocolfakes import SOURCE, TASK, FakeStore, pattern, peer_admission


class RecvBuffersTests(SynchronousTestCase):
    """The pool hands a buffer out again only once nothing else sees it."""

    def test_reused_once_free(self):
        """A buffer whose every view is gone is handed out again."""
        pool = RecvBuffers()
        view = pool.take(1000)
        first = id(view.obj)
        del view
        again = pool.take(600)
        self.assertEqual(id(again.obj), first)
        self.assertEqual(len(again), 600)
        self.assertEqual((pool.made, pool.reused), (1, 1))

    def test_not_reused_while_viewed(self):
        """While any view of a buffer lives (a slice, a cast, a list holding
        one, as a runner thread's job would), a take() gets another buffer and
        the bytes that view shows stay as they were."""
        pool = RecvBuffers()
        view = pool.take(64)
        view[:] = bytes(range(64))
        held = [memoryview(view[8:40]).cast("B")]
        first = id(view.obj)
        del view
        other = pool.take(64)
        self.assertNotEqual(id(other.obj), first)
        other[:] = b"\xff" * 64
        self.assertEqual(bytes(held[0]), bytes(range(8, 40)))
        del other, held
        self.assertEqual(id(pool.take(64).obj), first)

    def test_bounded(self):
        """At most C{count} buffers and C{max_bytes} are kept; more are made
        fresh (and go with their last view)."""
        pool = RecvBuffers(count=3, max_bytes=250)
        views = [pool.take(100) for _ in range(5)]
        self.assertEqual(pool.made, 5)
        self.assertEqual(pool.held_bytes(), 200)
        del views
        pool = RecvBuffers(count=2, max_bytes=10 ** 6)
        views = [pool.take(100) for _ in range(4)]
        self.assertEqual(pool.held_bytes(), 200)
        del views

    def test_grows_a_free_buffer(self):
        """A free buffer too small for a larger piece is replaced, within the bound."""
        pool = RecvBuffers(count=1, max_bytes=1000)
        view = pool.take(100)
        del view
        view = pool.take(500)
        self.assertEqual(pool.held_bytes(), 500)
        del view
        view = pool.take(2000)   # over max_bytes: made fresh, the 500 kept
        self.assertEqual(pool.held_bytes(), 500)
        self.assertEqual(len(view), 2000)

    def test_clear(self):
        """clear() forgets the buffers; one still viewed stays valid."""
        pool = RecvBuffers()
        view = pool.take(10)
        view[:] = b"0123456789"
        pool.clear()
        self.assertEqual(pool.held_bytes(), 0)
        self.assertEqual(bytes(view), b"0123456789")


class DecoderTests(SynchronousTestCase):
    """What the decoder tells a reader that takes body bytes itself."""

    def test_frame_left(self):
        """Between frames: a Piece header's size; with part of a frame
        buffered, the rest of it as far as its header says."""
        dec = codec.FrameDecoder()
        self.assertEqual(dec.frame_left(), 13)
        header = codec.encode(codec.Piece(3, 100))
        self.assertEqual(list(dec.feed(header[:2])), [])
        self.assertEqual(dec.frame_left(), 3)
        self.assertEqual(list(dec.feed(header[2:7])), [])
        self.assertEqual(dec.frame_left(), 6)
        self.assertEqual(list(dec.feed(header[7:])), [codec.Piece(3, 100)])
        self.assertEqual(dec.body_left, 100)

    def test_body_consumed(self):
        """The body's bytes taken by the reader count against it; the last
        ends it and the decoder reads frames again."""
        dec = codec.FrameDecoder()
        list(dec.feed(codec.encode(codec.Piece(3, 100))))
        self.assertFalse(dec.body_consumed(60))
        self.assertEqual(dec.body_left, 40)
        self.assertRaises(ValueError, dec.body_consumed, 41)
        self.assertTrue(dec.body_consumed(40))
        self.assertFalse(dec.in_piece)
        self.assertRaises(ValueError, dec.body_consumed, 1)
        self.assertEqual(list(dec.feed(codec.encode(codec.Piece(4, 0)))),
                         [codec.Piece(4, 0), codec.PieceData(4, memoryview(b""), True)])


class QueueTests(SynchronousTestCase):
    """RequestQueue with buffers: chunked bodies go into one buffer each."""

    def setUp(self):
        self.q = RequestQueue(SOURCE, TASK, "me-1", 4)
        self.q.buffers = RecvBuffers()
        self.q.receive(codec.HelloAck(codec.VERSION))

    def start(self, index, length, **kw):
        req = PieceRequest(index, length, **kw)
        self.q.submit(req)
        self.q.receive(codec.Piece(index, length))
        return req

    def fill(self, data, last):
        target = self.q.body_target()
        target[:len(data)] = data
        return self.q.body_filled(len(data), last)

    def test_one_view_per_piece(self):
        """The reader's bytes and the decoder's (before the reader took over)
        end in one buffer; the piece is delivered as one view of it, hashed as
        it arrived when asked."""
        data = pattern(1000, seed=2)
        req = self.start(0, 1000, chunks=True, hashed=True)
        self.assertIsNone(self.q.body(codec.PieceData(0, memoryview(data[:100]), False)))
        self.assertEqual(len(self.q.body_target()), 900)
        self.assertIsNone(self.fill(data[100:700], False))
        actions = self.fill(data[700:], True)
        piece = next(a.piece for a in actions if type(a) is Deliver and a.request is req)
        self.assertIsInstance(piece, ReceivedPiece)
        self.assertEqual(len(piece.chunks), 1)
        self.assertEqual(bytes(piece.chunks[0]), data)
        self.assertEqual(piece.digest, piece_digest(data))
        self.assertIsNone(self.q.body_target())

    def test_not_chunked(self):
        """A request answered with bytes keeps the slices path (no buffer)."""
        self.start(0, 10)
        self.assertIsNone(self.q.body_target())
        actions = self.q.body(codec.PieceData(0, memoryview(b"0123456789"), True))
        self.assertEqual([a.piece for a in actions if type(a) is Deliver], [b"0123456789"])
        self.assertEqual(self.q.buffers.made, 0)

    def test_cancelled_mid_body(self):
        """A request cancelled while its body arrives lets its buffer go: the
        rest of the body is read through the decoder and dropped."""
        req = self.start(0, 100, chunks=True)
        self.fill(b"x" * 40, False)
        self.q.cancel(req)
        self.assertIsNone(self.q.body_target())
        actions = self.q.body(codec.PieceData(0, memoryview(b"y" * 60), True))
        self.assertEqual([a for a in actions if type(a) is Deliver], [])
        gc.collect()
        self.assertEqual(id(self.q.buffers.take(100).obj), id(self.q.buffers._bufs[0]))

    def test_lost_mid_body(self):
        """The connection lost mid-body: the request fails, the buffer goes."""
        self.start(0, 100, chunks=True)
        self.fill(b"x" * 40, False)
        self.q.connection_lost("gone")
        self.assertIsNone(self.q.body_target())


async def _listen(reactor, factory):
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, PeerInfo("seed-1", "127.0.0.1", port.getHost().port)


class RealTCPTests(TestCase):
    """A real server and client over TCP on 127.0.0.1."""

    timeout = 60

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.store = FakeStore(self)
        self.piece_size = 1024 * 1024
        self.data = pattern(6 * 1024 * 1024 + 12345, seed=5)
        self.task = self.store.add(TASK, self.data, self.piece_size)
        self.admission = peer_admission(reactor, (TASK,))

    async def serve(self, server_factory=None, **pool_kw):
        """(pool, source), torn down after the test."""
        factory = PieceServerFactory(self.store, self.reactor, admission=self.admission)
        port = self.reactor.listenTCP(0, server_factory(factory) if server_factory else factory,
                                      interface="127.0.0.1")
        pool = PieceClientPool(self.reactor, "me-1", piece_timeout=20, tokens=self.admission,
                               **pool_kw)

        async def down():
            await pool.close()
            await port.stopListening()
            await factory.close()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(down()))
        return pool, PeerInfo("seed-1", "127.0.0.1", port.getHost().port)

    def piece(self, i):
        off, n = self.task.piece_range(i)
        return self.data[off:off + n]

    async def test_pieces_into_buffers(self):
        """Chunked fetches over plain TCP arrive as one view of a pooled
        buffer each, intact, hashed as they arrived when asked; the transport's
        reads are the protocol's own."""
        pool, source = await self.serve()
        ds = [pool.fetch_piece(source, TASK, i, self.task.piece_range(i)[1], hashed=i % 2 == 0)
              for i in range(self.task.piece_count)]
        proto = pool._conns[(source, TASK)]
        got = await defer.gatherResults(ds)
        for i, piece in enumerate(got):
            self.assertEqual(len(piece.chunks), 1)
            self.assertEqual(bytes(piece.chunks[0]), self.piece(i))
            self.assertEqual(piece.digest, piece_digest(self.piece(i)) if i % 2 == 0 else None)
        self.assertEqual(proto.transport.doRead, proto._read)
        self.assertEqual(pool.recv_buffers.made, self.task.piece_count)

    async def test_buffer_not_reused_while_held(self):
        """A piece still held by its caller (as by a runner thread writing it)
        keeps its buffer: later pieces go elsewhere and its bytes stay intact;
        once it is dropped, its buffer serves the next piece."""
        pool, source = await self.serve()
        first = await pool.fetch_piece(source, TASK, 0, self.piece_size)
        for i in range(1, 5):
            later = await pool.fetch_piece(source, TASK, i, self.piece_size)
            self.assertEqual(bytes(later.chunks[0]), self.piece(i))
            self.assertIsNot(later.chunks[0].obj, first.chunks[0].obj)
            del later
        self.assertEqual(bytes(first.chunks[0]), self.piece(0))
        reused = pool.recv_buffers.reused
        buf = id(first.chunks[0].obj)
        del first
        again = await pool.fetch_piece(source, TASK, 5, self.piece_size)
        self.assertEqual(bytes(again.chunks[0]), self.piece(5))
        self.assertEqual(pool.recv_buffers.reused, reused + 1)
        self.assertIn(buf, [id(b) for b in pool.recv_buffers._bufs])

    async def test_bytes_and_chunks_mixed(self):
        """Plain fetches (bytes) and chunked ones pipelined on one connection."""
        pool, source = await self.serve()
        ds = [(pool.fetch if i % 2 else pool.fetch_piece)(
            source, TASK, i, self.task.piece_range(i)[1]) for i in range(self.task.piece_count)]
        got = await defer.gatherResults(ds)
        for i, piece in enumerate(got):
            self.assertEqual(piece if i % 2 else bytes(piece.chunks[0]), self.piece(i))

    async def test_download_limit(self):
        """The download limiter still pauses reading inside a buffered body."""
        limiter = TokenBucket(self.reactor, 8 * 1024 * 1024)
        pool, source = await self.serve(download_limiter=limiter)
        paused = []
        ds = [pool.fetch_piece(source, TASK, i, self.task.piece_range(i)[1])
              for i in range(self.task.piece_count)]
        proto = pool._conns[(source, TASK)]
        real = proto._consume

        def spy(n):
            real(n)
            paused.append(proto._paused)
        proto._consume = spy
        got = await defer.gatherResults(ds)
        self.assertEqual(b"".join(bytes(p.chunks[0]) for p in got), self.data)
        self.assertIn(True, paused)

    async def test_tls_keeps_slices(self):
        """Under mutual TLS the transport has no socket to read from: the
        protocol leaves its reads alone and bodies come as the slices TLS
        delivered, intact."""
        from dragonfly.test.test_tls import files, make_fleet
        from dragonfly.tls import NodeTLS

        ca, _other = make_fleet(self)
        server = NodeTLS(files(ca, "seed1", ips=["127.0.0.1"]))
        client = NodeTLS(files(ca, "me1"))

        def endpoint(host, port):
            return client.wrap_client(TCP4ClientEndpoint(self.reactor, host, port), host)

        pool, source = await self.serve(server.server_factory, endpoint_factory=endpoint)
        ds = [pool.fetch_piece(source, TASK, i, self.task.piece_range(i)[1])
              for i in range(self.task.piece_count)]
        proto = pool._conns[(source, TASK)]
        got = await defer.gatherResults(ds)
        self.assertEqual(b"".join(p.tobytes() for p in got), self.data)
        self.assertIsNone(proto._sock)
        self.assertIsNone(plain_socket(proto.transport, proto))
        self.assertNotIn("doRead", vars(proto.transport.transport))
        self.assertEqual(pool.recv_buffers.made, 0)


class _Scripted(protocol.Protocol):
    """A piece server that answers the Hello with C{script} (bytes), whatever is asked."""

    def __init__(self, script, close=False, made=None):
        self.script, self.close = script, close
        self.seen = b""
        if made is not None:
            made.append(self)

    def dataReceived(self, data):
        self.seen += data
        if self.script is not None:
            script, self.script = self.script, None
            self.transport.write(script)
            if self.close:
                self.transport.loseConnection()


class ScriptedServerTests(TestCase):
    """Odd answers from a server over real TCP, on the buffered path."""

    timeout = 30

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    async def until(self, check, what):
        """Poll C{check()} on the reactor until it is true (10 s deadline)."""
        deadline = self.reactor.seconds() + 10
        while not check():
            if self.reactor.seconds() > deadline:
                self.fail("gave up waiting for " + what)
            await task.deferLater(self.reactor, 0.005, lambda: None)

    async def test_cancelled_mid_body(self):
        """A piece cancelled while its body is read into its buffer: the rest
        of its body is read and dropped, the next piece arrives intact."""
        made = []
        factory = protocol.Factory.forProtocol(
            lambda: _Scripted(self.ack() + codec.encode(codec.Piece(0, 1000)) + b"x" * 400,
                              made=made))
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = PieceClientPool(self.reactor, "me-1", piece_timeout=10)
        self.addCleanup(pool.close)
        source = PeerInfo("seed-1", "127.0.0.1", port.getHost().port)
        d0 = pool.fetch_piece(source, TASK, 0, 1000)
        d1 = pool.fetch_piece(source, TASK, 1, 1000)
        requests = pool._conns[(source, TASK)].requests
        # (the first 400 body bytes wait in the socket: the low-water mark is
        # the body's 1000)
        await self.until(lambda: requests.body_target() is not None, "piece 0's header")
        d0.cancel()
        self.assertIsNone(requests.body_target())
        body = pattern(1000, seed=4)
        made[0].transport.write(b"y" * 600 + codec.encode(codec.Piece(1, 1000)) + body)
        got = await d1
        self.assertEqual(bytes(got.chunks[0]), body)
        self.failureResultOf(d0, defer.CancelledError)

    async def run_script(self, script, close=False, n=2, length=1000):
        factory = protocol.Factory.forProtocol(lambda: _Scripted(script, close))
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = PieceClientPool(self.reactor, "me-1", piece_timeout=10)
        self.addCleanup(pool.close)
        source = PeerInfo("seed-1", "127.0.0.1", port.getHost().port)
        ds = [pool.fetch_piece(source, TASK, i, length) for i in range(n)]
        return await defer.DeferredList(ds, consumeErrors=True)

    def ack(self):
        return codec.encode(codec.HelloAck(codec.VERSION))

    async def test_everything_in_one_write(self):
        """An Error, a Piece header, its body and the next frame sent at once:
        the reader never takes bytes past a frame into the body that follows."""
        body = pattern(1000, seed=9)
        script = (self.ack() + codec.encode(codec.Error(0, codec.BUSY, "later"))
                  + codec.encode(codec.Piece(1, 1000)) + body)
        (ok0, r0), (ok1, r1) = await self.run_script(script)
        self.assertFalse(ok0)
        self.assertEqual(r0.value.code, codec.BUSY)
        self.assertTrue(ok1)
        self.assertEqual(bytes(r1.chunks[0]), body)

    async def test_malformed_frame_after_body(self):
        """A malformed frame after a buffered body drops that connection only:
        the piece before it is delivered, the one after it fails."""
        body = pattern(1000, seed=3)
        script = self.ack() + codec.encode(codec.Piece(0, 1000)) + body + b"\x00\x00\x00\x01\x63"
        (ok0, r0), (ok1, r1) = await self.run_script(script)
        self.assertTrue(ok0)
        self.assertEqual(bytes(r0.chunks[0]), body)
        self.assertFalse(ok1)
        self.assertIn("protocol error", r1.value.reason)

    async def test_source_closes_mid_body(self):
        """The source closing inside a buffered body fails the piece."""
        script = self.ack() + codec.encode(codec.Piece(0, 1000)) + b"x" * 400
        (ok0, r0), _ = await self.run_script(script, close=True)
        self.assertFalse(ok0)
        self.assertIsInstance(r0.value, PieceFetchError)
        self.assertIn("closed by the source", r0.value.reason)

"""Tests for the piece client's Twisted glue (dragonfly.protocol.client):
bytes to the state machine and back, timers, back-pressure, cancellation."""
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.digest import piece_digest
from dragonfly.protocol import codec
from dragonfly.protocol.clientstate import ReceivedPiece
from dragonfly.protocol.codec import Cancel, Error, Hello, Piece, Request, encode
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.protocolfakes import (
    SOURCE, TASK, ClientTestMixin, FakeEndpoint, decode, pattern,
)


class ClientTests(ClientTestMixin, SynchronousTestCase):
    def test_fetch_piece(self):
        """When the server answers a Request with a Piece, fetch fires with its bytes, whatever the slicing."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 5, 100000)
        proto, tr = self.handshake()
        self.assertEqual(decode(tr.value()), [Request(5)])
        body = pattern(100000)
        stream = encode(Piece(5, 100000)) + body
        for i in range(0, len(stream), 7777):
            self.assertNoResult(d)
            proto.dataReceived(stream[i:i + 7777])
        result = self.successResultOf(d)
        self.assertIsInstance(result, bytes)
        self.assertEqual(result, body)

    def test_fetch_piece_chunks(self):
        """When fetched with fetch_piece, the piece comes as the chunks received
        (not joined) with its piece digest, computed as they arrived; with
        hashed=False the digest is left to the caller."""
        pool = self.make_pool()
        d1 = pool.fetch_piece(SOURCE, TASK, 1, 100000)
        d2 = pool.fetch_piece(SOURCE, TASK, 2, 5000, hashed=False)
        proto, tr = self.handshake()
        b1, b2 = pattern(100000), pattern(5000, 7)
        stream = encode(Piece(1, 100000)) + b1 + encode(Piece(2, 5000)) + b2
        for i in range(0, len(stream), 40000):
            proto.dataReceived(stream[i:i + 40000])
        p1, p2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIsInstance(p1, ReceivedPiece)
        self.assertEqual((p1.index, p1.nbytes, len(p1)), (1, 100000, 100000))
        self.assertGreater(len(p1.chunks), 1)
        self.assertEqual(b"".join(bytes(c) for c in p1.chunks), b1)
        self.assertEqual(p1.tobytes(), b1)
        self.assertEqual(p1.digest, piece_digest(b1))
        self.assertEqual(p2.tobytes(), b2)
        self.assertIsNone(p2.digest)

    def test_rcvlowat_follows_the_body(self):
        """Inside a piece body the socket's SO_RCVLOWAT is min(body left, READ_SIZE),
        so a read waits for a big slice; between pieces it is back to 1 byte."""
        import socket

        from dragonfly.protocol.client import READ_SIZE

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        def lowat():
            return a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)

        class SocketTransport(StringTransport):
            def getHandle(self):
                return a

        self.endpoint.connect = lambda factory: self._connect_with(factory, SocketTransport())
        pool = self.make_pool()
        size = READ_SIZE * 2 + 1000
        d = pool.fetch(SOURCE, TASK, 1, size)
        proto, tr = self.handshake()
        self.assertEqual(lowat(), 1)
        body = pattern(size)
        proto.dataReceived(encode(Piece(1, size)) + body[:1000])
        self.assertEqual(lowat(), READ_SIZE)
        proto.dataReceived(body[1000:READ_SIZE * 2])
        self.assertEqual(lowat(), 1000)
        proto.dataReceived(body[READ_SIZE * 2:])
        self.assertEqual(lowat(), 1)
        self.assertEqual(self.successResultOf(d), body)

    def _connect_with(self, factory, tr):
        proto = factory.buildProtocol(None)
        proto.makeConnection(tr)
        self.endpoint.transports.append(tr)
        self.endpoint.protocols.append(proto)
        return defer.succeed(proto)

    def test_small_slices(self):
        """When the body trickles in tiny slices, the piece is still reassembled exactly."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 0, 70000)
        proto, tr = self.handshake()
        body = pattern(70000, 3)
        proto.dataReceived(encode(Piece(0, 70000)))
        for i in range(0, 70000, 1000):
            proto.dataReceived(body[i:i + 1000])
        self.assertEqual(self.successResultOf(d), body)

    def test_requests_wait_for_handshake(self):
        """When fetches are made before HelloAck, their Requests are sent only after it."""
        pool = self.make_pool()
        d1 = pool.fetch(SOURCE, TASK, 1, 10)
        d2 = pool.fetch(SOURCE, TASK, 2, 10)
        tr = self.endpoint.transports[0]
        self.assertEqual(decode(tr.value()), [Hello(codec.VERSION, TASK, "me-1")])
        proto, tr = self.handshake()
        self.assertEqual(decode(tr.value()), [Request(1), Request(2)])
        proto.dataReceived(encode(Piece(1, 10)) + b"a" * 10 + encode(Piece(2, 10)) + b"b" * 10)
        self.assertEqual(self.successResultOf(d1), b"a" * 10)
        self.assertEqual(self.successResultOf(d2), b"b" * 10)

    def test_pipeline_limit(self):
        """When more fetches than max_pipeline are outstanding, the rest are sent as answers come."""
        pool = self.make_pool(max_pipeline=2)
        ds = [pool.fetch(SOURCE, TASK, i, 1) for i in range(4)]
        proto, tr = self.handshake()
        self.assertEqual(decode(tr.value()), [Request(0), Request(1)])
        tr.clear()
        proto.dataReceived(encode(Piece(0, 1)) + b"x")
        self.assertEqual(decode(tr.value()), [Request(2)])
        tr.clear()
        proto.dataReceived(encode(Error(1, codec.NOT_FOUND, "no")))
        self.assertEqual(decode(tr.value()), [Request(3)])
        self.assertEqual(self.successResultOf(ds[0]), b"x")
        self.assertFetchError(ds[1], codec.NOT_FOUND)

    def test_error_for_one_piece(self):
        """When the server answers one request with an Error, only that fetch fails, with the code."""
        pool = self.make_pool()
        d1 = pool.fetch(SOURCE, TASK, 1, 3)
        d2 = pool.fetch(SOURCE, TASK, 2, 3)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Error(1, codec.BUSY, "too many")) + encode(Piece(2, 3)) + b"xyz")
        err = self.assertFetchError(d1, codec.BUSY, "BUSY")
        self.assertEqual((err.source, err.index), (SOURCE, 1))
        self.assertIn("seed-1@127.0.0.1:65000", str(err))
        self.assertEqual(self.successResultOf(d2), b"xyz")
        self.assertFalse(tr.disconnecting)

    def test_handshake_refused(self):
        """When the server refuses the Hello, every fetch on that connection fails with its code and the next fetch reconnects."""
        pool = self.make_pool()
        d1 = pool.fetch(SOURCE, TASK, 1, 3)
        d2 = pool.fetch(SOURCE, TASK, 2, 3)
        proto = self.endpoint.protocols[0]
        proto.dataReceived(encode(Error(None, codec.NOT_FOUND, "task not held")))
        self.assertFetchError(d1, codec.NOT_FOUND, "task not held")
        self.assertFetchError(d2, codec.NOT_FOUND)
        self.assertTrue(self.endpoint.transports[0].disconnected)
        pool.fetch(SOURCE, TASK, 1, 3)
        self.assertEqual(len(self.endpoint.protocols), 2)

    def test_connection_lost(self):
        """When the connection breaks, every outstanding fetch on it fails, sent or not."""
        pool = self.make_pool(max_pipeline=1)
        d1 = pool.fetch(SOURCE, TASK, 1, 3)
        d2 = pool.fetch(SOURCE, TASK, 2, 3)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 3)) + b"x")
        self.lose(proto, ConnectionLost("reset"))
        self.assertFetchError(d1, None, "connection lost")
        self.assertFetchError(d2, None, "connection lost")
        self.assertEqual(pool.connections, 0)

    def test_garbage_from_server(self):
        """When the server sends garbage, outstanding fetches fail and the connection is dropped."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 1, 3)
        proto, tr = self.handshake()
        proto.dataReceived(b"\x00\x00\x00\x02\x63\x00")
        self.assertFetchError(d, None, "protocol error")
        self.assertTrue(tr.disconnected)
        self.assertEqual(pool.connections, 0)

    def test_oversized_piece_from_server(self):
        """When the server announces a piece over max_piece, the connection is dropped."""
        pool = self.make_pool(max_piece=1024)
        d = pool.fetch(SOURCE, TASK, 1, 1000)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 2048)))
        self.assertFetchError(d, None, "protocol error")

    def test_unexpected_answer(self):
        """When the server answers a piece that was not requested, the connection is dropped."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 1, 3)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(7, 3)) + b"abc")
        self.assertFetchError(d, None, "unexpected answer")

    def test_length_mismatch(self):
        """When the server's piece length differs from the expected one, the fetch fails."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 1, 3)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 4)) + b"abcd")
        self.assertFetchError(d, None, "expected 3")
        self.assertTrue(tr.disconnected)

    def test_empty_piece(self):
        """When a piece has length 0, fetch fires with empty bytes."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 0, 0)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(0, 0)))
        self.assertEqual(self.successResultOf(d), b"")


class ClientTimeoutTests(ClientTestMixin, SynchronousTestCase):
    def test_piece_timeout(self):
        """When a piece does not arrive within piece_timeout, it fails, the connection is aborted and the others fail."""
        pool = self.make_pool(piece_timeout=30)
        d1 = pool.fetch(SOURCE, TASK, 1, 10)
        d2 = pool.fetch(SOURCE, TASK, 2, 10)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 10)) + b"abc")
        self.clock.advance(29)
        self.assertNoResult(d1)
        self.clock.advance(1)
        self.assertFetchError(d1, None, "timed out")
        self.assertFetchError(d2, None, "timed out")
        self.assertTrue(tr.disconnected)
        self.lose(proto, ConnectionLost())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_starts_at_head(self):
        """When a piece waits behind another, its timeout runs from when the source is due to serve it."""
        pool = self.make_pool(piece_timeout=30, first_byte_timeout=0)
        d1 = pool.fetch(SOURCE, TASK, 1, 1)
        d2 = pool.fetch(SOURCE, TASK, 2, 1)
        proto, tr = self.handshake()
        self.clock.advance(20)
        proto.dataReceived(encode(Piece(1, 1)) + b"a")
        self.successResultOf(d1)
        self.clock.advance(29)
        self.assertNoResult(d2)
        self.clock.advance(1)
        self.assertFetchError(d2, None, "timed out")

    def test_connect_timeout_counts(self):
        """When the connection never completes, the first fetch times out and the attempt is cancelled."""
        endpoint = FakeEndpoint("hang")
        pool = self.make_pool(endpoint_factory=endpoint, piece_timeout=30, first_byte_timeout=0)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        self.clock.advance(30)
        self.assertFetchError(d, None, "timed out")
        self.assertEqual(endpoint.cancelled, endpoint.pending)
        self.assertEqual(pool.connections, 0)

    def test_idle_connection_closed(self):
        """When a connection has nothing outstanding for idle_timeout, it is closed and forgotten."""
        pool = self.make_pool(idle_timeout=30)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 1)) + b"a")
        self.successResultOf(d)
        self.clock.advance(29)
        pool.fetch(SOURCE, TASK, 2, 1)  # activity cancels the idle timer
        proto.dataReceived(encode(Piece(2, 1)) + b"b")
        self.clock.advance(29)
        self.assertFalse(tr.disconnected)
        self.clock.advance(1)
        self.assertTrue(tr.disconnected)
        self.assertEqual(pool.connections, 0)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_download_limiter_pauses_transport(self):
        """When the download limiter runs dry, the transport is paused until the debt is paid."""
        limiter = TokenBucket(self.clock, 100 * 1024, burst=64 * 1024)
        pool = self.make_pool(download_limiter=limiter)
        d = pool.fetch(SOURCE, TASK, 1, 128 * 1024)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 128 * 1024)) + b"x" * (60 * 1024))
        self.assertEqual(tr.producerState, "producing")
        proto.dataReceived(b"x" * (68 * 1024))
        self.assertEqual(tr.producerState, "paused")
        self.assertEqual(self.successResultOf(d), b"x" * (128 * 1024))
        self.clock.advance(0.6)
        self.assertEqual(tr.producerState, "paused")
        self.clock.advance(0.1)
        self.assertEqual(tr.producerState, "producing")


class ClientCancelTests(ClientTestMixin, SynchronousTestCase):
    def test_cancel_unsent(self):
        """When a fetch still waiting for a pipeline slot is cancelled, it is never requested."""
        pool = self.make_pool(max_pipeline=1)
        d1 = pool.fetch(SOURCE, TASK, 1, 1)
        d2 = pool.fetch(SOURCE, TASK, 2, 1)
        proto, tr = self.handshake()
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)
        proto.dataReceived(encode(Piece(1, 1)) + b"a")
        self.successResultOf(d1)
        self.assertEqual(decode(tr.value()), [Request(1)])

    def test_cancel_queued_at_server(self):
        """When a request queued behind another is cancelled, a Cancel is sent and later answers still match."""
        pool = self.make_pool()
        d1, d2, d3 = (pool.fetch(SOURCE, TASK, i, 1) for i in (1, 2, 3))
        proto, tr = self.handshake()
        tr.clear()
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)
        self.assertEqual(decode(tr.value()), [Cancel(2)])
        proto.dataReceived(encode(Piece(1, 1)) + b"a" + encode(Piece(3, 1)) + b"c")
        self.assertEqual(self.successResultOf(d1), b"a")
        self.assertEqual(self.successResultOf(d3), b"c")
        self.assertFalse(tr.disconnecting)

    def test_cancel_raced_answer(self):
        """When the server answered a cancelled request anyway, the answer is dropped and the next still matches."""
        pool = self.make_pool()
        d1, d2, d3 = (pool.fetch(SOURCE, TASK, i, 1) for i in (1, 2, 3))
        proto, tr = self.handshake()
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)
        proto.dataReceived(encode(Piece(1, 1)) + b"a" + encode(Piece(2, 1)) + b"b"
                           + encode(Error(3, codec.NOT_FOUND, "")))
        self.assertEqual(self.successResultOf(d1), b"a")
        self.assertFetchError(d3, codec.NOT_FOUND)
        self.assertFalse(tr.disconnecting)

    def test_cancel_head(self):
        """When the piece the server is sending is cancelled, its rest is read and dropped, keeping the connection."""
        pool = self.make_pool()
        d1 = pool.fetch(SOURCE, TASK, 1, 10)
        d2 = pool.fetch(SOURCE, TASK, 2, 2)
        proto, tr = self.handshake()
        tr.clear()
        proto.dataReceived(encode(Piece(1, 10)) + b"01234")
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        self.assertEqual(tr.value(), b"")  # no Cancel: the server is sending it already
        proto.dataReceived(b"56789" + encode(Piece(2, 2)) + b"ok")
        self.assertEqual(self.successResultOf(d2), b"ok")
        self.assertFalse(tr.disconnecting)



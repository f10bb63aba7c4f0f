"""Tests for the piece client's sans-IO request state machine
(dragonfly.protocol.clientstate): codec events in, actions out, no transport."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.digest import piece_digest
from dragonfly.protocol import codec
from dragonfly.protocol.clientstate import (
    MIN_PART, Close, ConnectionState, Deliver, Fail, PieceFetchError, PieceRequest,
    ReceivedPiece, RequestQueue, RequestState, Send,
)
from dragonfly.protocol.codec import Cancel, Error, Hello, HelloAck, Piece, PieceData, Request
from dragonfly.test.protocolfakes import SOURCE, TASK, decode, pattern


def body(index, data, size=None):
    """PieceData events carrying C{data} in slices of C{size} bytes."""
    size = size or max(len(data), 1)
    out = []
    for i in range(0, len(data), size):
        out.append(PieceData(index, memoryview(data[i:i + size]), i + size >= len(data)))
    return out or [PieceData(index, memoryview(b""), True)]


class RequestQueueTestMixin:
    def make(self, max_pipeline=16, ready=True):
        q = RequestQueue(SOURCE, TASK, "me-1", max_pipeline)
        if ready:
            self.assertEqual(q.receive(HelloAck(codec.VERSION)), [])
        return q

    def submit(self, q, index, length=3, **kw):
        req = PieceRequest(index, length, **kw)
        return req, q.submit(req)

    def sent(self, actions):
        """The messages in the Send actions of C{actions}."""
        return [m for a in actions if type(a) is Send for m in decode(a.data)]

    def feed_piece(self, q, index, data, size=None):
        """Feed a Piece header and its body; the actions of the last slice."""
        self.assertEqual(q.receive(Piece(index, len(data))), [])
        events = body(index, data, size)
        for ev in events[:-1]:
            self.assertIsNone(q.body(ev))
        return q.body(events[-1])

    def failure(self, action, req):
        self.assertIs(type(action), Fail)
        self.assertIs(action.request, req)
        self.assertIsInstance(action.error, PieceFetchError)
        return action.error


class HandshakeTests(RequestQueueTestMixin, SynchronousTestCase):
    def test_hello(self):
        """The connection opens with a Hello naming our version, the task and our peer id."""
        q = self.make(ready=False)
        self.assertEqual(decode(q.hello()), [Hello(codec.VERSION, TASK, "me-1")])
        self.assertIs(q.state, ConnectionState.HANDSHAKING)

    def test_requests_wait_for_ack(self):
        """When requests are submitted before HelloAck, nothing is sent until
        it comes; then they go out in order, in one write."""
        q = self.make(ready=False)
        r1, a1 = self.submit(q, 1)
        r2, a2 = self.submit(q, 2)
        self.assertEqual((a1, a2), ([], []))
        self.assertIs(r1.state, RequestState.PENDING)
        self.assertIs(q.head(), r1)
        actions = q.receive(HelloAck(codec.VERSION))
        self.assertEqual(len(actions), 1)
        self.assertEqual(self.sent(actions), [Request(1), Request(2)])
        self.assertIs(q.state, ConnectionState.READY)
        self.assertEqual(q.version, codec.VERSION)
        self.assertEqual((r1.state, r2.state), (RequestState.SENT, RequestState.SENT))

    def test_unsupported_version(self):
        """When the server picks a version we do not speak, it is a protocol error."""
        q = self.make(ready=False)
        self.assertRaises(codec.ProtocolError, q.receive, HelloAck(codec.VERSION + 1))
        self.assertIs(q.state, ConnectionState.HANDSHAKING)

    def test_refused(self):
        """When the server refuses the Hello, every request fails with its
        code and the connection is to be closed."""
        q = self.make(ready=False)
        r1, _ = self.submit(q, 1)
        r2, _ = self.submit(q, 2)
        actions = q.receive(Error(None, codec.NOT_FOUND, "task not held"))
        self.assertEqual(len(actions), 3)
        for action, req in zip(actions, (r1, r2)):
            err = self.failure(action, req)
            self.assertEqual(err.code, codec.NOT_FOUND)
            self.assertIn("handshake refused: NOT_FOUND: task not held", err.reason)
        self.assertIs(type(actions[2]), Close)
        self.assertTrue(q.closed)
        self.assertEqual((r1.state, r2.state), (RequestState.DONE, RequestState.DONE))

    def test_other_message_first(self):
        """When anything but HelloAck or a connection Error comes first, it is a protocol error."""
        q = self.make(ready=False)
        self.assertRaises(codec.ProtocolError, q.receive, Piece(0, 1))

    def test_client_message_from_server(self):
        """When the server sends a client's message, it is a protocol error."""
        q = self.make()
        self.assertRaises(codec.ProtocolError, q.receive, Request(0))


class AnswerTests(RequestQueueTestMixin, SynchronousTestCase):
    def test_piece_as_bytes(self):
        """When a body arrives in slices, nothing happens until the last one;
        then the request is delivered its bytes, joined."""
        q = self.make()
        req, actions = self.submit(q, 5, 100000)
        self.assertEqual(self.sent(actions), [Request(5)])
        data = pattern(100000)
        self.assertEqual(q.receive(Piece(5, 100000)), [])
        self.assertIs(req.state, RequestState.RECEIVING)
        events = body(5, data, 7777)
        for ev in events[:-1]:
            self.assertIsNone(q.body(ev))
        actions = q.body(events[-1])
        self.assertEqual(actions, [Deliver(req, data)])
        self.assertIs(req.state, RequestState.DONE)
        self.assertFalse(q.outstanding)

    def test_piece_as_chunks(self):
        """When the request asked for chunks, it gets a ReceivedPiece holding
        the slices (big ones as they came) and, if hashed, their digest."""
        q = self.make()
        req, _ = self.submit(q, 1, 100000, chunks=True, hashed=True)
        data = pattern(100000, 3)
        [deliver] = self.feed_piece(q, 1, data, 40000)
        piece = deliver.piece
        self.assertIsInstance(piece, ReceivedPiece)
        self.assertEqual((piece.index, piece.nbytes), (1, 100000))
        self.assertEqual(len(piece.chunks), 3)
        self.assertEqual(piece.tobytes(), data)
        self.assertEqual(piece.digest, piece_digest(data))

    def test_unhashed_chunks(self):
        """When the request asked for chunks without hashing, the digest is None."""
        q = self.make()
        req, _ = self.submit(q, 1, 10, chunks=True)
        [deliver] = self.feed_piece(q, 1, b"0123456789")
        self.assertIsNone(deliver.piece.digest)

    def test_small_slices_coalesced(self):
        """When a body trickles in small slices, they are kept as few
        MIN_PART-sized parts, not one by one."""
        q = self.make()
        req, _ = self.submit(q, 1, MIN_PART * 2, chunks=True)
        data = pattern(MIN_PART * 2, 1)
        [deliver] = self.feed_piece(q, 1, data, 1000)
        self.assertEqual(len(deliver.piece.chunks), 2)
        self.assertEqual(deliver.piece.tobytes(), data)

    def test_empty_piece(self):
        """When a piece has length 0, it is delivered as empty bytes."""
        q = self.make()
        req, _ = self.submit(q, 0, 0)
        self.assertEqual(self.feed_piece(q, 0, b""), [Deliver(req, b"")])

    def test_pipeline_refills_before_delivery(self):
        """When an answer frees a pipeline slot, the next Request comes first
        in the actions, before the delivery (so a callback that submits more
        cannot reorder the wire)."""
        q = self.make(max_pipeline=1)
        r1, a1 = self.submit(q, 1, 1)
        r2, a2 = self.submit(q, 2, 1)
        self.assertEqual((self.sent(a1), a2), ([Request(1)], []))
        actions = self.feed_piece(q, 1, b"a")
        self.assertEqual(len(actions), 2)
        self.assertEqual(self.sent(actions[:1]), [Request(2)])
        self.assertEqual(actions[1], Deliver(r1, b"a"))

    def test_error_for_one_piece(self):
        """When the server answers one request with an Error, only that
        request fails, with the server's code, and the next is sent."""
        q = self.make(max_pipeline=1)
        r1, _ = self.submit(q, 1)
        r2, _ = self.submit(q, 2)
        actions = q.receive(Error(1, codec.BUSY, "too many"))
        self.assertEqual(self.sent(actions[:1]), [Request(2)])
        err = self.failure(actions[1], r1)
        self.assertEqual((err.code, err.index, err.source), (codec.BUSY, 1, SOURCE))
        self.assertIn("BUSY: too many", err.reason)
        self.assertFalse(q.closed)

    def test_connection_error(self):
        """When the server sends an Error for the whole connection, everything fails and it closes."""
        q = self.make()
        r1, _ = self.submit(q, 1)
        actions = q.receive(Error(None, codec.SHUTTING_DOWN, "bye"))
        self.assertEqual(self.failure(actions[0], r1).code, codec.SHUTTING_DOWN)
        self.assertEqual(actions[1], Close("SHUTTING_DOWN: bye"))

    def test_unexpected_answer(self):
        """When the server answers a piece not asked for (next), it is a protocol error."""
        q = self.make()
        self.submit(q, 1)
        self.assertRaises(codec.ProtocolError, q.receive, Piece(7, 3))

    def test_length_mismatch(self):
        """When the announced length differs from the expected one, that
        request fails, the rest fail too and the connection closes."""
        q = self.make()
        r1, _ = self.submit(q, 1, 3)
        r2, _ = self.submit(q, 2, 3)
        actions = q.receive(Piece(1, 4))
        self.assertIn("server sent 4 bytes, expected 3", self.failure(actions[0], r1).reason)
        self.assertIn("length mismatch", self.failure(actions[1], r2).reason)
        self.assertEqual(actions[2], Close("piece 1 length mismatch"))
        self.assertTrue(q.closed)


class CancelTests(RequestQueueTestMixin, SynchronousTestCase):
    def test_cancel_pending(self):
        """When a request still waiting locally is cancelled, it is withdrawn and never sent."""
        q = self.make(max_pipeline=1)
        r1, _ = self.submit(q, 1, 1)
        r2, _ = self.submit(q, 2, 1)
        self.assertEqual(q.cancel(r2), [])
        self.assertIs(r2.state, RequestState.DONE)
        self.assertEqual(self.feed_piece(q, 1, b"a"), [Deliver(r1, b"a")])
        self.assertFalse(q.outstanding)

    def test_cancel_queued_at_server(self):
        """When a sent request behind another is cancelled, a Cancel goes
        out; if the server drops it silently, the next answer still matches."""
        q = self.make()
        r1, _ = self.submit(q, 1, 1)
        r2, _ = self.submit(q, 2, 1)
        r3, _ = self.submit(q, 3, 1)
        actions = q.cancel(r2)
        self.assertEqual(self.sent(actions), [Cancel(2)])
        self.assertIs(r2.state, RequestState.CANCELLED)
        self.assertEqual(self.feed_piece(q, 1, b"a"), [Deliver(r1, b"a")])
        self.assertEqual(self.feed_piece(q, 3, b"c"), [Deliver(r3, b"c")])

    def test_cancelled_but_answered(self):
        """When the server answers a cancelled request anyway, the answer is dropped."""
        q = self.make()
        r1, _ = self.submit(q, 1, 1)
        r2, _ = self.submit(q, 2, 1)
        q.cancel(r2)
        self.feed_piece(q, 1, b"a")
        self.assertEqual(self.feed_piece(q, 2, b"b"), [])
        self.assertIs(r2.state, RequestState.DONE)

    def test_cancel_head(self):
        """When the request the server works on is cancelled, no Cancel is
        sent: its answer will be read and dropped."""
        q = self.make()
        r1, _ = self.submit(q, 1, 1)
        r2, _ = self.submit(q, 2, 1)
        self.assertEqual(q.cancel(r1), [])
        self.assertIs(r1.state, RequestState.DISCARDING)
        self.assertIs(q.head(), r2)
        self.assertEqual(self.feed_piece(q, 1, b"a"), [])
        self.assertEqual(self.feed_piece(q, 2, b"b"), [Deliver(r2, b"b")])

    def test_cancel_receiving(self):
        """When a request is cancelled while its body arrives, the rest of
        the body is read and dropped and the next answer still matches."""
        q = self.make()
        r1, _ = self.submit(q, 1, 10)
        r2, _ = self.submit(q, 2, 2)
        q.receive(Piece(1, 10))
        self.assertIsNone(q.body(PieceData(1, memoryview(b"01234"), False)))
        self.assertEqual(q.cancel(r1), [])
        self.assertIs(r1.state, RequestState.DISCARDING)
        self.assertEqual(q.body(PieceData(1, memoryview(b"56789"), True)), [])
        self.assertEqual(self.feed_piece(q, 2, b"ok"), [Deliver(r2, b"ok")])


class CloseTests(RequestQueueTestMixin, SynchronousTestCase):
    def test_time_out(self):
        """When the head request times out, it fails, the others fail with
        the connection's reason, and the connection is to be closed."""
        q = self.make()
        r1, _ = self.submit(q, 1)
        r2, _ = self.submit(q, 2)
        actions = q.time_out(r1, 30)
        self.assertEqual(self.failure(actions[0], r1).reason, "timed out after 30s")
        self.assertEqual(self.failure(actions[1], r2).reason, "piece 1 timed out after 30s")
        self.assertEqual(actions[2], Close("piece 1 timed out after 30s"))

    def test_time_out_finished(self):
        """When a request that no longer matters times out, nothing happens."""
        q = self.make()
        r1, _ = self.submit(q, 1)
        q.cancel(r1)
        self.assertEqual(q.time_out(r1, 30), [])
        self.assertFalse(q.closed)

    def test_close_then_lost(self):
        """When we close the connection, outstanding requests fail with our
        reason, and that reason stays the one given to later requests."""
        q = self.make()
        r1, _ = self.submit(q, 1)
        actions = q.close("pool closed")
        self.assertEqual(self.failure(actions[0], r1).reason, "pool closed")
        self.assertEqual(actions[1], Close("pool closed"))
        self.assertEqual(q.connection_lost("connection closed by the source"), [])
        r2, actions = self.submit(q, 2)
        self.assertEqual(self.failure(actions[0], r2).reason, "pool closed")
        self.assertIs(r2.state, RequestState.DONE)

    def test_lost(self):
        """When the connection goes away, every request fails, sent or not."""
        q = self.make(max_pipeline=1)
        r1, _ = self.submit(q, 1)
        r2, _ = self.submit(q, 2)
        actions = q.connection_lost("connection lost: reset")
        self.assertEqual([self.failure(a, r).reason for a, r in zip(actions, (r1, r2))],
                         ["connection lost: reset"] * 2)
        self.assertEqual(len(actions), 2)
        self.assertTrue(q.closed)
        self.assertFalse(q.outstanding)
        self.assertIsNone(q.head())

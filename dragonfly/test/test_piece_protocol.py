"""Tests for the piece server and client (dragonfly.protocol.server/client)."""
import os

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dragonfly.digest import piece_digest
from dragonfly.interfaces import IPieceSource, PeerInfo
from dragonfly.protocol import codec
from dragonfly.protocol.client import PieceClientPool, PieceFetchError, ReceivedPiece
from dragonfly.protocol.codec import (
    Cancel, Error, FrameDecoder, Hello, HelloAck, Piece, PieceData, Request, encode,
)
from dragonfly.protocol.server import PieceServerFactory
from dragonfly.runtime.ratelimit import TokenBucket

TASK = "a" * 64
OTHER_TASK = "b" * 64
SOURCE = PeerInfo("seed-1", "127.0.0.1", 65000)


def pattern(n, seed=0):
    """n deterministic, non-repeating-ish bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8)) % 256 for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


class FakeTaskFile:
    """The TaskFile methods the piece server uses, over a real file."""

    def __init__(self, task_id, path, length, piece_size, held=None):
        self.task_id = task_id
        self.path = path
        self.length = length
        self.piece_size = piece_size
        self.piece_count = (length + piece_size - 1) // piece_size
        self.held = set(range(self.piece_count)) if held is None else set(held)
        self.pins = 0

    def has(self, index):
        return index in self.held

    def piece_range(self, index):
        offset = index * self.piece_size
        return offset, min(self.piece_size, self.length - offset)

    def read(self, offset, length):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def pin(self):
        self.pins += 1

    def unpin(self):
        assert self.pins > 0
        self.pins -= 1


class FakeStore:
    def __init__(self, testcase):
        self.testcase = testcase
        self.tasks = {}

    def get(self, task_id):
        return self.tasks.get(task_id)

    def add(self, task_id, data, piece_size, held=None):
        path = self.testcase.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        tf = self.tasks[task_id] = FakeTaskFile(task_id, path, len(data), piece_size, held)
        return tf


def decode(data, max_piece=codec.MAX_PIECE):
    """Messages in C{data}, each piece as (Piece, body)."""
    out, body = [], None
    for ev in FrameDecoder(max_piece=max_piece).feed(data):
        if isinstance(ev, PieceData):
            body[1].append(bytes(ev.data))
            if ev.last:
                out.append((body[0], b"".join(body[1])))
                body = None
        elif isinstance(ev, Piece):
            body = (ev, [])
        else:
            out.append(ev)
    if body is not None:
        out.append((body[0], b"".join(body[1]), "incomplete"))
    return out


class ServerTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore(self)
        self.data = pattern(1000 * 1024)
        self.task = self.store.add(TASK, self.data, 256 * 1024, held={0, 1, 3})
        self.uploaded = []

    def make_factory(self, **kw):
        kw.setdefault("on_upload", self.uploaded.append)
        kw.setdefault("chunk_size", 64 * 1024)
        return PieceServerFactory(self.store, self.clock, **kw)

    def connect(self, factory, hello=True, task_id=TASK):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        tr = StringTransport()
        proto.makeConnection(tr)
        if hello:
            proto.dataReceived(encode(Hello(codec.VERSION, task_id, "peer-1")))
            self.assertEqual(decode(tr.value()), [HelloAck(codec.VERSION)])
            tr.clear()
        return proto, tr

    def drain(self, tr, limit=1000):
        """Play a transport that always has room: resume until the producer leaves."""
        for _ in range(limit):
            if tr.producer is None:
                return
            tr.producer.resumeProducing()
        self.fail("producer never finished")


class ServerHandshakeTests(ServerTestMixin, SynchronousTestCase):
    def test_hello_ack(self):
        """When a client says Hello for a task the store holds, the server answers HelloAck."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        self.assertEqual(proto.task_id, TASK)
        self.assertEqual(proto.peer_id, "peer-1")
        self.assertFalse(tr.disconnecting)

    def test_newer_client_version(self):
        """When a client offers a newer version, the server acks the version it speaks."""
        proto, tr = self.connect(self.make_factory(), hello=False)
        proto.dataReceived(encode(Hello(codec.VERSION + 5, TASK, "peer-1")))
        self.assertEqual(decode(tr.value()), [HelloAck(codec.VERSION)])

    def test_unsupported_version(self):
        """When a client offers a version older than the server supports, it gets BAD_REQUEST and is closed."""
        proto, tr = self.connect(self.make_factory(), hello=False)
        proto.dataReceived(encode(Hello(0, TASK, "peer-1")))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (None, codec.BAD_REQUEST))
        self.assertTrue(tr.disconnecting)

    def test_task_not_held(self):
        """When a client says Hello for a task the store lacks, it gets NOT_FOUND and is closed."""
        proto, tr = self.connect(self.make_factory(), hello=False)
        proto.dataReceived(encode(Hello(codec.VERSION, OTHER_TASK, "peer-1")))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (None, codec.NOT_FOUND))
        self.assertTrue(tr.disconnecting)
        proto.dataReceived(encode(Request(0)))
        self.assertEqual(len(decode(tr.value())), 1)

    def test_request_before_hello(self):
        """When a client sends a Request before Hello, the connection is dropped."""
        proto, tr = self.connect(self.make_factory(), hello=False)
        proto.dataReceived(encode(Request(0)))
        self.assertEqual(tr.value(), b"")
        self.assertTrue(tr.disconnected)

    def test_second_hello(self):
        """When a client says Hello twice, the connection is dropped."""
        proto, tr = self.connect(self.make_factory())
        proto.dataReceived(encode(Hello(codec.VERSION, TASK, "peer-1")))
        self.assertTrue(tr.disconnected)

    def test_garbage_drops_only_that_connection(self):
        """When one client sends garbage, it is dropped while another connection keeps working."""
        factory = self.make_factory()
        bad, bad_tr = self.connect(factory)
        good, good_tr = self.connect(factory)
        bad.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(bad_tr.disconnected)
        bad.connectionLost(Failure(ConnectionDone()))
        good.dataReceived(encode(Request(0)))
        self.drain(good_tr)
        self.assertEqual(decode(good_tr.value()), [(Piece(0, 256 * 1024), self.data[:256 * 1024])])
        self.assertFalse(good_tr.disconnecting)

    def test_oversized_frame(self):
        """When a client announces a frame over 64 KiB, it is dropped before the frame arrives."""
        proto, tr = self.connect(self.make_factory())
        proto.dataReceived(b"\x00\x01\x00\x01\x03")
        self.assertTrue(tr.disconnected)

    def test_piece_from_client(self):
        """When a client sends a Piece frame, the connection is dropped."""
        proto, tr = self.connect(self.make_factory())
        proto.dataReceived(encode(Piece(0, 10)) + b"0123456789")
        self.assertTrue(tr.disconnected)

    def test_handshake_timeout(self):
        """When a client says nothing for handshake_timeout seconds, it is closed."""
        proto, tr = self.connect(self.make_factory(handshake_timeout=10), hello=False)
        self.clock.advance(9)
        self.assertFalse(tr.disconnecting)
        self.clock.advance(1)
        self.assertTrue(tr.disconnecting)

    def test_idle_timeout(self):
        """When a handshaken connection is idle for idle_timeout seconds, it is closed; activity postpones it."""
        proto, tr = self.connect(self.make_factory(idle_timeout=60))
        self.clock.advance(50)
        proto.dataReceived(encode(Request(2)))  # NOT_FOUND, but activity
        self.clock.advance(50)
        self.assertFalse(tr.disconnecting)
        self.clock.advance(10)
        self.assertTrue(tr.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_max_connections(self):
        """When max_connections are open, further connections are refused."""
        factory = self.make_factory(max_connections=2)
        self.connect(factory)
        self.connect(factory)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))


class ServerServingTests(ServerTestMixin, SynchronousTestCase):
    def test_serve_held_piece(self):
        """When a client requests a held piece, it gets the header and exactly the piece's bytes."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(3)))
        self.assertEqual(self.task.pins, 1)
        self.assertEqual(factory.active_uploads, 1)
        self.drain(tr)
        last = self.data[3 * 256 * 1024:]
        self.assertEqual(decode(tr.value()), [(Piece(3, len(last)), last)])
        self.assertEqual(sum(self.uploaded), len(last))
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))

    def test_piece_not_held(self):
        """When a client requests a piece the store does not hold, it gets NOT_FOUND and stays connected."""
        proto, tr = self.connect(self.make_factory())
        proto.dataReceived(encode(Request(2)) + encode(Request(99)))
        self.assertEqual([(e.index, e.code) for e in decode(tr.value())],
                         [(2, codec.NOT_FOUND), (99, codec.NOT_FOUND)])
        self.assertFalse(tr.disconnecting)
        self.assertEqual(self.task.pins, 0)

    def test_task_removed_after_handshake(self):
        """When the task leaves the store after the handshake, requests get NOT_FOUND."""
        proto, tr = self.connect(self.make_factory())
        del self.store.tasks[TASK]
        proto.dataReceived(encode(Request(0)))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (0, codec.NOT_FOUND))

    def test_pipelined_in_order(self):
        """When several requests arrive at once, they are answered in order, one piece at a time."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(1)) + encode(Request(2)) + encode(Request(0)))
        self.assertEqual(factory.active_uploads, 1)
        self.drain(tr)
        got = decode(tr.value())
        self.assertEqual(got, [
            (Piece(1, 256 * 1024), self.data[256 * 1024:512 * 1024]),
            Error(2, codec.NOT_FOUND, "piece not held"),
            (Piece(0, 256 * 1024), self.data[:256 * 1024]),
        ])
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))

    def test_back_pressure(self):
        """When the transport does not ask for more, the server writes nothing beyond one chunk."""
        proto, tr = self.connect(self.make_factory(chunk_size=64 * 1024))
        proto.dataReceived(encode(Request(0)))
        self.assertEqual(len(tr.value()), 13)  # the header; data waits for resumeProducing
        self.assertFalse(tr.streaming)
        tr.producer.resumeProducing()
        self.assertEqual(len(tr.value()), 13 + 64 * 1024)
        self.clock.advance(100)
        self.assertEqual(len(tr.value()), 13 + 64 * 1024)
        tr.producer.resumeProducing()
        self.assertEqual(len(tr.value()), 13 + 128 * 1024)

    def test_upload_limiter(self):
        """When an upload limiter is set, chunks beyond its budget wait on the clock."""
        limiter = TokenBucket(self.clock, 64 * 1024, burst=16 * 1024)
        proto, tr = self.connect(self.make_factory(upload_limiter=limiter))
        proto.dataReceived(encode(Request(0)))
        tr.producer.resumeProducing()
        self.assertEqual(len(tr.value()), 13 + 16 * 1024)
        tr.producer.resumeProducing()
        self.assertEqual(len(tr.value()), 13 + 16 * 1024)
        self.clock.advance(0.24)
        self.assertEqual(len(tr.value()), 13 + 16 * 1024)
        self.clock.advance(0.02)
        self.assertEqual(len(tr.value()), 13 + 32 * 1024)
        for _ in range(40):
            if tr.producer is None:
                break
            tr.producer.resumeProducing()
            self.clock.advance(0.25)
        self.assertEqual(decode(tr.value()), [(Piece(0, 256 * 1024), self.data[:256 * 1024])])
        # 256 KiB at 64 KiB/s after a 16 KiB burst: about 3.75 s.
        self.assertTrue(3.5 <= self.clock.seconds() <= 4.0, self.clock.seconds())

    def test_cancel_queued(self):
        """When a client cancels a queued request, it is never answered."""
        proto, tr = self.connect(self.make_factory())
        proto.dataReceived(encode(Request(0)) + encode(Request(1)) + encode(Request(3)))
        proto.dataReceived(encode(Cancel(1)) + encode(Cancel(42)))
        self.drain(tr)
        self.assertEqual([m[0].index for m in decode(tr.value())], [0, 3])
        self.assertFalse(tr.disconnecting)

    def test_cancel_current(self):
        """When a client cancels the piece being streamed, the upload stops, its slot and pin are released and the connection closes."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)) + encode(Request(1)))
        tr.producer.resumeProducing()
        proto.dataReceived(encode(Cancel(0)))
        self.assertTrue(tr.disconnected)
        self.assertIsNone(tr.producer)
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(factory.connections, set())

    def test_busy(self):
        """When max_uploads pieces are streaming, a further request gets BUSY; later ones are served again."""
        factory = self.make_factory(max_uploads=1)
        a, a_tr = self.connect(factory)
        b, b_tr = self.connect(factory)
        a.dataReceived(encode(Request(0)))
        b.dataReceived(encode(Request(1)))
        [err] = decode(b_tr.value())
        self.assertEqual((err.index, err.code), (1, codec.BUSY))
        self.drain(a_tr)
        b_tr.clear()
        b.dataReceived(encode(Request(1)))
        self.drain(b_tr)
        self.assertEqual(decode(b_tr.value()), [(Piece(1, 256 * 1024), self.data[256 * 1024:512 * 1024])])

    def test_connection_lost_mid_piece(self):
        """When the connection is lost mid-piece, the upload slot, pin and timers are released."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)) + encode(Request(1)))
        tr.producer.resumeProducing()
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stalled_upload_times_out(self):
        """When the client stops reading mid-piece for idle_timeout seconds, the connection is aborted."""
        factory = self.make_factory(idle_timeout=30)
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)))
        tr.producer.resumeProducing()
        self.clock.advance(20)
        tr.producer.resumeProducing()
        self.clock.advance(20)
        self.assertFalse(tr.disconnected)
        self.clock.advance(10)
        self.assertTrue(tr.disconnected)
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))

    def test_truncated_data_file(self):
        """When the data file is shorter than the piece, the connection is aborted (never a short piece)."""
        factory = self.make_factory()
        with open(self.task.path, "r+b") as f:
            f.truncate(100 * 1024)
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)))
        self.drain(tr)
        self.assertTrue(tr.disconnected)
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))

    def test_missing_data_file(self):
        """When the data file cannot be opened, the request gets INTERNAL and the connection stays."""
        factory = self.make_factory()
        os.unlink(self.task.path)
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (0, codec.INTERNAL))
        self.assertFalse(tr.disconnecting)
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))

    def test_request_flood(self):
        """When a client queues more than max_queue requests, it is dropped."""
        proto, tr = self.connect(self.make_factory(max_queue=4))
        proto.dataReceived(b"".join(encode(Request(0)) for _ in range(6)))
        self.assertTrue(tr.disconnected)

    def test_empty_piece(self):
        """When a held piece has length 0, the header alone is sent and the next request follows."""
        self.store.add(OTHER_TASK, b"", 1024).piece_count = 1
        self.store.tasks[OTHER_TASK].held = {0}
        proto, tr = self.connect(self.make_factory(), task_id=OTHER_TASK)
        proto.dataReceived(encode(Request(0)) + encode(Request(0)))
        self.assertEqual(decode(tr.value()), [(Piece(0, 0), b""), (Piece(0, 0), b"")])


class ServerShutdownTests(ServerTestMixin, SynchronousTestCase):
    def test_close_drains(self):
        """When the factory closes, the piece in flight finishes, queued ones get SHUTTING_DOWN, then the connection closes."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)) + encode(Request(1)))
        d = factory.close()
        self.assertNoResult(d)
        self.drain(tr)
        got = decode(tr.value())
        self.assertEqual(got[0], (Piece(0, 256 * 1024), self.data[:256 * 1024]))
        self.assertEqual((got[1].index, got[1].code), (1, codec.SHUTTING_DOWN))
        self.assertTrue(tr.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_refuses_new_hello(self):
        """When the factory is closing, a new Hello gets SHUTTING_DOWN."""
        factory = self.make_factory()
        self.successResultOf(factory.close())
        proto, tr = self.connect(factory, hello=False)
        proto.dataReceived(encode(Hello(codec.VERSION, TASK, "p")))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (None, codec.SHUTTING_DOWN))

    def test_close_grace(self):
        """When a piece does not finish within the grace period, the connection is aborted."""
        factory = self.make_factory()
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)))
        d = factory.close(grace=5)
        self.clock.advance(5)
        self.assertTrue(tr.disconnected)
        proto.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(d)
        self.assertEqual((self.task.pins, factory.active_uploads), (0, 0))


class FakeEndpoint:
    """Connects the pool's protocol to a StringTransport (or never, or fails)."""

    def __init__(self, mode="connect"):
        self.mode = mode
        self.transports = []
        self.protocols = []
        self.pending = []
        self.cancelled = []

    def __call__(self, host, port):
        return self

    def connect(self, factory):
        if self.mode == "fail":
            return defer.fail(ConnectionRefusedError())
        if self.mode == "hang":
            d = defer.Deferred(self.cancelled.append)
            self.pending.append(d)
            return d
        proto = factory.buildProtocol(None)
        tr = StringTransport()
        proto.makeConnection(tr)
        self.transports.append(tr)
        self.protocols.append(proto)
        return defer.succeed(proto)


class ClientTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def make_pool(self, **kw):
        kw.setdefault("endpoint_factory", self.endpoint)
        return PieceClientPool(self.clock, "me-1", **kw)

    def handshake(self, index=0):
        proto, tr = self.endpoint.protocols[index], self.endpoint.transports[index]
        self.assertEqual(decode(tr.value())[0], Hello(codec.VERSION, TASK, "me-1"))
        tr.clear()
        proto.dataReceived(encode(HelloAck(codec.VERSION)))
        return proto, tr

    def lose(self, proto, reason=None):
        proto.connectionLost(Failure(reason or ConnectionDone()))

    def assertFetchError(self, d, code=None, contains=None):
        err = self.failureResultOf(d, PieceFetchError).value
        self.assertEqual(err.code, code)
        if contains is not None:
            self.assertIn(contains, err.reason)
        return err


class ClientTests(ClientTestMixin, SynchronousTestCase):
    def test_interface(self):
        """The pool provides IPieceSource."""
        verifyObject(IPieceSource, self.make_pool())

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

    def test_one_connection_per_source_and_task(self):
        """When pieces of one task are fetched from one source, one connection carries them; another task gets its own."""
        pool = self.make_pool()
        pool.fetch(SOURCE, TASK, 0, 10)
        pool.fetch(SOURCE, TASK, 1, 10)
        pool.fetch(SOURCE, OTHER_TASK, 0, 10)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.assertEqual(pool.connections, 2)

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

    def test_connect_failed(self):
        """When the source cannot be reached, the fetch fails with the connect error."""
        pool = self.make_pool(endpoint_factory=FakeEndpoint("fail"))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 1, 3), None, "connect failed")
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

    def test_bad_arguments(self):
        """When fetch gets a bad index, length or task id, it fails at once without connecting."""
        pool = self.make_pool()
        self.assertFetchError(pool.fetch(SOURCE, TASK, -1, 3))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 0, codec.MAX_PIECE + 1))
        self.assertFetchError(pool.fetch(SOURCE, "../../etc", 0, 3))
        self.assertEqual(self.endpoint.protocols, [])

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
        pool = self.make_pool(piece_timeout=30)
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
        pool = self.make_pool(endpoint_factory=endpoint, piece_timeout=30)
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


class ClientCloseTests(ClientTestMixin, SynchronousTestCase):
    def test_close(self):
        """When the pool closes, outstanding fetches fail and close() fires once connections are gone."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 1, 1)
        proto, tr = self.handshake()
        closed = pool.close()
        self.assertFetchError(d, None, "pool closed")
        self.assertTrue(tr.disconnected)
        self.assertNoResult(closed)
        self.lose(proto, ConnectionLost())
        self.assertIsNone(self.successResultOf(closed))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 1, 1), None, "pool closed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_while_connecting(self):
        """When the pool closes while a connection attempt is pending, the attempt is cancelled."""
        endpoint = FakeEndpoint("hang")
        pool = self.make_pool(endpoint_factory=endpoint)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        closed = pool.close()
        self.successResultOf(closed)
        self.assertEqual(endpoint.cancelled, endpoint.pending)
        self.assertFetchError(d, None, "pool closed")

    def test_close_empty(self):
        """When a pool with no connections closes, close() fires at once."""
        self.successResultOf(self.make_pool().close())


class LoopbackTests(ServerTestMixin, ClientTestMixin, SynchronousTestCase):
    """A real server factory and a real pool wired together in memory (iosim)."""

    def setUp(self):
        ServerTestMixin.setUp(self)
        self.pumps = []

    def make_pool(self, factory, **kw):
        def endpoint_factory(host, port):
            return self

        self.server_factory = factory
        return PieceClientPool(self.clock, "me-1", endpoint_factory=endpoint_factory, **kw)

    def connect(self, client_factory):
        client = client_factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.pumps.append(iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=self.clock))
        return defer.succeed(client)

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def test_pipelined_fetches(self):
        """When a client fetches several pieces of a task, they arrive intact over one connection."""
        factory = self.make_factory()
        pool = self.make_pool(factory)
        ds = [pool.fetch(SOURCE, TASK, i, self.task.piece_range(i)[1]) for i in (0, 1, 3)]
        missing = pool.fetch(SOURCE, TASK, 2, 256 * 1024)
        self.flush()
        for d, i in zip(ds, (0, 1, 3)):
            off, n = self.task.piece_range(i)
            self.assertEqual(self.successResultOf(d), self.data[off:off + n])
        self.assertFetchError(missing, codec.NOT_FOUND)
        self.assertEqual(len(self.pumps), 1)
        self.assertEqual(sum(self.uploaded), 256 * 1024 * 2 + len(self.data) - 3 * 256 * 1024)
        closed = pool.close()
        self.flush()
        self.successResultOf(closed)
        self.assertEqual(factory.connections, set())
        self.assertEqual(self.task.pins, 0)

    def test_task_not_held(self):
        """When the source does not hold the task, the fetch fails with NOT_FOUND."""
        pool = self.make_pool(self.make_factory())
        d = pool.fetch(SOURCE, OTHER_TASK, 0, 10)
        self.flush()
        self.assertFetchError(d, codec.NOT_FOUND, "task not held")

    def test_server_shutdown(self):
        """When the server shuts down, queued fetches fail with SHUTTING_DOWN and a new fetch reconnects."""
        factory = self.make_factory()
        pool = self.make_pool(factory)
        d0 = pool.fetch(SOURCE, TASK, 0, 256 * 1024)
        self.pumps[0].pump()  # Hello
        self.pumps[0].pump()  # HelloAck
        self.pumps[0].pump()  # Request
        closed = factory.close()
        self.flush()
        self.assertEqual(len(self.successResultOf(d0)), 256 * 1024)
        self.successResultOf(closed)
        d1 = pool.fetch(SOURCE, TASK, 1, 256 * 1024)
        self.flush()
        self.assertFetchError(d1, codec.SHUTTING_DOWN)
        self.assertEqual(len(self.pumps), 2)


class RealTCPTests(TestCase):
    """A real server and a real client over TCP on 127.0.0.1."""

    timeout = 60

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.store = FakeStore(self)
        self.piece_size = 1024 * 1024
        self.data = pattern(5 * 1024 * 1024 + 12345, seed=5)
        self.task = self.store.add(TASK, self.data, self.piece_size)
        self.sendfile_bytes = 0
        real_sendfile = os.sendfile

        def counting_sendfile(*args):
            n = real_sendfile(*args)
            self.sendfile_bytes += n
            return n

        self.patch(os, "sendfile", counting_sendfile)

    async def transfer(self, **server_kw):
        uploaded = []
        factory = PieceServerFactory(self.store, self.reactor, on_upload=uploaded.append, **server_kw)
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        pool = PieceClientPool(self.reactor, "me-1", piece_timeout=20)
        try:
            source = PeerInfo("seed-1", "127.0.0.1", port.getHost().port)
            ds = [pool.fetch(source, TASK, i, self.task.piece_range(i)[1])
                  for i in range(self.task.piece_count)]
            pieces = await defer.gatherResults(ds)
            missing = pool.fetch(source, OTHER_TASK, 0, 10)
            try:
                await missing
            except PieceFetchError as e:
                self.assertEqual(e.code, codec.NOT_FOUND)
            else:
                self.fail("fetch of a task not held succeeded")
        finally:
            await pool.close()
            await port.stopListening()
            await factory.close()
        self.assertEqual(b"".join(pieces), self.data)
        self.assertEqual(sum(uploaded), len(self.data))
        self.assertEqual(self.task.pins, 0)
        return factory

    async def test_sendfile(self):
        """When a real client fetches every piece of a few MiB over TCP, it gets them intact, sent by os.sendfile."""
        await self.transfer()
        self.assertGreater(self.sendfile_bytes, len(self.data) // 2)

    async def test_limited_copy_path(self):
        """When an upload limiter is set, pieces go through the chunked copy path and still arrive intact."""
        limiter = TokenBucket(self.reactor, 1024 ** 3)
        await self.transfer(upload_limiter=limiter)
        self.assertEqual(self.sendfile_bytes, 0)

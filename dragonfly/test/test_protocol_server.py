"""Tests for the piece server (dragonfly.protocol.server)."""
import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dragonfly.interfaces import IAdmission, IServedStore, IServedTask
from dragonfly.protocol import codec
from dragonfly.protocol.codec import Cancel, Error, Hello, HelloAck, Piece, Request, encode
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.protocolfakes import (
    OTHER_TASK, TASK, FakeStore, ServerTestMixin, decode, pattern,
)


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
        proto.dataReceived(self.hello(version=codec.VERSION + 5))
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
        proto.dataReceived(self.hello(OTHER_TASK))
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
        factory = self.make_factory(max_uploads=1, slot_wait=0)
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

    def test_on_lost(self):
        """When an admitted client's connection ends, on_lost hears its task
        and peer; not for a connection that never said Hello, nor while the
        server shuts down."""
        lost = []
        factory = self.make_factory(on_lost=lambda *a: lost.append(a))
        proto, tr = self.connect(factory)
        proto.connectionLost(Failure(ConnectionLost()))
        proto, tr = self.connect(factory, hello=False)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(lost, [(TASK, "peer-1")])
        proto, tr = self.connect(factory)
        d = factory.close()
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(lost, [(TASK, "peer-1")])

    def test_on_cut(self):
        """When an admitted client's connection ends with a piece owed (being
        sent or queued), without a clean close (a reset), or within
        cut_recent seconds of its last request, on_cut hears its task and
        peer: a receiver that died holds this node's slot at the supernode.
        Not for a clean close long after the last request (a pool closing an
        idle connection), nor before a Hello, nor while shutting down."""
        cuts = []
        factory = self.make_factory(on_cut=lambda *a: cuts.append(a), cut_recent=25)

        def served(request=True):
            proto, tr = self.connect(factory)
            if request:
                proto.dataReceived(encode(Request(0)))
                self.drain(tr)
            return proto, tr
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)) + encode(Request(1)))
        proto.connectionLost(Failure(ConnectionDone()))        # owed
        self.assertEqual(cuts, [(TASK, "peer-1")])
        proto, tr = served(request=False)
        proto.connectionLost(Failure(ConnectionLost()))        # a reset
        self.assertEqual(len(cuts), 2)
        proto, tr = served()
        self.clock.advance(24)
        proto.connectionLost(Failure(ConnectionDone()))        # recent
        self.assertEqual(len(cuts), 3)
        proto, tr = served()
        self.clock.advance(25)
        proto.connectionLost(Failure(ConnectionDone()))        # idle: no cut
        proto, tr = served(request=False)
        proto.connectionLost(Failure(ConnectionDone()))        # never asked
        proto, tr = self.connect(factory, hello=False)
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(cuts), 3)
        proto, tr = self.connect(factory)
        proto.dataReceived(encode(Request(0)))
        d = factory.close()
        proto.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(d)
        self.assertEqual(len(cuts), 3)

    def test_stalled_upload_times_out(self):
        """When the client stops reading mid-piece for idle_timeout seconds, the connection is aborted."""
        factory = self.make_factory(idle_timeout=30, stall_interval=0)
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



class ServedStoreInterfaceTests(SynchronousTestCase):
    """What the piece server reads pieces through: the fake and the real store provide it."""

    def test_fake_store(self):
        """The tests' FakeStore and FakeTaskFile provide IServedStore and IServedTask."""
        store = FakeStore(self)
        task = store.add(TASK, pattern(1000), 256)
        verifyObject(IServedStore, store)
        verifyObject(IServedTask, task)

    def test_real_store(self):
        """The on-disk PieceStore and its TaskFile have every method and
        attribute the piece server uses."""
        from twisted.internet.task import Clock

        from dragonfly.runtime.threads import SyncRunner
        from dragonfly.storage.store import PieceStore

        store = PieceStore(self.mktemp(), clock=Clock(), runner=SyncRunner())
        self.addCleanup(store.close)
        task = store.create(TASK, "http://origin.invalid/f", 1000, 256)
        verifyObject(IServedStore, store)
        verifyObject(IServedTask, task)
        self.assertIs(store.get(TASK), task)
        self.assertIsNone(store.get(OTHER_TASK))


@implementer(IAdmission)
class _CountingAdmission:
    """Admits everyone; counts the checks."""

    def __init__(self):
        self.calls = []

    def verify(self, token, task_id, peer_id):
        self.calls.append((token, task_id, peer_id))
        return True


class AdmissionCheckTests(ServerTestMixin, SynchronousTestCase):
    """The Hello's admission token, checked with the factory's IAdmission."""

    def refused(self, payload):
        proto, tr = self.connect(self.make_factory(), hello=False)
        proto.dataReceived(payload + encode(Request(0)))
        [err] = decode(tr.value())
        self.assertEqual((err.index, err.code), (None, codec.FORBIDDEN))
        self.assertTrue(tr.disconnecting)
        self.assertIsNone(proto.task_id)
        self.assertEqual(self.uploaded, [])

    def test_no_token(self):
        """When a Hello carries no token, the client gets FORBIDDEN and is closed."""
        self.refused(encode(Hello(codec.VERSION, TASK, "peer-1")))

    def test_version_1_hello(self):
        """When an old client's version 1 Hello (no token) arrives, it gets FORBIDDEN."""
        self.refused(encode(Hello(1, TASK, "peer-1")))

    def test_other_task(self):
        """When the token names another task, the client gets FORBIDDEN."""
        token = self.signer.issue(OTHER_TASK, "peer-1")
        self.refused(encode(Hello(codec.VERSION, TASK, "peer-1", token)))

    def test_other_peer(self):
        """When the token names another peer than the Hello, the client gets FORBIDDEN."""
        token = self.signer.issue(TASK, "peer-2")
        self.refused(encode(Hello(codec.VERSION, TASK, "peer-1", token)))

    def test_expired(self):
        """When the token has expired, the client gets FORBIDDEN."""
        token = self.signer.issue(TASK, "peer-1")
        self.clock.advance(self.signer.lifetime)
        self.refused(encode(Hello(codec.VERSION, TASK, "peer-1", token)))

    def test_unknown_key(self):
        """When the token is signed by a key the server does not trust, FORBIDDEN."""
        from dragonfly.admission import AdmissionSigner

        token = AdmissionSigner.generate(self.clock).issue(TASK, "peer-1")
        self.refused(encode(Hello(codec.VERSION, TASK, "peer-1", token)))

    def test_refused_before_not_found(self):
        """A stranger learns nothing about which tasks are held: an unadmitted
        Hello for a task not held gets FORBIDDEN too, not NOT_FOUND."""
        self.refused(encode(Hello(codec.VERSION, OTHER_TASK, "peer-1")))

    def test_expiry_after_hello_does_not_matter(self):
        """A connection admitted at Hello keeps being served after its token expires."""
        self.signer.lifetime = 10     # expires at 60 s (a whole step), under the idle timeout
        token = self.signer.issue(TASK, "peer-1")   # the one the Hello carries
        proto, tr = self.connect(self.make_factory())
        self.clock.advance(61)
        self.assertFalse(self.admission.verify(token, TASK, "peer-1"))
        proto.dataReceived(encode(Request(0)))
        self.drain(tr)
        self.assertEqual(decode(tr.value()), [(Piece(0, 256 * 1024), self.data[:256 * 1024])])

    def test_checked_once_per_connection(self):
        """The token is verified once, at Hello, not per request or chunk."""
        admission = _CountingAdmission()
        factory = self.make_factory(admission=admission)
        proto, tr = self.connect(factory)
        for i in (0, 1, 3):
            proto.dataReceived(encode(Request(i)))
            self.drain(tr)
        self.assertEqual(len(admission.calls), 1)
        token, task_id, peer_id = admission.calls[0]
        self.assertEqual((task_id, peer_id), (TASK, "peer-1"))
        self.assertTrue(self.admission.verify(token, TASK, "peer-1"))

    def test_admission_required(self):
        """A piece server factory cannot be made without an admission check."""
        from dragonfly.protocol.server import PieceServerFactory

        self.assertRaises(TypeError, PieceServerFactory, self.store, self.clock)

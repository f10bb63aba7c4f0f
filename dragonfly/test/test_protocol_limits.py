"""Tests for the piece server's limits against hostile clients
(dragonfly.protocol.server): the handshake deadline, connections per
address, and the stall check that takes upload slots from readers too slow."""
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.protocol import codec
from dragonfly.protocol.codec import Piece, Request, encode
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.protocolfakes import ServerTestMixin, decode

PIECE = 256 * 1024


class LimitTestMixin(ServerTestMixin):
    def open(self, factory, host="10.0.0.1", hello=True):
        """A connection from C{host} (None, None when the factory refuses it)."""
        return self.connect(factory, hello=hello, host=host)


class HandshakeDeadlineTests(LimitTestMixin, SynchronousTestCase):
    def test_trickled_hello_cannot_extend_the_deadline(self):
        """When a Hello arrives one byte every few seconds, the connection is
        still closed handshake_timeout seconds after it was made."""
        proto, tr = self.open(self.make_factory(handshake_timeout=30), hello=False)
        hello = self.hello()
        for i in range(5):
            proto.dataReceived(hello[i:i + 1])
            self.clock.advance(5.9)
        self.assertFalse(tr.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(tr.disconnecting)

    def test_partial_frames_are_not_activity(self):
        """When a handshaken client trickles a frame byte by byte, the idle
        timeout still runs from its last complete message."""
        proto, tr = self.open(self.make_factory(idle_timeout=60))
        request = encode(Request(2))
        for i in range(len(request) - 1):
            proto.dataReceived(request[i:i + 1])
            self.clock.advance(5)
        self.clock.advance(60 - 5 * (len(request) - 1))
        self.assertTrue(tr.disconnecting)


class PerAddressTests(LimitTestMixin, SynchronousTestCase):
    def test_connections_per_address(self):
        """When one address has max_per_address connections open, its next
        one is refused while other addresses still connect; a closed
        connection frees its place."""
        factory = self.make_factory(max_per_address=2)
        first, _ = self.open(factory, "10.0.0.1")
        self.open(factory, "10.0.0.1")
        self.assertEqual(self.open(factory, "10.0.0.1"), (None, None))
        other, _ = self.open(factory, "10.0.0.2")
        self.assertIsNotNone(other)
        first.connectionLost(Failure(ConnectionDone()))
        again, _ = self.open(factory, "10.0.0.1")
        self.assertIsNotNone(again)

    def test_default_cap(self):
        """By default one address may open 64 piece connections."""
        factory = self.make_factory()
        for _ in range(64):
            self.assertIsNotNone(self.open(factory, "10.0.0.9", hello=False)[0])
        self.assertEqual(self.open(factory, "10.0.0.9", hello=False), (None, None))


class StallTests(LimitTestMixin, SynchronousTestCase):
    def test_non_reader_loses_its_slot(self):
        """When clients take every upload slot and never read, they lose
        their slots and connections within two stall intervals, and a
        legitimate request waiting for a slot is then served, not BUSY."""
        factory = self.make_factory(max_uploads=2, stall_interval=5, min_upload_rate=1024,
                                    slot_wait=12)
        hogs = [self.open(factory, "10.0.0.66") for _ in range(2)]
        for proto, tr in hogs:
            proto.dataReceived(encode(Request(0)))
        self.assertEqual(factory.active_uploads, 2)
        good, good_tr = self.open(factory, "10.0.0.1")
        good.dataReceived(encode(Request(1)))
        self.assertEqual(good_tr.value(), b"")
        self.clock.advance(5)
        self.assertFalse(any(tr.disconnecting for _, tr in hogs))
        self.clock.advance(5)
        self.assertTrue(all(tr.disconnected for _, tr in hogs))
        self.assertEqual(factory.active_uploads, 1)
        self.drain(good_tr)
        self.assertEqual(decode(good_tr.value()),
                         [(Piece(1, PIECE), self.data[PIECE:2 * PIECE])])
        self.assertIsNone(factory._stall_call)

    def test_slot_wait_then_busy(self):
        """When no slot frees within slot_wait seconds, the waiting request
        gets BUSY, and the connection goes on with its next request."""
        factory = self.make_factory(max_uploads=1, stall_interval=5, slot_wait=8,
                                    min_upload_rate=1)
        holder, holder_tr = self.open(factory, "10.0.0.1")
        holder.dataReceived(encode(Request(0)))
        waiter, tr = self.open(factory, "10.0.0.2")
        waiter.dataReceived(encode(Request(1)) + encode(Request(2)))
        for _ in range(2):
            holder_tr.producer.resumeProducing()    # a slow reader, not a stalled one
            self.clock.advance(5)
        [busy, not_held] = decode(tr.value())
        self.assertEqual((busy.index, busy.code), (1, codec.BUSY))
        self.assertEqual((not_held.index, not_held.code), (2, codec.NOT_FOUND))

    def test_freed_slot_goes_to_the_least_served_address(self):
        """When a slot frees, the waiting connection whose address holds the
        fewest uploads gets it, whoever waited first."""
        factory = self.make_factory(max_uploads=2, stall_interval=5)
        busy_host = [self.open(factory, "10.0.0.66") for _ in range(3)]
        for proto, _ in busy_host:
            proto.dataReceived(encode(Request(0)))
        other, other_tr = self.open(factory, "10.0.0.1")
        other.dataReceived(encode(Request(1)))
        self.assertEqual(other_tr.value(), b"")
        self.drain(busy_host[0][1])
        self.assertEqual(other_tr.value()[:13], codec.encode_piece(Piece(1, PIECE)))
        self.assertEqual(busy_host[2][1].value(), b"")

    def test_slow_but_steady_reader_keeps_its_slot(self):
        """When a reader takes at least min_upload_rate, the stall check leaves it alone."""
        factory = self.make_factory(stall_interval=5, min_upload_rate=8 * 1024,
                                    chunk_size=16 * 1024)
        proto, tr = self.open(factory)
        proto.dataReceived(encode(Request(0)))
        for _ in range(PIECE // (16 * 1024)):
            self.assertFalse(tr.disconnected)
            if tr.producer is None:
                break
            tr.producer.resumeProducing()
            self.clock.advance(1.9)
        self.assertEqual(decode(tr.value()), [(Piece(0, PIECE), self.data[:PIECE])])
        self.assertFalse(tr.disconnecting)

    def test_limiter_waits_are_not_stalls(self):
        """When an upload waits for the shared upload limiter, it is not stalled."""
        limiter = TokenBucket(self.clock, 4 * 1024, burst=4 * 1024)
        factory = self.make_factory(upload_limiter=limiter, stall_interval=5,
                                    min_upload_rate=64 * 1024)
        proto, tr = self.open(factory)
        proto.dataReceived(encode(Request(0)))
        for _ in range(40):
            if tr.producer is None:
                break
            tr.producer.resumeProducing()
            self.clock.advance(0.5)
        self.assertFalse(tr.disconnecting)

    def test_no_tick_without_uploads(self):
        """When no upload is in flight, no stall tick is scheduled."""
        factory = self.make_factory(stall_interval=5)
        proto, tr = self.open(factory)
        self.assertFalse(factory._stall_call)
        proto.dataReceived(encode(Request(3)))
        self.assertTrue(factory._stall_call.active())
        self.drain(tr)
        self.assertIsNone(factory._stall_call)

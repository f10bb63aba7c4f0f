"""Tests for the piece client's first-byte deadline (issue 10): a source that
accepts and never answers costs C{first_byte_timeout} seconds, not the
piece timeout, and everything queued on it fails with it."""
from twisted.internet.error import ConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.protocol.codec import Piece, encode
from dragonfly.protocol.pool import FIRST_BYTE_TIMEOUT
from dragonfly.test.protocolfakes import SOURCE, TASK, ClientTestMixin, FakeEndpoint


class FirstByteTests(ClientTestMixin, SynchronousTestCase):
    def test_default(self):
        """The pool's first-byte deadline is a few seconds by default."""
        self.assertEqual(self.make_pool().first_byte_timeout, FIRST_BYTE_TIMEOUT)
        self.assertTrue(1 <= FIRST_BYTE_TIMEOUT <= 10)

    def test_tarpit_handshake(self):
        """When a source accepts the connection and never answers the Hello,
        every fetch queued on it fails after first_byte_timeout and the
        connection is dropped."""
        pool = self.make_pool(piece_timeout=30, first_byte_timeout=3)
        d1 = pool.fetch(SOURCE, TASK, 1, 10)
        d2 = pool.fetch(SOURCE, TASK, 2, 10)
        tr = self.endpoint.transports[0]
        self.clock.advance(2.9)
        self.assertNoResult(d1)
        self.clock.advance(0.1)
        self.assertFetchError(d1, None, "first-byte deadline")
        self.assertFetchError(d2, None, "first-byte deadline")
        self.assertTrue(tr.disconnected)
        self.lose(self.endpoint.protocols[0], ConnectionLost())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connect_hangs(self):
        """When the connection never completes, the fetch fails after the
        first-byte deadline and the attempt is cancelled."""
        endpoint = FakeEndpoint("hang")
        pool = self.make_pool(endpoint_factory=endpoint, piece_timeout=30, first_byte_timeout=3)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        self.clock.advance(3)
        self.assertFetchError(d, None, "first-byte deadline")
        self.assertEqual(endpoint.cancelled, endpoint.pending)

    def test_request_never_answered(self):
        """When the handshake completes but a request gets no answer, it fails
        after first_byte_timeout from when the source is due to serve it."""
        pool = self.make_pool(piece_timeout=30, first_byte_timeout=3)
        d1 = pool.fetch(SOURCE, TASK, 1, 1)
        d2 = pool.fetch(SOURCE, TASK, 2, 1)
        proto, tr = self.handshake()
        self.clock.advance(2)
        proto.dataReceived(encode(Piece(1, 1)) + b"a")
        self.successResultOf(d1)
        self.clock.advance(2.9)
        self.assertNoResult(d2)
        self.clock.advance(0.1)
        self.assertFetchError(d2, None, "first-byte deadline")

    def test_slow_body_is_not_late(self):
        """When the answer has begun, a body taking longer than the first-byte
        deadline is fine (the piece timeout still bounds it)."""
        pool = self.make_pool(piece_timeout=30, first_byte_timeout=3)
        d = pool.fetch(SOURCE, TASK, 1, 4)
        proto, tr = self.handshake()
        proto.dataReceived(encode(Piece(1, 4)) + b"ab")
        self.clock.advance(10)
        self.assertNoResult(d)
        proto.dataReceived(b"cd")
        self.assertEqual(self.successResultOf(d), b"abcd")

    def test_zero_disables(self):
        """first_byte_timeout 0 leaves only the piece timeout."""
        pool = self.make_pool(piece_timeout=30, first_byte_timeout=0)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertFetchError(d, None, "timed out")

"""Tests for dragonfly.ingest.contenthash: the content digest as pieces land."""
import hashlib
import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.ingest.contenthash import ContentHash
from dragonfly.runtime.threads import SyncRunner

PIECE = 10
DATA = os.urandom(PIECE * 4 + 3)
WHOLE = "sha256:" + hashlib.sha256(DATA).hexdigest()


class FakeFile:
    """The parts of a TaskFile a ContentHash reads; `land` writes a piece."""

    def __init__(self, path):
        self.path = path
        self.length = len(DATA)
        self.piece_count = 5
        self.held = set()
        with open(path, "wb") as f:
            f.truncate(self.length)

    def piece_range(self, i):
        return i * PIECE, min(PIECE, self.length - i * PIECE)

    def has(self, i):
        return i in self.held

    def land(self, i):
        off, size = self.piece_range(i)
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(DATA[off:off + size])
        self.held.add(i)
        return [DATA[off:off + size]]


class ContentHashTests(SynchronousTestCase):

    def setUp(self):
        self.tf = FakeFile(self.mktemp())
        self.content = ContentHash(self.tf, SyncRunner())

    def feed(self, i):
        chunks = self.tf.land(i)
        return self.successResultOf(self.content.follow(i, succeed(i), chunks))

    def test_in_order(self):
        """Pieces landing in order are hashed as they come: nothing is read back."""
        for i in range(5):
            self.assertEqual(self.feed(i), i)
        self.assertEqual(self.successResultOf(self.content.digest()), WHOLE)
        self.assertEqual(self.content.read_back, 0)

    def test_out_of_order_read_back(self):
        """A piece that landed ahead of the prefix is read back once the prefix
        reaches it, and only it."""
        for i in (3, 0, 1, 2, 4):
            self.feed(i)
        self.assertEqual(self.successResultOf(self.content.digest()), WHOLE)
        self.assertEqual(self.content.read_back, PIECE)

    def test_rest_read_back_at_the_end(self):
        """What never came in order (held before, or after a hole) is read back
        by digest()."""
        self.tf.land(0)
        self.tf.land(1)
        self.feed(3)
        self.tf.land(2)
        self.tf.land(4)
        self.assertEqual(self.successResultOf(self.content.digest()), WHOLE)
        self.assertEqual(self.content.read_back, len(DATA))

    def test_failed_write_unusable(self):
        """A piece whose write failed makes the hash unusable (None): the
        caller hashes the file afresh; the failure reaches the caller."""
        self.failureResultOf(self.content.follow(0, fail(OSError("disk")), [b"x"]), OSError)
        for i in range(5):
            self.tf.land(i)
        self.assertIsNone(self.successResultOf(self.content.digest()))

    def inline(self, i):
        """Land piece i through inline() as the spliced path does, if offered."""
        h = self.content.inline(i)
        if h is None:
            return False
        for c in self.tf.land(i):
            h.update(c)
        self.content.inline_done(True)
        return True

    def test_inline_in_order(self):
        """The next piece in order is hashed where it is written: nothing read back."""
        self.assertEqual([self.inline(i) for i in range(5)], [True] * 5)
        self.assertEqual(self.successResultOf(self.content.digest()), WHOLE)
        self.assertEqual(self.content.read_back, 0)

    def test_inline_only_next_and_idle(self):
        """Offered for the next piece in order, also while earlier inline
        pieces are out (their writers feed the hash in turn), not for a piece
        after a hole, nor while a queued step is out; what was not offered is
        read back by digest()."""
        h0 = self.content.inline(0)
        self.assertIsNotNone(h0)
        self.assertIs(self.content.inline(1), h0)     # piece 0 still out: chained
        for i in (0, 1):
            for c in self.tf.land(i):
                h0.update(c)
        self.content.inline_done(True)
        self.assertIsNone(self.content.inline(0))     # not the next one
        self.content.inline_done(True)
        self.assertFalse(self.inline(3))               # 2 is missing
        written = Deferred()
        self.content.follow(2, written, [DATA[2 * PIECE:3 * PIECE]])
        self.assertIsNone(self.content.inline(3))     # a queued step is out
        self.tf.land(2)
        written.callback(None)
        self.tf.land(4)
        self.assertTrue(self.inline(3))
        self.assertEqual(self.successResultOf(self.content.digest()), WHOLE)
        self.assertEqual(self.content.read_back, len(DATA) - 4 * PIECE)

    def test_inline_failed_in_a_chain_unusable(self):
        """When the first of two chained inline pieces did not land, the hash
        is unusable even though the second did."""
        self.assertIsNotNone(self.content.inline(0))
        self.assertIsNotNone(self.content.inline(1))
        self.content.inline_done(False)
        self.content.inline_done(True)
        for i in range(5):
            self.tf.land(i)
        self.assertIsNone(self.successResultOf(self.content.digest()))

    def test_inline_failed_unusable(self):
        """A piece that did not land after inline() makes the hash unusable."""
        self.assertIsNotNone(self.content.inline(0))
        self.content.inline_done(False)
        for i in range(5):
            self.tf.land(i)
        self.assertIsNone(self.successResultOf(self.content.digest()))

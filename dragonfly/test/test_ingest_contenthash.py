"""Tests for dragonfly.ingest.contenthash: the content digest as pieces land."""
import hashlib
import os

from twisted.internet.defer import fail, succeed
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

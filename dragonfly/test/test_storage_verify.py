"""Tests for dragonfly.storage.verify: re-reading a data file against its digests."""
import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.digest import piece_digest
from dragonfly.storage import verify


class VerifyTests(SynchronousTestCase):
    def setUp(self):
        self.data = os.urandom(3 * 1000 + 17)
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(self.data)
        self.digests = [piece_digest(self.data[i:i + 1000]) for i in range(0, len(self.data), 1000)]

    def test_content_digest(self):
        """The whole content's digest, read in bounded chunks (any chunk size)."""
        want = "sha256:" + hashlib.sha256(self.data).hexdigest()
        self.assertEqual(verify.content_digest(self.path, len(self.data)), want)
        self.patch(verify, "CHUNK", 7)
        self.assertEqual(verify.content_digest(self.path, len(self.data)), want)
        self.assertEqual(verify.content_digest(self.path, 10),
                         "sha256:" + hashlib.sha256(self.data[:10]).hexdigest())
        self.assertEqual(verify.content_digest(self.path + "-missing", 10),
                         "sha256:" + hashlib.sha256(b"").hexdigest())

    def test_bad_pieces(self):
        """Pieces whose bytes no longer hash to their digest are named; pieces
        not held (None) are not read; a short or missing file fails what it
        cannot supply."""
        length = len(self.data)
        self.assertEqual(verify.bad_pieces(self.path, 1000, length, self.digests), [])
        with open(self.path, "r+b") as f:
            f.seek(2500)
            f.write(b"\0" if self.data[2500] else b"\1")
        self.assertEqual(verify.bad_pieces(self.path, 1000, length, self.digests), [2])
        self.assertEqual(verify.bad_pieces(self.path, 1000, length,
                                           self.digests[:2] + [None, self.digests[3]]), [])
        with open(self.path, "r+b") as f:
            f.truncate(3010)
        self.assertEqual(verify.bad_pieces(self.path, 1000, length, self.digests), [2, 3])
        self.assertEqual(verify.bad_pieces(self.path + "-missing", 1000, length,
                                           [self.digests[0], None, None, self.digests[3]]), [0, 3])

"""Tests for dragonfly.storage.buffer: a piece gathered as it arrives."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage.buffer import PieceBuffer
from dragonfly.test.storefakes import blob, pdigest


class PieceBufferTests(SynchronousTestCase):
    def test_collects_and_hashes(self):
        """When chunks are added, take() returns them in order (small ones
        coalesced, big ones as given) with the piece digest of all of them, and the
        buffer starts afresh."""
        big = blob(PieceBuffer.MIN_PART, b"b")
        buf = PieceBuffer()
        for part in (b"a", b"bc", big, b"", memoryview(b"xyz")):
            buf.add(part)
        self.assertEqual(buf.nbytes, 3 + len(big) + 3)
        chunks, digest = buf.take()
        body = b"abc" + big + b"xyz"
        self.assertEqual(b"".join(bytes(c) for c in chunks), body)
        self.assertEqual(digest, pdigest(body))
        self.assertIs(chunks[1], big)
        self.assertEqual(len(chunks), 3)
        self.assertEqual(buf.nbytes, 0)
        self.assertEqual(buf.take(), ([], pdigest(b"")))

    def test_small_chunks_bounded(self):
        """When many tiny chunks arrive, they are merged into chunks of at least
        MIN_PART bytes, so the list stays short."""
        buf = PieceBuffer()
        for _ in range(3 * PieceBuffer.MIN_PART // 10):
            buf.add(b"0123456789")
        chunks, digest = buf.take()
        self.assertLessEqual(len(chunks), 4)
        self.assertEqual(sum(len(c) for c in chunks), 3 * PieceBuffer.MIN_PART // 10 * 10)

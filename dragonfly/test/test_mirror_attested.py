"""BlobSink and a blob the supernode attests: nothing hashed, the tail still gated.

The attestation names the pieces root of the supernode's copy, which matched
the digest whole. The sink hashes nothing while it holds one, and releases
the final bytes only when the task file's own piece digests give that root;
bytes not in the store, or a file whose pieces differ, are hashed (what was
skipped read back from the file) and must match the digest.
"""
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon.blobsink import HOLD, BlobSink
from dragonfly.digest import piece_digest, pieces_root
from dragonfly.test.test_mirror_blobsink import _Request, _Sender, _Task

PIECE = HOLD
BLOB = bytes(range(256)) * (3 * PIECE // 256) + b"0123456789"     # 4 pieces, the last short
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def _digests(data):
    return [piece_digest(data[i:i + PIECE]) for i in range(0, len(data), PIECE)]


ROOT = pieces_root(_digests(BLOB))


class _PieceTask(_Task):
    """A task file: C{data} on disk, the piece digests recorded for it (of
    C{recorded}, default C{data}), the pieces held (default all)."""

    task_id = DIGEST

    def __init__(self, data, recorded=None, held=None, intact=True):
        super().__init__(data)
        self.length = len(data)
        self.piece_size = PIECE
        self.piece_count = -(-len(data) // PIECE)
        self.held = set(range(self.piece_count)) if held is None else set(held)
        self._digests = _digests(recorded if recorded is not None else data)
        self._intact = intact

    def has(self, index):
        return index in self.held

    def digest(self, index):
        return self._digests[index] if index in self.held else None

    @property
    def is_complete(self):
        return len(self.held) == self.piece_count

    def intact(self):
        return self._intact


class AttestedSinkTests(SynchronousTestCase):
    def sink(self, data=BLOB, **kw):
        task = _PieceTask(data, **{k: kw.pop(k) for k in ("recorded", "held", "intact")
                                   if k in kw})
        self.addCleanup(task.close)
        request, sender, hashed = _Request(), _Sender(), []
        sink = BlobSink(request, DIGEST, len(BLOB), sender=sender, task_file=task,
                        on_hashed=hashed.append, **kw)
        return sink, task, request, sender, hashed

    def test_attested_at_start_not_hashed(self):
        """When the blob is attested before its first byte, no byte is hashed,
        the last HOLD bytes still wait for check(), which passes on the task
        file's own piece digests; then everything is sent."""
        sink, task, request, sender, hashed = self.sink()
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, 2 * PIECE))
        self.successResultOf(sink.send_file(task, 2 * PIECE, len(BLOB) - 2 * PIECE))
        self.assertEqual(bytes(sender.body), BLOB[:-HOLD])
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body), BLOB)
        self.assertEqual(sum(hashed), 0)
        sink.finish()
        self.assertEqual(task.pins, 0)

    def test_attested_mid_stream_stops_hashing(self):
        """When the attestation arrives mid-stream, what came before was hashed,
        nothing after; the tail goes once the file's piece digests give the root."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, PIECE))
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, PIECE, len(BLOB) - PIECE))
        self.assertEqual(sum(hashed), PIECE)
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body), BLOB)

    def test_poisoned_file_never_served_complete(self):
        """When the task file's pieces are not the attested copy's (a piece
        came from elsewhere with other bytes: its recorded digest is of those
        bytes), everything skipped is hashed from the file, the digest does not
        match, and the last HOLD bytes are never sent."""
        bad = BLOB[:PIECE + 5] + b"!" + BLOB[PIECE + 6:]
        sink, task, request, sender, hashed = self.sink(bad)
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertEqual(sum(hashed), 0)
        self.assertFalse(self.successResultOf(sink.check()))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)
        sink.close()
        self.assertEqual(task.pins, 0)

    def test_other_bytes_same_recorded_digests_still_checked(self):
        """The root is compared with the digests the store recorded; a file
        changed after it was sealed (not intact) is hashed instead, and a
        mismatch keeps the tail back."""
        bad = BLOB[:10] + b"!" + BLOB[11:]
        sink, task, request, sender, hashed = self.sink(bad, recorded=BLOB, intact=False)
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertFalse(self.successResultOf(sink.check()))
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)

    def test_passed_through_bytes_hashed(self):
        """Bytes of a piece not in the store (passed through a full store)
        end the trust: what was skipped is hashed from the file, then those
        bytes and everything after; the digest decides."""
        sink, task, request, sender, hashed = self.sink(held={0, 1, 3})
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, 2 * PIECE))
        self.assertEqual(sum(hashed), 0)
        sink.write(BLOB[2 * PIECE:3 * PIECE])
        self.assertEqual(sum(hashed), 3 * PIECE)
        self.successResultOf(sink.send_file(task, 3 * PIECE, len(BLOB) - 3 * PIECE))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body) + b"".join(request.written),
                         BLOB[:2 * PIECE] + BLOB[3 * PIECE:] + BLOB[2 * PIECE:3 * PIECE])

    def test_passed_through_corrupt_bytes_caught(self):
        """Passed-through bytes that differ from the blob fail the digest."""
        sink, task, request, sender, hashed = self.sink(held={0, 1, 3})
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, 2 * PIECE))
        sink.write(b"!" * PIECE)
        self.successResultOf(sink.send_file(task, 3 * PIECE, len(BLOB) - 3 * PIECE))
        self.assertFalse(self.successResultOf(sink.check()))
        self.assertEqual(len(sender.body), 2 * PIECE)     # the last piece is the held tail

    def test_held_bytes_not_hashed(self):
        """Bytes of held pieces (a TLS client: no sendfile) are not hashed
        while attested."""
        task = _PieceTask(BLOB)
        self.addCleanup(task.close)
        request, hashed = _Request(), []
        sink = BlobSink(request, DIGEST, len(BLOB), task_file=task, on_hashed=hashed.append)
        sink.attest(ROOT)
        sink.write(BLOB[:PIECE])
        sink.write(BLOB[PIECE:])
        self.assertEqual(sum(hashed), 0)
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(b"".join(request.written), BLOB)

    def test_no_attestation_hashes_everything(self):
        """Without an attestation (an older supernode, a back-to-source
        download) the sink hashes every byte itself, as before."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertTrue(self.successResultOf(sink.check()))

    def test_known_good_ignores_attestation(self):
        """A copy verified before (not gated) takes no attestation and hashes nothing."""
        sink, task, request, sender, hashed = self.sink(known_good=True)
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertEqual(sender.sent, [(0, len(BLOB))])
        self.assertEqual(sum(hashed), 0)

    def test_removed_task_file_hashed(self):
        """A task file the store dropped meanwhile is not taken on its piece
        digests: the sink hashes what it skipped (through its open file) instead."""
        sink, task, request, sender, hashed = self.sink()
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        task.removed = True
        self.assertTrue(self.successResultOf(sink.check()))
        self.assertEqual(sum(hashed), len(BLOB))

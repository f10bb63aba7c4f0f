"""BlobSink with a promised attestation: hashing deferred to the end.

The supernode said it will attest the blob once its running check passes
(C{attests}); the sink hashes nothing while it streams, then waits up to
ATTEST_WAIT for the word. Attested and matching the file's piece digests:
the tail goes, nothing hashed. Anything else: the whole blob is hashed from
the file and the digest decides, as without a promise.
"""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from dragonfly.dfdaemon.blobsink import ATTEST_WAIT, HOLD, BlobSink
from dragonfly.metrics import sample
from dragonfly.test.mirrorfakes import MirrorTestMixin
from dragonfly.test.test_mirror_attested import BLOB, DIGEST, PIECE, ROOT, _PieceTask
from dragonfly.test.test_mirror_blobsink import _Request, _Sender


class DeferredSinkTests(SynchronousTestCase):
    def sink(self, data=BLOB, promise=True, **kw):
        task = _PieceTask(data, **{k: kw.pop(k) for k in ("recorded", "held", "intact")
                                   if k in kw})
        self.addCleanup(task.close)
        self.clock = Clock()
        request, sender, hashed = _Request(), _Sender(), []
        sink = BlobSink(request, DIGEST, len(BLOB), sender=sender, task_file=task,
                        on_hashed=hashed.append, clock=self.clock, **kw)
        if promise:
            sink.defer()
        return sink, task, request, sender, hashed

    def test_attested_at_the_end_nothing_hashed(self):
        """Deferred, then attested while check() waits: not one byte hashed,
        the tail held until then, everything sent after."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        self.assertEqual(sum(hashed), 0)
        self.assertEqual(bytes(sender.body), BLOB[:-HOLD])
        d = sink.check()
        self.assertNoResult(d)
        sink.attest(ROOT)
        self.assertTrue(self.successResultOf(d))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body), BLOB)
        self.assertEqual(sum(hashed), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        sink.finish()
        self.assertEqual(task.pins, 0)

    def test_attested_before_the_end_no_wait(self):
        """The word came mid-stream: check() answers at once, nothing hashed."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, PIECE))
        sink.attest(ROOT)
        self.successResultOf(sink.send_file(task, PIECE, len(BLOB) - PIECE))
        self.assertTrue(self.successResultOf(sink.check()))
        self.assertEqual(sum(hashed), 0)

    def test_timeout_hashes_the_file(self):
        """No word within ATTEST_WAIT: the whole blob is hashed from the file,
        and a blob that matches is released."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        d = sink.check()
        self.clock.advance(ATTEST_WAIT - 0.01)
        self.assertNoResult(d)
        self.assertEqual(sum(hashed), 0)
        self.clock.advance(0.01)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(sum(hashed), len(BLOB))
        self.successResultOf(sink.release())
        self.assertEqual(bytes(sender.body), BLOB)

    def test_timeout_corrupt_file_fails(self):
        """No word, and the file's bytes are not the blob (recorded digests
        of those very bytes): hashed from the file, mismatch, the tail never goes."""
        bad = BLOB[:PIECE + 5] + b"!" + BLOB[PIECE + 6:]
        sink, task, request, sender, hashed = self.sink(bad)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        d = sink.check()
        self.clock.advance(ATTEST_WAIT)
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)

    def test_attested_other_root_fails(self):
        """The word names another copy than the file's (a piece that came
        from elsewhere with other bytes): hashed from the file, mismatch,
        the tail never goes."""
        bad = BLOB[:PIECE + 5] + b"!" + BLOB[PIECE + 6:]
        sink, task, request, sender, hashed = self.sink(bad)
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        d = sink.check()
        sink.attest(ROOT)
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertEqual(len(sender.body), len(BLOB) - HOLD)

    def test_passed_through_bytes_end_the_deferral(self):
        """Bytes not in the store: what was skipped is hashed from the file,
        then the rest inline; no wait at the end, the digest decides."""
        sink, task, request, sender, hashed = self.sink(held={0, 1, 3})
        self.successResultOf(sink.send_file(task, 0, 2 * PIECE))
        self.assertEqual(sum(hashed), 0)
        sink.write(BLOB[2 * PIECE:3 * PIECE])
        self.assertEqual(sum(hashed), 3 * PIECE)
        self.successResultOf(sink.send_file(task, 3 * PIECE, len(BLOB) - 3 * PIECE))
        self.assertTrue(self.successResultOf(sink.check()))
        self.assertEqual(sum(hashed), len(BLOB))

    def test_removed_file_hashed(self):
        """The store dropped the file: not taken on the word, hashed instead."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        task.removed = True
        d = sink.check()
        sink.attest(ROOT)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(sum(hashed), len(BLOB))

    def test_client_gone_while_waiting(self):
        """The client leaves while check() waits: False at once, no timer left."""
        sink, task, request, sender, hashed = self.sink()
        self.successResultOf(sink.send_file(task, 0, len(BLOB)))
        d = sink.check()
        sink.close()
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(sum(hashed), 0)
        self.assertEqual(task.pins, 0)

    def test_no_promise_hashes_inline(self):
        """Without a promise the sink hashes every byte as it streams, as before."""
        sink, task, request, sender, hashed = self.sink(promise=False)
        self.successResultOf(sink.send_file(task, 0, PIECE))
        self.assertEqual(sum(hashed), PIECE)
        self.successResultOf(sink.send_file(task, PIECE, len(BLOB) - PIECE))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertTrue(self.successResultOf(sink.check()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_promise_after_hashing_ignored(self):
        """A promise that comes after bytes were hashed changes nothing."""
        sink, task, request, sender, hashed = self.sink(promise=False)
        self.successResultOf(sink.send_file(task, 0, PIECE))
        sink.defer()
        self.successResultOf(sink.send_file(task, PIECE, len(BLOB) - PIECE))
        self.assertEqual(sum(hashed), len(BLOB))
        self.assertTrue(self.successResultOf(sink.check()))


class DeferredBlobTests(MirrorTestMixin, SynchronousTestCase):
    """The mirror's blobs with a peer whose supernode promised its word."""

    def promised(self, served=BLOB):
        """The peer downloads a task file holding C{served} (piece digests of
        those bytes), promised an attestation; C{words} gets the sink's hook."""
        self.registry.blobs[DIGEST] = BLOB
        task = _PieceTask(served)
        self.addCleanup(task.close)
        self.words = []

        def download(url, on_start=None, **kw):
            on_start.callback(task)
            return defer.succeed(task)
        self.peer.download = download
        self.peer.serve[DIGEST] = served
        self.peer.attests = lambda task_id: task_id == DIGEST

        def on_verified(task_id, cb):
            self.words.append(cb)
            return lambda: None
        self.peer.on_verified = on_verified
        return task

    def hashed(self):
        return sample(self.metrics, "dragonfly_mirror_blob_hash_bytes_total") or 0

    def test_attested_nothing_hashed(self):
        """The word comes while the end waits: the whole blob goes, not one byte hashed."""
        self.promised()
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        d = response.content()
        self.pump()
        self.assertNoResult(d)
        [word] = self.words
        word(ROOT)
        self.pump()
        self.assertEqual(self.successResultOf(d), BLOB)
        self.assertEqual(self.hashed(), 0)

    def test_timeout_hashes_the_file(self):
        """No word: after ATTEST_WAIT the blob is hashed from the file and goes."""
        self.promised()
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        d = response.content()
        self.pump()
        self.assertNoResult(d)
        self.clock.advance(ATTEST_WAIT)
        self.pump()
        self.assertEqual(self.successResultOf(d), BLOB)
        self.assertEqual(self.hashed(), len(BLOB))

    def test_mismatch_cuts_the_answer(self):
        """A corrupt copy (no word comes, its check failed): hashed from the
        file after the wait, the answer is cut before its end."""
        self.promised(BLOB[:PIECE + 5] + b"!" + BLOB[PIECE + 6:])
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 200)
        d = response.content()
        self.pump()
        self.clock.advance(ATTEST_WAIT)
        self.pump()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob-corrupt", "code": "502"}), 1)
        self.assertEqual(self.hashed(), len(BLOB))

"""Tests for the CDN's cold ranges: the pieces a range needs first, the rest after, once."""
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.supernode import cdn as cdn_module
from dragonfly.supernode.recheck import ContentMismatch
from dragonfly.test.test_cdn import DATA, PIECE, URL, CDNTestMixin

GOOD = "sha256:" + hashlib.sha256(DATA).hexdigest()   # DATA: 6 pieces, the last short


class ColdRangeTests(CDNTestMixin, SynchronousTestCase):
    """A new task wanted from a range: Range requests on the origin, every byte once."""

    def complete(self, task, want):
        """ensure() wanting C{want} first, then a Deferred of the task complete."""
        self.cdn.ensure(task, URL, want=want).addErrback(lambda f: None)
        return self.cdn.ensure_complete(task, URL)

    def ranges(self):
        return [h.get("range") for _, _, h in self.origin.gets("/f")]

    def announced(self):
        seen = []
        real = self.scheduler.seed_has
        self.patch(self.scheduler, "seed_has",
                   lambda t, i, d: (seen.append(i), real(t, i, d))[1])
        return seen

    def test_covering_pieces_first_then_the_rest(self):
        """A range in piece 4 is asked for first (exactly that piece), then the
        pieces before it and the last one, each once: the origin sends the file
        once in all; the pieces are announced in that order, the content digest
        is checked (only the piece that came out of order read back) and the
        task completes."""
        seen = self.announced()
        tf = self.successResultOf(self.complete(GOOD, (PIECE * 4 + 10, PIECE * 4 + 20)))
        self.assertEqual(tf.length, len(DATA))
        self.assertEqual(self.ranges(), [f"bytes={PIECE * 4}-{PIECE * 5 - 1}",
                                         f"bytes=0-{PIECE * 4 - 1}",
                                         f"bytes={PIECE * 5}-{len(DATA) - 1}"])
        self.assertEqual(seen, [4, 0, 1, 2, 3, 5])
        self.assertEqual(self.origin_bytes(), len(DATA))
        self.assertEqual(self.fetches(), 1)
        self.assertEqual(self.cdn.status(GOOD)["state"], "done")
        self.assertEqual(self.cdn._jobs[GOOD].content.read_back, PIECE)
        with open(tf.path, "rb") as f:
            self.assertEqual(f.read(), DATA)

    def test_footer_range(self):
        """The last bytes (an eStargz footer, resolved by the caller) need only
        the short last piece first."""
        self.successResultOf(self.cdn.ensure(GOOD, URL, want=(len(DATA) - 51, len(DATA) - 1)))
        self.assertEqual(self.ranges()[0], f"bytes={PIECE * 5}-{PIECE * 6 - 1}")
        self.assertEqual(self.origin_bytes(), len(DATA))
        self.assertEqual(self.cdn.status(GOOD)["state"], "done")

    def test_hurried_meanwhile(self):
        """A range wanted while the rest is being fetched (a streaming peer's
        cursor) goes before the next span; still every byte once."""
        self.patch(cdn_module, "SPAN_BYTES", PIECE * 2)
        self.origin.hold.add("/f")
        d = self.complete(GOOD, (0, 10))
        self.stub.flush()
        self.origin.release()
        self.stub.flush()           # piece 0 landed; pieces 1-2 asked for
        self.cdn.hurry(GOOD, 5)
        for _ in range(10):
            self.origin.release()
            self.stub.flush()
        self.successResultOf(d)
        self.assertEqual(self.ranges(), [f"bytes=0-{PIECE - 1}",
                                         f"bytes={PIECE}-{PIECE * 3 - 1}",
                                         f"bytes={PIECE * 5}-{len(DATA) - 1}",
                                         f"bytes={PIECE * 3}-{PIECE * 5 - 1}"])
        self.assertEqual(self.origin_bytes(), len(DATA))

    def test_origin_without_range(self):
        """An origin that ignores Range sends the whole file once, from 0."""
        self.origin.no_range.add("/f")
        self.successResultOf(self.complete(GOOD, (PIECE * 4, PIECE * 4)))
        self.assertEqual(len(self.origin.gets("/f")), 1)
        self.assertEqual(self.origin_bytes(), len(DATA))

    def test_want_past_the_end(self):
        """A wanted range past the file's end (416) falls back to the plain fetch."""
        self.successResultOf(self.complete(GOOD, (10 ** 9, 10 ** 9 + 5)))
        self.assertEqual(self.ranges(), [f"bytes={10 ** 9 // PIECE * PIECE}-"
                                         f"{(10 ** 9 // PIECE + 1) * PIECE - 1}", None])
        self.assertEqual(self.cdn.status(GOOD)["state"], "done")

    def test_mismatch_dropped(self):
        """A blob fetched in ranges that does not match its digest is dropped
        (store, scheduler), though its pieces were served as they landed."""
        wrong = "sha256:" + "1" * 64
        seen = self.announced()
        self.cdn.ensure(wrong, URL, want=(PIECE * 2, PIECE * 2))
        self.assertIsInstance(self.cdn.failure(wrong), ContentMismatch)
        self.assertEqual(sorted(seen), list(range(6)))
        self.assertIsNone(self.store.get(wrong))
        self.assertFalse(self.scheduler.has_task(wrong))

    def test_plain_task_unchanged(self):
        """Without a wanted range the fetch is one plain GET, as before."""
        self.successResultOf(self.cdn.ensure_complete(GOOD, URL))
        self.assertEqual(self.ranges(), [None])

    def test_file_changed_between_ranges(self):
        """When the origin's file changes after the first range (If-Range no
        longer matches: a 200 with another ETag), the job fails with
        ContentChanged and nothing of the task is kept: two versions are never
        mixed."""
        from dragonfly.supernode.cdn import ContentChanged
        self.origin.hold.add("/f")
        d = self.complete(GOOD, (PIECE * 4, PIECE * 4))
        self.stub.flush()
        self.origin.release()
        self.origin.add("/f", DATA[::-1], etag='"v2"')
        for _ in range(5):
            self.stub.flush()
            self.origin.release()
        self.failureResultOf(d, ContentChanged)
        self.assertEqual(self.ranges()[1], f"bytes=0-{PIECE * 4 - 1}")
        self.assertIsNone(self.store.get(GOOD))
        self.assertFalse(self.scheduler.has_task(GOOD))

    def test_earlier_job_without_validators_not_fetched_in_ranges(self):
        """When pieces left by an earlier, failed job have no validators, a
        job wanting a range asks for the whole file instead of ranges (which
        could be the rest of another version): a changed file fails with
        ContentChanged and keeps nothing; the next job seeds it whole."""
        import os

        from dragonfly.origin import OriginError
        from dragonfly.supernode.cdn import ContentChanged
        from dragonfly.test.test_cdn import TASK
        self.origin.etags.clear()
        self.origin.last_modified.clear()
        self.origin.breaks["/f"] = [2 * PIECE + 10]
        self.start(max_retries=0, max_body_retries=0)
        self.failureResultOf(self.cdn.ensure_complete(TASK, URL), OriginError)
        self.assertEqual(self.store.get(TASK).completed(), [0, 1])
        v2 = os.urandom(len(DATA))
        self.origin.add("/f", v2)
        self.store.flush()
        self.start()
        before = len(self.origin.gets("/f"))
        self.cdn.ensure(TASK, URL, want=(PIECE * 4, PIECE * 4)).addErrback(lambda f: None)
        self.assertIsInstance(self.cdn.failure(TASK), ContentChanged)
        self.assertEqual(self.ranges()[before:], [None])
        self.assertIsNone(self.store.get(TASK))
        self.successResultOf(self.complete(TASK, (PIECE * 4, PIECE * 4)))
        self.assertSeeded(v2)

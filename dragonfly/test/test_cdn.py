"""Tests for dragonfly.supernode.cdn: one origin fetch per task, cut into pieces."""
import os

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.digest import piece_digest
from dragonfly.interfaces import PeerInfo
from dragonfly.metrics import SupernodeMetrics, sample
from dragonfly.origin import OriginClient, OriginError
from dragonfly.storage.store import PieceStore
from dragonfly.supernode.cdn import CDN, CacheFull, NotReady, TooLarge, TooManyTasks
from dragonfly.supernode.scheduler import Scheduler
from dragonfly.test.fakeorigin import FakeOrigin
from dragonfly.runtime.threads import SyncRunner

PIECE = 4096
DATA = os.urandom(PIECE * 5 + 1000)   # 6 pieces, the last one short
URL = "http://origin.test/f"
TASK = "t" * 64
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)


def digests(data, size=PIECE):
    return [piece_digest(data[i:i + size]) for i in range(0, len(data), size)]


class DeferredRunner:
    """A runner whose calls wait until the test runs them (one at a time)."""

    def __init__(self):
        self.calls = []
        self.max_pending = 0

    def run(self, f, *a, **kw):
        d = Deferred()
        self.calls.append((d, f, a, kw))
        self.max_pending = max(self.max_pending, len(self.calls))
        return d

    def run_all(self):
        while self.calls:
            d, f, a, kw = self.calls.pop(0)
            d.callback(f(*a, **kw))


class CDNTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.root = self.mktemp()
        self.origin = FakeOrigin()
        self.origin.add("/f", DATA, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        self.stub = StubTreq(self.origin)
        self.start()

    def start(self, runner=None, **kw):
        """(Re)start a supernode's CDN over the same data directory."""
        self.runner = runner or SyncRunner()
        self.store = PieceStore(self.root, clock=self.clock, runner=self.runner)
        self.store.load()
        self.scheduler = Scheduler(self.clock)
        self.metrics = SupernodeMetrics()
        self.cdn = CDN(self.clock, self.store, OriginClient(self.clock, self.stub), self.scheduler,
                       PIECE, self.metrics, self.runner, seed=SEED,
                       spool_dir=os.path.join(self.root + "-spool"), **kw)

    def assertSeeded(self, data=DATA):
        tf = self.store.get(TASK)
        self.assertTrue(tf.is_complete)
        self.assertEqual([tf.digest(i) for i in range(tf.piece_count)], digests(data))
        with open(tf.path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.scheduler.task_stats(TASK)["seeded"], tf.piece_count)

    def fetches(self):
        return sample(self.metrics, "dragonfly_supernode_origin_fetches_total")

    def origin_bytes(self):
        return sample(self.metrics, "dragonfly_supernode_origin_bytes_total")


class CDNTests(CDNTestMixin, SynchronousTestCase):
    def test_single_fetch_for_concurrent_callers(self):
        """When several callers ensure() the same task at once, the origin is
        asked once and every caller gets the same TaskFile."""
        self.origin.hold.add("/f")
        ds = [self.cdn.ensure(TASK, URL, {}) for _ in range(3)]
        for d in ds:
            self.assertNoResult(d)
        self.assertEqual(len(self.origin.gets("/f")), 1)
        self.origin.release()
        self.stub.flush()
        tfs = [self.successResultOf(d) for d in ds]
        self.assertTrue(all(tf is tfs[0] for tf in tfs))
        self.assertEqual((tfs[0].length, tfs[0].piece_count), (len(DATA), 6))
        self.assertSeeded()
        self.assertEqual(self.fetches(), 1)
        self.assertEqual(self.origin_bytes(), len(DATA))
        # Later callers reuse it without asking the origin again.
        self.assertIs(self.successResultOf(self.cdn.ensure(TASK, URL, {})), tfs[0])
        self.assertEqual(len(self.origin.gets("/f")), 1)

    def test_passes_headers(self):
        """The caller's headers (Authorization) reach the origin."""
        self.successResultOf(self.cdn.ensure(TASK, URL, {"Authorization": "Bearer x"}))
        self.assertEqual(self.origin.gets("/f")[0][2]["authorization"], "Bearer x")

    def test_two_pieces_in_flight(self):
        """At most two piece writes are pending at once and the origin waits
        for one to finish before more is cut: memory stays at about three
        pieces whatever the file size."""
        self.start(runner=DeferredRunner())
        d = self.cdn.ensure(TASK, URL, {})
        tf = self.successResultOf(d)
        done = self.cdn.ensure_complete(TASK, URL, {})
        while self.runner.calls:
            self.assertLessEqual(len(self.runner.calls), 2)
            d, f, a, kw = self.runner.calls.pop(0)
            d.callback(f(*a, **kw))
        self.assertIs(self.successResultOf(done), tf)
        self.assertEqual(self.runner.max_pending, 2)
        self.assertSeeded()

    def test_pieces_published_as_they_arrive(self):
        """When the body breaks after some pieces, those are already
        assignable and ensure() has fired; the rest is fetched with a Range
        request from the first missing piece after a backoff."""
        self.origin.breaks["/f"] = [2 * PIECE + 100]
        tf = self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertEqual(tf.completed(), [0, 1])
        self.assertEqual(self.scheduler.task_stats(TASK)["seeded"], 2)
        done = self.cdn.ensure_complete(TASK, URL, {})
        self.assertNoResult(done)
        self.clock.advance(self.cdn.retry_delay)
        self.successResultOf(done)
        gets = self.origin.gets("/f")
        self.assertEqual(len(gets), 2)
        self.assertEqual(gets[1][2]["range"], f"bytes={2 * PIECE}-")
        self.assertEqual(gets[1][2]["if-range"], '"v1"')
        self.assertSeeded()
        self.assertEqual(self.fetches(), 1)
        self.assertEqual(self.origin_bytes(), 2 * PIECE + 100 + len(DATA) - 2 * PIECE)

    def test_restart_from_zero_when_range_ignored(self):
        """When the origin answers a resume with 200, the body is read from
        byte 0 and the pieces already held are verified, not rewritten."""
        self.origin.breaks["/f"] = [PIECE * 3]
        self.origin.no_range.add("/f")
        self.cdn.ensure(TASK, URL, {})
        done = self.cdn.ensure_complete(TASK, URL, {})
        self.clock.advance(self.cdn.retry_delay)
        self.successResultOf(done)
        self.assertSeeded()

    def test_origin_error(self):
        """When the origin answers 404, ensure() fails with OriginError(404)
        and no task is published; a later ensure() tries again."""
        self.origin.status["/f"] = 404
        f = self.failureResultOf(self.cdn.ensure(TASK, URL, {}), OriginError)
        self.assertEqual(f.value.status, 404)
        self.assertEqual(self.cdn.status(TASK)["state"], "failed")
        self.assertEqual(self.cdn.status(TASK)["origin_status"], 404)
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        del self.origin.status["/f"]
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertSeeded()

    def test_bounded_retries(self):
        """When the origin keeps failing with 5xx, the CDN retries a bounded
        number of times with backoff, then fails."""
        self.origin.status["/f"] = 503
        self.start(max_retries=3)
        d = self.cdn.ensure(TASK, URL, {})
        for _ in range(10):
            self.clock.advance(60)
        f = self.failureResultOf(d, OriginError)
        self.assertEqual(f.value.status, 503)
        self.assertEqual(len(self.origin.gets("/f")), 4)

    def test_no_content_length(self):
        """When the origin sends no Content-Length, the file is downloaded
        whole (spooled), then published."""
        self.origin.chunked.add("/f")
        tf = self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertTrue(tf.is_complete)
        self.assertSeeded()
        self.assertEqual(os.listdir(self.root + "-spool"), [])

    def test_not_ready_without_seed(self):
        """Until the piece port is bound (no seed), ensure() fails with NotReady."""
        self.cdn.seed = None
        self.failureResultOf(self.cdn.ensure(TASK, URL, {}), NotReady)
        self.assertEqual(self.origin.requests, [])

    def test_empty_file(self):
        """A zero-length file is a task with no pieces."""
        self.origin.add("/empty", b"")
        tf = self.successResultOf(self.cdn.ensure(TASK, "http://origin.test/empty", {}))
        self.assertEqual((tf.length, tf.piece_count), (0, 0))


class CDNLimitTests(CDNTestMixin, SynchronousTestCase):
    def test_too_large_refused_before_reserving(self):
        """When the origin announces more than max_file_size, ensure() fails
        with TooLarge and nothing is created or told to the scheduler."""
        self.start(max_file_size=len(DATA) - 1)
        f = self.failureResultOf(self.cdn.ensure(TASK, URL, {}), TooLarge)
        self.assertIn("--max-file-size", str(f.value))
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))

    def test_too_large_without_length(self):
        """When a body without Content-Length grows past max_file_size, the job fails with TooLarge."""
        self.origin.chunked.add("/f")
        self.start(max_file_size=len(DATA) - 1)
        self.failureResultOf(self.cdn.ensure(TASK, URL, {}), TooLarge)
        self.assertIsNone(self.store.get(TASK))

    def test_over_quota_refused_without_evicting(self):
        """When the announced length cannot fit the quota, ensure() fails with
        CacheFull, nothing is evicted, and a file that fits still succeeds."""
        self.origin.add("/small", DATA[:PIECE])
        self.successResultOf(self.cdn.ensure("s" * 64, "http://origin.test/small", {}))
        self.store.quota = PIECE * 2
        self.failureResultOf(self.cdn.ensure(TASK, URL, {}), CacheFull)
        self.assertIsNotNone(self.store.get("s" * 64))
        self.assertIsNone(self.store.get(TASK))
        self.origin.add("/honest", DATA[:PIECE])
        tf = self.successResultOf(self.cdn.ensure("h" * 64, "http://origin.test/honest", {}))
        self.assertTrue(tf.is_complete)
        self.assertEqual(self.store.usage(), PIECE * 2)

    def test_too_large_for_disk_refused_at_once(self):
        """When the announced length could not fit on the store's disk even
        with every task evicted, ensure() fails with CacheFull before any of
        the body is stored, and nothing is evicted; with room it succeeds."""
        self.origin.add("/small", DATA[:PIECE])
        self.successResultOf(self.cdn.ensure("s" * 64, "http://origin.test/small", {}))
        free = [len(DATA) - PIECE + self.store.min_free - 1]

        def statvfs(path):
            return os.statvfs_result((1, 1, 1 << 30, free[0], free[0], 0, 0, 0, 0, 255))
        self.store.space.statvfs = statvfs
        self.store.space.refresh()
        f = self.failureResultOf(self.cdn.ensure(TASK, URL, {}), CacheFull)
        self.assertIn("disk", str(f.value))
        self.assertIsNone(self.store.get(TASK))
        self.assertIsNotNone(self.store.get("s" * 64))
        self.assertEqual((self.store.evictions, self.origin_bytes()), (0, PIECE))
        free[0] += 1
        self.store.space.refresh()
        self.clock.advance(60)   # past the failed job's memory
        self.assertTrue(self.successResultOf(self.cdn.ensure_complete(TASK, URL, {})).is_complete)


    def test_too_many_tasks_held(self):
        """When the store holds max_tasks tasks, a new task is refused with
        TooManyTasks while a held one is still served."""
        self.origin.add("/g", DATA)
        self.start(max_tasks=1)
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.failureResultOf(self.cdn.ensure("g" * 64, "http://origin.test/g", {}), TooManyTasks)
        self.assertIs(self.successResultOf(self.cdn.ensure(TASK, URL, {})), self.store.get(TASK))


class CDNRestartTests(CDNTestMixin, SynchronousTestCase):
    def test_revalidate_304(self):
        """When a restarted supernode holds a complete task, it revalidates it
        with If-None-Match; a 304 reuses the cache without downloading."""
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.start()
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        gets = self.origin.gets("/f")
        self.assertEqual(len(gets), 2)
        self.assertEqual(gets[1][2]["if-none-match"], '"v1"')
        self.assertEqual(self.fetches(), 0)
        self.assertEqual(self.origin_bytes(), 0)
        self.assertSeeded()
        # Revalidated once per process.
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertEqual(len(self.origin.gets("/f")), 2)

    def test_revalidate_changed(self):
        """When the origin's file changed, the restarted supernode refetches it."""
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        new = os.urandom(PIECE * 2)
        self.origin.add("/f", new, etag='"v2"')
        self.start()
        tf = self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertEqual(tf.length, len(new))
        self.assertEqual(tf.etag, '"v2"')
        self.assertEqual(len(self.origin.gets("/f")), 2)
        self.assertSeeded(new)

    def test_resume_partial_cache(self):
        """When a restarted supernode holds part of a task, it resumes with a
        Range request from the first missing piece."""
        self.origin.breaks["/f"] = [3 * PIECE + 10]
        self.start(max_retries=0)
        self.failureResultOf(self.cdn.ensure_complete(TASK, URL, {}), OriginError)
        self.store.flush()
        self.start()
        self.assertEqual(self.store.get(TASK).completed(), [0, 1, 2])
        self.successResultOf(self.cdn.ensure_complete(TASK, URL, {}))
        self.assertEqual(self.origin.gets("/f")[-1][2]["range"], f"bytes={3 * PIECE}-")
        self.assertSeeded()

    def test_content_changed_mid_download(self):
        """When the origin's file changes between a break and the resume,
        the mixed task is dropped (never served as one file) and the next
        ensure() fetches the new version."""
        self.origin.breaks["/f"] = [2 * PIECE]
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        done = self.cdn.ensure_complete(TASK, URL, {})
        new = os.urandom(len(DATA))
        self.origin.add("/f", new, etag='"v2"')
        self.clock.advance(self.cdn.retry_delay)
        self.failureResultOf(done, OriginError)
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        self.successResultOf(self.cdn.ensure_complete(TASK, URL, {}))
        self.assertSeeded(new)


    def test_held_piece_differs_on_reread(self):
        """When a resume is answered with 200 (Range ignored) under the same
        validators but a piece already held now hashes differently, the job
        fails with ContentChanged: the task is dropped and unpublished, never
        served as a mix of two versions."""
        from dragonfly.supernode.cdn import ContentChanged
        self.origin.breaks["/f"] = [2 * PIECE + 10]
        self.origin.no_range.add("/f")
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        done = self.cdn.ensure_complete(TASK, URL, {})
        self.assertEqual(self.store.get(TASK).completed(), [0, 1])
        changed = bytes([DATA[0] ^ 0xFF]) + DATA[1:]   # piece 0 differs; same length, same ETag
        self.origin.add("/f", changed, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        self.clock.advance(self.cdn.retry_delay)
        f = self.failureResultOf(done, ContentChanged)
        self.assertIn("piece 0", str(f.value))
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))

    def test_earlier_job_without_validators_not_resumed_by_range(self):
        """When pieces left by an earlier, failed job have no validators, the
        next job asks for the whole file, not the rest by Range (a 206 could
        be the rest of another version): the held pieces are re-hashed against
        it, a changed file fails with ContentChanged and keeps nothing, and
        the next ensure() seeds the new version, all of it."""
        from dragonfly.supernode.cdn import ContentChanged
        self.origin.etags.clear()
        self.origin.last_modified.clear()
        self.origin.breaks["/f"] = [2 * PIECE + 10]
        self.start(max_retries=0, max_body_retries=0)
        self.failureResultOf(self.cdn.ensure_complete(TASK, URL, {}), OriginError)
        self.assertEqual(self.store.get(TASK).completed(), [0, 1])
        v2 = os.urandom(len(DATA))
        self.origin.add("/f", v2)
        self.store.flush()
        self.start()
        self.assertEqual(self.store.get(TASK).completed(), [0, 1])
        self.failureResultOf(self.cdn.ensure_complete(TASK, URL, {}), ContentChanged)
        self.assertNotIn("range", self.origin.gets("/f")[-1][2])
        self.assertIsNone(self.store.get(TASK))
        self.successResultOf(self.cdn.ensure_complete(TASK, URL, {}))
        self.assertSeeded(v2)

    def test_whole_body_without_validators_never_mixed(self):
        """When an origin without validators (no ETag, no Last-Modified) breaks
        off version 1 and answers the resume with 200 and version 2 (Range
        ignored), the held pieces are re-hashed against the new body: the job
        fails with ContentChanged, nothing of the task is kept or published,
        and the next ensure() seeds version 2, all of it."""
        from dragonfly.supernode.cdn import ContentChanged
        self.origin.etags.clear()
        self.origin.last_modified.clear()
        self.origin.breaks["/f"] = [2 * PIECE + 10]
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        done = self.cdn.ensure_complete(TASK, URL, {})
        self.assertEqual(self.store.get(TASK).completed(), [0, 1])
        self.assertIsNone(self.store.get(TASK).etag)
        v2 = os.urandom(len(DATA))
        self.origin.add("/f", v2)
        self.origin.no_range.add("/f")
        self.clock.advance(self.cdn.retry_delay)
        self.failureResultOf(done, ContentChanged)
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        self.successResultOf(self.cdn.ensure_complete(TASK, URL, {}))
        self.assertSeeded(v2)


class CDNForgetTests(CDNTestMixin, SynchronousTestCase):
    def test_forget_missing(self):
        """When the store drops a published task (GC), forget_missing()
        removes its swarm and the next ensure() fetches it again."""
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.store.remove(TASK)
        self.assertEqual(self.cdn.forget_missing(), [TASK])
        self.assertFalse(self.scheduler.has_task(TASK))
        self.successResultOf(self.cdn.ensure(TASK, URL, {}))
        self.assertEqual(len(self.origin.gets("/f")), 2)
        self.assertSeeded()

    def test_failures_expire(self):
        """A failed job is reported for failure_ttl seconds, then forgotten."""
        self.origin.status["/f"] = 404
        self.failureResultOf(self.cdn.ensure(TASK, URL, {}), OriginError)
        self.cdn.forget_missing()
        self.assertEqual(self.cdn.status(TASK)["state"], "failed")
        self.clock.advance(self.cdn.failure_ttl)
        self.cdn.forget_missing()
        self.assertIsNone(self.cdn.status(TASK))


class ContentDigestTests(CDNTestMixin, SynchronousTestCase):
    """Tasks named by a content digest, and re-verification on corrupt reports."""

    GOOD = "sha256:" + __import__("hashlib").sha256(DATA).hexdigest()

    def test_digest_matched_publishes_everything(self):
        """A task named by its content digest is complete once the whole file
        matched: every piece, the last one included, is announced."""
        tf = self.successResultOf(self.cdn.ensure_complete(self.GOOD, URL))
        self.assertTrue(tf.is_complete)
        self.assertEqual(self.scheduler.task_stats(self.GOOD)["seeded"], tf.piece_count)
        self.assertEqual(self.cdn.status(self.GOOD)["state"], "done")

    def test_digest_mismatch_keeps_nothing(self):
        """Content that does not match the digest its task is named by fails the
        task with a clear error; the store and the scheduler keep nothing, and
        the last piece was never offered to peers."""
        from dragonfly.supernode.cdn import ContentMismatch
        wrong = "sha256:" + "0" * 64
        announced = []
        real = self.scheduler.seed_has
        self.patch(self.scheduler, "seed_has", lambda t, i, d: (announced.append(i), real(t, i, d)))
        f = self.failureResultOf(self.cdn.ensure_complete(wrong, URL), ContentMismatch)
        self.assertIn(f"content digest mismatch: expected {wrong}, got {self.GOOD}", str(f.value))
        self.assertEqual(sorted(announced), [0, 1, 2, 3, 4, 5])
        self.assertIsNone(self.store.get(wrong))
        self.assertFalse(self.scheduler.has_task(wrong))
        self.assertIsInstance(self.cdn.failure(wrong), ContentMismatch)

    def test_digest_hashed_in_runner(self):
        """The whole-file digest is computed by the runner, not on the reactor,
        as the body arrives: the file is not read again after it landed."""
        from dragonfly.ingest import contenthash
        from dragonfly.storage.verify import content_digest
        runner = DeferredRunner()
        self.start(runner)
        d = self.cdn.ensure_complete(self.GOOD, URL)
        seen = []
        for _ in range(100):
            if not runner.calls:
                break
            d_, f, a, kw = runner.calls.pop(0)
            seen.append(f)
            d_.callback(f(*a, **kw))
        self.successResultOf(d)
        self.assertEqual(seen.count(contenthash._update), 6)
        self.assertNotIn(content_digest, seen)
        self.assertNotIn(contenthash._update_from_file, seen)
        self.assertEqual(self.cdn.status(self.GOOD)["state"], "done")

    def test_recheck_intact(self):
        """A corrupt report about an intact copy keeps it."""
        self.successResultOf(self.cdn.ensure_complete(TASK, URL))
        self.assertFalse(self.successResultOf(self.cdn.rechecker.recheck(TASK, "test")))
        self.assertTrue(self.store.get(TASK).is_complete)

    def test_recheck_corrupt_refetches(self):
        """A corrupt report about a copy whose bytes were edited (mtime kept)
        drops it from the store and the scheduler; the next ensure fetches it
        again from the origin and serves the right bytes."""
        tf = self.successResultOf(self.cdn.ensure_complete(TASK, URL))
        st = os.stat(tf.path)
        with open(tf.path, "r+b") as f:
            f.seek(PIECE + 7)
            f.write(b"\xff" * 3)
        os.utime(tf.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertTrue(self.successResultOf(self.cdn.rechecker.recheck(TASK, "piece 1 failed")))
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        n = len(self.origin.gets("/f"))
        self.successResultOf(self.cdn.ensure_complete(TASK, URL))
        self.assertEqual(len(self.origin.gets("/f")), n + 1)
        self.assertSeeded()

    def test_recheck_rate_limited(self):
        """One task is re-verified at most once a minute, whatever the reports."""
        self.successResultOf(self.cdn.ensure_complete(TASK, URL))
        self.assertFalse(self.successResultOf(self.cdn.rechecker.recheck(TASK)))
        calls = []
        self.patch(self.runner, "run", lambda f, *a: calls.append(f))
        self.assertFalse(self.successResultOf(self.cdn.rechecker.recheck(TASK)))
        self.assertEqual(calls, [])
        self.assertFalse(self.successResultOf(self.cdn.rechecker.recheck("u" * 64)))

    def test_one_recheck_at_a_time(self):
        """While one task is re-verified, reports about others are dropped:
        hashing stays one runner thread whoever reports."""
        runner = DeferredRunner()
        self.start(runner)
        d = self.cdn.ensure_complete(TASK, URL)
        while runner.calls:
            runner.run_all()
        self.successResultOf(d)
        self.origin.add("/g", DATA)
        d = self.cdn.ensure_complete("u" * 64, "http://origin.test/g")
        while runner.calls:
            runner.run_all()
        self.successResultOf(d)
        first = self.cdn.rechecker.recheck(TASK)
        self.assertNoResult(first)
        self.assertFalse(self.successResultOf(self.cdn.rechecker.recheck("u" * 64)))
        runner.run_all()
        self.assertFalse(self.successResultOf(first))
        self.assertNoResult(self.cdn.rechecker.recheck("u" * 64))

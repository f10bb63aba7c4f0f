"""PeerNode against a fake supernode (Klein over StubTreq) and an in-memory piece pool."""

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.digest import piece_digest
from dragonfly.interfaces import PeerInfo
from dragonfly.metrics import PeerMetrics, sample
from dragonfly.origin import OriginError
from dragonfly.peer.node import DownloadError, PeerNode, StreamStopped
from dragonfly.storage.store import PieceStore
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peerfakes import (
    PEER_A, PEER_B, SEED, FakeOrigin, FakePiecePool, FakeSupernode)
from dragonfly.runtime.threads import SyncRunner

URL = "http://origin.test/files/blob.bin"
DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes
PIECE = 64
ME = PeerInfo("me-1-00000000", "127.0.0.1", 65000)

SN1 = ("sn1.test", 8002)
SN2 = ("sn2.test", 8002)


class _Hosts:
    """An HTTP client sending each request to the fake supernode named by its host;
    connections to any other host are refused."""

    def __init__(self, by_host):
        self.by_host = by_host
        self._stubs = {}

    def post(self, url, **kw):
        from urllib.parse import urlsplit

        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError as CRE

        fake = self.by_host.get(urlsplit(url).netloc)
        if fake is None:
            return fail(CRE(url))
        if fake not in self._stubs:
            self._stubs[fake] = StubTreq(fake.resource())
        return self._stubs[fake].post(url, **kw)

    def flush(self):
        for stub in self._stubs.values():
            stub.flush()


class _RefusingClient:
    """An HTTP client whose every connection is refused."""

    def __init__(self):
        self.calls = 0

    def post(self, *a, **kw):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError as CRE

        self.calls += 1
        return fail(CRE("refused"))


class NodeMixin:
    def make(self, data=DATA, sources=(SEED,), supernodes=(SN1,), origin=None, client=None,
             **kw):
        self.clock = Clock()
        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(data, PIECE, sources)
        self.pool = FakePiecePool(data, PIECE)
        self.metrics = PeerMetrics()
        if client is None:
            self.hosts = _Hosts({f"{h}:{p}": self.supernode for h, p in supernodes[:1]})
            client = self.hosts
        self.origin = origin if origin is not None else FakeOrigin(data)
        self.node = PeerNode(self.clock, self.store, list(supernodes), client, self.pool, ME,
                             self.metrics, SyncRunner(), concurrency=3, origin=self.origin, **kw)
        return self.node

    def read_all(self, tf):
        with open(tf.path, "rb") as f:
            return f.read()


class DownloadTests(NodeMixin, SynchronousTestCase):

    def test_download_from_seed(self):
        """When the supernode assigns every piece from its seed, the node fetches, verifies
        and writes them all, counts them as supernode bytes and reports them as held."""
        node = self.make()
        progress = []
        tf = self.successResultOf(node.download(URL, on_progress=lambda c, n: progress.append(c)))
        self.assertTrue(tf.is_complete)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(tf.task_id, task_id_for_url(URL))
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "supernode"}), len(DATA))
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "peer"}), 0)
        self.assertEqual(self.supernode.have, set(range(tf.piece_count)))
        self.assertEqual(progress[-1], len(DATA))
        reg = self.supernode.registrations[0]
        self.assertEqual(reg["peer"], ME.to_json())
        self.assertEqual(reg["url"], URL)
        self.assertFalse(tf.pinned)
        self.assertEqual(self.origin.calls, [])

    def test_want_bounded_by_slots(self):
        """When fetches are slow, the node never asks for more than its free slots plus
        a small queue, and fetches at most `concurrency` pieces at once."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.manual = True
        d = node.download(URL)
        self.assertNoResult(d)
        self.assertEqual(len(self.pool.held), 3)
        first = self.supernode.schedules[0]
        self.assertEqual(first["want"], 3 + node.queue_depth)
        while self.pool.held:
            self.pool.release(1)
            self.assertLessEqual(len(self.pool.held), 3)
            for s in self.supernode.schedules:
                self.assertLessEqual(s["want"], 3 + node.queue_depth)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "peer"}), len(DATA))

    def test_buffered_bytes_capped(self):
        """When max_buffered holds fewer pieces than --concurrency, no more
        fetches than fit in it are in flight at once: memory is bounded by
        max_buffered whatever the concurrency."""
        node = self.make(sources=(PEER_A, PEER_B), max_buffered=2 * PIECE + PIECE // 2)
        self.pool.manual = True
        d = node.download(URL)
        self.assertEqual(len(self.pool.held), 2)
        while self.pool.held:
            self.pool.release(1)
            self.assertLessEqual(len(self.pool.held), 2)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)

    def test_bad_digest_never_written(self):
        """When a source answers bytes with the wrong digest, the piece is not written, the
        source is reported failed for it, and the piece is fetched from another source."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.corrupt.add(PEER_A.peer_id)
        writes = []          # (index, bytes match the digest) of the writes that happened
        unverified_bad = []  # bad bytes handed to the store without verify=True
        orig_create = self.store.create

        def create(*a, **kw):
            tf = orig_create(*a, **kw)
            real = tf.write_piece

            def write_piece(index, data, digest, verify=False):
                body = b"".join(data) if isinstance(data, list) else bytes(data)
                ok = piece_digest(body) == digest
                if not ok and not verify:
                    unverified_bad.append(index)
                d = real(index, data, digest, verify=verify)
                d.addCallback(lambda r: writes.append((index, ok)) or r)
                return d
            tf.write_piece = write_piece
            return tf
        self.store.create = create
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertTrue(writes)
        self.assertTrue(all(ok for _, ok in writes))
        self.assertEqual(unverified_bad, [])
        failed = [f for s in self.supernode.schedules for f in s["failed"]]
        self.assertTrue(failed)
        self.assertTrue(all(f["source"] == PEER_A.peer_id for f in failed))
        refetched = {i for (src, _, i) in self.pool.fetches if src == PEER_B.peer_id}
        self.assertTrue({f["index"] for f in failed} <= refetched)
        self.assertGreater(sample(self.metrics, "dragonfly_peer_piece_failures_total",
                                  {"reason": "digest"}), 0)

    def test_only_bad_sources_falls_back_to_origin(self):
        """When every source of the pieces fails and the supernode has no other, the node
        gives up on the swarm after its stall timeout and fetches the file from its
        origin instead."""
        node = self.make(sources=(PEER_A,), stall_timeout=60)
        self.pool.broken.add(PEER_A.peer_id)
        d = node.download(URL)
        self.clock.advance(59)
        self.assertNoResult(d)
        for _ in range(10):
            self.clock.advance(1)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.origin.calls), 1)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_complete_task_returns_at_once(self):
        """When the store already holds the whole task, download() returns it without
        asking the supernode."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        n = len(self.supernode.registrations)
        self.clock.advance(100)
        tf2 = self.successResultOf(node.download(URL))
        self.assertIs(tf, tf2)
        self.assertEqual(len(self.supernode.registrations), n)
        self.assertEqual(tf2.last_access, 100)

    def test_concurrent_downloads_share(self):
        """When two callers download the same task at once, one download serves both."""
        node = self.make()
        self.pool.manual = True
        d1 = node.download(URL)
        d2 = node.download(URL)
        self.assertEqual(len(self.supernode.registrations), 1)
        while self.pool.held:
            self.pool.release()
        tf1, tf2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIs(tf1, tf2)
        self.assertEqual(len(self.supernode.registrations), 1)
        self.assertEqual(len(self.pool.fetches), tf1.piece_count)

    def test_pinned_while_downloading(self):
        """While a download runs its task is pinned (GC keeps it); afterwards it is not."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        tf = self.store.get(task_id_for_url(URL))
        self.assertTrue(tf.pinned)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)
        self.assertFalse(tf.pinned)

    def test_one_caller_cancels(self):
        """When one of two callers cancels, the other still gets the file; when the last
        caller cancels, the download stops and leaves the swarm."""
        node = self.make()
        self.pool.manual = True
        d1 = node.download(URL)
        d2 = node.download(URL)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(node.active(), [task_id_for_url(URL)])
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(node.active(), [])
        self.assertEqual(len(self.supernode.leaves), 1)
        self.assertTrue(all(d.called for d, _ in self.pool.held))

    def test_task_id_and_headers_passed(self):
        """An explicit task id and the origin headers go to the supernode as given."""
        node = self.make()
        tid = "sha256:" + "ab" * 32
        tf = self.successResultOf(node.download(URL, headers={"Authorization": "x"}, task_id=tid))
        self.assertEqual(tf.task_id, tid)
        self.assertEqual(self.supernode.registrations[0]["task_id"], tid)
        self.assertEqual(self.supernode.registrations[0]["headers"], {"Authorization": "x"})

    def test_bad_arguments(self):
        """Bad URLs, task ids and patterns fail at once with a DownloadError."""
        node = self.make()
        for kw in ({"url": "ftp://x/y"}, {"url": URL, "task_id": "../etc"},
                   {"url": URL, "pattern": "magic"}):
            f = self.failureResultOf(node.download(**kw), DownloadError)
            self.assertTrue(str(f.value))
        self.assertEqual(self.supernode.registrations, [])

    def test_empty_file(self):
        """A zero-length file completes with no pieces to fetch."""
        node = self.make(data=b"")
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(tf.length, 0)
        self.assertTrue(tf.is_complete)


class HeartbeatTests(NodeMixin, SynchronousTestCase):

    def test_heartbeat_names_finished_tasks(self):
        """After a download, heartbeat() tells the supernode the node still
        holds the task; a task the supernode answers as unknown is forgotten
        (no more heartbeats, no leave for it)."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.assertEqual(self.supernode.heartbeats,
                         [{"peer_id": ME.peer_id, "tasks": [tf.task_id]}])
        self.supernode.forgotten.add(tf.task_id)
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.assertEqual(len(self.supernode.heartbeats), 2)
        self.successResultOf(node.leave(tf.task_id))
        self.assertEqual(self.supernode.leaves, [])


class SupernodeFailureTests(NodeMixin, SynchronousTestCase):

    def test_follows_owner_redirect(self):
        """When a supernode answers 307 {"owner"}, the node registers at the owner and
        schedules there."""
        node = self.make(supernodes=(SN1,))
        other = FakeSupernode(DATA, PIECE)
        self.supernode.register_answer = (307, {"owner": "sn2.test:8002"})
        self.hosts.by_host["sn2.test:8002"] = other
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(other.registrations), 1)
        self.assertEqual(self.supernode.schedules, [])
        self.assertTrue(other.schedules)

    def test_next_supernode_when_one_is_down(self):
        """When the first supernode is unreachable, the node registers with the next."""
        node = self.make(supernodes=(SN1, SN2))
        self.hosts.by_host = {"sn2.test:8002": self.supernode}
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(self.origin.calls, [])

    def test_other_digest_algorithm_not_used(self):
        """A supernode whose registration names another piece digest algorithm
        (or none: an older supernode, sha256) is not used: no piece is fetched,
        and the file comes from the origin."""
        for extra in ({"piece_digest": "sha256"}, {}):
            node = self.make()
            answer = {"task_id": "t", "length": len(DATA), "piece_size": PIECE,
                      "piece_count": -(-len(DATA) // PIECE), "seed": SEED.to_json(), **extra}
            self.supernode.register_answer = (200, answer)
            tf = self.successResultOf(node.download(URL))
            self.assertEqual(self.read_all(tf), DATA)
            self.assertEqual(self.supernode.schedules, [])
            self.assertEqual(self.origin.calls, [(URL, {}, 0)])

    def test_back_to_source_when_no_supernode(self):
        """When no supernode answers, the file comes straight from the origin."""
        client = _RefusingClient()
        node = self.make(client=client, supernodes=(SN1, SN2))
        tf = self.successResultOf(node.download(URL, headers={"X-A": "1"}))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(client.calls, 2)
        self.assertEqual(self.origin.calls, [(URL, {"X-A": "1"}, 0)])
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_back_to_source_bounded_writes(self):
        """When the origin body streams faster than the disk, at most two piece
        writes are pending at once and the origin waits for one to finish:
        memory stays at a few pieces whatever the file size."""
        from twisted.internet.defer import Deferred as D

        class Manual:
            def __init__(self):
                self.calls, self.max = [], 0

            def run(self, f, *a, **kw):
                d = D()
                self.calls.append((d, f, a, kw))
                self.max = max(self.max, len(self.calls))
                return d

        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA, chunk=200),
                         piece_size=PIECE)
        runner = Manual()
        self.store.runner = runner
        d = node.download(URL)
        while runner.calls:
            self.assertLessEqual(len(runner.calls), 2)
            rd, f, a, kw = runner.calls.pop(0)
            rd.callback(f(*a, **kw))
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(runner.max, 2)

    def test_pool_without_fetch_piece(self):
        """When the piece pool only offers fetch (whole bytes), pieces are still
        verified before they are written and bad ones are fetched elsewhere."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.fetch_piece = None
        self.pool.corrupt.add(PEER_A.peer_id)
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertGreater(sample(self.metrics, "dragonfly_peer_piece_failures_total",
                                  {"reason": "digest"}), 0)

    def test_no_back_source_fails(self):
        """When no supernode answers and back-to-source is off, the download fails with a
        clear error and the origin is never contacted."""
        node = self.make(client=_RefusingClient())
        f = self.failureResultOf(node.download(URL, back_source=False), DownloadError)
        self.assertIn("back-to-source is disabled", str(f.value))
        self.assertEqual(self.origin.calls, [])

    def test_supernode_5xx_back_to_source(self):
        """When registration answers 500, the node goes back to the source."""
        node = self.make()
        self.supernode.register_answer = (500, {"error": "boom"})
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.origin.calls), 1)

    def test_origin_404_is_final(self):
        """When the supernode reports the origin answered 404, the download fails with
        "origin answered 404" and the origin is not asked again."""
        node = self.make()
        self.supernode.register_answer = (502, {"error": "origin answered 404",
                                                "origin_status": 404})
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertEqual(str(f.value), "origin answered 404")
        self.assertEqual(self.origin.calls, [])

    def test_bad_request_is_final(self):
        """When the supernode refuses the task with a 400, the download fails with its
        reason and no back-to-source."""
        node = self.make()
        self.supernode.register_answer = (400, {"error": "bad url"})
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("bad url", str(f.value))
        self.assertEqual(self.origin.calls, [])

    def test_origin_error_reported(self):
        """When back-to-source meets an origin error, the download fails with it."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(error=OriginError(403)))
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertEqual(str(f.value), "origin answered 403")
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_origin_without_length(self):
        """When the origin gives no length, the body is spooled, then cut into pieces."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA, unknown_length=True))
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertTrue(tf.is_complete)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_origin_short_body(self):
        """When the origin's body ends early, the download fails and is not complete."""
        origin = FakeOrigin(DATA)
        real = origin.get

        def short(*a, **kw):
            d = real(*a, **kw)

            def cut(r):
                r._data = r._data[:-10]
                return r
            return d.addCallback(cut)
        origin.get = short
        node = self.make(client=_RefusingClient(), origin=origin)
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("short", str(f.value))
        self.assertFalse(self.store.get(task_id_for_url(URL)).is_complete)

    def test_pattern_source(self):
        """pattern="source" always fetches from the origin, never the supernode."""
        node = self.make()
        tf = self.successResultOf(node.download(URL, pattern="source"))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(self.supernode.registrations, [])

    def test_schedule_404_registers_again(self):
        """When scheduling answers 404 (the supernode forgot us), the node registers again
        and carries on."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        self.supernode.schedule_script.append((404, {"error": "unknown peer"}))
        self.pool.release(1)
        while self.pool.held:
            self.pool.release()
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)
        self.assertEqual(len(self.supernode.registrations), 2)

    def test_schedule_failures_go_to_origin(self):
        """When scheduling keeps failing with 5xx, the node retries with back-off, then
        finishes from the origin, keeping the pieces it already has."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        self.pool.release(2)
        self.supernode.schedule_answer = (503, {"error": "overloaded"})
        self.supernode.register_answer = (503, {"error": "overloaded"})
        while not d.called:
            self.pool.release()
            self.clock.advance(10)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.origin.calls), 1)
        self.assertGreater(self.origin.calls[0][2], 0)

    def test_stall_goes_to_origin(self):
        """When the supernode keeps answering no assignments, the node polls no faster
        than its minimum interval and after the stall timeout goes to the origin."""
        node = self.make(stall_timeout=30)
        self.supernode.hold = True
        d = node.download(URL)
        self.assertNoResult(d)
        for _ in range(60):
            self.clock.advance(1)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertLessEqual(len(self.supernode.schedules), 2 * 31 + 2)
        self.assertGreater(len(self.supernode.schedules), 5)


class LongPollTests(NodeMixin, SynchronousTestCase):

    def start(self, concurrency, per_source_limit=None, polls=True):
        """A download from PEER_A whose fetches wait for pool.release()."""
        node = self.make(sources=(PEER_A,))
        node.concurrency = concurrency
        node.queue_depth = 0
        self.pool.manual = True
        self.supernode.per_source_limit = per_source_limit
        self.supernode.defer_polls = polls
        return node.download(URL)

    def finish(self, d):
        """Release every fetch; the download ends without the clock moving."""
        while not d.called:
            self.pool.release()
            self.hosts.flush()
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)
        self.assertEqual(self.clock.seconds(), 0)

    def test_reports_while_long_polling(self):
        """When a piece lands while the node's long-poll is outstanding, the node reports
        it at once in a separate call (want 0, wait 0), which lets the supernode answer
        the poll: the download never waits for a poll to time out."""
        d = self.start(concurrency=2, per_source_limit=1)
        self.assertEqual(len(self.pool.held), 1)
        self.assertEqual(len(self.supernode.held_polls), 1)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        report = self.supernode.schedules[n]
        self.assertEqual((report["want"], report["wait"], report["have"]), (0, 0, [0]))
        self.hosts.flush()
        self.assertEqual(len(self.pool.held), 1)
        self.finish(d)

    def test_reports_pairs_while_busy(self):
        """With more pieces in flight, a lone landed piece waits for the next one:
        the report-only call carries two pieces (half the round trips), and the
        download still never waits for a poll to time out."""
        d = self.start(concurrency=8, per_source_limit=4)
        self.assertEqual(len(self.pool.held), 4)
        self.assertEqual(len(self.supernode.held_polls), 1)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n)   # one piece: no call yet
        self.pool.release(1)
        report = self.supernode.schedules[n]
        self.assertEqual((report["want"], report["wait"]), (0, 0))
        self.assertEqual(len(report["have"]), 2)
        self.finish(d)

    def test_gathers_without_a_poll(self):
        """Without a long-poll out (every slot taken), one landed piece also waits
        for a second before the next schedule call; the end is not delayed."""
        d = self.start(concurrency=4, polls=False)
        self.assertEqual(len(self.pool.held), 4)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n + 1)
        self.assertEqual(len(self.supernode.schedules[n]["have"]), 2)
        self.finish(d)


class _PausingConsumer:
    """A consumer whose buffer is "full" after every write: it pauses its producer."""

    def __init__(self):
        self.data = []
        self.producer = None
        self.streaming = None

    def registerProducer(self, producer, streaming):
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data.append(data)
        self.producer.pauseProducing()

    def value(self):
        return b"".join(self.data)


class StreamTests(NodeMixin, SynchronousTestCase):

    def test_stream_sends_cursor(self):
        """While a stream reads a task (started from on_start, as the dfdaemon
        mirror does), every schedule call carries the piece the stream is at as
        "cursor"; without a stream there is no cursor."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        consumer = StringTransport()
        streams = []
        started = Deferred()
        started.addCallback(lambda tf: streams.append(node.stream(tf, consumer)))
        d = node.download(URL, on_start=started)
        self.assertEqual(self.supernode.schedules[0].get("cursor"), 0)
        self.pool.release()      # piece 0 (or whichever came first)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)
        self.successResultOf(streams[0])
        cursors = [s["cursor"] for s in self.supernode.schedules if "cursor" in s]
        self.assertEqual(cursors, sorted(cursors))
        n = len(self.supernode.schedules)
        node2 = self.make()
        self.successResultOf(node2.download(URL))
        self.assertTrue(all("cursor" not in s for s in self.supernode.schedules[n:]))


    def test_stream_in_order_as_pieces_arrive(self):
        """stream() writes bytes in order, waiting for pieces still being fetched, and
        fires when the last byte is out."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        started = []
        d = node.download(URL, on_start=started.append)
        tf = started[0]
        consumer = StringTransport()
        sd = node.stream(tf, consumer, start=10)
        self.assertTrue(consumer.streaming)
        self.assertEqual(consumer.value(), b"")
        # Release pieces out of order: nothing beyond a gap is written.
        held = self.pool.held
        self.pool.held = []
        held[1][0].callback(held[1][1])
        self.assertEqual(consumer.value(), b"")
        held[0][0].callback(held[0][1])
        self.assertEqual(consumer.value(), DATA[10:2 * PIECE])
        for d_, data in held[2:]:
            d_.callback(data)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(sd)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[10:])
        self.assertIsNone(consumer.producer)

    def test_back_pressure(self):
        """While the consumer has paused the stream, nothing more is written."""
        node = self.make()
        node.download(URL)
        tf = self.successResultOf(node.download(URL))
        from dragonfly.peer.node import _OrderedProducer
        self.patch(_OrderedProducer, "chunk", 16)
        consumer = _PausingConsumer()
        sd = node.stream(tf, consumer, start=5, end=200)
        n = len(consumer.data)
        self.assertEqual(n, 1)
        while not sd.called:
            self.assertEqual(len(consumer.data), n)
            consumer.producer.resumeProducing()
            n += 1
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA[5:200])
        self.assertTrue(all(len(c) <= 16 for c in consumer.data))

    def test_stream_fails_with_download(self):
        """When the download fails, a waiting stream fails with DownloadError."""
        from twisted.internet.testing import StringTransport

        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        started = []
        d = node.download(URL, back_source=False, on_start=started.append)
        consumer = StringTransport()
        sd = node.stream(started[0], consumer)
        self.supernode.schedule_answer = (400, {"error": "nope"})
        self.pool.release(2)   # the next schedule call (a pair of pieces to report) fails
        self.failureResultOf(d, DownloadError)
        self.failureResultOf(sd, DownloadError)
        self.assertIsNone(consumer.producer)

    def test_consumer_stops(self):
        """When the consumer stops the producer, the stream fails with StreamStopped."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        consumer = _PausingConsumer()
        sd = node.stream(tf, consumer)
        consumer.producer.stopProducing()
        self.failureResultOf(sd, StreamStopped)

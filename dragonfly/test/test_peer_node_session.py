"""The swarm session: fetch slots, verified pieces, reports, long-polls, giving up."""
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control.messages import RegisterAnswer, parse_assignment
from dragonfly.digest import piece_digest
from dragonfly.metrics import sample
from dragonfly.test.peerfakes import PEER_A, PEER_B, SEED
from dragonfly.test.peernodes import DATA, PIECE, URL, NodeMixin


class HeldBeforeTests(NodeMixin, SynchronousTestCase):
    """Pieces a peer held from an earlier download, met by the swarm again."""

    def hold(self, data, pieces):
        from dragonfly.taskid import task_id_for_url
        tf = self.store.create(task_id_for_url(URL), URL, len(DATA), PIECE)
        for i in pieces:
            self.successResultOf(tf.write_new_piece(i, data[i * PIECE:(i + 1) * PIECE]))
        return tf

    def test_held_pieces_of_the_swarm_kept(self):
        """Pieces held from an earlier download that are the swarm's (same
        digest as the assignment's) are kept and reported, never fetched."""
        node = self.make()
        self.hold(DATA, [0, 1, 2])
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertNotIn(0, [i for _, _, i in self.pool.fetches])
        self.assertEqual(sorted(i for _, _, i in self.pool.fetches),
                         list(range(3, tf.piece_count)))
        self.assertEqual(self.supernode.schedules[0]["have"], [])

    def test_held_pieces_of_another_version_dropped(self):
        """When pieces held from an earlier download are another version of
        the file than the swarm's (a piece digest differs), the download fails
        saying so and keeps nothing of the task, never a mix of the two; the
        next download gets the swarm's version whole."""
        from dragonfly.peer.errors import StalePieces
        from dragonfly.taskid import task_id_for_url
        node = self.make()
        self.hold(bytes(b ^ 0x5A for b in DATA), [1, 2])
        f = self.failureResultOf(node.download(URL), StalePieces)
        self.assertIn("another version", str(f.value))
        self.assertIsNone(self.store.get(task_id_for_url(URL)))
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)


    def test_held_pieces_take_the_swarms_version(self):
        """Held pieces kept for the swarm's (same digests) take the validators
        the supernode named for its copy, not those of the earlier download:
        a fallback resumes them with If-Range on the swarm's version. An
        older supernode's answer (none) leaves them as they were."""
        node = self.make()
        tf = self.hold(DATA, [0, 1])
        tf.set_validators('"old"', None)
        self.supernode.validators = {"etag": '"e1"', "last_modified": "Sat, 05 Dec 2026 10:00:00 GMT"}
        tf = self.successResultOf(node.download(URL))
        self.assertEqual((tf.etag, tf.last_modified), ('"e1"', "Sat, 05 Dec 2026 10:00:00 GMT"))
        node = self.make()
        tf = self.hold(DATA, [0, 1])
        tf.set_validators('"old"', None)
        tf = self.successResultOf(node.download(URL))
        self.assertEqual((tf.etag, tf.last_modified), ('"old"', None))


class FetchTests(NodeMixin, SynchronousTestCase):

    def test_want_bounded_by_slots(self):
        """When fetches are slow, the node never asks for more than its free slots plus
        a small queue, and fetches at most `concurrency` pieces at once."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.manual = True
        d = node.download(URL)
        self.assertNoResult(d)
        self.assertEqual(len(self.pool.held), 3)
        first = self.supernode.schedules[0]
        self.assertEqual(first["want"], 3 + node.settings.queue_depth)
        while self.pool.held:
            self.pool.release(1)
            self.assertLessEqual(len(self.pool.held), 3)
            for s in self.supernode.schedules:
                self.assertLessEqual(s["want"], 3 + node.settings.queue_depth)
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
            real = {True: tf.write_verified_piece, False: tf.write_trusted_piece}

            def write_piece(index, data, digest, verify=False):
                body = b"".join(data) if isinstance(data, list) else bytes(data)
                ok = piece_digest(body) == digest
                if not ok and not verify:
                    unverified_bad.append(index)
                d = real[verify](index, data, digest)
                d.addCallback(lambda r: writes.append((index, ok)) or r)
                return d
            tf.write_verified_piece = lambda i, data, digest: write_piece(i, data, digest, True)
            tf.write_trusted_piece = write_piece
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
        # ... with the reason the scheduler counts as a bad piece of that source
        self.assertTrue(all(f.get("reason") == "digest" for f in failed))
        refetched = {i for (src, _, i) in self.pool.fetches if src == PEER_B.peer_id}
        self.assertTrue({f["index"] for f in failed} <= refetched)
        self.assertGreater(sample(self.metrics, "dragonfly_peer_piece_failures_total",
                                  {"reason": "digest"}), 0)

    def test_busy_source_reported_as_busy(self):
        """When a source answers BUSY, the failure is reported with reason
        "busy" (the scheduler only rests a loaded source a moment) and the piece
        comes from another source."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.busy.add(PEER_A.peer_id)
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        failed = [f for s in self.supernode.schedules for f in s["failed"]]
        self.assertTrue(failed)
        self.assertTrue(all((f["source"], f.get("reason")) == (PEER_A.peer_id, "busy")
                            for f in failed))

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


class ScheduleFailureTests(NodeMixin, SynchronousTestCase):

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

    def fall_back(self, node, held=2):
        """Download with C{held} pieces from the swarm, then the supernode
        fails every call: the Deferred of the download, which the origin ends."""
        self.pool.manual = True
        d = node.download(URL)
        self.pool.release(held)
        self.supernode.schedule_answer = (503, {"error": "overloaded"})
        self.supernode.register_answer = (503, {"error": "overloaded"})
        while not d.called:
            self.pool.release()
            self.clock.advance(10)
        return d

    def test_fallback_resumes_with_if_range(self):
        """When the supernode named its copy's validators, a peer falling back
        to the origin mid-download resumes the pieces it lacks with them
        (If-Range): the origin still has that version, so its 206 completes
        the file."""
        node = self.make()
        self.supernode.validators = {"etag": '"e1"', "last_modified": "Sat, 05 Dec 2026 10:00:00 GMT"}
        tf = self.successResultOf(self.fall_back(node))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.origin.calls), 1)
        self.assertGreater(self.origin.calls[0][2], 0)
        self.assertEqual(self.origin.validators,
                         [('"e1"', "Sat, 05 Dec 2026 10:00:00 GMT")])

    def test_fallback_after_the_origin_changed(self):
        """When the file changed at the origin since the supernode's copy
        (the If-Range of the resume names another ETag), the origin sends the
        whole new version (200) and the peer starts the task afresh from it:
        the file is the new version, all of it, never the swarm's pieces of
        the old one with the rest of the new one."""
        from dragonfly.test.peerfakes import FakeOrigin
        new = bytes(b ^ 0x5A for b in DATA)
        origin = FakeOrigin(new)
        origin.etag = '"e2"'
        node = self.make(origin=origin)
        self.supernode.validators = {"etag": '"e1"'}
        tf = self.successResultOf(self.fall_back(node))
        self.assertEqual(self.read_all(tf), new)
        self.assertEqual(tf.etag, '"e2"')
        self.assertGreater(origin.calls[0][2], 0)
        self.assertEqual(origin.validators, [('"e1"', None)])

    def test_fallback_without_validators(self):
        """An older supernode names no validators: the fallback resumes with a
        plain Range, as before."""
        node = self.make()
        tf = self.successResultOf(self.fall_back(node))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertGreater(self.origin.calls[0][2], 0)
        self.assertEqual(self.origin.validators, [(None, None)])

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

    def start(self, concurrency, per_source_limit=None, polls=True, prepare=None, data=DATA):
        """A download of C{data} from PEER_A whose fetches wait for pool.release()
        (C{prepare}: called before it starts)."""
        node = self.make(data, sources=(PEER_A,), concurrency=concurrency, queue_depth=0)
        if prepare is not None:
            prepare()
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
        """When a piece's bytes arrive while the node's long-poll is outstanding, the
        node reports them fetched at once in a separate call (want 0, wait 0), before
        the piece is hashed and written, which lets the supernode answer the poll: the
        download never waits for a poll to time out. The piece is reported held later."""
        d = self.start(concurrency=2, per_source_limit=1)
        self.assertEqual(len(self.pool.held), 1)
        self.assertEqual(len(self.supernode.held_polls), 1)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        report = self.supernode.schedules[n]
        self.assertEqual((report["want"], report["wait"], report["have"], report["fetched"]),
                         (0, 0, [], [0]))
        self.hosts.flush()
        self.assertEqual(len(self.pool.held), 1)
        self.finish(d)
        have = [i for body in self.supernode.schedules[n + 1:] for i in body["have"]]
        self.assertIn(0, have)
        later = self.supernode.schedules[n + 1 + have.index(0):]
        self.assertNotIn(0, [i for body in later for i in body.get("fetched", ())])

    def test_reports_pairs_while_busy(self):
        """With more pieces in flight from the landed piece's source, a lone
        landed piece waits for the next one: the report-only call carries two
        pieces (half the round trips), and the download still never waits for
        a poll to time out."""
        d = self.start(concurrency=8, per_source_limit=4)
        self.assertEqual(len(self.pool.held), 4)
        self.assertEqual(len(self.supernode.held_polls), 1)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n)   # one piece: no call yet
        self.pool.release(1)
        report = self.supernode.schedules[n]
        self.assertEqual((report["want"], report["wait"]), (0, 0))
        # (the first piece was written meanwhile: held, no longer fetched)
        self.assertEqual((len(report["fetched"]), len(report["have"])), (1, 1))
        self.finish(d)

    def test_gathers_without_a_poll(self):
        """Without a long-poll out (every slot taken), one landed piece also waits
        for a second (its source sends us more) before the next schedule call;
        the end is not delayed."""
        d = self.start(concurrency=4, polls=False)
        self.assertEqual(len(self.pool.held), 4)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n + 1)
        body = self.supernode.schedules[n]
        self.assertEqual((len(body["fetched"]), len(body["have"])), (1, 1))
        self.finish(d)

    def hold_writes(self, writing):
        """Make the task file's piece writes wait: each appends C{(Deferred, write)}
        to the list C{writing}; L{land} ends them."""
        orig_create = self.store.create

        def create(*a, **kw):
            tf = orig_create(*a, **kw)
            real = tf.write_verified_piece

            def write(*args):
                d = Deferred()
                writing.append((d, lambda: real(*args)))
                return d
            tf.write_verified_piece = write
            return tf
        self.store.create = create

    @staticmethod
    def land(writing, n=None):
        """End the first C{n} (all) held piece writes, in order."""
        for _ in range(len(writing) if n is None else n):
            wd, write = writing.pop(0)
            write().chainDeferred(wd)

    def test_successors_queued_while_pieces_land(self):
        """Two pieces' bytes arrived (not yet written): the call reports them fetched
        and asks for two successors, which wait queued, not fetched, until the two
        land: the piece bytes in memory stay within the fetch slots."""
        writing = []   # (Deferred, write): the piece writes, held until released
        d = self.start(concurrency=4, per_source_limit=4, polls=False,
                       prepare=lambda: self.hold_writes(writing))
        self.assertEqual(len(self.pool.held), 4)
        n = len(self.supernode.schedules)
        self.pool.release(2)
        body = self.supernode.schedules[n]
        self.assertEqual((sorted(body["fetched"]), body["have"], body["want"]), ([0, 1], [], 2))
        self.assertEqual(len(self.pool.fetches), 4)   # successors queued, not started
        self.assertEqual(len(writing), 2)
        self.land(writing, 1)                         # one piece lands: one successor starts
        self.assertEqual(len(self.pool.fetches), 5)
        while not d.called:
            self.land(writing)
            self.pool.release()
            self.hosts.flush()
            self.assertLessEqual(len(self.pool.held) + len(writing), 4)
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)
        have = [i for body in self.supernode.schedules for i in body["have"]]
        self.assertEqual(sorted(set(have)), list(range(len(self.supernode.pieces))))

    def test_streamed_successors_start_while_pieces_land(self):
        """When a stream reads the task in order, pieces being hashed and
        written free their fetch slots for the wire: the two successors start
        at once instead of waiting queued for the runner, and the piece bytes
        in memory stay within twice the fetch slots (received plus landing)."""
        writing = []
        d = self.start(concurrency=4, per_source_limit=4, polls=False,
                       prepare=lambda: self.hold_writes(writing))
        (dl,) = self.node._downloads.values()
        dl.readers.add(_Reader())
        self.assertEqual(len(self.pool.held), 4)
        n = len(self.supernode.schedules)
        self.pool.release(2)
        # (a streamed task asks for its slots again beyond the free ones, so
        # each arrival is reported at once; the supernode here queues none)
        calls = self.supernode.schedules[n:]
        self.assertEqual(sorted(i for body in calls for i in body.get("fetched", ())), [0, 1])
        self.assertTrue(all(body["queue"] for body in calls))
        self.assertEqual(len(self.pool.fetches), 6)   # started, not queued
        self.assertEqual((len(writing), len(self.pool.held)), (2, 4))
        for _ in range(3):   # more arrive while none lands: at most 8 pieces in all
            self.pool.release(2)
            self.hosts.flush()
        self.assertEqual((len(writing), len(self.pool.held)), (8, 0))
        self.assertEqual(len(self.pool.fetches), 8)
        self.land(writing, 1)                         # one lands: one more starts
        self.assertEqual(len(self.pool.fetches), 9)
        while not d.called:
            self.land(writing)
            self.pool.release()
            self.hosts.flush()
            self.assertLessEqual(len(self.pool.held), 4)
            self.assertLessEqual(len(self.pool.held) + len(writing), 8)
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)

    def test_streamed_task_keeps_a_queue_at_its_source(self):
        """While a stream reads the task, the session asks for its fetch slots
        again beyond the free ones, with C{queue}: a supernode that queues
        them at the busy source lets each piece's successor start as soon as
        the piece is in, with no schedule answer in between (here the
        supernode answers nothing meanwhile), never more on the wire than
        the fetch slots."""
        d = self.start(concurrency=4, per_source_limit=4, polls=False)
        self.supernode.queue_limit = 4
        (dl,) = self.node._downloads.values()
        dl.readers.add(_Reader())
        n = len(self.supernode.schedules)
        self.pool.release(1)
        body = self.supernode.schedules[n]
        self.assertEqual((body["fetched"], body["want"], body["queue"]), ([0], 5, True))
        self.assertEqual(len(self.pool.fetches), 5)   # one slot's successor on the wire
        self.assertEqual(len(self.pool.held), 4)      # and four waiting queued
        self.supernode.hold = True                    # no more answers: the queue goes on
        for k in range(1, 5):
            self.pool.release(1)
            self.assertEqual((len(self.pool.fetches), len(self.pool.held)), (5 + k, 4))
        self.supernode.hold = False
        self.finish(d)

    def test_more_slots_than_the_source_serves(self):
        """Eight fetch slots against a source serving four at once (e.g. 2 MiB
        pieces in 16 MiB buffered): when all eight pieces hash and write, the
        source's four next pieces wait queued while a long-poll asks for more.
        Pieces landing start the queued ones at once, the long-poll
        notwithstanding, and the download ends without any poll timing out
        (the clock never moves). Once, the queued pieces waited for the poll's
        timeout (busy_wait, 2 s) and the pieces written waited to be reported
        with an arrival that only those queued pieces could bring."""
        writing = []
        data = bytes(range(256)) * 8   # 32 pieces
        d = self.start(concurrency=8, per_source_limit=4,
                       prepare=lambda: self.hold_writes(writing), data=data)
        self.assertEqual(len(self.pool.held), 4)
        for _ in range(4):          # two arrive, the source's next two come each time
            self.pool.release(2)
            self.hosts.flush()
        self.assertEqual((len(writing), len(self.pool.held)), (8, 0))
        self.assertEqual(len(self.pool.fetches), 8)   # four more wait queued
        self.assertEqual(len(self.supernode.held_polls), 1)   # asking for more
        self.land(writing)
        self.assertEqual(len(self.pool.fetches), 12)  # the pieces landed: they start
        for _ in range(len(self.supernode.pieces)):
            if d.called:
                break
            self.land(writing)
            self.pool.release(2)
            self.hosts.flush()
            self.assertLessEqual(len(self.pool.held) + len(writing), 8)
        self.assertEqual(self.read_all(self.successResultOf(d)), data)
        self.assertEqual(self.clock.seconds(), 0)
    def start_spread(self, concurrency, polls=True):
        """A download whose fetches (one per source at a time, each held
        until pool.release()) come from PEER_A, PEER_B and SEED, in turn."""
        node = self.make(sources=(PEER_A, PEER_B, SEED), concurrency=concurrency, queue_depth=0)
        self.pool.manual = True
        self.supernode.per_source_limit = 1
        self.supernode.defer_polls = polls
        return node.download(URL)

    def test_lone_piece_reported_at_once(self):
        """A piece whose bytes arrived from a source that sends us nothing else
        is reported (fetched) at once, in a report-only call beside the poll,
        and held once written: waiting for the next piece to land would keep
        that source's upload slot idle, and the others from fetching it from
        us, until then."""
        d = self.start_spread(concurrency=4)
        self.assertEqual(len(self.pool.held), 3)
        self.assertEqual(len(self.supernode.held_polls), 1)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        report = self.supernode.schedules[n]
        self.assertEqual((report["want"], report["wait"], report.get("fetched")), (0, 0, [0]))
        # and once written, held: told at once too, with no other piece landing
        self.assertIn(0, [i for body in self.supernode.schedules[n + 1:] for i in body["have"]])
        self.finish(d)

    def test_lone_piece_without_a_poll_reported_at_once(self):
        """Without a long-poll out (every slot taken) too: the lone piece goes
        in the next schedule call at once, which asks for its successor."""
        d = self.start_spread(concurrency=3, polls=False)
        self.assertEqual(len(self.pool.held), 3)
        n = len(self.supernode.schedules)
        self.pool.release(1)
        self.assertEqual(len(self.supernode.schedules), n + 1)
        self.assertEqual((self.supernode.schedules[n]["want"],
                          self.supernode.schedules[n].get("fetched")), (1, [0]))
        self.finish(d)

    def test_free_slot_asked_for_at_once(self):
        """A fetch slot the last answer left free is asked for at once (a
        long-poll for one piece), not only when a fetch in flight lands."""
        d = self.start(concurrency=4, per_source_limit=3)
        self.assertEqual(len(self.pool.held), 3)
        self.assertEqual([body["want"] for body, _ in self.supernode.held_polls], [1])
        self.finish(d)


class _Reader:
    """A stream reading the task in order (all the session asks of one: its cursor)."""
    cursor = 0


class AssignmentCheckTests(SynchronousTestCase):
    """What the session accepts from a schedule answer: an assignment that
    parses (L{parse_assignment}) and fits the registered task
    (L{RegisterAnswer.check_assignment})."""

    INFO = RegisterAnswer("t", 138, 64, 3, PEER_A)   # pieces of 64, 64 and 10 bytes

    def accept(self, item):
        return self.INFO.check_assignment(parse_assignment(item))

    def item(self, **kw):
        body = {"index": 2, "size": 10, "digest": "ab" * 32, "source": PEER_A.to_json()}
        body.update(kw)
        return body

    def test_good(self):
        """A well-formed assignment becomes an Assignment from its source."""
        a = self.accept(self.item())
        self.assertEqual((a.index, a.size, a.digest, a.source), (2, 10, "ab" * 32, PEER_A))

    def test_bad(self):
        """An index out of range, a wrong size or a digest not 64 hex digits is refused."""
        for kw in ({"index": 3}, {"index": True}, {"size": 64}, {"digest": "AB" * 32},
                   {"digest": "ab"}):
            with self.assertRaises(ValueError):
                self.accept(self.item(**kw))
        with self.assertRaises(ValueError):
            self.accept([])


class BadAssignmentTests(NodeMixin, SynchronousTestCase):

    def test_bad_assignments_ignored(self):
        """When a schedule answer holds assignments that do not parse or do not
        fit the task, the session ignores them and finishes from the good ones."""
        node = self.make()
        bad = [{"index": 0, "size": PIECE + 1, "digest": "ab" * 32, "source": PEER_A.to_json()},
               {"index": 99, "size": PIECE, "digest": "ab" * 32, "source": PEER_A.to_json()},
               {"index": 1}, "x"]
        self.supernode.schedule_script.append((200, {"assignments": bad, "done": False}))
        d = node.download(URL)
        self.clock.advance(node.settings.min_poll_interval)
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)
        self.assertEqual(self.origin.calls, [])


class LimitTests(NodeMixin, SynchronousTestCase):
    """A caller's limit (dfget --limit through the daemon) paces the swarm fetch."""

    def finish_time(self, d, step=0.05, until=60):
        while not d.called and self.clock.seconds() < until:
            self.clock.advance(step)
        self.tf = self.successResultOf(d)
        return self.clock.seconds()

    def test_limit_paces_pieces(self):
        """When the caller gives a limit, the download takes at least its size
        divided by the limit (and not much more), and every piece arrives."""
        node = self.make(sources=(PEER_A, PEER_B))
        d = node.download(URL, limit=100)
        took = self.finish_time(d)
        self.assertGreaterEqual(took, len(DATA) / 100)
        self.assertLess(took, len(DATA) / 100 + 2)
        self.assertEqual(self.read_all(self.tf), DATA)

    def test_unlimited_caller_lifts_the_pace(self):
        """When a caller without a limit joins a limited download, the shared
        fetch runs unpaced from then on (the fastest caller's pace)."""
        node = self.make(sources=(PEER_A, PEER_B))
        slow = node.download(URL, limit=10)
        self.clock.advance(1)
        self.assertNoResult(slow)
        fast = node.download(URL)
        took = self.finish_time(fast, step=1)
        self.successResultOf(slow)
        self.assertLess(took, len(DATA) / 10 / 2)

    def test_limit_leaves_with_its_caller(self):
        """When the fastest caller detaches, the others' pace applies again."""
        node = self.make(sources=(PEER_A, PEER_B))
        slow = node.download(URL, limit=50)
        fast = node.download(URL, limit=10 ** 6)
        fast.cancel()
        self.failureResultOf(fast)
        took = self.finish_time(slow)
        self.assertGreaterEqual(took, (len(DATA) - 3 * PIECE) / 50)


class SelfHealingTests(NodeMixin, SynchronousTestCase):

    def test_corrupt_seed_piece_reported_once(self):
        """A piece from the supernode's own copy that fails its digest makes the
        peer ask the supernode (once) to re-verify that copy."""
        node = self.make(sources=(SEED, PEER_A))
        self.pool.corrupt.add(SEED.peer_id)
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.supernode.corrupt_reports), 1)
        task_id, body = self.supernode.corrupt_reports[0]
        self.assertEqual(task_id, tf.task_id)
        self.assertEqual(body["peer_id"], node.peer_info.peer_id)
        self.assertIn("from the seed failed its digest", body["reason"])

    def test_drop_corrupt(self):
        """drop_corrupt removes a complete task from the store, leaves its swarm
        and reports it; the next download fetches it again."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        registrations = len(self.supernode.registrations)
        self.successResultOf(node.drop_corrupt(tf.task_id, "content digest mismatch"))
        self.assertIsNone(self.store.get(tf.task_id))
        self.assertEqual([t for t, _ in self.supernode.leaves], [tf.task_id])
        self.assertEqual(self.supernode.corrupt_reports[0][0], tf.task_id)
        self.assertEqual(self.supernode.corrupt_reports[0][1]["reason"],
                         "content digest mismatch")
        tf2 = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf2), DATA)
        self.assertEqual(len(self.supernode.registrations), registrations + 1)

    def test_verdict_keeps_no_pieces(self):
        """When the supernode refuses the task mid-download (its content does not
        match its digest: 409), the download fails and none of its pieces are
        kept for a later download of the same id."""
        from dragonfly.peer.errors import DownloadError
        node = self.make()
        self.pool.manual = True
        d = node.download(URL, back_source=False)
        self.pool.release(1)
        tid = node.active()[0]
        self.assertEqual(len(self.store.get(tid).completed()), 1)
        self.supernode.schedule_answer = (409, {"error": "content digest mismatch: expected x"})
        while self.pool.held:
            self.pool.release()
        self.clock.advance(60)
        f = self.failureResultOf(d, DownloadError)
        self.assertIn("content digest mismatch", str(f.value))
        self.assertIsNone(self.store.get(tid))

"""Tests for dragonfly.supernode.scheduler."""
import hashlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dragonfly.interfaces import Assignment, IScheduler, PeerInfo
from dragonfly.supernode.scheduler import Scheduler, UnknownPeer, UnknownTask

T = "task-1"
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)


def peer(n):
    return PeerInfo(f"peer-{n}", "127.0.0.1", 10000 + n)


def digest(i):
    return f"{i:064x}"


class SchedulerMixin:
    def make(self, pieces=4, seeded=True, **kw):
        self.clock = Clock()
        kw.setdefault("rng", random.Random(7))
        self.s = Scheduler(self.clock, **kw)
        self.s.add_task(T, [100] * pieces, SEED)
        if seeded:
            for i in range(pieces):
                self.s.seed_has(T, i, digest(i))
        return self.s

    def join(self, *ns):
        for n in ns:
            self.s.join(T, peer(n))

    def give(self, n, *indices):
        """Peer C{n} holds C{indices} (reported as finished pieces)."""
        self.s.report(T, peer(n).peer_id, have=indices)

    def sources(self, assignments):
        return [(a.index, a.source.peer_id) for a in assignments]

    def tearDown(self):
        if getattr(self, "s", None) is not None:
            for task_id in list(self.s._tasks):
                self.s._verify(task_id)


class BasicTests(SchedulerMixin, SynchronousTestCase):
    def test_interface(self):
        """The Scheduler provides IScheduler."""
        verifyObject(IScheduler, self.make())

    def test_assignment_fields(self):
        """When a peer asks, it gets Assignments with the piece's size, digest and source."""
        s = self.make(pieces=1)
        self.join(1)
        [a] = s.assign(T, "peer-1", 4)
        self.assertIsInstance(a, Assignment)
        self.assertEqual((a.index, a.size, a.digest, a.source), (0, 100, digest(0), SEED))

    def test_last_piece_size(self):
        """When pieces differ in size, each assignment carries its own piece's size."""
        self.clock = Clock()
        s = self.s = Scheduler(self.clock, rng=random.Random(1))
        s.add_task(T, [100, 100, 7], SEED, digests=[digest(0), None, digest(2)])
        self.join(1)
        got = {a.index: a.size for a in s.assign(T, "peer-1", 8)}
        self.assertEqual(got, {0: 100, 2: 7})

    def test_unknown_task_and_peer(self):
        """When the task or peer is unknown, UnknownTask / UnknownPeer are raised."""
        s = self.make()
        self.assertRaises(UnknownTask, s.assign, "nope", "peer-1", 1)
        self.assertRaises(UnknownTask, s.join, "nope", peer(1))
        self.assertRaises(UnknownTask, s.changed, "nope")
        self.assertRaises(UnknownPeer, s.assign, T, "peer-9", 1)
        self.assertRaises(UnknownPeer, s.report, T, "peer-9", have=[0])
        self.assertRaises(UnknownPeer, s.is_done, T, "peer-9")

    def test_bad_input(self):
        """When an index is out of range or not an int, report and seed_has raise ValueError
        and change nothing."""
        s = self.make()
        self.join(1)
        self.assertRaises(ValueError, s.report, T, "peer-1", have=[0, 4])
        self.assertRaises(ValueError, s.report, T, "peer-1", have=["1"])
        self.assertRaises(ValueError, s.report, T, "peer-1", have=[True])
        self.assertRaises(ValueError, s.report, T, "peer-1", failed=[(0, 5)])
        self.assertRaises(ValueError, s.seed_has, T, -1, digest(0))
        self.assertRaises(ValueError, s.seed_has, T, 0, "")
        self.assertEqual(s.holds(T, "peer-1"), [])
        self.assertRaises(ValueError, s.join, T, SEED)
        self.assertRaises(ValueError, s.add_task, "t2", [100, 0], SEED)

    def test_want_zero(self):
        """When want is 0 or negative, nothing is assigned."""
        s = self.make()
        self.join(1)
        self.assertEqual(s.assign(T, "peer-1", 0), [])
        self.assertEqual(s.assign(T, "peer-1", -3), [])

    def test_is_done(self):
        """When a peer has reported every piece, is_done is true and it gets no assignments."""
        s = self.make(pieces=2)
        self.join(1)
        self.assertFalse(s.is_done(T, "peer-1"))
        self.give(1, 0, 1)
        self.assertTrue(s.is_done(T, "peer-1"))
        self.assertEqual(s.assign(T, "peer-1", 4), [])

    def test_add_task_idempotent(self):
        """When the same task is added again with the same pieces, its swarm is kept;
        with different pieces it starts afresh."""
        s = self.make()
        self.join(1)
        self.give(1, 0)
        s.add_task(T, [100] * 4, SEED)
        self.assertEqual(s.holds(T, "peer-1"), [0])
        s.add_task(T, [100] * 5, SEED)
        self.assertRaises(UnknownPeer, s.holds, T, "peer-1")

    def test_content_changed(self):
        """When the seed reports a different digest for a piece, the task starts
        afresh: the old swarm's pieces are not offered any more."""
        s = self.make(pieces=2)
        self.join(1)
        self.give(1, 0, 1)
        s.seed_has(T, 0, digest(0))  # same digest: nothing happens
        self.assertTrue(s.is_done(T, "peer-1"))
        s.seed_has(T, 0, "f" * 64)
        self.assertRaises(UnknownPeer, s.is_done, T, "peer-1")
        self.join(2)
        [a] = s.assign(T, "peer-2", 4)
        self.assertEqual((a.index, a.digest, a.source), (0, "f" * 64, SEED))

    def test_remove_task(self):
        """When a task is removed, its waiters fire and it is unknown afterwards."""
        s = self.make()
        d = s.changed(T)
        s.remove_task(T)
        self.assertIsNone(self.successResultOf(d))
        self.assertRaises(UnknownTask, s.assign, T, "peer-1", 1)
        self.assertEqual(s.stats()["tasks"], 0)
        s.remove_task(T)  # twice is fine


class RarestFirstTests(SchedulerMixin, SynchronousTestCase):
    def test_rarest_first(self):
        """When pieces have different numbers of holders, the asker gets the rarest it lacks."""
        s = self.make(pieces=3, max_uploads_per_peer=8)
        self.join(1, 2, 3, 4)
        self.give(1, 0, 1, 2)
        self.give(2, 0, 1)
        self.give(3, 0)
        got = s.assign(T, "peer-4", 1)
        self.assertEqual([a.index for a in got], [2])
        got = s.assign(T, "peer-4", 2)
        self.assertEqual([a.index for a in got], [1, 0])

    def test_in_flight_counts_towards_rarity(self):
        """When a piece is already being fetched by others, another equally rare piece is
        preferred, so the swarm spreads different pieces."""
        s = self.make(pieces=2, max_uploads_per_peer=8)
        self.join(1, 2, 3)
        self.give(1, 0, 1)
        [a] = s.assign(T, "peer-2", 1)
        [b] = s.assign(T, "peer-3", 1)
        self.assertNotEqual(a.index, b.index)

    def test_random_tie_break(self):
        """When pieces are equally rare, different rng seeds pick different first pieces."""
        firsts = set()
        for seed in range(30):
            s = self.make(pieces=8, rng=random.Random(seed), seed_max_uploads=64)
            self.join(1)
            firsts.add(s.assign(T, "peer-1", 1)[0].index)
        self.assertGreater(len(firsts), 3)

    def test_never_held_or_fetching(self):
        """A peer is never assigned a piece it holds or is already fetching."""
        s = self.make(pieces=4, seed_max_uploads=16)
        self.join(1)
        self.give(1, 0)
        first = {a.index for a in s.assign(T, "peer-1", 2)}
        second = {a.index for a in s.assign(T, "peer-1", 8)}
        self.assertNotIn(0, first | second)
        self.assertFalse(first & second)
        self.assertEqual(first | second, {1, 2, 3})


class StreamingTests(SchedulerMixin, SynchronousTestCase):
    """An asker streaming the file in order passes a cursor."""

    def indices(self, assignments):
        return [a.index for a in assignments]

    def test_first_assignments_in_order(self):
        """When a streaming peer asks with a cursor, its first assignments are the
        lowest pieces from the cursor on that it neither holds nor fetches."""
        s = self.make(pieces=64, seed_max_uploads=64)
        self.join(1)
        got = s.assign(T, "peer-1", 8, cursor=0)
        self.assertEqual(self.indices(got)[:4], [0, 1, 2, 3])
        self.join(2)
        self.give(2, *range(10), 12)
        got = s.assign(T, "peer-2", 6, cursor=10)
        self.assertEqual(self.indices(got)[:3], [10, 11, 13])

    def test_rarest_share_kept(self):
        """When a streaming peer asks for several pieces, about half of them are still
        the rarest ones (here: the pieces beyond its window), not the next in order."""
        s = self.make(pieces=16, max_uploads_per_peer=8)
        self.join(*range(1, 8))
        for n in range(1, 7):
            self.give(n, *range(8))       # 0-7: six holders each
        self.give(7, *range(8, 16))       # 8-15: one holder
        self.join(8)
        got = self.indices(s.assign(T, "peer-8", 4, cursor=0))
        self.assertEqual(got[:2], [0, 1])
        self.assertEqual(len(got), 4)
        self.assertTrue(all(i >= 8 for i in got[2:]), got)
        # Without a cursor the same asker would get only rare pieces.
        self.join(9)
        got = self.indices(s.assign(T, "peer-9", 4))
        self.assertTrue(all(i >= 8 for i in got), got)

    def test_window_exhausted(self):
        """When no source can serve the pieces in the window (busy holders), the
        in-order slots go to rarest-first instead of waiting or using the seed."""
        s = self.make(pieces=16, max_uploads_per_peer=1, seed_max_uploads=16)
        self.join(1, 2, 3, 4)
        self.give(1, *range(6))
        self.give(4, *range(6))
        [a] = s.assign(T, "peer-2", 1, cursor=0)   # takes one holder's only slot
        [b] = s.assign(T, "peer-3", 1, cursor=0)   # and the other's
        self.assertEqual((a.index, b.index), (0, 0))
        self.assertEqual({a.source, b.source}, {peer(1), peer(4)})
        # Window 1-4: held, but by busy peers (and so not from the seed).
        got = s.assign(T, "peer-3", 2, cursor=0)
        self.assertEqual(len(got), 2)
        for x in got:
            self.assertEqual(x.source, SEED)
            self.assertGreaterEqual(x.index, 6)

    def test_want_one_alternates(self):
        """When a streaming peer asks for one piece at a time, in-order and
        rarest-first assignments alternate while its next piece is in flight."""
        s = self.make(pieces=64, max_uploads_per_peer=64)
        self.join(1, 2, 3, 4)
        self.give(2, *range(64))
        self.give(3, *range(64))
        self.give(4, *range(32))         # pieces 32-63 are rarer
        got = [s.assign(T, "peer-1", 1, cursor=0) for _ in range(8)]
        self.assertEqual([self.indices(g) for g in got[::2]], [[0], [1], [2], [3]])
        for g in got[1::2]:
            [a] = g
            self.assertGreaterEqual(a.index, 32)

    def test_blocked_stream_gets_the_slot(self):
        """When a streaming peer's next piece is not in flight (its fetch failed),
        the next single assignment is that piece, whoever's turn it was."""
        s = self.make(pieces=32, seed_max_uploads=64)
        self.join(1, 2)
        self.give(2, *range(32))
        [a] = s.assign(T, "peer-1", 1, cursor=0)
        self.assertEqual(a.index, 0)
        s.report(T, "peer-1", failed=[(0, "peer-2")])   # peer 2 failed it: the seed next
        [b] = s.assign(T, "peer-1", 1, cursor=0)
        self.assertEqual((b.index, b.source), (0, SEED))

    def test_cursor_beyond_held_prefix(self):
        """The cursor only says where to start: pieces below it are never assigned
        first, and a cursor at the piece count means no preference."""
        s = self.make(pieces=8, seed_max_uploads=64)
        self.join(1)
        got = self.indices(s.assign(T, "peer-1", 2, cursor=6))
        self.assertEqual(got[0], 6)
        results = []
        for cursor in (None, 8):
            s = self.make(pieces=8, seed_max_uploads=64, rng=random.Random(2))
            self.join(1)
            results.append(self.indices(s.assign(T, "peer-1", 8, cursor=cursor)))
        self.assertEqual(len(results[0]), 8)
        self.assertEqual(results[0], results[1])
        self.assertNotEqual(results[0], sorted(results[0]))   # rarest-first, random ties

    def test_bad_cursor(self):
        """When the cursor is not an int from 0 to the piece count, assign raises
        ValueError and changes nothing."""
        s = self.make(pieces=4)
        self.join(1)
        for bad in (-1, 5, True, 1.0, "0"):
            self.assertRaises(ValueError, s.assign, T, "peer-1", 2, cursor=bad)
        self.assertEqual(s.task_stats(T)["inflight"], 0)
        self.assertEqual(s.piece_count(T), 4)

    def test_large_swarm(self):
        """With sampled sources, in-order assignments still come from holders under
        their limit."""
        s = self.make(pieces=32, max_uploads_per_peer=2)
        self.join(*range(1, 200))
        r = random.Random(3)
        for n in range(1, 100):
            self.give(n, *r.sample(range(32), 16))
        for n in range(100, 200):
            got = s.assign(T, f"peer-{n}", 4, cursor=0)
            for a in got:
                if a.source != SEED:
                    self.assertIn(a.index, s.holds(T, a.source.peer_id))
        s._verify(T)

    def test_no_cursor_unchanged(self):
        """Without a cursor the scheduler decides exactly as before streaming hints
        existed: a fixed random workload gives the recorded assignment sequence
        (recorded with the scheduler of commit d5bb52c)."""
        log = _workload(Scheduler)
        self.assertEqual(len(log), 628)
        self.assertEqual(hashlib.sha256(repr(log).encode()).hexdigest(),
                         "85b7eb651da185fd662b9d2aece40ebaf67c0255469798a46cc7f6ee579d4ef3")


def _workload(scheduler_class, steps=600):
    """Join, assign, finish, fail and expire at random: the assignments made."""
    clock = Clock()
    s = scheduler_class(clock, max_uploads_per_peer=2, seed_max_uploads=3,
                        assignment_timeout=30, rng=random.Random(5))
    s.add_task("t", [100] * 24, SEED)
    r = random.Random(11)
    for i in range(12):
        s.seed_has("t", i, f"{i:064x}")
    inflight = {}
    log = []
    for step in range(steps):
        if step == 50:
            for i in range(12, 24):
                s.seed_has("t", i, f"{i:064x}")
        pid = f"peer-{r.randrange(40)}"
        if pid not in inflight:
            s.join("t", PeerInfo(pid, "h", 1))
            inflight[pid] = []
        for a in s.assign("t", pid, r.randrange(1, 5)):
            inflight[pid].append((a.index, a.source.peer_id))
            log.append((pid, a.index, a.source.peer_id))
        owner = r.choice(sorted(inflight))
        q = inflight[owner]
        if q:
            i, src = q.pop(r.randrange(len(q)))
            if r.random() < 0.9:
                s.report("t", owner, have=[i])
            else:
                s.report("t", owner, failed=[(i, src)])
        clock.advance(r.random())
        if step % 40 == 39:
            s.expire()
    return log


class SourceTests(SchedulerMixin, SynchronousTestCase):
    def test_peer_over_seed(self):
        """When a peer holds the piece and has a free slot, it is the source, not the seed."""
        s = self.make(pieces=1)
        self.join(1, 2)
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))

    def test_least_loaded(self):
        """When several holders are free, the least-loaded one serves."""
        s = self.make(pieces=2, max_uploads_per_peer=4)
        self.join(1, 2, 3, 4)
        self.give(1, 0, 1)
        self.give(2, 0, 1)
        first = s.assign(T, "peer-3", 1)[0].source
        second = s.assign(T, "peer-4", 1)[0].source
        self.assertEqual({first, second}, {peer(1), peer(2)})

    def test_upload_limit(self):
        """A peer never serves more than max_uploads_per_peer assignments at once;
        reporting one frees its slot."""
        s = self.make(pieces=1, max_uploads_per_peer=2)
        self.join(1, 2, 3, 4)
        self.give(1, 0)
        a2 = s.assign(T, "peer-2", 1)
        a3 = s.assign(T, "peer-3", 1)
        self.assertEqual([a.source for a in a2 + a3], [peer(1), peer(1)])
        self.assertEqual(s.assign(T, "peer-4", 1), [])  # busy holder: wait, no seed
        self.give(2, 0)  # frees peer-1's slot and makes peer-2 a holder
        [a4] = s.assign(T, "peer-4", 1)
        self.assertIn(a4.source, (peer(1), peer(2)))

    def test_busy_holders_prefer_other_piece(self):
        """When every holder of the rarest piece is busy, the asker gets another piece
        from a peer rather than that piece from the seed."""
        s = self.make(pieces=2, max_uploads_per_peer=1, seed_max_uploads=8)
        self.join(1, 2, 3, 4)
        self.give(1, 0)
        self.give(2, 0, 1)
        s.assign(T, "peer-3", 1)   # takes one slot
        got = s.assign(T, "peer-4", 2)
        self.assertTrue(got)
        for a in got:
            self.assertNotEqual(a.source, SEED)

    def test_seed_only_when_needed(self):
        """The seed serves a piece only when no eligible peer holds it; one asker at a
        time (super-seeding), and the second asker then gets it from the first."""
        s = self.make(pieces=1, seed_max_uploads=8)
        self.join(1, 2)
        [a] = s.assign(T, "peer-1", 1)
        self.assertEqual(a.source, SEED)
        self.assertEqual(s.assign(T, "peer-2", 1), [])
        self.give(1, 0)
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.source, peer(1))
        self.assertEqual(s.stats()["assigned"], {"peer": 1, "supernode": 1})

    def test_seed_limit(self):
        """The seed never serves more than seed_max_uploads at once."""
        s = self.make(pieces=8, seed_max_uploads=3)
        self.join(*range(1, 7))
        total = sum(len(s.assign(T, f"peer-{n}", 4)) for n in range(1, 7))
        self.assertEqual(total, 3)
        self.assertEqual(s.stats()["seed_inflight"], 3)

    def test_seed_shared_fairly(self):
        """When several peers download, one asker cannot take every seed slot."""
        s = self.make(pieces=8, seed_max_uploads=4)
        self.join(1, 2, 3, 4)
        got = s.assign(T, "peer-1", 4)
        self.assertEqual(len(got), 1)
        for n in (2, 3, 4):
            self.assertEqual(len(s.assign(T, f"peer-{n}", 4)), 1)

    def test_single_peer_uses_all_seed_slots(self):
        """When only one peer downloads, it may use every seed slot."""
        s = self.make(pieces=8, seed_max_uploads=4)
        self.join(1)
        self.assertEqual(len(s.assign(T, "peer-1", 8)), 4)

    def test_pieces_as_seed_gets_them(self):
        """Pieces become assignable as the CDN reports them, before the origin fetch ends."""
        s = self.make(pieces=3, seeded=False)
        self.join(1)
        self.assertEqual(s.assign(T, "peer-1", 4), [])
        s.seed_has(T, 1, digest(1))
        self.assertEqual([a.index for a in s.assign(T, "peer-1", 4)], [1])
        self.assertEqual(s.task_stats(T)["seeded"], 1)


class FailureTests(SchedulerMixin, SynchronousTestCase):
    def test_failed_source_not_reused(self):
        """When an asker reports a source failed for a piece, that source is never
        assigned that piece for that asker again; the slot is freed."""
        s = self.make(pieces=1, max_uploads_per_peer=1)
        self.join(1, 2, 3)
        self.give(1, 0)
        self.give(2, 0)
        [a] = s.assign(T, "peer-3", 1)
        first = a.source.peer_id
        s.report(T, "peer-3", failed=[(0, first)])
        [b] = s.assign(T, "peer-3", 1)
        self.assertNotEqual(b.source.peer_id, first)
        self.assertNotEqual(b.source, SEED)
        # the failed source's slot was released: another asker can use it
        self.join(4)
        [c] = s.assign(T, "peer-4", 1)
        self.assertEqual(c.source.peer_id, first)
        s.report(T, "peer-3", failed=[(0, b.source.peer_id)])
        s.report(T, "peer-4", have=[0])
        for _ in range(3):
            [d] = s.assign(T, "peer-3", 1)
            self.assertEqual(d.source, peer(4))
            s.report(T, "peer-3", failed=[(0, "peer-4")])
            [e] = s.assign(T, "peer-3", 1)
            self.assertEqual(e.source, SEED)
            break

    def test_seed_after_all_holders_failed(self):
        """When every peer holding a piece failed for an asker, the seed serves it."""
        s = self.make(pieces=1)
        self.join(1, 2)
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        s.report(T, "peer-2", failed=[(0, "peer-1")])
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.source, SEED)
        s.report(T, "peer-2", failed=[(0, SEED.peer_id)])
        self.assertEqual(s.assign(T, "peer-2", 1), [])

    def test_repeated_failures_mark_bad(self):
        """When several askers report the same source failing, nobody is sent to it again."""
        s = self.make(pieces=2, bad_peer_failures=3)
        self.join(1, 2, 3, 4, 5)
        self.give(1, 0, 1)
        for n in (2, 3, 4):
            [a] = s.assign(T, f"peer-{n}", 1)
            self.assertEqual(a.source, peer(1))
            s.report(T, f"peer-{n}", failed=[(a.index, "peer-1")])
        got = s.assign(T, "peer-5", 2)
        self.assertTrue(got)
        self.assertNotIn(peer(1), [a.source for a in got])
        self.assertEqual(s.stats()["bad_peers"], 1)

    def test_stale_failure(self):
        """When a failure names a source that was not assigned, the assignment stays."""
        s = self.make(pieces=1)
        self.join(1, 2)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        s.report(T, "peer-2", failed=[(0, "peer-7")])
        self.assertEqual(s.stats()["inflight"], 1)


class SilentPeerTests(SchedulerMixin, SynchronousTestCase):

    def test_dead_peer_does_not_starve_the_others(self):
        """When a peer dies silently (no leave, not yet timed out) after taking
        few pieces from the seed, the seed's fairness over time does not keep
        the survivors waiting: once the dead peer's pieces fail for them, they
        get every piece they lack, without any clock advance."""
        s = self.make(pieces=16, rng=random.Random(1))
        self.join(0, 1, 2)
        first = {n: s.assign(T, peer(n).peer_id, 8) for n in (0, 1, 2)}
        victim = first[0]
        self.give(0, *[a.index for a in victim[: len(victim) // 2]])
        for n in (1, 2):
            self.give(n, *[a.index for a in first[n]])
        for _ in range(40):
            for n in (1, 2):
                pid = peer(n).peer_id
                got = s.assign(T, pid, 8)
                s.report(T, pid, have=[a.index for a in got if a.source.peer_id != "peer-0"],
                         failed=[(a.index, "peer-0") for a in got if a.source.peer_id == "peer-0"])
        # Only pieces still promised to the dead peer by the seed (super-seeding)
        # wait for that assignment to expire.
        promised = {a.index for a in victim[len(victim) // 2:] if a.source == SEED}
        for n in (1, 2):
            missing = set(range(16)) - set(s.holds(T, peer(n).peer_id))
            self.assertLessEqual(missing, promised)
        self.clock.advance(61)
        for _ in range(10):
            for n in (1, 2):
                pid = peer(n).peer_id
                got = s.assign(T, pid, 8)
                s.report(T, pid, have=[a.index for a in got])
        self.assertTrue(s.is_done(T, "peer-1") and s.is_done(T, "peer-2"))


class TimeoutTests(SchedulerMixin, SynchronousTestCase):
    def test_assignment_expires(self):
        """When an assignment is not reported within assignment_timeout, its slot is
        freed and the piece can be assigned again."""
        s = self.make(pieces=1, max_uploads_per_peer=1, assignment_timeout=10)
        self.join(1, 2, 3)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        self.assertEqual(s.assign(T, "peer-3", 1), [])
        self.clock.advance(9)
        self.assertEqual(s.assign(T, "peer-3", 1), [])
        self.clock.advance(1)
        [a] = s.assign(T, "peer-3", 1)
        self.assertEqual(a.source, peer(1))
        self.assertEqual(s.task_stats(T)["expired"], 1)

    def test_expire_drops_silent_peers(self):
        """When a peer is silent for peer_timeout, expire() drops it: its pieces no
        longer count and it must join again."""
        s = self.make(pieces=1, peer_timeout=100)
        self.join(1, 2)
        self.give(1, 0)
        self.clock.advance(60)
        s.report(T, "peer-2")  # peer-2 stays alive
        self.clock.advance(50)
        s.expire()
        self.assertRaises(UnknownPeer, s.assign, T, "peer-1", 1)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, SEED)
        self.assertEqual(s.stats()["peers"], 1)

    def test_expire_frees_slots(self):
        """expire() frees timed-out assignments without anyone asking."""
        s = self.make(pieces=1, assignment_timeout=5)
        self.join(1)
        s.assign(T, "peer-1", 1)
        self.clock.advance(5)
        s.expire()
        self.assertEqual(s.stats()["inflight"], 0)
        self.assertEqual(s.stats()["seed_inflight"], 0)


class LeaveTests(SchedulerMixin, SynchronousTestCase):
    def test_leave(self):
        """When a peer leaves, its slots are freed and others are no longer sent to it."""
        s = self.make(pieces=1)
        self.join(1, 2, 3)
        self.give(1, 0)
        s.assign(T, "peer-3", 1)   # from the seed? no: from peer-1
        s.leave(T, "peer-3")
        s.leave(T, "peer-1")
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, SEED)
        self.assertEqual(s.stats()["peers"], 1)
        s.leave(T, "peer-1")  # twice is fine
        s.leave("no-task", "peer-1")

    def test_source_leaves_mid_fetch(self):
        """When a source leaves while an asker fetches from it, the asker's later report
        of that failure is accepted and it is served by someone else."""
        s = self.make(pieces=1)
        self.join(1, 2)
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        s.leave(T, "peer-1")
        s.report(T, "peer-2", failed=[(0, "peer-1")])
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.source, SEED)

    def test_rejoin(self):
        """When a peer joins again it keeps its state."""
        s = self.make(pieces=2)
        self.join(1)
        self.give(1, 0)
        self.join(1)
        self.assertEqual(s.holds(T, "peer-1"), [0])


class ChangedTests(SchedulerMixin, SynchronousTestCase):
    def test_fires_on_seed_has(self):
        """When the seed gets a piece, a waiting peer is woken."""
        s = self.make(pieces=2, seeded=False)
        self.join(1)
        d = s.changed(T, "peer-1")
        self.assertNoResult(d)
        s.seed_has(T, 0, digest(0))
        self.assertIsNone(self.successResultOf(d))

    def test_fires_on_report(self):
        """When a peer reports a new piece, a peer waiting for it is woken."""
        s = self.make(pieces=1, max_uploads_per_peer=1)
        self.join(1, 2, 3)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        self.assertEqual(s.assign(T, "peer-3", 1), [])
        d = s.changed(T, "peer-3")
        self.assertNoResult(d)
        self.give(2, 0)
        self.successResultOf(d)
        self.assertEqual(len(s.assign(T, "peer-3", 1)), 1)

    def test_not_woken_for_nothing(self):
        """When a change offers only pieces a waiter already holds, it keeps waiting."""
        s = self.make(pieces=2, seeded=False)
        self.join(1, 2)
        self.give(1, 0)
        d = s.changed(T, "peer-1")
        s.seed_has(T, 0, digest(0))
        self.assertNoResult(d)
        s.seed_has(T, 1, digest(1))
        self.successResultOf(d)

    def test_woken_in_order_and_bounded(self):
        """When one change creates one chance, only the oldest few waiters fire."""
        s = self.make(pieces=1, seeded=False)
        self.join(*range(1, 11))
        ds = [s.changed(T, f"peer-{n}") for n in range(1, 11)]
        s.seed_has(T, 0, digest(0))
        fired = [d.called for d in ds]
        self.assertTrue(fired[0])
        self.assertLess(sum(fired), 10)
        self.assertEqual(fired, sorted(fired, reverse=True))

    def test_cancel(self):
        """When a waiter is cancelled, it is forgotten (no leak)."""
        s = self.make()
        d = s.changed(T)
        self.assertEqual(s.stats()["waiting"], 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(s.stats()["waiting"], 0)

    def test_timeout(self):
        """When a long-poll times out (addTimeout on the clock), the waiter is forgotten."""
        s = self.make()
        d = s.changed(T)
        d.addTimeout(30, self.clock)
        self.clock.advance(30)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(s.stats()["waiting"], 0)

    def test_callback_may_reenter(self):
        """When a woken waiter calls back into the scheduler at once, state is consistent."""
        s = self.make(pieces=1, seeded=False)
        self.join(1)
        got = []
        d = s.changed(T, "peer-1")
        d.addCallback(lambda _: got.extend(s.assign(T, "peer-1", 1)))
        s.seed_has(T, 0, digest(0))
        self.assertEqual([a.index for a in got], [0])


class StatsTests(SchedulerMixin, SynchronousTestCase):
    def test_stats(self):
        """stats() counts tasks, peers, in-flight and assignments by source kind."""
        s = self.make(pieces=2)
        self.join(1, 2)
        self.give(1, 0)
        s.assign(T, "peer-2", 2)
        st = s.stats()
        self.assertEqual((st["tasks"], st["peers"], st["inflight"]), (1, 2, 2))
        self.assertEqual(st["assigned"], {"peer": 1, "supernode": 1})
        ts = s.task_stats(T)
        self.assertEqual((ts["peers"], ts["seeded"], ts["piece_count"]), (2, 2, 2))


class LargeSwarmTests(SchedulerMixin, SynchronousTestCase):
    """With more free peers than the scheduler scans, it samples: same policy."""

    def test_busy_holders_no_seed(self):
        """When the only holder is busy, an asker in a large swarm waits instead of
        taking the piece from the seed."""
        s = self.make(pieces=1, max_uploads_per_peer=1)
        self.join(*range(1, 120))
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        for n in range(3, 40):
            self.assertEqual(s.assign(T, f"peer-{n}", 1), [])

    def test_super_seeding(self):
        """When nobody holds a piece, the seed sends it to one asker at a time."""
        s = self.make(pieces=1)
        self.join(*range(1, 120))
        got = [s.assign(T, f"peer-{n}", 1) for n in range(1, 120)]
        self.assertEqual(sum(len(g) for g in got), 1)

    def test_rarest_first(self):
        """When one piece has many holders and another few, the rare one comes first."""
        s = self.make(pieces=2)
        self.join(*range(1, 120))
        for n in range(1, 60):
            self.give(n, 0)
        for n in range(60, 63):
            self.give(n, 1)
        for n in range(63, 70):
            [a] = s.assign(T, f"peer-{n}", 1)
            self.assertEqual(a.index, 1)
            self.assertIn(a.source, [peer(60), peer(61), peer(62)])

    def test_sampled_sources_are_holders(self):
        """When sources are sampled, every assignment's source holds the piece and is
        under its limit."""
        s = self.make(pieces=16, max_uploads_per_peer=2)
        self.join(*range(1, 200))
        r = random.Random(3)
        for n in range(1, 100):
            self.give(n, *r.sample(range(16), 8))
        for n in range(100, 200):
            for a in s.assign(T, f"peer-{n}", 3):
                if a.source != SEED:
                    self.assertIn(a.index, s.holds(T, a.source.peer_id))
        s._verify(T)


# -- property test ----------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 7)),
        st.tuples(st.just("assign"), st.integers(0, 7), st.integers(1, 6)),
        st.tuples(st.just("stream"), st.integers(0, 7), st.integers(1, 6)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 100)),
        st.tuples(st.just("fail"), st.integers(0, 7), st.integers(0, 100)),
        st.tuples(st.just("leave"), st.integers(0, 7)),
        st.tuples(st.just("seed"), st.integers(0, 11)),
        st.tuples(st.just("tick"), st.integers(1, 40)),
    ),
    min_size=30,
    max_size=150,
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops=ops, seed=st.integers(0, 2**16), limit=st.integers(1, 3),
           seed_limit=st.integers(1, 4))
    def test_invariants(self, ops, seed, limit, seed_limit):
        """Whatever peers do, nobody is assigned a piece it holds or is fetching, nor
        from itself, nor from a source that lacks it; no source exceeds its upload
        limit; the internal counts stay consistent."""
        self.check(ops, seed, limit, seed_limit, crowd=0)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops=ops, seed=st.integers(0, 2**16), limit=st.integers(1, 3),
           seed_limit=st.integers(1, 4))
    def test_invariants_large_swarm(self, ops, seed, limit, seed_limit):
        """The same holds in a swarm large enough that sources are sampled."""
        self.check(ops, seed, limit, seed_limit, crowd=80)

    def check(self, ops, seed, limit, seed_limit, crowd):
        clock = Clock()
        s = Scheduler(clock, max_uploads_per_peer=limit, seed_max_uploads=seed_limit,
                      assignment_timeout=50, peer_timeout=10**9, rng=random.Random(seed))
        n = 12
        s.add_task(T, [10] * n, SEED)
        seed_has = set()
        have = {}        # peer id -> set of pieces
        inflight = {}    # peer id -> {index: (source id, deadline)}
        generation = {}  # join count per slot: a left peer never comes back
        r = random.Random(seed)
        for c in range(crowd):
            pid = f"crowd-{c}"
            s.join(T, PeerInfo(pid, "h", 1))
            pieces = set(r.sample(range(n), r.randrange(n)))
            s.report(T, pid, have=sorted(pieces))
            have[pid] = pieces
            inflight[pid] = {}
        for op in ops:
            kind = op[0]
            now = clock.seconds()
            for pid, fl in inflight.items():
                for i in [i for i, (_src, dl) in fl.items() if dl <= now]:
                    del fl[i]
            if kind == "join":
                pid = f"p{op[1]}-{generation.get(op[1], 0)}"
                if pid not in have:
                    s.join(T, PeerInfo(pid, "h", 1))
                    have[pid] = set()
                    inflight[pid] = {}
                continue
            if kind == "seed":
                s.seed_has(T, op[1], digest(op[1]))
                seed_has.add(op[1])
                continue
            if kind == "tick":
                clock.advance(op[1])
                if op[1] % 3 == 0:
                    s.expire()
                continue
            pid = f"p{op[1]}-{generation.get(op[1], 0)}"
            if pid not in have:
                continue
            if kind == "leave":
                s.leave(T, pid)
                del have[pid]
                del inflight[pid]
                generation[op[1]] = generation.get(op[1], 0) + 1
            elif kind in ("assign", "stream"):
                cursor = None
                if kind == "stream":
                    cursor = min(set(range(n)) - have[pid], default=n)
                got = s.assign(T, pid, op[2], cursor=cursor)
                self.assertLessEqual(len(got), op[2])
                for a in got:
                    src = a.source.peer_id
                    self.assertNotIn(a.index, have[pid])
                    self.assertNotIn(a.index, inflight[pid])
                    self.assertNotEqual(src, pid)
                    if a.source == SEED:
                        self.assertIn(a.index, seed_has)
                    else:
                        self.assertIn(a.index, have[src])
                    inflight[pid][a.index] = (src, clock.seconds() + 50)
                loads = {}
                for fl in inflight.values():
                    for src, _dl in fl.values():
                        if src == SEED.peer_id or src in have:
                            loads[src] = loads.get(src, 0) + 1
                for src, load in loads.items():
                    self.assertLessEqual(
                        load, seed_limit if src == SEED.peer_id else limit)
            elif inflight[pid]:
                keys = sorted(inflight[pid])
                i = keys[op[2] % len(keys)]
                src, _dl = inflight[pid].pop(i)
                if kind == "finish":
                    s.report(T, pid, have=[i])
                    have[pid].add(i)
                else:
                    s.report(T, pid, failed=[(i, src)])
            s._verify(T)
        s._verify(T)

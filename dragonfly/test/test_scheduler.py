"""Tests for dragonfly.supernode.scheduler: the Scheduler facade (tasks, peers,
reports, failures, timeouts, stats) and its invariants under random workloads."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dragonfly.interfaces import Assignment, IScheduler, PeerInfo
from dragonfly.supernode.scheduler import Scheduler, UnknownPeer, UnknownTask
from dragonfly.test.scheduler_invariants import SEED, T, SchedulerMixin, digest, peer, verify


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

    def test_seed_only(self):
        """When a peer asks seed_only (dfget --pattern cdn), every assignment names
        the seed, even for pieces other peers hold and beyond the super-seeding copy
        limit; pieces only peers hold are not assigned at all."""
        s = self.make(pieces=4, seeded=False)
        for i in (0, 1, 2):
            s.seed_has(T, i, digest(i))
        self.join(1, 2, 3)
        self.give(1, 0, 1, 2, 3)
        got = s.assign(T, "peer-2", 8, seed_only=True)
        self.assertEqual(self.sources(got), [(i, SEED.peer_id) for i in (0, 1, 2)])
        again = s.assign(T, "peer-3", 8, seed_only=True)
        self.assertEqual(self.sources(again), [(i, SEED.peer_id) for i in (0, 1, 2)])
        self.assertEqual(s.assign(T, "peer-2", 8, seed_only=True), [])

    def test_unknown_task_and_peer(self):
        """When the task or peer is unknown, UnknownTask / UnknownPeer are raised."""
        s = self.make()
        self.assertRaises(UnknownTask, s.assign, "nope", "peer-1", 1)
        self.assertRaises(UnknownTask, s.join, "nope", peer(1))
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
        """When a task is removed, it is unknown afterwards."""
        s = self.make()
        s.remove_task(T)
        self.assertRaises(UnknownTask, s.assign, T, "peer-1", 1)
        self.assertEqual(s.stats()["tasks"], 0)
        s.remove_task(T)  # twice is fine


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


class FetchedTests(SchedulerMixin, SynchronousTestCase):
    """Pieces reported fetched (bytes arrived, not yet verified and written)."""

    def peers_only(self, pieces=1, **kw):
        """A scheduler whose task's pieces only peers hold (the seed has none)."""
        self.clock = Clock()
        s = self.s = Scheduler(self.clock, rng=random.Random(7), **kw)
        s.add_task(T, [100] * pieces, SEED, digests=[digest(i) for i in range(pieces)])
        return s

    def test_fetched_frees_the_source_slot(self):
        """When an asker reports a piece fetched, its source's upload slot is free
        at once: the next assignment from that source fits beside the fetched one."""
        s = self.make(pieces=3, max_uploads_per_peer=1)
        self.join(1, 2, 3)
        self.give(1, 0, 1, 2)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        self.assertEqual(s.assign(T, "peer-3", 1), [])     # peer-1's one slot is taken
        s.report(T, "peer-2", fetched=[a.index])
        [b] = s.assign(T, "peer-3", 1)
        self.assertEqual(b.source, peer(1))
        self.assertEqual(s.stats()["inflight"], 2)          # the fetched one is still in flight

    def test_fetched_piece_not_reassigned_nor_a_source(self):
        """A fetched piece is neither assigned to its asker again nor handed out with
        the asker as its source, until reported held; then the asker serves it."""
        s = self.peers_only()
        self.join(1, 2, 3)
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        s.report(T, "peer-2", fetched=[0])
        self.assertEqual(s.assign(T, "peer-2", 1), [])
        self.assertEqual(s.holds(T, "peer-2"), [])
        for _ in range(3):
            got = s.assign(T, "peer-3", 1)
            self.assertTrue(all(b.source != peer(2) for b in got))
            for b in got:
                s.report(T, "peer-3", failed=[(b.index, b.source.peer_id, "busy")])
        s.report(T, "peer-2", have=[0])
        self.assertEqual(s.holds(T, "peer-2"), [0])
        self.assertEqual(s.stats()["inflight"], 0)
        self.assertEqual(self.s._tasks[T].peers["peer-1"].uploads, 0)   # freed once only

    def test_failed_after_fetched(self):
        """A fetched piece that then fails verification is wanted again (from another
        source), and the failure counts against its source as any other."""
        s = self.peers_only()
        self.join(1, 2, 3)
        self.give(1, 0)
        self.give(3, 0)
        [a] = s.assign(T, "peer-2", 1)
        s.report(T, "peer-2", fetched=[0])
        s.report(T, "peer-2", failed=[(0, a.source.peer_id, "digest")])
        self.assertEqual(s.task_stats(T)["bad_pieces"], 1)
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.index, 0)
        self.assertNotEqual(b.source, a.source)
        self.assertEqual(s.stats()["inflight"], 1)

    def test_fetched_never_reported_times_out(self):
        """A fetched piece never reported held nor failed is released by the
        assignment timeout: it is wanted again, its source's slot not freed twice."""
        s = self.peers_only(max_uploads_per_peer=1, assignment_timeout=10)
        self.join(1, 2)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        s.report(T, "peer-2", fetched=[0])
        self.assertEqual(s.assign(T, "peer-2", 1), [])
        self.clock.advance(10)
        s.expire()
        self.assertEqual(s.task_stats(T)["expired"], 1)
        self.assertEqual(self.s._tasks[T].peers["peer-1"].uploads, 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual((a.index, a.source), (0, peer(1)))

    def test_fetched_from_the_seed(self):
        """A piece fetched from the seed frees one of the seed's upload slots."""
        s = self.make(pieces=2, seed_max_uploads=1)
        self.join(1, 2)
        [a] = s.assign(T, "peer-1", 1)
        self.assertEqual(a.source, SEED)
        self.assertEqual(s.assign(T, "peer-2", 1), [])
        s.report(T, "peer-1", fetched=[a.index])
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.source, SEED)
        s.report(T, "peer-1", have=[a.index])
        s.report(T, "peer-2", have=[b.index])
        self.assertEqual(self.s._tasks[T].seed_uploads, 0)

    def test_fetched_without_assignment_ignored(self):
        """A fetched report naming no in-flight assignment of the asker changes
        nothing; an index out of range is refused like in have."""
        s = self.make(pieces=1)
        self.join(1)
        s.report(T, "peer-1", fetched=[0])
        self.assertEqual(s.stats()["inflight"], 0)
        self.assertRaises(ValueError, s.report, T, "peer-1", fetched=[1])


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


# -- property test ----------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 7)),
        st.tuples(st.just("assign"), st.integers(0, 7), st.integers(1, 6)),
        st.tuples(st.just("stream"), st.integers(0, 7), st.integers(1, 6)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 100)),
        st.tuples(st.just("fail"), st.integers(0, 7), st.integers(0, 100)),
        st.tuples(st.just("fetched"), st.integers(0, 7), st.integers(0, 100)),
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
        inflight = {}    # peer id -> {index: (source id, deadline, bytes arrived)}
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
                for i in [i for i, (_src, dl, _f) in fl.items() if dl <= now]:
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
                # (odd peers stream to a reader: a queue at their sources)
                got = s.assign(T, pid, op[2], cursor=cursor, queue=op[1] % 2 == 1)
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
                    inflight[pid][a.index] = (src, clock.seconds() + 50, False)
                loads = {}
                for fl in inflight.values():
                    for src, _dl, fetched in fl.values():
                        if not fetched and (src == SEED.peer_id or src in have):
                            loads[src] = loads.get(src, 0) + 1
                for src, load in loads.items():   # (verify: slots and queue apart)
                    self.assertLessEqual(
                        load, seed_limit if src == SEED.peer_id else limit + s.stream_queue)
            elif inflight[pid]:
                keys = sorted(inflight[pid])
                i = keys[op[2] % len(keys)]
                if kind == "fetched":
                    src, dl, _f = inflight[pid][i]
                    inflight[pid][i] = (src, dl, True)   # its source's slot is free
                    s.report(T, pid, fetched=[i])
                    verify(s, T)
                    continue
                src, _dl, _f = inflight[pid].pop(i)
                if kind == "finish":
                    s.report(T, pid, have=[i])
                    have[pid].add(i)
                else:
                    s.report(T, pid, failed=[(i, src)])
            verify(s, T)
        verify(s, T)


class AdmissionTests(SynchronousTestCase):
    def test_peers_per_address(self):
        """When one address has max_peers_per_address peers in a task, its next
        peer is refused with TooManyPeers; other addresses and other tasks
        still join, and a peer that leaves frees its place."""
        from dragonfly.supernode.scheduler import TooManyPeers
        s = Scheduler(Clock(), max_peers_per_address=2)
        s.add_task(T, [100], SEED)
        s.add_task("other", [100], SEED)
        s.join(T, PeerInfo("a1", "10.0.0.1", 1))
        s.join(T, PeerInfo("a2", "10.0.0.1", 2))
        s.join(T, PeerInfo("a2", "10.0.0.1", 2))    # a rejoin is not a new peer
        self.assertRaises(TooManyPeers, s.join, T, PeerInfo("a3", "10.0.0.1", 3))
        s.join(T, PeerInfo("b1", "10.0.0.2", 1))
        s.join("other", PeerInfo("a3", "10.0.0.1", 3))
        s.leave(T, "a1")
        s.join(T, PeerInfo("a3", "10.0.0.1", 3))
        self.assertEqual(s.task_stats(T)["peers"], 3)

    def test_no_cap_by_default(self):
        """A Scheduler built without max_peers_per_address (the simulator's) admits any number."""
        s = Scheduler(Clock())
        s.add_task(T, [100], SEED)
        for i in range(100):
            s.join(T, PeerInfo(f"p{i}", "10.0.0.1", 1000 + i))
        self.assertEqual(s.task_stats(T)["peers"], 100)

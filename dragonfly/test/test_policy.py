"""Tests for dragonfly.supernode.policy: rarest-first, the in-order window of
streaming askers and source choice (through the Scheduler, and as functions)."""
import hashlib
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.interfaces import PeerInfo
from dragonfly.supernode import policy, swarmstate
from dragonfly.supernode.scheduler import Scheduler
from dragonfly.test.scheduler_invariants import SEED, T, SchedulerMixin, digest, peer, verify


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

    def test_equally_rare_all_in_order(self):
        """When the pieces a streaming peer needs are all equally rare (one peer
        holds the whole file: a warm mirror), its whole want goes in order, so
        nothing lands ahead of its cursor."""
        s = self.make(pieces=32, max_uploads_per_peer=8)
        self.join(1, 2)
        self.give(1, *range(32))
        self.assertEqual(self.indices(s.assign(T, "peer-2", 4, cursor=0)), [0, 1, 2, 3])
        s.report(T, "peer-2", have=[0, 1])
        self.assertEqual(self.indices(s.assign(T, "peer-2", 2, cursor=2)), [4, 5])
        self.assertEqual(self.indices(s.assign(T, "peer-2", 1, cursor=2)), [6])
        self.assertEqual(self.indices(s.assign(T, "peer-2", 1, cursor=2)), [7])

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
        verify(s, T)

    def test_no_cursor_unchanged(self):
        """Without a cursor the scheduler decides exactly as before streaming hints
        existed: a fixed random workload gives the recorded assignment sequence
        (recorded with the scheduler of commit d5bb52c; recorded again when
        issue 10 made a failing source avoided by its asker for every piece
        and a bad source bad for a cool-down)."""
        log = _workload(Scheduler)
        self.assertEqual(len(log), 667)
        self.assertEqual(hashlib.sha256(repr(log).encode()).hexdigest(),
                         "dc1add9cd674a7cef78ee06860c06c9454656b646d83448d8d340f5c4657e1cc")


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
        verify(s, T)


# -- the policy functions on their own ---------------------------------------

def _swarm(n_pieces=4, holders=()):
    """A Task seeded with every piece; C{holders}: (peer number, pieces) pairs."""
    task = swarmstate.Task(T, [100] * n_pieces, SEED, now=0.0)
    task.digest_mask = task.seed_mask = task.full
    peers = {}
    for n, pieces in holders:
        p = peers[n] = swarmstate.Peer(peer(n), now=0.0)
        task.peers[p.id] = p
        for i in pieces:
            swarmstate.add_have(task, p, i, 4)
    return task, peers


class PolicyFunctionTests(SynchronousTestCase):
    def test_candidates_small(self):
        """With few free peers, all of them are candidates (a rotation) and the
        look-up is exact."""
        free = list(range(10))
        pool, exact = policy.candidates(free, random.Random(1))
        self.assertTrue(exact)
        self.assertEqual(sorted(pool), free)
        self.assertEqual(policy.candidates([], random.Random(1)), ([], True))

    def test_candidates_sampled(self):
        """With many free peers, a sample of them is drawn and the look-up is not exact."""
        free = list(range(1000))
        pool, exact = policy.candidates(free, random.Random(1))
        self.assertFalse(exact)
        self.assertEqual(len(pool), 32)
        self.assertTrue(set(pool) <= set(free))

    def test_rarest(self):
        """rarest() yields the pieces asked for, lowest rarity key first."""
        task, _ = _swarm(4, [(1, [0, 1, 2]), (2, [0, 1]), (3, [0])])
        self.assertEqual(list(policy.rarest(task, 0b1111, random.Random(1))), [3, 2, 1, 0])
        self.assertEqual(list(policy.rarest(task, 0b0101, random.Random(1))), [2, 0])

    def test_sequential_quota(self):
        """An asker wanting several pieces gets half of them in order; wanting one,
        every other time unless its next piece is not in flight (while some
        piece it needs is rarer than its next ones: here 0 and 1)."""
        task, peers = _swarm(8, [(1, []), (2, [2, 3, 4, 5, 6, 7])])
        a = peers[1]
        window, quota = policy.sequential(task, a, 2, 4, task.full, task.full)
        self.assertEqual((window, quota), ([2, 3, 4, 5, 6, 7], 2))
        a.seq_turn = False
        a.fetch_mask = 0b100
        self.assertEqual(policy.sequential(task, a, 2, 1, task.full, task.full), ((), 0))
        a.fetch_mask = 0
        self.assertEqual(policy.sequential(task, a, 2, 1, task.full, task.full)[1], 1)

    def test_sequential_as_rare_as_any(self):
        """When the next pieces from the cursor are as rare as the rarest piece
        the asker needs, all of its want goes in order: the leading run of
        such pieces, up to want, whatever its turn."""
        task, peers = _swarm(8, [(1, []), (2, list(range(8)))])
        a = peers[1]
        self.assertEqual(policy.sequential(task, a, 2, 4, task.full, task.full),
                         ([2, 3, 4, 5, 6, 7], 4))
        a.seq_turn = False
        a.fetch_mask = 0b100
        self.assertEqual(policy.sequential(task, a, 2, 1, task.full, task.full), ([2, 3, 4, 5], 1))
        # Piece 4 is held twice: more common than 0-3 and 5-7. The run stops at it.
        task, peers = _swarm(8, [(1, []), (2, list(range(8))), (3, [4])])
        self.assertEqual(policy.sequential(task, peers[1], 2, 4, task.full, task.full),
                         ([2, 3, 4, 5, 6, 7], 2))
        # And a rarer piece anywhere in need keeps the half for rarest-first.
        task, peers = _swarm(8, [(1, []), (2, list(range(7)))])
        self.assertEqual(policy.sequential(task, peers[1], 2, 4, task.full, task.full)[1], 2)

    def test_pick_source(self):
        """pick_source() prefers a free holder, else None while holders are busy,
        else the seed when it may serve."""
        task, peers = _swarm(2, [(1, [0]), (2, [])])
        asker = peers[2]
        args = ([], True, True, random.Random(1), 1, 1)
        self.assertIs(policy.pick_source(task, asker, 0, *args), peers[1])
        peers[1].uploads = 1
        self.assertIsNone(policy.pick_source(task, asker, 0, *args))
        self.assertIs(policy.pick_source(task, asker, 1, *args), swarmstate.SEED)
        no_seed = ([], True, False, random.Random(1), 1, 1)
        self.assertIsNone(policy.pick_source(task, asker, 1, *no_seed))

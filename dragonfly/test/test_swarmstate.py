"""Tests for dragonfly.supernode.swarmstate: the swarm's bookkeeping, driven
directly through its functions (no Scheduler, no clock, no Deferreds)."""
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.interfaces import Assignment, PeerInfo
from dragonfly.supernode import swarmstate
from dragonfly.supernode.swarmstate import (
    SEED, Peer, Task, UnknownPeer, UnknownTask, add_have, expire_assignments, free_add,
    free_remove, record_failure, release, remove_peer, source_id, start)

SEED_INFO = PeerInfo("supernode-1", "127.0.0.1", 8001)
UP, COPIES = 2, 1     # uploads per peer, seed copies per piece
LIMITS = SimpleNamespace(bad_peer_failures=2, bad_peer_cooldown=60.0, bad_piece_askers=2)


def make_task(n=4):
    task = Task("t", [10] * n, SEED_INFO, now=0.0)
    for i in range(n):
        task.digests[i] = f"{i:064x}"
        task.digest_mask |= 1 << i
    task.seed_mask = task.full
    return task


def join(task, n):
    p = Peer(PeerInfo(f"peer-{n}", "127.0.0.1", 10000 + n), now=0.0)
    task.peers[p.id] = p
    return p


class ErrorTests(SynchronousTestCase):
    def test_messages(self):
        """UnknownTask and UnknownPeer are KeyErrors that name what is unknown."""
        self.assertIsInstance(UnknownTask("t"), KeyError)
        self.assertEqual(str(UnknownTask("t")), "unknown task 't'")
        self.assertEqual(str(UnknownPeer("p")), "unknown peer 'p'")


class TaskTests(SynchronousTestCase):
    def test_new_task(self):
        """A new task has every piece in the rarity bucket 0 and nothing held."""
        task = make_task(3)
        self.assertEqual((task.n, task.full), (3, 0b111))
        self.assertEqual(task.buckets, {0: 0b111})
        self.assertEqual(task.keys, [0])
        self.assertEqual(task.avail, 0b111)

    def test_move(self):
        """move() takes a piece from its rarity bucket to the next one, dropping
        emptied buckets and keeping the keys sorted."""
        task = make_task(3)
        task.move(1, 2)
        self.assertEqual(task.buckets, {0: 0b101, 2: 0b010})
        self.assertEqual(task.keys, [0, 2])
        task.move(1, -2)
        self.assertEqual(task.buckets, {0: 0b111})
        self.assertEqual(task.keys, [0])

    def test_avail(self):
        """Pieces are available when their digest is known and the seed or a
        peer holds them."""
        task = Task("t", [10, 10], SEED_INFO, now=0.0)
        self.assertEqual(task.avail, 0)
        task.digest_mask = 0b11
        task.held = 0b10
        self.assertEqual(task.avail, 0b10)


class HolderTests(SynchronousTestCase):
    def test_add_have(self):
        """A new piece makes the peer a source on the free list and a holder of
        the piece; the same piece again changes nothing."""
        task = make_task()
        p = join(task, 1)
        self.assertTrue(add_have(task, p, 2, UP))
        self.assertFalse(add_have(task, p, 2, UP))
        self.assertEqual((p.have, task.count[2], task.held, task.sources), (0b100, 1, 0b100, 1))
        self.assertEqual(task.free, [p])
        self.assertEqual(task.holders[2], [p])
        self.assertEqual(task.few_free, 0b100)
        self.assertEqual(task.key[2], 1)

    def test_done(self):
        """Holding every piece counts the peer as done."""
        task = make_task(2)
        p = join(task, 1)
        add_have(task, p, 0, UP)
        self.assertEqual(task.done, 0)
        add_have(task, p, 1, UP)
        self.assertEqual(task.done, 1)

    def test_free_list(self):
        """free_remove() and free_add() keep the free list and the positions in
        it consistent; a peer at its upload limit is not added."""
        task = make_task()
        a, b = join(task, 1), join(task, 2)
        add_have(task, a, 0, UP)
        add_have(task, b, 0, UP)
        free_remove(task, a)
        self.assertEqual((task.free, a.free_pos, b.free_pos), ([b], -1, 0))
        self.assertEqual(task.free_holders[0], 1)
        a.uploads = UP
        free_add(task, a, UP)
        self.assertEqual(task.free, [b])
        a.uploads = 0
        free_add(task, a, UP)
        self.assertEqual((task.free, a.free_pos), ([b, a], 1))
        self.assertEqual(task.free_holders[0], 2)


class AssignmentTests(SynchronousTestCase):
    def test_start_and_release_peer_source(self):
        """start() takes one upload slot of the source and returns the
        Assignment; release() gives it back and says what the source serves."""
        task = make_task()
        src, asker = join(task, 1), join(task, 2)
        add_have(task, src, 0, UP)
        a = start(task, asker, 0, src, 30.0, UP, COPIES)
        self.assertEqual(a, Assignment(0, 10, task.digests[0], src.info))
        self.assertEqual((src.uploads, asker.fetch_mask, task.n_inflight), (1, 1, 1))
        self.assertEqual(task.assigned, {"peer": 1, "supernode": 0})
        offered = release(task, asker, asker.fetching[0], UP, COPIES)
        self.assertEqual(offered, src.have)
        self.assertEqual((src.uploads, asker.fetch_mask, task.n_inflight), (0, 0, 0))

    def test_source_at_limit_leaves_free_list(self):
        """A source that reaches its upload limit leaves the free list."""
        task = make_task()
        src = join(task, 1)
        add_have(task, src, 0, UP)
        start(task, join(task, 2), 0, src, 30.0, UP, COPIES)
        self.assertEqual(task.free, [src])
        start(task, join(task, 3), 0, src, 30.0, UP, COPIES)
        self.assertEqual(task.free, [])

    def test_seed_copies(self):
        """A piece from the seed is busy at its copy limit until released."""
        task = make_task()
        asker = join(task, 1)
        start(task, asker, 1, SEED, 30.0, UP, COPIES)
        self.assertEqual((task.seed_busy, task.seed_uploads, asker.seed_got), (0b10, 1, 1))
        self.assertEqual(source_id(task, asker.fetching[1].source), SEED_INFO.peer_id)
        self.assertEqual(release(task, asker, asker.fetching[1], UP, COPIES), task.seed_mask)
        self.assertEqual((task.seed_busy, task.seed_uploads, asker.seed_got), (0, 0, 1))

    def test_expire_assignments(self):
        """expire_assignments() releases what is due by now, and only that."""
        task = make_task()
        asker = join(task, 1)
        start(task, asker, 0, SEED, 10.0, UP, COPIES)
        start(task, asker, 1, SEED, 20.0, UP, COPIES)
        self.assertEqual(expire_assignments(task, 9.0, UP, COPIES), (0, 0))
        self.assertEqual(expire_assignments(task, 10.0, UP, COPIES), (1, task.seed_mask))
        self.assertEqual(list(asker.fetching), [1])
        self.assertEqual(task.expired, 1)


class FailureAndRemovalTests(SynchronousTestCase):
    def test_bad_source(self):
        """A source reported failing by bad_failures askers is bad: not a source,
        off the free list, its pieces no longer held by a good peer."""
        task = make_task()
        src = join(task, 1)
        add_have(task, src, 0, UP)
        for n in (2, 3):
            record_failure(task, join(task, n), 0, src.id, LIMITS, 0.0)
        self.assertTrue(src.bad)
        self.assertEqual((task.sources, task.free, task.held_good, task.count_good[0]),
                         (0, [], 0, 0))
        self.assertEqual(task.failures, 2)
        self.assertEqual(task.peers["peer-2"].failed, {0: {src.id}})

    def test_remove_peer(self):
        """remove_peer() releases the peer's fetches and forgets its pieces."""
        task = make_task()
        src, asker = join(task, 1), join(task, 2)
        add_have(task, src, 0, UP)
        start(task, asker, 0, src, 30.0, UP, COPIES)
        self.assertEqual(remove_peer(task, asker, UP, COPIES), (1, src.have))
        self.assertEqual(src.uploads, 0)
        self.assertEqual(remove_peer(task, src, UP, COPIES), (0, 0))
        self.assertFalse(src.alive)
        self.assertEqual((task.peers, task.count[0], task.held, task.free), ({}, 0, 0, []))
        self.assertEqual(task.buckets, {0: task.full})

    def test_many_holders(self):
        """Past SCAN_HOLDERS holders a piece leaves the few-holder set, and comes
        back when holders leave."""
        task = make_task(1)
        peers = [join(task, n) for n in range(swarmstate.SCAN_HOLDERS + 1)]
        for p in peers:
            add_have(task, p, 0, UP)
        self.assertEqual((task.few, task.few_free), (0, 0))
        remove_peer(task, peers[0], UP, COPIES)
        self.assertEqual((task.few, task.few_free), (1, 1))
        self.assertEqual(task.free_holders[0], swarmstate.SCAN_HOLDERS)


class PieceSizesTests(SynchronousTestCase):
    def test_like_the_list(self):
        """PieceSizes reads, compares and iterates like the list of piece sizes."""
        ps = swarmstate.PieceSizes(25, 10)
        self.assertEqual((len(ps), list(ps), ps[0], ps[-1]), (3, [10, 10, 5], 10, 5))
        self.assertRaises(IndexError, ps.__getitem__, 3)
        self.assertEqual(ps, [10, 10, 5])
        self.assertEqual(ps, swarmstate.PieceSizes(25, 10))
        self.assertNotEqual(ps, swarmstate.PieceSizes(26, 10))
        self.assertNotEqual(ps, [10, 10, 6])
        self.assertEqual(swarmstate.PieceSizes(5, 10), swarmstate.PieceSizes(5, 20))
        self.assertEqual(len(swarmstate.PieceSizes(0, 10)), 0)

    def test_huge_task_holds_no_per_piece_objects(self):
        """When a task of 2^40 bytes is made, no per-piece size list or holder
        list is built; holders appear only for pieces someone holds."""
        task = Task("t", swarmstate.PieceSizes(1 << 40, 4 << 20), SEED_INFO, now=0.0)
        self.assertEqual(task.n, 1 << 18)
        self.assertIsInstance(task.sizes, swarmstate.PieceSizes)
        self.assertEqual(len(task.holders), 0)
        self.assertEqual(task.sizes[task.n - 1], 4 << 20)

    def test_cold_until_a_piece_is_held(self):
        """When nobody holds a piece, a task's per-piece arrays read as their
        defaults without per-piece lists; the first piece held (or any
        write) gives them real storage, with the same values."""
        task = Task("t", swarmstate.PieceSizes(1 << 40, 4 << 20), SEED_INFO, now=0.0)
        self.assertTrue(task.cold)
        self.assertNotIsInstance(task.count, list)
        self.assertEqual((task.count[5], task.digests[task.n - 1], len(task.key)),
                         (0, None, task.n))
        self.assertRaises(IndexError, task.count.__getitem__, task.n)
        p = join(task, 1)
        add_have(task, p, 7, UP)
        self.assertFalse(task.cold)
        self.assertIsInstance(task.count, list)
        self.assertEqual((task.count[7], task.count[6], task.key[7]), (1, 0, 1))
        small = Task("s", [10] * 3, SEED_INFO, now=0.0)
        small.inflight[1] = 2
        self.assertEqual((small.cold, small.inflight, small.count), (False, [0, 2, 0], [0] * 3))

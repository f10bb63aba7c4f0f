"""The scheduler's invariant checker and the fixture its tests share.

L{verify} recomputes every derived count of a task in a
L{dragonfly.supernode.scheduler.Scheduler} from its peers and asserts the
scheduler's bookkeeping matches (O(peers * pieces): tests only).
L{SchedulerMixin} builds a scheduler for a test and verifies every task
after it.
"""
import random

from twisted.internet.task import Clock

from dragonfly.interfaces import PeerInfo
from dragonfly.supernode.bitset import bits
from dragonfly.supernode.scheduler import Scheduler
from dragonfly.supernode import swarmstate

T = "task-1"
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)


def peer(n):
    return PeerInfo(f"peer-{n}", "127.0.0.1", 10000 + n)


def digest(i):
    return f"{i:064x}"


class SchedulerMixin:
    scheduler_class = Scheduler

    def make(self, pieces=4, seeded=True, **kw):
        self.clock = Clock()
        kw.setdefault("rng", random.Random(7))
        self.s = self.scheduler_class(self.clock, **kw)
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
                verify(self.s, task_id)


def verify(s, task_id):
    """Recompute every derived count of C{task_id} and assert it matches.

    A debugging and test aid: O(peers * pieces).
    """
    task = s._task(task_id)
    n = task.n
    count = [0] * n
    good = [0] * n
    inflight = [0] * n
    seed_inflight = [0] * n
    uploads = {}
    queued = {}     # source id -> its queued places taken (no slot: see queueing)
    seed_uploads = 0
    done = sources = seed_given = 0
    for pid, p in task.peers.items():
        assert p.id == pid and p.alive
        if p.have == task.full:
            done += 1
        if p.have and not p.bad:
            sources += 1
        seed_given += p.seed_got
        for i in bits(p.have):
            count[i] += 1
            if not p.bad:
                good[i] += 1
        mask = 0
        seed_fetches = 0
        for i, f in p.fetching.items():
            assert f.index == i and not p.have >> i & 1
            mask |= 1 << i
            inflight[i] += 1
            if f.source is swarmstate.SEED:
                seed_uploads += not f.fetched   # (fetched: its slot is free again)
                seed_fetches += not f.fetched
                seed_inflight[i] += 1
            elif f.fetched:
                assert f.source is not p
            elif f.source.alive:
                assert f.source is not p
                book = queued if f.queued else uploads
                book[f.source.id] = book.get(f.source.id, 0) + 1
        assert mask == p.fetch_mask
        assert seed_fetches == p.seed_fetches
    assert (done, sources, seed_given) == (task.done, task.sources, task.seed_given)
    assert count == task.count and good == task.count_good
    assert inflight == task.inflight and seed_inflight == task.seed_inflight
    assert seed_uploads == task.seed_uploads <= s.seed_max_uploads
    assert sum(inflight) == task.n_inflight <= len(task.expiry)
    held = held_good = few = busy = 0
    for i in range(n):
        if count[i]:
            held |= 1 << i
            if count[i] <= swarmstate.SCAN_HOLDERS:
                few |= 1 << i
        if good[i]:
            held_good |= 1 << i
        if seed_inflight[i] >= s.seed_piece_copies:
            busy |= 1 << i
        assert task.key[i] == count[i] + inflight[i]
        assert task.buckets[task.key[i]] >> i & 1
        assert {h.id for h in task.holders[i] if h.alive} == {
            p.id for p in task.peers.values() if p.have >> i & 1}
    assert (held, held_good, few, busy) == (task.held, task.held_good, task.few, task.seed_busy)
    few_free = 0
    for i in bits(few):
        fh = sum(1 for p in task.peers.values() if p.have >> i & 1 and p.free_pos >= 0)
        assert task.free_holders[i] == fh, (i, task.free_holders[i], fh)
        if fh:
            few_free |= 1 << i
    assert few_free == task.few_free
    assert task.keys == sorted(task.buckets) and all(task.buckets.values())
    allbits = 0
    for m in task.buckets.values():
        assert not allbits & m
        allbits |= m
    assert allbits == task.full
    for p in task.peers.values():
        assert p.uploads == uploads.get(p.id, 0) <= s.max_uploads_per_peer
        assert p.queued == queued.get(p.id, 0) <= s.stream_queue
        in_free = p.free_pos >= 0
        assert in_free == bool(p.have and not p.bad and p.uploads < s.max_uploads_per_peer)
        if in_free:
            assert task.free[p.free_pos] is p
        if p.down is not None:   # marked down (unreachable): bad until then
            assert p.bad and p.bad_until == p.down, (p.id, p.bad, p.bad_until, p.down)
    assert len(task.free) == sum(1 for p in task.peers.values() if p.free_pos >= 0)

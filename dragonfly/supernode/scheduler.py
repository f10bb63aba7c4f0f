"""Which peer fetches which piece from whom: the supernode's scheduler.

Pure bookkeeping: no I/O, time comes from the injected clock and randomness
from the injected C{random.Random}. Built for thousands of peers per task:

  - piece sets are Python ints used as bitsets (a peer's pieces, the pieces it
    is fetching, the pieces of each rarity class), so "what does this asker
    still need" is a handful of big-int operations;
  - pieces are kept in buckets keyed by their replica count (holders plus
    in-flight copies), so rarest-first walks the buckets from the lowest key
    and never sorts;
  - a source is found from the (usually small) list of peers with a free
    upload slot, or from the piece's holders (scanned when few, sampled when
    many): never a scan over every peer for every piece.

Policy (docs/design.md "Scheduler"):

  - rarest-first among the pieces the asker lacks and is not fetching, random
    tie-break;
  - an asker that streams the file in order passes a C{cursor} (it holds
    every piece below it): part of its slots go to the lowest pieces from
    the cursor on that it still needs (a small window), in order, the rest
    stay rarest-first so the swarm keeps spreading pieces;
  - the source is the least-loaded eligible holder peer under its upload limit;
    eligible = alive, not marked bad, not reported failing by this asker for
    this piece;
  - the seed (the supernode's CDN copy) serves a piece only when no eligible
    peer holds it, and then, by default, to one asker at a time while no peer
    holds it yet ("super-seeding"): the swarm, not the seed, multiplies it.
    When every eligible holder of a piece is busy the asker gets a different
    piece (or waits) rather than the seed;
  - pieces become assignable from the seed as the CDN reports them
    (L{Scheduler.seed_has}), so peers start before the origin fetch ends;
  - in-flight assignments hold one upload slot of their source until the
    asker reports the piece (C{have}) or its failure (C{failed}), or until
    C{assignment_timeout} passes; peers silent for C{peer_timeout} are dropped;
  - a source reported failing by C{bad_peer_failures} different askers is
    never used again by anybody in that task.
"""
import random
from bisect import bisect_left, insort
from collections import deque

from twisted.internet import defer
from zope.interface import implementer

from dragonfly.interfaces import Assignment, IScheduler, PeerInfo

__all__ = ["Scheduler", "UnknownTask", "UnknownPeer"]


class UnknownTask(KeyError):
    """The scheduler does not know this task (never added, or removed)."""

    def __str__(self):
        return f"unknown task {self.args[0]!r}"


class UnknownPeer(KeyError):
    """The peer is not (or no longer) in this task's swarm: it must join again."""

    def __str__(self):
        return f"unknown peer {self.args[0]!r}"


# Scan every holder of a piece when it has at most this many; sample above.
_SCAN_HOLDERS = 24
_SAMPLE_HOLDERS = 12
# Look for sources among the peers with free upload slots when they are few.
_SMALL_FREE = 64
_POOL_SAMPLE = 32
# Failed source look-ups per assign() before only sure candidates are tried.
_MAX_MISSES = 8
# Streaming askers (a cursor): the in-order window is this many times their
# want (at least _MIN_WINDOW pieces) of the pieces they still need.
_WINDOW_FACTOR = 2
_MIN_WINDOW = 4
# Bits examined per step when looking for the lowest set bits of a big bitset.
_CHUNK = 1024
_CHUNK_MASK = (1 << _CHUNK) - 1


def _lowest_bits(x, k):
    """The (at most) C{k} lowest set bits of C{x}, lowest first.

    Works on bounded slices of C{x}, so the cost grows with C{k} and with the
    gaps skipped, not with C{x}'s width per bit found.
    """
    out = []
    base = 0
    while x and len(out) < k:
        chunk = x & _CHUNK_MASK
        if not chunk:
            skip = (x & -x).bit_length() - 1
            x >>= skip
            base += skip
            continue
        while chunk and len(out) < k:
            low = chunk & -chunk
            out.append(base + low.bit_length() - 1)
            chunk ^= low
        x >>= _CHUNK
        base += _CHUNK
    return out


def _bits(x):
    """The indices of the set bits of C{x}, lowest first."""
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def _random_bits(x, n, rng):
    """The set bits of C{x} (all below C{n}) in random order."""
    rand = rng.random
    k = x.bit_count()
    if k <= 16 or k * 16 < n:
        yield from _draw(list(_bits(x)), rand)
        return
    # Dense: rejection-sample positions, then draw from whatever is left.
    misses = 0
    while x and misses < 64:
        i = int(rand() * n)
        bit = 1 << i
        if x & bit:
            x ^= bit
            misses = 0
            yield i
        else:
            misses += 1
    yield from _draw(list(_bits(x)), rand)


def _draw(items, rand):
    """Yield C{items} in random order, drawing lazily (callers often stop early)."""
    while items:
        j = int(rand() * len(items))
        item = items[j]
        items[j] = items[-1]
        items.pop()
        yield item


class _Seed:
    """Marker for the supernode's own copy as a source."""

    __slots__ = ()


_SEED = _Seed()


class _Fetch:
    """One in-flight assignment: asker fetches C{index} from C{source}."""

    __slots__ = ("index", "source", "deadline")

    def __init__(self, index, source, deadline):
        self.index = index
        self.source = source        # _Peer or _SEED
        self.deadline = deadline


class _Peer:
    __slots__ = ("info", "id", "have", "fetching", "fetch_mask", "uploads",
                 "seed_fetches", "seed_got", "free_pos", "last_seen", "failed", "failed_mask",
                 "fail_reporters", "bad", "alive", "joined", "seq_turn")

    def __init__(self, info, now):
        self.info = info
        self.id = info.peer_id
        self.have = 0                   # bitset of held pieces
        self.fetching = {}              # index -> _Fetch
        self.fetch_mask = 0
        self.uploads = 0                # in-flight assignments with us as source
        self.seed_fetches = 0           # our in-flight assignments from the seed
        self.seed_got = 0               # assignments from the seed so far
        self.free_pos = -1              # index in _Task.free, -1 when absent
        self.last_seen = now
        self.failed = {}                # index -> set of source ids that failed us
        self.failed_mask = 0
        self.fail_reporters = set()     # askers that saw us fail
        self.bad = False
        self.alive = True
        self.joined = now
        self.seq_turn = True            # streaming, want 1: in-order next (else rarest)


class _Task:
    def __init__(self, task_id, piece_sizes, seed, now):
        self.id = task_id
        self.sizes = list(piece_sizes)
        n = self.n = len(self.sizes)
        self.full = (1 << n) - 1
        self.seed = seed
        self.created = now
        self.digests = [None] * n
        self.digest_mask = 0
        self.seed_mask = 0          # pieces the seed holds
        self.seed_uploads = 0
        self.seed_given = 0         # seed assignments to current peers
        self.seed_inflight = [0] * n
        self.seed_busy = 0          # pieces at their seed copy limit
        self.count = [0] * n        # live peer holders
        self.count_good = [0] * n   # live holders not marked bad
        self.held = 0               # count > 0
        self.held_good = 0          # count_good > 0
        self.few = 0                # 0 < count <= _SCAN_HOLDERS
        self.free_holders = [0] * n # of a few-holder piece: holders in self.free
        self.few_free = 0           # few-holder pieces with a free holder
        self.inflight = [0] * n
        self.holders = [[] for _ in range(n)]   # _Peer lists, dead removed lazily
        self.holders_dead = [0] * n
        self.key = [0] * n          # count + inflight: the rarity key
        self.buckets = {0: self.full} if n else {}
        self.keys = [0] if n else []
        self.peers = {}
        self.done = 0               # peers holding every piece
        self.sources = 0            # peers holding a piece, not bad
        self.free = []              # peers holding pieces with a free upload slot, not bad
        self.expiry = deque()       # (deadline, asker, _Fetch) in creation order
        self.n_inflight = 0         # live entries of expiry
        self.waiters = {}           # Deferred -> None, oldest first
        self.assigned = {"peer": 0, "supernode": 0}
        self.failures = 0
        self.expired = 0

    @property
    def avail(self):
        return self.digest_mask & (self.seed_mask | self.held)

    def move(self, i, delta):
        """Change piece C{i}'s rarity key by C{delta}."""
        old = self.key[i]
        new = old + delta
        self.key[i] = new
        bit = 1 << i
        m = self.buckets[old] ^ bit
        if m:
            self.buckets[old] = m
        else:
            del self.buckets[old]
            del self.keys[bisect_left(self.keys, old)]
        m = self.buckets.get(new)
        if m is None:
            self.buckets[new] = bit
            insort(self.keys, new)
        else:
            self.buckets[new] = m | bit


@implementer(IScheduler)
class Scheduler:
    """Assigns pieces of each task to the peers downloading it.

    @param clock: an L{IReactorTime} (only C{seconds()} is used).
    @param max_uploads_per_peer: in-flight assignments a peer serves at once.
    @param seed_max_uploads: in-flight assignments the seed serves at once.
    @param assignment_timeout: seconds after which an unreported assignment
        is dropped and its upload slot freed.
    @param peer_timeout: seconds of silence after which a peer is dropped.
    @param rng: a C{random.Random} (tie-breaks and sampling).
    @param bad_peer_failures: a source reported failing by this many
        different askers of a task is not used again in that task.
    @param seed_piece_copies: while no eligible peer holds a piece, the seed
        sends it to at most this many askers at a time.
    """

    def __init__(self, clock, max_uploads_per_peer=4, seed_max_uploads=8,
                 assignment_timeout=60.0, peer_timeout=120.0, rng=None,
                 bad_peer_failures=3, seed_piece_copies=1):
        if max_uploads_per_peer < 1 or seed_max_uploads < 1:
            raise ValueError("upload limits must be at least 1")
        if seed_piece_copies < 1 or bad_peer_failures < 1:
            raise ValueError("seed_piece_copies and bad_peer_failures must be at least 1")
        self.clock = clock
        self.max_uploads_per_peer = max_uploads_per_peer
        self.seed_max_uploads = seed_max_uploads
        self.assignment_timeout = assignment_timeout
        self.peer_timeout = peer_timeout
        self.rng = rng if rng is not None else random.Random()
        self.bad_peer_failures = bad_peer_failures
        self.seed_piece_copies = seed_piece_copies
        self._tasks = {}
        self._removed_assigned = {"peer": 0, "supernode": 0}

    # -- tasks -------------------------------------------------------------

    def add_task(self, task_id, piece_sizes, seed, digests=None):
        """Start scheduling C{task_id} (idempotent for the same pieces).

        @param piece_sizes: the size of every piece, in order.
        @param seed: the L{PeerInfo} of the supernode's piece port.
        @param digests: optional hex piece digest per piece the seed already holds
            (None entries for pieces it does not); same as calling
            L{seed_has} for each.
        """
        if not isinstance(seed, PeerInfo):
            raise TypeError("seed must be a PeerInfo")
        sizes = [int(s) for s in piece_sizes]
        if any(s <= 0 for s in sizes):
            raise ValueError("piece sizes must be positive")
        if digests is not None:
            digests = list(digests)
            if len(digests) != len(sizes):
                raise ValueError("one digest per piece")
            if not all(d is None or (isinstance(d, str) and d) for d in digests):
                raise ValueError("digests must be non-empty strings or None")
        task = self._tasks.get(task_id)
        if task is not None and task.sizes == sizes:
            task.seed = seed
        else:
            if task is not None:
                self.remove_task(task_id)
            task = self._tasks[task_id] = _Task(task_id, sizes, seed, self.clock.seconds())
        if digests is not None:
            for i, d in enumerate(digests):
                if d is not None:
                    self.seed_has(task_id, i, d)

    def remove_task(self, task_id):
        """Forget C{task_id}; pending long-polls fire."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        for k, v in task.assigned.items():
            self._removed_assigned[k] += v
        for p in task.peers.values():
            p.alive = False
        self._wake(task, len(task.waiters))

    def has_task(self, task_id):
        return task_id in self._tasks

    def _task(self, task_id):
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _peer(self, task, peer_id):
        try:
            return task.peers[peer_id]
        except KeyError:
            raise UnknownPeer(peer_id) from None

    def _index(self, task, index):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < task.n:
            raise ValueError(f"piece index out of range: {index!r}")
        return index

    def seed_has(self, task_id, index, digest):
        """The CDN holds piece C{index} (hex piece digest C{digest}): assignable now.

        A digest different from the one known for that piece means the file
        changed: the task starts afresh (peers must join again).
        """
        task = self._task(task_id)
        i = self._index(task, index)
        if not isinstance(digest, str) or not digest:
            raise ValueError("digest must be a non-empty string")
        bit = 1 << i
        known = task.digests[i]
        if known == digest:
            if task.seed_mask & bit:
                return
        elif known is not None:
            # The content changed under the same task id: what the swarm
            # holds is stale. Start the task afresh.
            sizes, seed = task.sizes, task.seed
            self.remove_task(task_id)
            task = self._tasks[task_id] = _Task(task_id, sizes, seed, self.clock.seconds())
        task.digests[i] = digest
        task.digest_mask |= bit
        task.seed_mask |= bit
        self._wake(task, self.seed_piece_copies + 1, bit)

    # -- peers -------------------------------------------------------------

    def join(self, task_id, peer):
        """C{peer} (a L{PeerInfo}) takes part in C{task_id}; rejoining refreshes it."""
        task = self._task(task_id)
        if not isinstance(peer, PeerInfo):
            raise TypeError("peer must be a PeerInfo")
        if peer.peer_id == task.seed.peer_id:
            raise ValueError("a peer cannot use the seed's id")
        now = self.clock.seconds()
        p = task.peers.get(peer.peer_id)
        if p is not None:
            p.info = peer
            p.last_seen = now
            return
        task.peers[peer.peer_id] = _Peer(peer, now)

    def touch(self, task_id, peer_id):
        """C{peer_id} is still there (a heartbeat): True if it is a member of the task.

        Peers that finished a task keep serving it; they stop calling
        L{assign}, so without this they would be dropped as silent.
        """
        task = self._tasks.get(task_id)
        p = task.peers.get(peer_id) if task is not None else None
        if p is None:
            return False
        p.last_seen = self.clock.seconds()
        return True

    def leave(self, task_id, peer_id):
        """C{peer_id} is gone: its slots are freed and its pieces forgotten."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        p = task.peers.get(peer_id)
        if p is None:
            return
        released, offered = self._remove_peer(task, p)
        self._wake(task, released + 1, offered)

    def _remove_peer(self, task, p):
        released = 0
        offered = 0
        for f in list(p.fetching.values()):
            offered |= self._release(task, p, f)
            released += 1
        p.alive = False
        self._free_remove(task, p)
        if p.have == task.full:
            task.done -= 1
        if p.have and not p.bad:
            task.sources -= 1
        task.seed_given -= p.seed_got
        for i in _bits(p.have):
            c = task.count[i] = task.count[i] - 1
            task.move(i, -1)
            if c == 0:
                task.held &= ~(1 << i)
                task.few &= ~(1 << i)
            elif c == _SCAN_HOLDERS:
                task.few |= 1 << i
                fh = task.free_holders[i] = sum(
                    1 for h in task.holders[i] if h.alive and h.free_pos >= 0)
                if fh:
                    task.few_free |= 1 << i
            if not p.bad:
                task.count_good[i] -= 1
                if task.count_good[i] == 0:
                    task.held_good &= ~(1 << i)
            task.holders_dead[i] += 1
            hl = task.holders[i]
            if task.holders_dead[i] * 2 > len(hl):
                task.holders[i] = [h for h in hl if h.alive]
                task.holders_dead[i] = 0
        del task.peers[p.id]
        return released, offered

    def _free_add(self, task, p):
        if (p.free_pos < 0 and p.have and p.alive and not p.bad
                and p.uploads < self.max_uploads_per_peer):
            p.free_pos = len(task.free)
            task.free.append(p)
            few = p.have & task.few
            if few:
                fh = task.free_holders
                for i in _bits(few):
                    fh[i] += 1
                task.few_free |= few

    def _free_remove(self, task, p):
        pos = p.free_pos
        if pos < 0:
            return
        last = task.free.pop()
        if last is not p:
            task.free[pos] = last
            last.free_pos = pos
        p.free_pos = -1
        few = p.have & task.few
        if few:
            fh = task.free_holders
            for i in _bits(few):
                fh[i] -= 1
                if not fh[i]:
                    task.few_free &= ~(1 << i)

    # -- reports -----------------------------------------------------------

    def report(self, task_id, peer_id, have=(), failed=()):
        """C{peer_id} now holds the pieces in C{have}; C{failed} lists
        C{(index, source_peer_id)} fetches that failed.

        Both free the upload slot of the matching in-flight assignment.
        """
        task = self._task(task_id)
        p = self._peer(task, peer_id)
        have = [self._index(task, i) for i in have]
        failed = [(self._index(task, i), s) for i, s in failed]
        for _i, s in failed:
            if not isinstance(s, str):
                raise ValueError("failed source must be a peer id")
        p.last_seen = self.clock.seconds()
        opportunities = 0
        offered = 0     # pieces that freed slots or new holders can now serve
        for i, s in failed:
            f = p.fetching.get(i)
            if f is not None and self._source_id(task, f.source) == s:
                offered |= self._release(task, p, f)
                opportunities += 1
            self._record_failure(task, p, i, s)
        new = 0
        for i in have:
            f = p.fetching.get(i)
            if f is not None:
                offered |= self._release(task, p, f)
                opportunities += 1
            if self._add_have(task, p, i):
                new |= 1 << i
        if new and not p.bad:
            offered |= p.have
            opportunities += max(0, self.max_uploads_per_peer - p.uploads)
        if opportunities:
            self._wake(task, opportunities + 1, offered)

    def _source_id(self, task, source):
        return task.seed.peer_id if source is _SEED else source.id

    def _record_failure(self, task, asker, i, source_id):
        task.failures += 1
        s = asker.failed.get(i)
        if s is None:
            s = asker.failed[i] = set()
        s.add(source_id)
        asker.failed_mask |= 1 << i
        src = task.peers.get(source_id)
        if src is None or src is asker or src.bad:
            return
        src.fail_reporters.add(asker.id)
        if len(src.fail_reporters) >= self.bad_peer_failures:
            src.bad = True
            if src.have:
                task.sources -= 1
            self._free_remove(task, src)
            for j in _bits(src.have):
                task.count_good[j] -= 1
                if task.count_good[j] == 0:
                    task.held_good &= ~(1 << j)

    def _add_have(self, task, p, i):
        bit = 1 << i
        if p.have & bit:
            return False
        first = not p.have
        if first and not p.bad:
            task.sources += 1
        p.have |= bit
        if p.have == task.full:
            task.done += 1
        c = task.count[i] = task.count[i] + 1
        if c == 1:
            task.few |= bit
        elif c == _SCAN_HOLDERS + 1:
            task.few &= ~bit
            task.few_free &= ~bit
            task.free_holders[i] = 0
        if first:
            self._free_add(task, p)
        elif p.free_pos >= 0 and task.few & bit:
            task.free_holders[i] += 1
            task.few_free |= bit
        task.move(i, 1)
        task.held |= bit
        if not p.bad:
            task.count_good[i] += 1
            task.held_good |= bit
        task.holders[i].append(p)
        if i in p.failed:
            del p.failed[i]
            p.failed_mask &= ~bit
        return True

    def _release(self, task, asker, f):
        """End in-flight assignment C{f} of C{asker}: free its slot.

        Returns the pieces the freed source can serve.
        """
        i = f.index
        del asker.fetching[i]
        asker.fetch_mask &= ~(1 << i)
        task.n_inflight -= 1
        task.inflight[i] -= 1
        task.move(i, -1)
        src = f.source
        if src is _SEED:
            asker.seed_fetches -= 1
            task.seed_uploads -= 1
            task.seed_inflight[i] -= 1
            if task.seed_inflight[i] < self.seed_piece_copies:
                task.seed_busy &= ~(1 << i)
            return task.seed_mask
        if src.alive:
            src.uploads -= 1
            self._free_add(task, src)
            if not src.bad:
                return src.have
        return 0

    # -- assignment --------------------------------------------------------

    def piece_count(self, task_id):
        """The number of pieces of C{task_id}."""
        return self._task(task_id).n

    def assign(self, task_id, peer_id, want, cursor=None):
        """Up to C{want} new L{Assignment}s for C{peer_id}, rarest pieces first.

        An asker with nothing in flight never leaves empty-handed while the
        seed has a piece it needs and a free upload slot (L{_rescue}): the
        fairness rules below must not starve a peer, e.g. when the holders of
        what it lacks died silently and are not timed out yet.

        @param cursor: None, or the index (0 to piece count) up to which the
            asker streams the file in order and holds every piece: it then
            gets, for part of C{want}, the lowest pieces from C{cursor} on
            that it needs, lowest first in the answer (see L{_sequential}).
        @raise ValueError: for a cursor that is not an int in that range
            (nothing is changed).
        """
        out = self._assign(task_id, peer_id, want, cursor)
        if out or not isinstance(want, int) or want <= 0:
            return out
        task = self._task(task_id)
        a = self._peer(task, peer_id)
        if a.fetching:
            return out
        return self._rescue(task, a)

    def _rescue(self, task, a):
        """At most one piece for an idle asker that got nothing.

        The seed's fair share over time (no asker far above the average) is
        waived here: peers that stopped asking (dead, not timed out yet) must
        not hold the others back. Every other rule stands: free holders
        first, busy live holders mean waiting, the seed's slot and copy limits.
        """
        if task.seed_uploads >= self.seed_max_uploads:
            return []
        lacking = task.avail & ~a.have & ~a.fetch_mask
        for i in self._rarest(task, lacking) if lacking else ():
            src = self._pick_source(task, a, i, task.free, True, True)
            if src is not None:
                return [self._start(task, a, i, src, self.clock.seconds())]
        return []

    def _assign(self, task_id, peer_id, want, cursor):
        task = self._task(task_id)
        a = self._peer(task, peer_id)
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)
                                   or not 0 <= cursor <= task.n):
            raise ValueError(f"cursor out of range: {cursor!r}")
        now = self.clock.seconds()
        a.last_seen = now
        self._expire_assignments(task, now)
        if not isinstance(want, int) or want <= 0:
            return []
        need = task.avail & ~a.have & ~a.fetch_mask
        if not need:
            return []
        # Fair share of the swarm's upload slots: when there are fewer slots
        # than askers want, nobody hoards them (and early pieces spread wide).
        active = max(1, len(task.peers) - task.done)
        slots = task.sources * self.max_uploads_per_peer + self.seed_max_uploads
        want = min(want, max(1, -(-slots // active)) - len(a.fetching))
        if want <= 0:
            return []
        # Candidate sources: every peer with a free upload slot when they are
        # few, else a random sample of them; pieces with few holders are
        # looked up through their holder lists instead.
        free = task.free
        nfree = len(free)
        rng = self.rng
        if nfree <= _SMALL_FREE:
            exact = True
            if nfree:
                start = int(rng.random() * nfree)
                pool = free[start:] + free[:start]
            else:
                pool = free
        else:
            exact = False
            rand = rng.random
            pool = [free[int(rand() * nfree)] for _ in range(_POOL_SAMPLE)]
        union = 0
        for q in pool:
            union |= q.have
        # The seed is shared fairly among the peers still downloading: at
        # once (its slots) and over time (no asker far above the average).
        seed_share = -(-self.seed_max_uploads // active)
        seed_ok = (task.seed_uploads < self.seed_max_uploads
                   and a.seed_fetches < seed_share
                   and a.seed_got * active <= task.seed_given + active)
        if seed_ok:
            union |= task.seed_mask & ~task.held_good & ~task.seed_busy
        # Pieces some candidate can serve, plus (when sampling) the pieces
        # with few holders, which are looked up exactly but may all be busy:
        # stop trying those after a few misses.
        wanted = need
        sure = need & (union | a.failed_mask)
        need = sure | (need & task.few_free) if not exact else sure
        if not need:
            return []
        out = []
        streaming = cursor is not None and cursor < task.n
        if streaming:
            # The next pieces in order first, for part of want; unused
            # in-order slots go to rarest-first below.
            window, quota = self._sequential(task, a, cursor, want, wanted, need)
            for i in window:
                if len(out) >= quota:
                    break
                src = self._pick_source(task, a, i, pool, exact, seed_ok)
                if src is None:
                    continue
                out.append(self._start(task, a, i, src, now))
                need &= ~(1 << i)
                if src is _SEED:
                    seed_ok = (task.seed_uploads < self.seed_max_uploads
                               and a.seed_fetches < seed_share
                               and a.seed_got * active <= task.seed_given + active)
            if want == 1 and out:
                a.seq_turn = False
            if len(out) >= want or not need:
                return out
        misses = 0
        for i in self._rarest(task, need):
            bit = 1 << i
            if not need & bit:
                continue
            src = self._pick_source(task, a, i, pool, exact, seed_ok)
            if src is None:
                misses += 1
                if misses >= _MAX_MISSES and need != sure:
                    need &= sure
                continue
            out.append(self._start(task, a, i, src, now))
            if src is _SEED:
                seed_ok = (task.seed_uploads < self.seed_max_uploads
                           and a.seed_fetches < seed_share
                           and a.seed_got * active <= task.seed_given + active)
            if len(out) >= want:
                break
        if streaming and want == 1 and out:
            a.seq_turn = True
        return out

    def _sequential(self, task, a, cursor, want, wanted, need):
        """C{(window, quota)}: the in-order candidates of streaming asker C{a}.

        C{window} is, lowest first, those of the first C{_WINDOW_FACTOR *
        want} (at least C{_MIN_WINDOW}) pieces from C{cursor} on that C{a}
        could be assigned (C{wanted}: available, not held, not being fetched)
        that some candidate source can serve (C{need}). C{quota} is how many
        of them to assign: half of C{want}, rounded down, so rarest-first
        keeps the rest; for C{want} 1, every other assignment (C{seq_turn})
        unless the stream is blocked: the lowest piece from the cursor on
        that C{a} lacks is not in flight, which always gets the slot.
        """
        if want >= 2:
            quota = want // 2
        elif a.seq_turn:
            quota = 1
        else:
            lacking = (task.full & ~a.have) >> cursor
            low = lacking & -lacking
            blocked = bool(low) and not a.fetch_mask >> (cursor + low.bit_length() - 1) & 1
            quota = 1 if blocked else 0
        if not quota:
            return (), 0
        size = max(_WINDOW_FACTOR * want, _MIN_WINDOW)
        window = [cursor + i for i in _lowest_bits(wanted >> cursor, size)
                  if need >> (cursor + i) & 1]
        return window, quota

    def _rarest(self, task, need):
        """The pieces in C{need}, lowest rarity key first, ties in random order."""
        rng = self.rng
        keys = task.keys
        k = need.bit_count()
        if k == 1:
            yield need.bit_length() - 1
            return
        if k <= 8 or k * 4 <= len(keys):
            key = task.key
            rand = rng.random
            yield from sorted(_bits(need), key=lambda i: (key[i], rand()))
            return
        buckets = task.buckets
        for b in list(keys):
            m = buckets.get(b)
            if m is None:
                continue
            cand = m & need
            if not cand:
                continue
            need ^= cand
            if cand & (cand - 1) == 0:
                yield cand.bit_length() - 1
            else:
                yield from _random_bits(cand, task.n, rng)
            if not need:
                return

    def _pick_source(self, task, a, i, pool, exact, seed_ok):
        """The source of piece C{i} for asker C{a}: a peer, the seed, or None.

        None means eligible holders exist but all are busy (or the seed may
        not serve it now): the asker should get a different piece.
        """
        bit = 1 << i
        failed = a.failed.get(i)
        best = None
        best_load = self.max_uploads_per_peer
        count = task.count[i]
        if count <= _SCAN_HOLDERS:
            candidates = task.holders[i] if count else ()
        else:
            candidates = pool
        for q in candidates:
            if (q.uploads < best_load and q.have & bit and q.alive and not q.bad
                    and q is not a and not (failed and q.id in failed)):
                best, best_load = q, q.uploads
                if best_load == 0:
                    break
        if best is None and count > _SCAN_HOLDERS and not exact:
            hl = task.holders[i]
            n = len(hl)
            rand = self.rng.random
            for _ in range(_SAMPLE_HOLDERS):
                q = hl[int(rand() * n)]
                if (q.uploads < best_load and q.alive and not q.bad
                        and q is not a and not (failed and q.id in failed)):
                    best, best_load = q, q.uploads
        if best is not None:
            return best
        # Nobody free can serve it. Busy eligible holders: try another piece.
        good = task.count_good[i]
        if good:
            if not failed or good > len(failed):
                return None
            if any(q.alive and not q.bad and q.id not in failed for q in task.holders[i]):
                return None
        if (seed_ok and task.seed_mask & bit
                and task.seed_inflight[i] < self.seed_piece_copies
                and not (failed and task.seed.peer_id in failed)):
            return _SEED
        return None

    def _start(self, task, a, i, src, now):
        f = _Fetch(i, src, now + self.assignment_timeout)
        a.fetching[i] = f
        a.fetch_mask |= 1 << i
        task.inflight[i] += 1
        task.move(i, 1)
        task.expiry.append((f.deadline, a, f))
        task.n_inflight += 1
        if len(task.expiry) > 2 * task.n_inflight + 64:
            # Reported assignments linger in the queue: drop them now and
            # then so it stays proportional to what is really in flight.
            task.expiry = deque(e for e in task.expiry
                                if e[1].alive and e[1].fetching.get(e[2].index) is e[2])
        if src is _SEED:
            a.seed_fetches += 1
            a.seed_got += 1
            task.seed_given += 1
            task.seed_uploads += 1
            task.seed_inflight[i] += 1
            if task.seed_inflight[i] >= self.seed_piece_copies:
                task.seed_busy |= 1 << i
            task.assigned["supernode"] += 1
            info = task.seed
        else:
            src.uploads += 1
            if src.uploads >= self.max_uploads_per_peer:
                self._free_remove(task, src)
            task.assigned["peer"] += 1
            info = src.info
        return Assignment(i, task.sizes[i], task.digests[i], info)

    # -- state -------------------------------------------------------------

    def is_done(self, task_id, peer_id):
        """Whether C{peer_id} holds every piece of C{task_id}."""
        task = self._task(task_id)
        p = self._peer(task, peer_id)
        return p.have == task.full

    def holds(self, task_id, peer_id):
        """The sorted piece indices C{peer_id} holds."""
        task = self._task(task_id)
        return list(_bits(self._peer(task, peer_id).have))

    def changed(self, task_id, peer_id=None):
        """A Deferred that fires (with None) on a later change of C{task_id}.

        Changes are: pieces reaching the seed, reports (new holders, freed
        upload slots, failures), peers leaving, assignments expiring, the
        task being removed. To avoid waking every waiting peer for one freed
        slot, a change wakes only about as many waiters as it created
        assignment chances, oldest first; when C{peer_id} is given, only if
        the change offers a piece that peer still needs. A waiter that then
        finds nothing to do simply waits again (long-poll loop).
        Cancel the Deferred (e.g. through C{addTimeout}) to stop waiting;
        cancelled waiters are forgotten at once.
        """
        task = self._task(task_id)
        waiters = task.waiters
        peer = task.peers.get(peer_id) if peer_id is not None else None

        def cancel(d):
            waiters.pop(d, None)

        d = defer.Deferred(cancel)
        waiters[d] = peer
        return d

    def _wake(self, task, count, offered=None):
        """Fire up to C{count} waiters that need one of the C{offered} pieces."""
        waiters = task.waiters
        if not waiters or count <= 0:
            return
        ds = []
        if offered is None:
            for d in waiters:
                ds.append(d)
                if len(ds) >= count:
                    break
        else:
            offered &= task.avail
            if not offered:
                return
            budget = max(32, 8 * count)
            for d, p in waiters.items():
                if (p is None or not p.alive
                        or offered & ~p.have & ~p.fetch_mask):
                    ds.append(d)
                    if len(ds) >= count:
                        break
                budget -= 1
                if not budget:
                    break
        for d in ds:
            del waiters[d]
        for d in ds:
            d.callback(None)

    def expire(self):
        """Drop timed-out assignments and peers silent for C{peer_timeout}."""
        now = self.clock.seconds()
        for task in list(self._tasks.values()):
            released, offered = self._expire_assignments(task, now, wake=False)
            for p in list(task.peers.values()):
                if p.last_seen + self.peer_timeout <= now:
                    r, o = self._remove_peer(task, p)
                    released += r
                    offered |= o
            if released:
                self._wake(task, released + 1, offered)

    def _expire_assignments(self, task, now, wake=True):
        q = task.expiry
        released = 0
        offered = 0
        while q and q[0][0] <= now:
            _deadline, a, f = q.popleft()
            if a.alive and a.fetching.get(f.index) is f:
                offered |= self._release(task, a, f)
                task.expired += 1
                released += 1
        if wake and released:
            self._wake(task, released + 1, offered)
        return released, offered

    def stats(self):
        """Counters for metrics: tasks, peers, assignments by source kind."""
        assigned = dict(self._removed_assigned)
        peers = inflight = seed_inflight = bad = waiting = 0
        for t in self._tasks.values():
            for k, v in t.assigned.items():
                assigned[k] += v
            peers += len(t.peers)
            inflight += sum(len(p.fetching) for p in t.peers.values())
            bad += sum(1 for p in t.peers.values() if p.bad)
            seed_inflight += t.seed_uploads
            waiting += len(t.waiters)
        return {"tasks": len(self._tasks), "peers": peers, "assigned": assigned,
                "inflight": inflight, "seed_inflight": seed_inflight,
                "bad_peers": bad, "waiting": waiting}

    def task_stats(self, task_id):
        """One task's state: C{seeded} pieces at the seed, peers, done peers."""
        task = self._task(task_id)
        return {
            "task_id": task_id, "piece_count": task.n,
            "seeded": task.seed_mask.bit_count(),
            "peers": len(task.peers),
            "done": task.done,
            "inflight": sum(len(p.fetching) for p in task.peers.values()),
            "seed_inflight": task.seed_uploads,
            "assigned": dict(task.assigned),
            "failures": task.failures, "expired": task.expired,
        }

    def _verify(self, task_id):
        """Recompute every derived count of C{task_id} and assert it matches.

        A debugging and test aid: O(peers * pieces).
        """
        task = self._task(task_id)
        n = task.n
        count = [0] * n
        good = [0] * n
        inflight = [0] * n
        seed_inflight = [0] * n
        uploads = {}
        seed_uploads = 0
        done = sources = seed_given = 0
        for pid, p in task.peers.items():
            assert p.id == pid and p.alive
            if p.have == task.full:
                done += 1
            if p.have and not p.bad:
                sources += 1
            seed_given += p.seed_got
            for i in _bits(p.have):
                count[i] += 1
                if not p.bad:
                    good[i] += 1
            mask = 0
            seed_fetches = 0
            for i, f in p.fetching.items():
                assert f.index == i and not p.have >> i & 1
                mask |= 1 << i
                inflight[i] += 1
                if f.source is _SEED:
                    seed_uploads += 1
                    seed_fetches += 1
                    seed_inflight[i] += 1
                elif f.source.alive:
                    assert f.source is not p
                    uploads[f.source.id] = uploads.get(f.source.id, 0) + 1
            assert mask == p.fetch_mask
            assert seed_fetches == p.seed_fetches
        assert (done, sources, seed_given) == (task.done, task.sources, task.seed_given)
        assert count == task.count and good == task.count_good
        assert inflight == task.inflight and seed_inflight == task.seed_inflight
        assert seed_uploads == task.seed_uploads <= self.seed_max_uploads
        assert sum(inflight) == task.n_inflight <= len(task.expiry)
        held = held_good = few = busy = 0
        for i in range(n):
            if count[i]:
                held |= 1 << i
                if count[i] <= _SCAN_HOLDERS:
                    few |= 1 << i
            if good[i]:
                held_good |= 1 << i
            if seed_inflight[i] >= self.seed_piece_copies:
                busy |= 1 << i
            assert task.key[i] == count[i] + inflight[i]
            assert task.buckets[task.key[i]] >> i & 1
            assert {h.id for h in task.holders[i] if h.alive} == {
                p.id for p in task.peers.values() if p.have >> i & 1}
        assert (held, held_good, few, busy) == (task.held, task.held_good, task.few, task.seed_busy)
        few_free = 0
        for i in _bits(few):
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
            assert p.uploads == uploads.get(p.id, 0) <= self.max_uploads_per_peer
            in_free = p.free_pos >= 0
            assert in_free == bool(p.have and not p.bad and p.uploads < self.max_uploads_per_peer)
            if in_free:
                assert task.free[p.free_pos] is p
        assert len(task.free) == sum(1 for p in task.peers.values() if p.free_pos >= 0)

"""The scheduler's swarm state: who holds, fetches and serves which piece.

One L{Task} per scheduled file, one L{Peer} per member of its swarm, one
L{Fetch} per in-flight assignment, and the counts derived from them kept in
step on every change (holders and in-flight copies per piece, rarity buckets,
the list of peers with a free upload slot, the pieces with few holders).
The functions here are the only writers of that bookkeeping; they take the
task and the limits it is kept against. Pure data: no I/O, no clock, no
Deferreds; choosing pieces and sources is L{dragonfly.supernode.policy}'s.
"""
from bisect import bisect_left, insort
from collections import defaultdict, deque

from dragonfly.interfaces import Assignment
from dragonfly.supernode.bitset import bits
from dragonfly.supernode.piecesizes import PieceSizes

__all__ = ["UnknownTask", "UnknownPeer", "SEED", "SCAN_HOLDERS", "DIGEST", "Fetch", "Peer",
           "PieceSizes", "Task", "TooManyPeers"]


class UnknownTask(KeyError):
    """The scheduler does not know this task (never added, or removed)."""

    def __str__(self):
        return f"unknown task {self.args[0]!r}"


class UnknownPeer(KeyError):
    """The peer is not (or no longer) in this task's swarm: it must join again."""

    def __str__(self):
        return f"unknown peer {self.args[0]!r}"


class TooManyPeers(ValueError):
    """One source address already has as many peers in this task as allowed."""


# Scan every holder of a piece when it has at most this many; sample above.
SCAN_HOLDERS = 24
INF = float("inf")
#: The reason of a failure report about a piece that failed verification.
DIGEST = "digest"
BUSY = "busy"
#: Seconds an asker rests a source that answered BUSY (all its slots taken).
BUSY_REST = 2.0


class _Seed:
    """Marker for the supernode's own copy as a source."""

    __slots__ = ()


SEED = _Seed()


class Fetch:
    """One in-flight assignment: asker fetches C{index} from C{source}.

    C{fetched}: the asker said the bytes arrived (not yet verified and
    written): the source's upload slot is free again (L{mark_fetched}).
    C{queued}: it holds a place in its source's queue, not an upload slot
    (L{dragonfly.supernode.queueing}); freed the same way.
    """

    __slots__ = ("index", "source", "deadline", "fetched", "queued")

    def __init__(self, index, source, deadline):
        self.index = index
        self.source = source        # Peer or SEED
        self.deadline = deadline
        self.fetched = False
        self.queued = False


class Peer:
    """One member of a task's swarm: what it holds, fetches and serves."""

    __slots__ = ("info", "id", "have", "fetching", "fetch_mask", "uploads",
                 "seed_fetches", "seed_got", "free_pos", "last_seen", "failed", "failed_mask",
                 "fail_reporters", "bad", "alive", "joined", "seq_turn", "streaming", "waiter", "avoid",
                 "avoid_next", "bad_pieces", "bad_until", "down", "queued")

    def __init__(self, info, now):
        self.info = info
        self.id = info.peer_id
        self.have = 0                   # bitset of held pieces
        self.fetching = {}              # index -> Fetch
        self.fetch_mask = 0
        self.uploads = 0                # in-flight assignments with us as source
        self.queued = 0                 # more, queued beyond our slots (queueing)
        self.seed_fetches = 0           # our in-flight assignments from the seed
        self.seed_got = 0               # assignments from the seed so far
        self.free_pos = -1              # index in Task.free, -1 when absent
        self.last_seen = now
        self.failed = {}                # index -> set of source ids that failed us
        self.failed_mask = 0
        self.fail_reporters = set()     # askers that saw us fail
        self.bad = False
        self.alive = True
        self.joined = now
        self.seq_turn = True            # streaming, want 1: in-order next (else rarest)
        self.streaming = False          # its last assign() had a cursor (no swarm cap)
        self.waiter = None              # its latest long-poll waiter (wakeups), maybe gone
        self.avoid = {}                 # source id -> until: sources that failed us
        self.avoid_next = INF           # the earliest until in avoid
        self.bad_pieces = set()         # askers that got a bad piece from us
        self.bad_until = None           # while bad: end of the cool-down (INF: for good)
        self.down = None                # refused the supernode's check: bad_until it set


class _Unset:
    """A per-piece array of a cold task (nobody holds a piece yet): every
    index reads as C{value}, with no per-piece memory; the first write
    warms the task (L{Task.warm}), which swaps in real lists."""

    __slots__ = ("task", "name", "value")

    def __init__(self, task, name, value):
        self.task, self.name, self.value = task, name, value

    def __len__(self):
        return self.task.n

    def __getitem__(self, i):
        if not -self.task.n <= i < self.task.n:
            raise IndexError(i)
        return self.value

    def __setitem__(self, i, v):
        self.task.warm()
        getattr(self.task, self.name)[i] = v

    def __iter__(self):
        return iter([self.value] * self.task.n)

    def __eq__(self, other):
        try:
            return len(other) == self.task.n and all(x == self.value for x in other)
        except TypeError:
            return NotImplemented

    __hash__ = None


#: The per-piece arrays of a Task and what each starts as: digests (hex, per
#: piece), seed_inflight (seed copies in flight), count (live peer holders),
#: count_good (live holders not marked bad), free_holders (of a few-holder
#: piece: its holders in Task.free), inflight (copies in flight), holders_dead
#: (dead entries in Task.holders[i]) and key (count + inflight: the rarity key).
_PER_PIECE = (("digests", None), ("seed_inflight", 0), ("count", 0), ("count_good", 0),
              ("free_holders", 0), ("inflight", 0), ("holders_dead", 0), ("key", 0))


class Task:
    """One scheduled file: its pieces, its swarm and the counts derived from them.

    A task is cold until the seed or a peer holds one of its pieces: its
    per-piece arrays take no memory until then (L{warm}), so a task whose
    origin announced a huge length and sent nothing costs next to nothing.
    """

    def __init__(self, task_id, piece_sizes, seed, now):
        self.id = task_id
        self.sizes = piece_sizes if isinstance(piece_sizes, PieceSizes) else list(piece_sizes)
        n = self.n = len(self.sizes)
        self.full = (1 << n) - 1
        self.seed = seed
        self.created = now
        self.cold = True
        for name, value in _PER_PIECE:
            setattr(self, name, _Unset(self, name, value))
        self.digest_mask = 0
        self.seed_mask = 0          # pieces the seed holds
        self.seed_uploads = 0
        self.seed_given = 0         # seed assignments to current peers
        self.seed_busy = 0          # pieces at their seed copy limit
        self.held = 0               # count > 0
        self.held_good = 0          # count_good > 0
        self.few = 0                # 0 < count <= SCAN_HOLDERS
        self.few_free = 0           # few-holder pieces with a free holder
        self.holders = defaultdict(list)   # index -> Peer list, dead removed lazily
        self.buckets = {0: self.full} if n else {}
        self.keys = [0] if n else []
        self.peers = {}
        self.hosts = {}             # advertised host -> peers of this task there
        self.done = 0               # peers holding every piece
        self.sources = 0            # peers holding a piece, not bad
        self.free = []              # peers holding pieces with a free upload slot, not bad
        self.expiry = deque()       # (deadline, asker, Fetch) in creation order
        self.n_inflight = 0         # live entries of expiry
        self.assigned = {"peer": 0, "supernode": 0}
        self.failures = 0
        self.ignored = 0            # failure reports about no assignment of the reporter
        self.bad_pieces = 0
        self.expired = 0
        self.cooling = deque()      # (until, Peer): bad peers due back in the swarm
        self.banned = set()         # ids of peers bad for good (bad pieces)

    def warm(self):
        """Give the per-piece arrays real storage (once a piece is held)."""
        if self.cold:
            self.cold = False
            n = self.n
            for name, value in _PER_PIECE:
                setattr(self, name, [value] * n)

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


def source_id(task, source):
    """The peer id of C{source} (a L{Peer} or L{SEED}) in C{task}."""
    return task.seed.peer_id if source is SEED else source.id


def remove_peer(task, p, max_uploads, seed_copies):
    """Drop C{p} from C{task}: C{(released, offered)} as for L{release}."""
    released = 0
    offered = 0
    for f in list(p.fetching.values()):
        offered |= release(task, p, f, max_uploads, seed_copies)
        released += 1
    p.alive = False
    free_remove(task, p)
    if p.have == task.full:
        task.done -= 1
    if p.have and not p.bad:
        task.sources -= 1
    task.seed_given -= p.seed_got
    for i in bits(p.have):
        c = task.count[i] = task.count[i] - 1
        task.move(i, -1)
        if c == 0:
            task.held &= ~(1 << i)
            task.few &= ~(1 << i)
        elif c == SCAN_HOLDERS:
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
    host_left(task, p.info.host)
    return released, offered


def host_left(task, host):
    """One peer of C{task} at C{host} is gone."""
    n = task.hosts.get(host, 0) - 1
    if n > 0:
        task.hosts[host] = n
    else:
        task.hosts.pop(host, None)


def free_add(task, p, max_uploads):
    """Put C{p} on C{task}'s free list if it can serve now."""
    if (p.free_pos < 0 and p.have and p.alive and not p.bad
            and p.uploads < max_uploads):
        p.free_pos = len(task.free)
        task.free.append(p)
        few = p.have & task.few
        if few:
            fh = task.free_holders
            for i in bits(few):
                fh[i] += 1
            task.few_free |= few


def free_remove(task, p):
    """Take C{p} off C{task}'s free list (if on it)."""
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
        for i in bits(few):
            fh[i] -= 1
            if not fh[i]:
                task.few_free &= ~(1 << i)


def record_failure(task, asker, i, source_id, limits, now, reason=None):
    """C{asker} failed to get piece C{i} from C{source_id} (an assignment of its own).

    C{asker} avoids that source for every piece for a cool-down (for good
    after a bad piece); the source is marked bad for everyone once
    C{limits.bad_peer_failures} different askers saw it fail (for a
    cool-down), or C{limits.bad_piece_askers} got a bad piece from it (for good).
    C{limits} is the L{dragonfly.supernode.scheduler.Scheduler}.
    """
    task.failures += 1
    if reason == BUSY:
        # Not a fault: the source is loaded. Rest it a moment for this asker
        # only; the piece stays assignable from it.
        if source_id in task.peers and task.peers[source_id] is not asker:
            until = now + BUSY_REST
            if asker.avoid.get(source_id, 0) < until:
                asker.avoid[source_id] = until
                asker.avoid_next = min(asker.avoid_next, until)
        return
    s = asker.failed.get(i)
    if s is None:
        s = asker.failed[i] = set()
    s.add(source_id)
    asker.failed_mask |= 1 << i
    src = task.peers.get(source_id)
    if src is None or src is asker:
        return
    digest = reason == DIGEST
    until = INF if digest else now + limits.bad_peer_cooldown
    if asker.avoid.get(source_id, 0) < until:
        asker.avoid[source_id] = until
        asker.avoid_next = min(asker.avoid_next, until)
    if digest:
        task.bad_pieces += 1
        src.bad_pieces.add(asker.id)
        if len(src.bad_pieces) >= limits.bad_piece_askers and src.bad_until != INF:
            mark_bad(task, src, INF)
        return
    src.fail_reporters.add(asker.id)
    if not src.bad and len(src.fail_reporters) >= limits.bad_peer_failures:
        mark_bad(task, src, until)


def mark_bad(task, src, until):
    """Nobody gets C{src} as a source until C{until} (INF: never again)."""
    src.bad_until = until
    if until == INF:
        task.banned.add(src.id)
    else:
        task.cooling.append((until, src))
    if src.bad:
        return
    src.bad = True
    if src.have:
        task.sources -= 1
    free_remove(task, src)
    for j in bits(src.have):
        task.count_good[j] -= 1
        if task.count_good[j] == 0:
            task.held_good &= ~(1 << j)


def restore_due(task, now, max_uploads):
    """Peers whose cool-down ended by C{now} serve again: the pieces they offer."""
    q = task.cooling
    offered = 0
    while q and q[0][0] <= now:
        until, p = q.popleft()
        if p.alive and p.bad and p.bad_until == until:
            offered |= restore(task, p, max_uploads)
    return offered


def restore(task, p, max_uploads):
    """Bad peer C{p} serves again (its cool-down ended, or it called after it
    was found unreachable): the pieces it offers."""
    p.bad = False
    p.bad_until = p.down = None
    p.fail_reporters.clear()
    if p.have:
        task.sources += 1
    for j in bits(p.have):
        task.count_good[j] += 1
    task.held_good |= p.have
    free_add(task, p, max_uploads)
    return p.have


def forgive(asker, now):
    """Drop the sources C{asker} avoids whose cool-down ended by C{now}."""
    avoid = asker.avoid
    for sid in [sid for sid, until in avoid.items() if until <= now]:
        del avoid[sid]
    asker.avoid_next = min(avoid.values(), default=INF)


def add_have(task, p, i, max_uploads, rekey=True):
    """C{p} holds piece C{i} now: True if that is new.

    C{rekey} false leaves piece C{i}'s rarity key alone (the caller ends an
    in-flight copy of it in the same step, L{release} with C{rekey} false).
    """
    if task.cold:
        task.warm()
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
    elif c == SCAN_HOLDERS + 1:
        task.few &= ~bit
        task.few_free &= ~bit
        task.free_holders[i] = 0
    if first:
        free_add(task, p, max_uploads)
    elif p.free_pos >= 0 and task.few & bit:
        task.free_holders[i] += 1
        task.few_free |= bit
    if rekey:
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


def release(task, asker, f, max_uploads, seed_copies, rekey=True):
    """End in-flight assignment C{f} of C{asker}: free its slot.

    Returns the pieces the freed source can serve. C{rekey} false leaves the
    piece's rarity key alone (see L{add_have}). A fetched assignment freed
    its source's slot before (L{mark_fetched}); ending it frees the asker's
    fair share, so it returns the source's pieces as well: the asker, whose
    long-poll may wait on exactly that, is among the waiters they wake.
    """
    i = f.index
    del asker.fetching[i]
    asker.fetch_mask &= ~(1 << i)
    task.n_inflight -= 1
    task.inflight[i] -= 1
    if rekey:
        task.move(i, -1)
    src = f.source
    if src is SEED:
        if not f.fetched:
            asker.seed_fetches -= 1
            task.seed_uploads -= 1
        task.seed_inflight[i] -= 1
        if task.seed_inflight[i] < seed_copies:
            task.seed_busy &= ~(1 << i)
        return task.seed_mask
    if not src.alive:
        return 0
    if f.queued and not f.fetched:   # (a place in its queue, no slot)
        src.queued -= 1
    elif not f.fetched:   # (else its slot was freed when the bytes arrived)
        src.uploads -= 1
        free_add(task, src, max_uploads)
    return 0 if src.bad else src.have


def mark_fetched(task, asker, f, max_uploads):
    """C{asker} received the bytes of in-flight assignment C{f} (not yet
    verified): free its source's upload slot, keep the assignment.

    The piece stays in C{asker.fetching} (never assigned to it again) and out
    of C{asker.have} (never handed out with it as a source) until a report
    says held or failed, or the assignment times out (L{release}). Returns the
    pieces the freed source can serve. The asker's word frees a slot of the
    scheduler's own count only: no trust decision rests on it (a source caps
    its uploads itself, and answers BUSY beyond that).
    """
    if f.fetched:
        return 0
    f.fetched = True
    src = f.source
    if src is SEED:
        asker.seed_fetches -= 1
        task.seed_uploads -= 1
        return task.seed_mask
    if src.alive:
        if f.queued:    # (a place in its queue, no slot: it holds one again)
            src.queued -= 1
        else:
            src.uploads -= 1
            free_add(task, src, max_uploads)
        if not src.bad:
            return src.have
    return 0


def start(task, a, i, src, deadline, max_uploads, seed_copies, queued=False):
    """C{a} fetches piece C{i} from C{src} until C{deadline}: its L{Assignment}.
    C{queued}: in a place of peer C{src}'s queue, not one of its upload slots."""
    f = Fetch(i, src, deadline)
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
    if src is SEED:
        a.seed_fetches += 1
        a.seed_got += 1
        task.seed_given += 1
        task.seed_uploads += 1
        task.seed_inflight[i] += 1
        if task.seed_inflight[i] >= seed_copies:
            task.seed_busy |= 1 << i
        task.assigned["supernode"] += 1
        info = task.seed
    elif queued:
        f.queued = True
        src.queued += 1
        task.assigned["peer"] += 1
        info = src.info
    else:
        src.uploads += 1
        if src.uploads >= max_uploads:
            free_remove(task, src)
        task.assigned["peer"] += 1
        info = src.info
    return Assignment(i, task.sizes[i], task.digests[i], info)


def expire_assignments(task, now, max_uploads, seed_copies):
    """Release the assignments of C{task} due by C{now}: C{(released, offered)}."""
    q = task.expiry
    released = 0
    offered = 0
    while q and q[0][0] <= now:
        _deadline, a, f = q.popleft()
        if a.alive and a.fetching.get(f.index) is f:
            offered |= release(task, a, f, max_uploads, seed_copies)
            task.expired += 1
            released += 1
    return released, offered

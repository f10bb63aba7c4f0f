"""Which peer fetches which piece from whom: the supernode's scheduler.

This module is the facade (L{Scheduler}: tasks, peers, reports, assignment,
expiry, stats); the swarm state and its bookkeeping live in
L{dragonfly.supernode.swarmstate}, the choice of pieces and sources in
L{dragonfly.supernode.policy}, and the long-poll wake-ups (Deferreds) in
L{dragonfly.supernode.wakeups}. Pure bookkeeping: no I/O, no Deferreds,
time comes from the injected clock and randomness from the injected
C{random.Random}. Built for thousands of peers per task:

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
    the cursor on that it still needs, in order (all while those are as rare
    as any it needs), the rest rarest-first so the swarm keeps spreading;
  - an asker that streams to a waiting reader and asks for a queue may hold
    C{stream_queue} more assignments, in places of its sources' queues,
    which hold no upload slot (L{dragonfly.supernode.queueing});
  - the source is the least-loaded eligible holder peer under its upload limit;
    eligible = alive, not marked bad, not reported failing by this asker for
    this piece;
  - with more than C{seed_swarm_uploads} peers downloading, the seed serves
    and an asker fetches at most that many pieces at once (streaming askers
    excepted): pieces pass each hop in a few piece times, the swarm starts
    early and the seed's last pieces do not reach it all at once at the end;
  - the seed (the supernode's CDN copy) serves a piece only when no eligible
    peer holds it, and then, by default, to one asker at a time while no peer
    holds it yet ("super-seeding"): the swarm, not the seed, multiplies it.
    When every eligible holder of a piece is busy the asker gets a different
    piece (or waits) rather than the seed;
  - pieces become assignable from the seed as the CDN reports them
    (L{Scheduler.seed_has}), so peers start before the origin fetch ends;
  - in-flight assignments hold one upload slot of their source until the
    asker reports the piece's bytes arrived (C{fetched}), held (C{have}) or
    failed (C{failed}), and stay in flight (never re-assigned to the asker,
    which is no source of it yet) until held, failed, or C{assignment_timeout}
    passes (L{dragonfly.supernode.reports}); peers silent for C{peer_timeout}
    are dropped;
  - failure reports count only for the reporter's own in-flight assignment
    of that piece from that source (others are ignored, and counted): an
    asker that saw a source fail avoids it for every piece for
    C{bad_peer_cooldown} seconds; a source reported failing by
    C{bad_peer_failures} different askers is used by nobody for that long;
  - a piece that failed verification (reason C{"digest"}) counts against its
    source: the asker never uses it again, and once C{bad_piece_askers}
    different askers got a bad piece from it nobody does in that task;
  - any other failure has the source's piece port checked (C{liveness}, when
    set); a peer found dead is no source and its assignments end
    (L{dragonfly.supernode.unreachable}) until its next call.
"""
import random

from zope.interface import implementer

from dragonfly.interfaces import IScheduler, PeerInfo
from dragonfly.supernode.bitset import bits
from dragonfly.supernode.assigning import Assigning
from dragonfly.supernode import swarmview
from dragonfly.supernode.reports import apply_report
from dragonfly.supernode.swarmstate import (
    INF, Peer, PieceSizes, Task, TooManyPeers, UnknownPeer, UnknownTask,
    expire_assignments, host_left, mark_bad, remove_peer, restore_due)
from dragonfly.supernode.unreachable import mark_down, revive, suspects

__all__ = ["Scheduler", "TooManyPeers", "UnknownTask", "UnknownPeer"]

#: Peers one address may have in one task, by default in the supernode
#: (--max-peers-per-address; every host behind one NAT shares an address).
MAX_PEERS_PER_ADDRESS = 1024


@implementer(IScheduler)
class Scheduler(Assigning, swarmview.SchedulerViews):
    """Assigns pieces of each task to the peers downloading it.

    Every change that creates assignment chances calls L{_wake}, and removing
    a task calls L{_removed}: no-ops here, the hooks through which
    L{dragonfly.supernode.wakeups.LongPollScheduler} wakes long-polls.

    @param clock: an L{IReactorTime} (only C{seconds()} is used).
    @param max_uploads_per_peer: in-flight assignments a peer serves at once.
    @param seed_max_uploads: in-flight assignments the seed serves at once.
    @param assignment_timeout: seconds after which an unreported assignment
        is dropped and its upload slot freed.
    @param peer_timeout: seconds of silence after which a peer is dropped.
    @param rng: a C{random.Random} (tie-breaks and sampling).
    @param bad_peer_failures: a source reported failing by this many
        different askers of a task is not used in that task for
        C{bad_peer_cooldown} seconds.
    @param bad_peer_cooldown: seconds a failing source is skipped (by the
        asker it failed, or by everyone once it is marked bad).
    @param bad_piece_askers: a source that sent a piece failing verification
        to this many different askers is not used again in that task.
    @param seed_piece_copies: while no eligible peer holds a piece, the seed
        sends it to at most this many askers at a time.
    @param seed_swarm_uploads: while more peers than this download a task,
        the seed serves and each asker fetches at most this many pieces at once.
    @param stream_queue: assignments a streaming asker that asks for a queue
        may hold beyond its fair share, and places in each source's queue
        (L{dragonfly.supernode.queueing}); None: C{max_uploads_per_peer}.
    """

    def __init__(self, clock, max_uploads_per_peer=4, seed_max_uploads=8,
                 assignment_timeout=60.0, peer_timeout=120.0, rng=None,
                 bad_peer_failures=3, seed_piece_copies=1, bad_peer_cooldown=60.0,
                 bad_piece_askers=2, max_peers_per_address=0, seed_swarm_uploads=4,
                 stream_queue=None):
        if max_uploads_per_peer < 1 or seed_max_uploads < 1:
            raise ValueError("upload limits must be at least 1")
        if min(seed_piece_copies, bad_peer_failures, bad_piece_askers, seed_swarm_uploads) < 1:
            raise ValueError("seed_piece_copies, bad_peer_failures, bad_piece_askers and "
                             "seed_swarm_uploads must be at least 1")
        self.clock = clock
        self.max_uploads_per_peer = max_uploads_per_peer
        self.seed_max_uploads = seed_max_uploads
        self.stream_queue = max_uploads_per_peer if stream_queue is None else stream_queue
        self.assignment_timeout = assignment_timeout
        self.peer_timeout = peer_timeout
        self.rng = rng if rng is not None else random.Random()
        self.bad_peer_failures = bad_peer_failures
        self.seed_piece_copies = seed_piece_copies
        self.seed_swarm_uploads = seed_swarm_uploads
        self.max_peers_per_address = max_peers_per_address
        self.bad_peer_cooldown = bad_peer_cooldown
        self.bad_piece_askers = bad_piece_askers
        self._tasks = {}
        self._removed_assigned = {"peer": 0, "supernode": 0}
        #: None, or what checks a source reported failing: C{check(PeerInfo)}
        #: (L{dragonfly.supernode.liveness.LivenessCheck}), which calls L{unreachable}.
        self.liveness = None

    # -- change hooks ------------------------------------------------------

    def _wake(self, task, count, offered=None):
        """A change of C{task} made about C{count} assignment chances for the
        pieces in C{offered} (None: any piece). Nothing to do here."""

    def _removed(self, task):
        """C{task} was removed (its peers are marked dead). Nothing to do here."""

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
        if isinstance(piece_sizes, PieceSizes):
            sizes = piece_sizes     # positive by construction; no per-piece list
        else:
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
            task = self._tasks[task_id] = Task(task_id, sizes, seed, self.clock.seconds())
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
        self._removed(task)

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
            task = self._tasks[task_id] = Task(task_id, sizes, seed, self.clock.seconds())
        if task.cold:
            task.warm()
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
            if p.info.host != peer.host:
                host_left(task, p.info.host)
                task.hosts[peer.host] = task.hosts.get(peer.host, 0) + 1
            p.info = peer
            p.last_seen = now
            if p.down is not None:
                self._revive(task, p)
            return
        n = task.hosts.get(peer.host, 0)
        if self.max_peers_per_address and n >= self.max_peers_per_address:
            raise TooManyPeers(f"{n} peers of this task at {peer.host} already "
                               f"(at most {self.max_peers_per_address})")
        task.hosts[peer.host] = n + 1
        p = task.peers[peer.peer_id] = Peer(peer, now)
        if peer.peer_id in task.banned:
            mark_bad(task, p, INF)

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
        if p.down is not None:
            self._revive(task, p)
        return True

    def leave(self, task_id, peer_id):
        """C{peer_id} is gone: its slots are freed and its pieces forgotten."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        p = task.peers.get(peer_id)
        if p is None:
            return
        released, offered = remove_peer(task, p, self.max_uploads_per_peer,
                                        self.seed_piece_copies)
        self._wake(task, released + 1, offered)

    # -- reports -----------------------------------------------------------

    def report(self, task_id, peer_id, have=(), failed=(), fetched=()):
        """C{peer_id} now holds the pieces in C{have}; C{failed} lists
        C{(index, source_peer_id)} or C{(index, source_peer_id, reason)}
        fetches that failed (reason C{"digest"}: the piece failed verification);
        C{fetched}: pieces whose bytes arrived, not yet verified and written.

        Each frees the upload slot of the matching in-flight assignment; a
        fetched one stays in flight until reported held or failed (or timed
        out). A failure that names no in-flight assignment of C{peer_id} (that
        piece from that source) is ignored: it is counted in C{task_stats}'s
        C{ignored_failures}, and counts against nobody.
        """
        task = self._task(task_id)
        p = self._peer(task, peer_id)
        n = task.n
        have = [i if type(i) is int and 0 <= i < n else self._index(task, i) for i in have]
        fetched = [self._index(task, i) for i in fetched]
        failed = [(self._index(task, f[0]), f[1], f[2] if len(f) > 2 else None) for f in failed]
        for _i, s, _r in failed:
            if not isinstance(s, str):
                raise ValueError("failed source must be a peer id")
        now = p.last_seen = self.clock.seconds()
        if p.down is not None:
            self._revive(task, p)
        check = suspects(p, failed) if failed and self.liveness is not None else ()
        opportunities, offered = apply_report(task, p, have, failed, fetched, self, now)
        if opportunities:
            self._wake(task, opportunities + 1, offered)
        for info in check:
            self.liveness.check(info)

    def unreachable(self, peer_id, info, since):
        """Peer C{peer_id} at C{info} (a L{PeerInfo}) refused the supernode's
        check of its piece port, begun at C{since}: marked down (L{mark_down})
        in each task where it is that peer, silent since. Returns how many."""
        n = 0
        for task in list(self._tasks.values()):
            p = task.peers.get(peer_id)
            if p is None or p.info != info or p.last_seen > since or p.down is not None:
                continue
            n += 1
            released, offered = mark_down(task, p, self.clock.seconds() + self.peer_timeout,
                                          self.max_uploads_per_peer, self.seed_piece_copies)
            self._wake(task, released + self.seed_piece_copies + 1, offered)
        return n

    def _revive(self, task, p):
        offered = revive(task, p, self.max_uploads_per_peer)
        if offered:
            self._wake(task, self.max_uploads_per_peer + 1, offered)

    # -- assignment --------------------------------------------------------

    def piece_count(self, task_id):
        """The number of pieces of C{task_id}."""
        return self._task(task_id).n

    # -- state -------------------------------------------------------------

    def is_done(self, task_id, peer_id):
        """Whether C{peer_id} holds every piece of C{task_id}."""
        task = self._task(task_id)
        p = self._peer(task, peer_id)
        return p.have == task.full

    def holds(self, task_id, peer_id):
        """The sorted piece indices C{peer_id} holds."""
        task = self._task(task_id)
        return list(bits(self._peer(task, peer_id).have))

    def expire(self):
        """Drop timed-out assignments and peers silent for C{peer_timeout}."""
        now = self.clock.seconds()
        max_uploads, copies = self.max_uploads_per_peer, self.seed_piece_copies
        for task in list(self._tasks.values()):
            released, offered = expire_assignments(task, now, max_uploads, copies)
            if task.cooling and task.cooling[0][0] <= now:
                self._restore_due(task, now)
            for p in list(task.peers.values()):
                if p.last_seen + self.peer_timeout <= now:
                    r, o = remove_peer(task, p, max_uploads, copies)
                    released += r
                    offered |= o
            if released:
                self._wake(task, released + 1, offered)

    def _expire_due(self, task, now):
        released, offered = expire_assignments(task, now, self.max_uploads_per_peer,
                                               self.seed_piece_copies)
        if released:
            self._wake(task, released + 1, offered)

    def _restore_due(self, task, now):
        offered = restore_due(task, now, self.max_uploads_per_peer)
        if offered:
            self._wake(task, self.max_uploads_per_peer + 1, offered)

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
from dragonfly.supernode.policy import MAX_MISSES, by_load, candidates, pick_source, rarest, sequential
from dragonfly.supernode import swarmview
from dragonfly.supernode.reports import apply_report
from dragonfly.supernode.swarmstate import (
    INF, SEED, Peer, PieceSizes, Task, TooManyPeers, UnknownPeer, UnknownTask,
    expire_assignments, forgive, host_left, mark_bad, remove_peer, restore_due, start)
from dragonfly.supernode.unreachable import mark_down, revive, suspects

__all__ = ["Scheduler", "TooManyPeers", "UnknownTask", "UnknownPeer"]

#: Peers one address may have in one task, by default in the supernode
#: (--max-peers-per-address; every host behind one NAT shares an address).
MAX_PEERS_PER_ADDRESS = 1024


@implementer(IScheduler)
class Scheduler(swarmview.SchedulerViews):
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
    """

    def __init__(self, clock, max_uploads_per_peer=4, seed_max_uploads=8,
                 assignment_timeout=60.0, peer_timeout=120.0, rng=None,
                 bad_peer_failures=3, seed_piece_copies=1, bad_peer_cooldown=60.0,
                 bad_piece_askers=2, max_peers_per_address=0, seed_swarm_uploads=4):
        if max_uploads_per_peer < 1 or seed_max_uploads < 1:
            raise ValueError("upload limits must be at least 1")
        if min(seed_piece_copies, bad_peer_failures, bad_piece_askers, seed_swarm_uploads) < 1:
            raise ValueError("seed_piece_copies, bad_peer_failures, bad_piece_askers and "
                             "seed_swarm_uploads must be at least 1")
        self.clock = clock
        self.max_uploads_per_peer = max_uploads_per_peer
        self.seed_max_uploads = seed_max_uploads
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

    def assign(self, task_id, peer_id, want, cursor=None, seed_only=False):
        """Up to C{want} new L{Assignment}s for C{peer_id}, rarest pieces first.

        An asker with nothing in flight never leaves empty-handed while the
        seed has a piece it needs and a free upload slot (L{_rescue}): the
        fairness rules below must not starve a peer, e.g. when the holders of
        what it lacks died silently and are not timed out yet.

        @param cursor: None, or the index (0 to piece count) up to which the
            asker streams the file in order and holds every piece: it then
            gets, for part of C{want}, the lowest pieces from C{cursor} on
            that it needs, lowest first in the answer (see
            L{dragonfly.supernode.policy.sequential}).
        @param seed_only: only pieces the seed holds, from the seed, within
            its upload slots but without the super-seeding copy limit (a
            peer in dfget's C{--pattern cdn}).
        @raise ValueError: for a cursor that is not an int in that range
            (nothing is changed).
        """
        if seed_only:
            return self._assign_from_seed(task_id, peer_id, want)
        out = self._assign(task_id, peer_id, want, cursor)
        if out or not isinstance(want, int) or want <= 0:
            return out
        task = self._task(task_id)
        a = self._peer(task, peer_id)
        if a.fetching:
            return out
        return self._rescue(task, a)

    def _assign_from_seed(self, task_id, peer_id, want):
        task = self._task(task_id)
        a = self._peer(task, peer_id)
        now = self.clock.seconds()
        a.last_seen = now
        if task.expiry and task.expiry[0][0] <= now:
            self._expire_due(task, now)
        out = []
        if not isinstance(want, int) or want <= 0:
            return out
        deadline = now + self.assignment_timeout
        max_uploads, copies = self.max_uploads_per_peer, self.seed_piece_copies
        for i in bits(task.seed_mask & ~a.have & ~a.fetch_mask):
            if len(out) >= want or task.seed_uploads >= self.seed_max_uploads:
                break
            out.append(start(task, a, i, SEED, deadline, max_uploads, copies))
        return out

    def _rescue(self, task, a):
        """At most one piece for an idle asker that got nothing.

        The seed's fair share over time (no asker far above the average) is
        waived here: peers that stopped asking (dead, not timed out yet) must
        not hold the others back. Every other rule stands: free holders
        first, busy live holders mean waiting, the seed's slot and copy limits.
        """
        if task.seed_uploads >= self._seed_slots(max(1, len(task.peers) - task.done)):
            return []
        lacking = task.avail & ~a.have & ~a.fetch_mask
        max_uploads, copies = self.max_uploads_per_peer, self.seed_piece_copies
        for i in rarest(task, lacking, self.rng) if lacking else ():
            src = pick_source(task, a, i, task.free, True, True, self.rng, max_uploads, copies)
            if src is not None:
                deadline = self.clock.seconds() + self.assignment_timeout
                return [start(task, a, i, src, deadline, max_uploads, copies)]
        return []

    def _assign(self, task_id, peer_id, want, cursor):
        """L{assign} before the rescue: checks, expiry and the asker's fair share."""
        task = self._task(task_id)
        a = self._peer(task, peer_id)
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)
                                   or not 0 <= cursor <= task.n):
            raise ValueError(f"cursor out of range: {cursor!r}")
        now = self.clock.seconds()
        a.last_seen = now
        a.streaming = cursor is not None
        if task.expiry and task.expiry[0][0] <= now:
            self._expire_due(task, now)
        if task.cooling and task.cooling[0][0] <= now:
            self._restore_due(task, now)
        if a.avoid_next <= now:
            forgive(a, now)
        if not isinstance(want, int) or want <= 0:
            return []
        need = task.avail & ~a.have & ~a.fetch_mask
        if not need:
            return []
        # Fair share of the swarm's upload slots: when there are fewer slots
        # than askers want, nobody hoards them (and early pieces spread wide).
        active = max(1, len(task.peers) - task.done)
        slots = task.sources * self.max_uploads_per_peer + self.seed_max_uploads
        share = max(1, -(-slots // active))
        if cursor is None:
            share = min(share, self._swarm_cap(task))
        want = min(want, share - len(a.fetching))
        if want <= 0:
            return []
        return self._choose(task, a, want, cursor, need, active, now)

    def _swarm_cap(self, task):
        """The in-flight fetches a non-streaming asker of C{task} may hold:
        C{seed_swarm_uploads} while more peers than that download (see the
        module docstring), else no cap."""
        if len(task.peers) - task.done > self.seed_swarm_uploads:
            return self.seed_swarm_uploads
        return 1 << 62

    def _seed_slots(self, active):
        """The seed's upload slots while C{active} peers download (see the
        module docstring: at most C{seed_swarm_uploads} in a larger swarm)."""
        if active <= self.seed_swarm_uploads:
            return self.seed_max_uploads
        return min(self.seed_max_uploads, self.seed_swarm_uploads)

    def _seed_ok(self, task, a, seed_limits, active):
        """Whether the seed may serve C{a} now: fair share (C{seed_limits})."""
        share, slots = seed_limits
        return (task.seed_uploads < slots
                and a.seed_fetches < share
                and a.seed_got * active <= task.seed_given + active)

    def _choose(self, task, a, want, cursor, need, active, now):
        """Up to C{want} assignments for C{a} among the pieces in C{need}."""
        # Candidate sources: every peer with a free upload slot when they are
        # few, else a random sample of them; pieces with few holders are
        # looked up through their holder lists instead.
        pool, exact = candidates(task.free, self.rng)
        union = 0
        for q in pool:
            union |= q.have
        if not exact:
            by_load(pool)   # a sample: its first eligible holder is the least loaded
        streaming = cursor is not None and cursor < task.n   # may use every seed slot
        slots = self.seed_max_uploads if streaming else self._seed_slots(active)
        seed_share = (-(-slots // active), slots)
        seed_ok = self._seed_ok(task, a, seed_share, active)
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
        if streaming:
            # The next pieces in order first, for part of want; unused
            # in-order slots go to rarest-first below.
            need, seed_ok = self._in_order(task, a, cursor, want, wanted, need, pool, exact,
                                           seed_ok, seed_share, active, now, out)
            if want == 1 and out:
                a.seq_turn = False
            if len(out) >= want or not need:
                return out
        rng, timeout = self.rng, self.assignment_timeout
        max_uploads, copies = self.max_uploads_per_peer, self.seed_piece_copies
        misses = 0
        for i in rarest(task, need, rng):
            bit = 1 << i
            if not need & bit:
                continue
            src = pick_source(task, a, i, pool, exact, seed_ok, rng, max_uploads, copies,
                              not exact)
            if src is None:
                misses += 1
                if misses >= MAX_MISSES and need != sure:
                    need &= sure
                continue
            out.append(start(task, a, i, src, now + timeout, max_uploads, copies))
            if src is SEED:
                seed_ok = self._seed_ok(task, a, seed_share, active)
            elif not exact:
                by_load(pool)
            if len(out) >= want:
                break
        if streaming and want == 1 and out:
            a.seq_turn = True
        return out

    def _in_order(self, task, a, cursor, want, wanted, need, pool, exact,
                  seed_ok, seed_share, active, now, out):
        """Append to C{out} the in-order assignments of streaming asker C{a}:
        the C{need} and C{seed_ok} left for rarest-first."""
        rng, timeout = self.rng, self.assignment_timeout
        max_uploads, copies = self.max_uploads_per_peer, self.seed_piece_copies
        window, quota = sequential(task, a, cursor, want, wanted, need)
        for i in window:
            if len(out) >= quota:
                break
            src = pick_source(task, a, i, pool, exact, seed_ok, rng, max_uploads, copies,
                              not exact)
            if src is None:
                continue
            out.append(start(task, a, i, src, now + timeout, max_uploads, copies))
            need &= ~(1 << i)
            if src is SEED:
                seed_ok = self._seed_ok(task, a, seed_share, active)
            elif not exact:
                by_load(pool)
        return need, seed_ok

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

"""The scheduler's assignment: who gets which piece from whom, now.

L{Assigning} is the part of L{dragonfly.supernode.scheduler.Scheduler} that
answers C{assign}: the checks and expiry, the asker's fair share of the
swarm's upload slots, rarest-first with the in-order part of a streaming
asker, the seed's limits, the rescue of an idle asker, and the queue a
streamed task may keep at its sources (L{dragonfly.supernode.queueing}).
The policy is described in the scheduler's module docstring; the choices of
pieces and sources are L{dragonfly.supernode.policy}'s, the bookkeeping
L{dragonfly.supernode.swarmstate}'s.
"""
from dragonfly.supernode.bitset import bits
from dragonfly.supernode.policy import MAX_MISSES, by_load, candidates, pick_source, rarest, sequential
from dragonfly.supernode.queueing import queue_fetches
from dragonfly.supernode.swarmstate import SEED, forgive, start

__all__ = ["Assigning"]


class Assigning:
    """C{assign} and its parts, mixed into the scheduler (which holds the
    limits, the clock, the rng, the tasks and the hooks used here)."""

    def assign(self, task_id, peer_id, want, cursor=None, seed_only=False, queue=False):
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
        @param queue: with a C{cursor}, the asker streams the task to a
            reader that waits for its bytes in order: beyond its fair share
            it may hold up to C{stream_queue} more assignments, each in a
            place of a source's queue (L{dragonfly.supernode.queueing}).
            Ignored without a cursor or with C{seed_only}.
        @raise ValueError: for a cursor that is not an int in that range
            (nothing is changed).
        """
        if seed_only:
            return self._assign_from_seed(task_id, peer_id, want)
        out = self._assign(task_id, peer_id, want, cursor, queue)
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

    def _assign(self, task_id, peer_id, want, cursor, queue=False):
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
        extra = self.stream_queue if queue and cursor is not None and cursor < task.n else 0
        out = []
        if share > len(a.fetching):
            out = self._choose(task, a, min(want, share - len(a.fetching)), cursor, need,
                               active, now)
        room = min(want - len(out), share + extra - len(a.fetching))
        if extra and room > 0:
            out += queue_fetches(task, a, cursor, room, self, now + self.assignment_timeout)
        return out

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

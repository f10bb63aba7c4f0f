"""Long-poll wake-ups: the Deferreds peers wait on until a task changes.

L{LongPollScheduler} is the L{Scheduler} with waiters: C{changed()} hands out
a Deferred per waiting peer, and the scheduler's change hooks fire as few of
them as the change can serve (oldest first, only waiters that still need an
offered piece). The API's long-poll waits through it, and the simulator
through C{watch()}, the same waiters without a Deferred each; the scheduler
itself stays free of Deferreds.
"""
from collections import OrderedDict

from twisted.internet import defer

from dragonfly.supernode.scheduler import Scheduler
from dragonfly.supernode.swarmstate import release

__all__ = ["LongPollScheduler"]


class LongPollScheduler(Scheduler):
    """A L{Scheduler} whose changes wake the peers waiting on C{changed()}.

    Takes the same arguments as L{Scheduler}.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiters = {}      # task id -> {Deferred: Peer or None}, oldest first

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
        waiters, peer = self._waiting(task_id, peer_id)

        def cancel(d):
            waiters.pop(d, None)

        d = defer.Deferred(cancel)
        waiters[d] = peer
        if peer is not None:
            peer.waiter = d
        return d

    def report(self, task_id, peer_id, have=(), failed=(), fetched=()):
        """L{Scheduler.report}; then the reporter's own long-poll, if one is
        out and the report left it room under its cap (L{_swarm_cap}), is
        woken too: a peer reports in a separate call while its long-poll
        waits, and a fetch slot it just freed is its own to fill, whatever
        the older waiters the report woke."""
        super().report(task_id, peer_id, have, failed, fetched)
        task = self._tasks[task_id]
        p = task.peers[peer_id]
        d = p.waiter
        waiters = self._waiters.get(task_id)
        if (d is not None and waiters and d in waiters and len(p.fetching) < self._swarm_cap(task)
                and task.avail & ~p.have & ~p.fetch_mask):
            self._fire(waiters, [d])

    def abandoned(self, task_id, peer_id):
        """The client of C{peer_id}'s long-poll went away before the answer:
        the peer stopped or died (a live peer never drops its own poll while
        it downloads). Its in-flight assignments end now, so the upload slots
        they hold serve the others at once, not after C{assignment_timeout}
        (a vanished peer holding every slot of a task's only peer holder
        stalled newcomers that long: the seed does not serve pieces a busy
        live peer holds). The peer stays a member: what it reports later
        still counts. Its piece port is checked too (C{liveness}, when set):
        a dead peer is then no source for anyone either."""
        task = self._tasks.get(task_id)
        p = task.peers.get(peer_id) if task is not None else None
        if p is None:
            return
        if self.liveness is not None and p.down is None:
            self.liveness.check(p.info)
        if not p.fetching:
            return
        offered = 0
        fetches = list(p.fetching.values())
        for f in fetches:
            offered |= release(task, p, f, self.max_uploads_per_peer, self.seed_piece_copies)
        self._wake(task, len(fetches) + 1, offered)
    def watch(self, task_id, peer_id, fire):
        """C{changed()} without a Deferred, for the simulator's millions of
        waits: the same waiter, woken by the same rule in the same order,
        calls C{fire()} instead of firing a Deferred. Returns a handle whose
        C{cancel()} stops the wait.
        """
        waiters, peer = self._waiting(task_id, peer_id)
        w = _Watch(waiters, fire)
        waiters[w] = peer
        if peer is not None:
            peer.waiter = w
        return w

    def _waiting(self, task_id, peer_id):
        """C{(waiters, peer)}: the task's waiters and the waiting peer (or None)."""
        task = self._task(task_id)
        waiters = self._waiters.get(task_id)
        if waiters is None:
            # Oldest first, removed mostly from the front: an OrderedDict (a
            # plain dict would keep the removed entries' slots, and every
            # walk from its front would step over all of them).
            waiters = self._waiters[task_id] = OrderedDict()
        return waiters, task.peers.get(peer_id) if peer_id is not None else None

    def _removed(self, task):
        waiters = self._waiters.pop(task.id, None)
        if waiters:
            self._fire(waiters, list(waiters))

    def _wake(self, task, count, offered=None):
        """Fire up to C{count} waiters that need one of the C{offered} pieces."""
        waiters = self._waiters.get(task.id)
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
            # A waiter at its swarm cap (L{Scheduler._swarm_cap}) gets nothing
            # from a slot freed elsewhere: waking it would spend the wake-up on
            # it instead of on an idle waiter; it goes to the back of the queue
            # so the budget of a wake-up is not spent walking over it again.
            # Its own report (an in-flight piece done) frees it (L{report}).
            cap = self._swarm_cap(task)
            capped = []
            budget = max(32, 8 * count)
            for d, p in waiters.items():
                if p is None or not p.alive:
                    ds.append(d)
                elif offered & ~p.have & ~p.fetch_mask:
                    if len(p.fetching) < cap or p.streaming:
                        ds.append(d)
                    else:
                        capped.append(d)
                if len(ds) >= count:
                    break
                budget -= 1
                if not budget:
                    break
            for d in capped:
                waiters.move_to_end(d)
        self._fire(waiters, ds)

    def _fire(self, waiters, ds):
        for d in ds:
            del waiters[d]
        for d in ds:
            d.callback(None)

    def stats(self):
        """L{Scheduler.stats}, plus C{waiting}: the pending long-polls."""
        stats = super().stats()
        stats["waiting"] = sum(len(w) for w in self._waiters.values())
        return stats


class _Watch:
    """A waiter of L{LongPollScheduler.watch}: fired like a Deferred."""
    __slots__ = ("_waiters", "_fire")

    def __init__(self, waiters, fire):
        self._waiters = waiters
        self._fire = fire

    def callback(self, _result):
        self._fire()

    def cancel(self):
        self._waiters.pop(self, None)

"""A supernode's graceful hand-over when it stops (SIGTERM): drain, then move.

On stop the supernode first I{drains}: its C{/healthz} answers 503
(``draining``), so the other members of its cluster stop sending it new
tasks; a registration for a task it does not schedule is redirected to the
task's next owner (the next live member in the task's rendezvous order,
whatever the request's C{redirected} says); the tasks it does schedule go on:
their origin fetches finish and their peers keep scheduling here. The drain
ends when every origin fetch has ended and every peer of every task holds
the whole file, or after C{timeout} seconds. Then the supernode I{moves} its
peers: for C{grace} seconds every schedule call (long-polls in flight too) is
answered 503 C{{"moved": true, "owner": NEXT}}, and a peer registers at that
next owner (L{dragonfly.control.client.Moved}) keeping every piece it holds.
So a rolling restart costs no origin bytes and fails no download when the
drain finishes in time, and still no download (only origin bytes) when not.
"""
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

__all__ = ["HandOver"]


class HandOver:
    """The drain/move state of one supernode.

    @param clock: IReactorTime.
    @param scheduler: the supernode's scheduler (C{task_ids}, C{task_stats}).
    @param cdn: its CDN (C{task_ids}, C{fetch_ended}).
    @param cluster: its L{Cluster}, or None (then nothing drains: a single
        supernode has nobody to hand over to).
    @param timeout: seconds of draining at most.
    @param grace: seconds the "moved" answers are given before the stop goes on.
    @param interval: seconds between checks of whether the drain is done.
    """

    log = Logger()

    def __init__(self, clock, scheduler, cdn, cluster=None, timeout=60.0, grace=2.0,
                 interval=0.5):
        self.clock = clock
        self.scheduler = scheduler
        self.cdn = cdn
        self.cluster = cluster
        self.timeout = timeout
        self.grace = grace
        self.interval = interval
        self.draining = False
        self.moving = False
        self._movers = []          # Deferreds fired when moving starts

    # -- what the API asks ------------------------------------------------------------

    def next_owner(self, task_id):
        """The ``host:port`` of the next live member for C{task_id}, or None."""
        if self.cluster is None:
            return None
        alive = {m["name"] for m in self.cluster.members() if m["alive"]}
        for name in self.cluster.order(task_id):
            if name in alive:
                return name
        return None

    def moved(self):
        """A Deferred firing when the peers are told to move (at once if they are)."""
        if self.moving:
            return succeed(None)
        d = Deferred(lambda d: self._movers.remove(d) if d in self._movers else None)
        self._movers.append(d)
        return d

    def busy(self):
        """Whether an origin fetch runs or a peer has not got the whole file yet."""
        for task_id in self.cdn.task_ids():
            if self.cdn.fetch_ended(task_id) is not None:
                return True
        for task_id in self.scheduler.task_ids():
            stats = self.scheduler.task_stats(task_id)
            if stats["peers"] > stats["done"]:
                return True
        return False

    # -- the stop ---------------------------------------------------------------------

    def run(self):
        """Drain, then move: a Deferred that never fails (at once without peers to move)."""
        if self.cluster is None or not any(m["alive"] for m in self.cluster.members()):
            return succeed(None)
        return Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: self.log.failure("hand-over", f))

    async def _run(self):
        self.draining = True
        started = self.clock.seconds()
        self.log.info("stopping: draining (up to {timeout:g}s)", timeout=self.timeout)
        while self.busy() and self.clock.seconds() - started < self.timeout:
            await deferLater(self.clock, self.interval, lambda: None)
        if not self.busy():
            self.log.info("drained in {s:.1f}s", s=self.clock.seconds() - started)
            return
        self.log.info("drain timed out; moving the peers to the next supernodes")
        self.moving = True
        movers, self._movers = self._movers, []
        for d in movers:
            d.callback(None)
        await deferLater(self.clock, self.grace, lambda: None)

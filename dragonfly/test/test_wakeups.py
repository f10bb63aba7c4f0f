"""Tests for dragonfly.supernode.wakeups: long-poll waiters of the scheduler."""
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.supernode.scheduler import UnknownTask
from dragonfly.supernode.wakeups import LongPollScheduler
from dragonfly.test.scheduler_invariants import T, SchedulerMixin, digest


class ChangedTests(SchedulerMixin, SynchronousTestCase):
    scheduler_class = LongPollScheduler

    def test_unknown_task(self):
        """When the task is unknown, changed raises UnknownTask."""
        s = self.make()
        self.assertRaises(UnknownTask, s.changed, "nope")

    def test_remove_task(self):
        """When a task is removed, its waiters fire and it is unknown afterwards."""
        s = self.make()
        d = s.changed(T)
        s.remove_task(T)
        self.assertIsNone(self.successResultOf(d))
        self.assertRaises(UnknownTask, s.changed, T)
        self.assertEqual(s.stats()["waiting"], 0)

    def test_fires_on_seed_has(self):
        """When the seed gets a piece, a waiting peer is woken."""
        s = self.make(pieces=2, seeded=False)
        self.join(1)
        d = s.changed(T, "peer-1")
        self.assertNoResult(d)
        s.seed_has(T, 0, digest(0))
        self.assertIsNone(self.successResultOf(d))

    def test_fires_on_report(self):
        """When a peer reports a new piece, a peer waiting for it is woken."""
        s = self.make(pieces=1, max_uploads_per_peer=1)
        self.join(1, 2, 3)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        self.assertEqual(s.assign(T, "peer-3", 1), [])
        d = s.changed(T, "peer-3")
        self.assertNoResult(d)
        self.give(2, 0)
        self.successResultOf(d)
        self.assertEqual(len(s.assign(T, "peer-3", 1)), 1)

    def test_woken_when_its_share_frees(self):
        """When an asker whose fair share is taken by pieces it reported fetched
        (their sources' slots already free) reports one of them held, its own
        wait ends: the share that freed is its own, and nobody else's report
        would tell it. Once, it waited for its poll to time out."""
        s = self.make(pieces=16)
        self.join(*range(1, 7))
        self.give(1, *range(16))                 # five askers of one source
        got = s.assign(T, "peer-2", 8)
        self.assertEqual(len(got), 3)            # its fair share
        s.report(T, "peer-2", fetched=[a.index for a in got])
        self.assertEqual(s.assign(T, "peer-2", 8), [])
        d = s.changed(T, "peer-2")
        s.report(T, "peer-2", have=[got[0].index])
        self.successResultOf(d)
        self.assertTrue(s.assign(T, "peer-2", 8))

    def test_not_woken_for_nothing(self):
        """When a change offers only pieces a waiter already holds, it keeps waiting."""
        s = self.make(pieces=2, seeded=False)
        self.join(1, 2)
        self.give(1, 0)
        d = s.changed(T, "peer-1")
        s.seed_has(T, 0, digest(0))
        self.assertNoResult(d)
        s.seed_has(T, 1, digest(1))
        self.successResultOf(d)

    def test_woken_in_order_and_bounded(self):
        """When one change creates one chance, only the oldest few waiters fire."""
        s = self.make(pieces=1, seeded=False)
        self.join(*range(1, 11))
        ds = [s.changed(T, f"peer-{n}") for n in range(1, 11)]
        s.seed_has(T, 0, digest(0))
        fired = [d.called for d in ds]
        self.assertTrue(fired[0])
        self.assertLess(sum(fired), 10)
        self.assertEqual(fired, sorted(fired, reverse=True))

    def test_capped_waiter_not_woken(self):
        """When a waiter already fetches as many pieces as a swarm allows
        (seed_swarm_uploads), a slot freed elsewhere wakes the idle waiters
        behind it instead."""
        s = self.make(pieces=8, max_uploads_per_peer=1, seed_swarm_uploads=1)
        self.join(*range(2, 8))
        (a,) = s.assign(T, "peer-2", 4)     # at its cap: one fetch in a swarm of 6
        d2, d3, d5 = (s.changed(T, f"peer-{n}") for n in (2, 3, 5))
        self.give(4, (a.index + 1) % 8)     # a new holder: two chances
        self.assertNoResult(d2)
        self.successResultOf(d3)
        self.successResultOf(d5)

    def test_own_waiter_woken_by_its_report(self):
        """When a peer at its cap reports its piece in a separate call while
        its long-poll waits behind older waiters, that long-poll is woken: the
        fetch slot it freed is its own to fill."""
        s = self.make(pieces=8, max_uploads_per_peer=1, seed_swarm_uploads=1)
        self.join(*range(2, 9))
        (a,) = s.assign(T, "peer-2", 4)
        older = [s.changed(T, f"peer-{n}") for n in range(3, 9)]
        d2 = s.changed(T, "peer-2")
        self.give(2, a.index)
        self.assertLess(sum(d.called for d in older), len(older))   # not every older one
        self.successResultOf(d2)
        self.assertEqual(len(s.assign(T, "peer-2", 4)), 1)

    def test_cancel(self):
        """When a waiter is cancelled, it is forgotten (no leak)."""
        s = self.make()
        d = s.changed(T)
        self.assertEqual(s.stats()["waiting"], 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(s.stats()["waiting"], 0)

    def test_timeout(self):
        """When a long-poll times out (addTimeout on the clock), the waiter is forgotten."""
        s = self.make()
        d = s.changed(T)
        d.addTimeout(30, self.clock)
        self.clock.advance(30)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(s.stats()["waiting"], 0)

    def test_callback_may_reenter(self):
        """When a woken waiter calls back into the scheduler at once, state is consistent."""
        s = self.make(pieces=1, seeded=False)
        self.join(1)
        got = []
        d = s.changed(T, "peer-1")
        d.addCallback(lambda _: got.extend(s.assign(T, "peer-1", 1)))
        s.seed_has(T, 0, digest(0))
        self.assertEqual([a.index for a in got], [0])

    def test_watch_wakes_like_changed(self):
        """watch() (the simulator's waiter) is woken by the same rule, in the
        same order, as changed(): the same waiters fire for the same change."""
        fired = {}
        for kind in ("changed", "watch"):
            s = self.make(pieces=1, seeded=False)
            self.join(*range(1, 11))
            woken = []
            for n in range(1, 11):
                if kind == "changed":
                    s.changed(T, f"peer-{n}").addCallback(lambda _, n=n: woken.append(n))
                else:
                    s.watch(T, f"peer-{n}", lambda n=n: woken.append(n))
            s.seed_has(T, 0, digest(0))
            fired[kind] = woken
        self.assertTrue(fired["watch"])
        self.assertEqual(fired["watch"], fired["changed"])

    def test_watch_cancel(self):
        """When a watch is cancelled it is forgotten and never fires; removing
        the task fires the rest."""
        s = self.make(pieces=1, seeded=False)
        self.join(1, 2)
        woken = []
        w1 = s.watch(T, "peer-1", lambda: woken.append(1))
        s.watch(T, "peer-2", lambda: woken.append(2))
        self.assertEqual(s.stats()["waiting"], 2)
        w1.cancel()
        self.assertEqual(s.stats()["waiting"], 1)
        s.remove_task(T)
        self.assertEqual(woken, [2])
        self.assertEqual(s.stats()["waiting"], 0)


class PureSchedulerTests(SchedulerMixin, SynchronousTestCase):
    def test_no_deferreds(self):
        """The plain Scheduler has no long-poll: no changed(), no waiting count,
        and none of its modules imports Deferreds; changes need no waiters."""
        from dragonfly.supernode import bitset, policy, scheduler, swarmstate
        for module in (bitset, policy, scheduler, swarmstate):
            self.assertNotIn("defer", vars(module))
            self.assertNotIn("Deferred", vars(module))
        s = self.make(pieces=2, seeded=False)
        self.assertFalse(hasattr(s, "changed"))
        s.seed_has(T, 0, digest(0))
        s.remove_task(T)
        self.assertNotIn("waiting", s.stats())

    def test_same_decisions(self):
        """LongPollScheduler is a Scheduler and decides exactly the same: a fixed
        random workload gives the same assignments."""
        from dragonfly.supernode.scheduler import Scheduler
        from dragonfly.test.test_policy import _workload
        self.assertTrue(issubclass(LongPollScheduler, Scheduler))
        self.assertEqual(_workload(LongPollScheduler, steps=200), _workload(Scheduler, steps=200))


class AbandonedTests(SchedulerMixin, SynchronousTestCase):
    """A peer whose long-poll its client dropped (it stopped or died without
    leaving) holds no upload slot any more: others are served at once."""

    scheduler_class = LongPollScheduler

    def vanished_holder(self):
        """The lazy-pull case: peer-1 holds every piece, peer-2 took all of
        peer-1's upload slots and vanished; peer-3 arrives."""
        s = self.make(pieces=8, max_uploads_per_peer=4)
        self.join(1, 2, 3)
        self.give(1, *range(8))
        got = s.assign(T, "peer-2", 8)
        self.assertEqual({a.source.peer_id for a in got}, {"peer-1"})
        self.assertEqual(len(got), 4)
        return s

    def test_slots_held_until_timeout_without_it(self):
        """Without the signal the newcomer waits for the assignment timeout:
        the seed does not serve pieces a busy live peer holds."""
        s = self.vanished_holder()
        self.clock.advance(s.assignment_timeout - 1)
        self.assertEqual(s.assign(T, "peer-3", 4), [])

    def test_abandoned_frees_slots_and_wakes(self):
        """When peer-2's long-poll is abandoned, its in-flight assignments end:
        the waiting newcomer is woken and served by peer-1 at once."""
        s = self.vanished_holder()
        self.assertEqual(s.assign(T, "peer-3", 4), [])
        d = s.changed(T, "peer-3")
        s.abandoned(T, "peer-2")
        self.successResultOf(d)
        got = s.assign(T, "peer-3", 4)
        self.assertEqual(len(got), 4)
        self.assertEqual({a.source.peer_id for a in got}, {"peer-1"})
        self.assertEqual(s.task_stats(T)["peers"], 3)   # released, not removed

    def test_abandoned_peer_reports_still_count(self):
        """When an abandoned peer was alive after all, the pieces it reports
        make it a holder; its failure reports name no assignment (ignored)."""
        s = self.vanished_holder()
        held = sorted(s._tasks[T].peers["peer-2"].fetching)
        s.abandoned(T, "peer-2")
        s.report(T, "peer-2", have=[held[0]], failed=[(held[1], "peer-1")])
        self.assertEqual(s.holds(T, "peer-2"), [held[0]])
        self.assertEqual(s._tasks[T].ignored, 1)
        self.assertEqual(s._tasks[T].peers["peer-1"].fail_reporters, set())

    def test_abandoned_noop(self):
        """An unknown task or peer, or a peer with nothing in flight: nothing
        changes and no waiter fires."""
        s = self.make(pieces=2)
        self.join(1, 2)
        d = s.changed(T, "peer-2")
        s.abandoned("nope", "peer-1")
        s.abandoned(T, "peer-9")
        s.abandoned(T, "peer-1")
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

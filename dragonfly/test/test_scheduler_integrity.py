"""Tests for the scheduler's failure accounting (issue 10, "Scheduler poisoning"):
reports count only for the reporter's own assignments, a failing source is
avoided by its asker and, once several askers saw it fail, by everyone for a
cool-down; a source of bad pieces is dropped for good."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test.scheduler_invariants import SEED, T, SchedulerMixin, peer, verify


def _srcs(assignments):
    return [a.source for a in assignments]


class ForeignReportTests(SchedulerMixin, SynchronousTestCase):
    def test_foreign_failure_ignored(self):
        """When a peer reports failures about a source it was never assigned,
        they count against nobody (and are counted as ignored)."""
        s = self.make(pieces=2, bad_peer_failures=1)
        self.join(1, 2, 3)
        self.give(1, 0, 1)
        s.report(T, "peer-2", failed=[(0, "peer-1"), (1, "peer-1", "digest")])
        self.assertEqual(s.stats()["bad_peers"], 0)
        self.assertEqual(s.task_stats(T)["ignored_failures"], 2)
        self.assertEqual(s.task_stats(T)["failures"], 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        verify(s, T)

    def test_other_askers_assignment_ignored(self):
        """When a peer reports a failure of an assignment that was another peer's,
        it is ignored and that assignment stays in flight."""
        s = self.make(pieces=1, bad_peer_failures=1)
        self.join(1, 2, 3)
        self.give(1, 0)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        s.report(T, "peer-3", failed=[(0, "peer-1")])
        self.assertEqual(s.stats()["bad_peers"], 0)
        self.assertEqual(s.stats()["inflight"], 1)
        self.assertEqual(s.task_stats(T)["ignored_failures"], 1)

    def test_finished_assignment_ignored(self):
        """When the assignment was already reported (or expired), a later
        failure report about it is ignored."""
        s = self.make(pieces=1, bad_peer_failures=1, assignment_timeout=10)
        self.join(1, 2)
        self.give(1, 0)
        s.assign(T, "peer-2", 1)
        self.clock.advance(11)
        s.expire()
        s.report(T, "peer-2", failed=[(0, "peer-1")])
        self.assertEqual(s.stats()["bad_peers"], 0)
        self.assertEqual(s.task_stats(T)["ignored_failures"], 1)


class AvoidTests(SchedulerMixin, SynchronousTestCase):
    def test_asker_avoids_failed_source_for_every_piece(self):
        """When a source fails an asker once, that asker gets no piece from it
        for the cool-down; afterwards it may again."""
        s = self.make(pieces=4, bad_peer_failures=3, bad_peer_cooldown=30,
                      max_uploads_per_peer=1)
        self.join(1, 2, 3)
        self.give(1, 0, 1, 2, 3)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        s.report(T, "peer-2", failed=[(a.index, "peer-1")])
        for _ in range(3):
            got = s.assign(T, "peer-2", 1)
            self.assertNotIn(peer(1), _srcs(got))
        # Other askers still use it: one failure is one asker's view.
        [b] = s.assign(T, "peer-3", 1)
        self.assertEqual(b.source, peer(1))
        s.report(T, "peer-3", have=[b.index])
        self.clock.advance(31)
        got = s.assign(T, "peer-2", 1)
        self.assertEqual(_srcs(got), [peer(1)])
        verify(s, T)

    def test_tarpits_skipped_after_one_round(self):
        """When four sources hold everything and never answer, an asker that
        reported each failing once gets every piece from the seed next."""
        s = self.make(pieces=16, seed_max_uploads=16, bad_peer_failures=3)
        self.join(1, 2, 3, 4, 9)
        for n in (1, 2, 3, 4):
            self.give(n, *range(16))
        got = s.assign(T, "peer-9", 8)
        self.assertTrue(all(a.source != SEED for a in got))
        s.report(T, "peer-9", failed=[(a.index, a.source.peer_id) for a in got])
        got = s.assign(T, "peer-9", 16)
        self.assertTrue(got)
        self.assertEqual(set(_srcs(got)), {SEED})


class BusyTests(SchedulerMixin, SynchronousTestCase):
    def test_busy_rests_a_source_only_a_moment(self):
        """When a source answers BUSY (all its upload slots taken), its asker
        rests it for a moment only, and the same piece comes from it again."""
        from dragonfly.supernode.swarmstate import BUSY_REST
        s = self.make(pieces=2, bad_peer_failures=1, bad_peer_cooldown=60)
        self.join(1, 2)
        self.give(1, 0, 1)
        [a] = s.assign(T, "peer-2", 1)
        self.assertEqual(a.source, peer(1))
        s.report(T, "peer-2", failed=[(a.index, "peer-1", "busy")])
        [b] = s.assign(T, "peer-2", 1)
        self.assertEqual(b.source, SEED)
        s.report(T, "peer-2", have=[b.index])
        self.clock.advance(BUSY_REST + 0.1)
        [c] = s.assign(T, "peer-2", 1)
        self.assertEqual((c.index, c.source), (a.index, peer(1)))
        verify(s, T)

    def test_busy_never_bans(self):
        """When several askers are told BUSY by one source, it is still offered
        to everyone: a loaded server is not a faulty one."""
        s = self.make(pieces=1, bad_peer_failures=2, max_uploads_per_peer=4)
        self.join(1, 2, 3, 4)
        self.give(1, 0)
        for n in (2, 3):
            [a] = s.assign(T, f"peer-{n}", 1)
            self.assertEqual(a.source, peer(1))
            s.report(T, f"peer-{n}", failed=[(0, "peer-1", "busy")])
        self.assertEqual(s.stats()["bad_peers"], 0)
        [c] = s.assign(T, "peer-4", 1)
        self.assertEqual(c.source, peer(1))
        verify(s, T)


class SkipForEveryoneTests(SchedulerMixin, SynchronousTestCase):
    def test_bad_for_everyone_then_cool_down(self):
        """When bad_peer_failures askers saw a source fail, nobody gets it until
        the cool-down ends; then it serves again."""
        s = self.make(pieces=2, bad_peer_failures=2, bad_peer_cooldown=20)
        self.join(1, 2, 3, 4)
        self.give(1, 0, 1)
        for n in (2, 3):
            [a] = s.assign(T, f"peer-{n}", 1)
            self.assertEqual(a.source, peer(1))
            s.report(T, f"peer-{n}", failed=[(a.index, "peer-1")])
        self.assertEqual(s.stats()["bad_peers"], 1)
        got = s.assign(T, "peer-4", 1)
        self.assertNotIn(peer(1), _srcs(got))
        s.report(T, "peer-4", failed=[(a.index, a.source.peer_id) for a in got])
        verify(s, T)
        self.clock.advance(21)
        s.expire()
        self.assertEqual(s.stats()["bad_peers"], 0)
        got = s.assign(T, "peer-4", 1)
        self.assertEqual(_srcs(got), [peer(1)])
        verify(s, T)

    def test_one_reporter_cannot_ban(self):
        """When one asker reports the same source failing many times, the source
        stays usable for the others."""
        s = self.make(pieces=4, bad_peer_failures=2)
        self.join(1, 2, 3)
        self.give(1, 0, 1, 2, 3)
        for _ in range(4):
            got = s.assign(T, "peer-2", 4)
            s.report(T, "peer-2", failed=[(a.index, a.source.peer_id) for a in got])
        self.assertEqual(s.stats()["bad_peers"], 0)
        [a] = s.assign(T, "peer-3", 1)
        self.assertEqual(a.source, peer(1))


class BadPieceTests(SchedulerMixin, SynchronousTestCase):
    def test_bad_pieces_drop_source_for_good(self):
        """When bad_piece_askers askers got a piece failing verification from a
        source, nobody gets it again, even after a cool-down or a rejoin."""
        s = self.make(pieces=2, bad_piece_askers=2, bad_peer_cooldown=5)
        self.join(1, 2, 3, 4)
        self.give(1, 0, 1)
        for n in (2, 3):
            [a] = s.assign(T, f"peer-{n}", 1)
            self.assertEqual(a.source, peer(1))
            s.report(T, f"peer-{n}", failed=[(a.index, "peer-1", "digest")])
        self.assertEqual(s.task_stats(T)["bad_pieces"], 2)
        self.assertEqual(s.stats()["bad_peers"], 1)
        self.clock.advance(100)
        s.expire()
        s.leave(T, "peer-1")
        self.join(1)
        self.give(1, 0, 1)
        got = s.assign(T, "peer-4", 2)
        self.assertEqual(set(_srcs(got)), {SEED})
        verify(s, T)

    def test_asker_never_returns_to_bad_piece_source(self):
        """When one asker got a bad piece from a source, it never gets that
        source again (no cool-down), while others still may."""
        s = self.make(pieces=2, bad_piece_askers=2, bad_peer_cooldown=5)
        self.join(1, 2, 3)
        self.give(1, 0, 1)
        [a] = s.assign(T, "peer-2", 1)
        s.report(T, "peer-2", failed=[(a.index, "peer-1", "digest")])
        self.clock.advance(100)
        got = s.assign(T, "peer-2", 2)
        self.assertNotIn(peer(1), _srcs(got))
        [b] = s.assign(T, "peer-3", 1)
        self.assertEqual(b.source, peer(1))

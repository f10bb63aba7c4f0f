"""A dead peer found by the supernode's own check: dragonfly.supernode.unreachable
(the scheduler's side) and dragonfly.supernode.liveness (the check)."""
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionRefusedError, ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.interfaces import PeerInfo
from dragonfly.supernode.liveness import LivenessCheck
from dragonfly.supernode.wakeups import LongPollScheduler
from dragonfly.test.scheduler_invariants import SEED, T, SchedulerMixin, peer


class _Checks:
    """A liveness check that records what it was asked to check."""

    def __init__(self):
        self.asked = []

    def check(self, info):
        self.asked.append(info.peer_id)


class UnreachableTests(SchedulerMixin, SynchronousTestCase):
    """The scheduler's side: which reports ask for a check, and what a
    refused check does."""

    scheduler_class = LongPollScheduler

    def setUp(self):
        s = self.make(pieces=4, max_uploads_per_peer=4)
        s.liveness = self.checks = _Checks()
        self.join(1, 2, 3)
        self.give(1, 0)

    def seed_piece_of(self, n):
        """Peer C{n} fetches one piece from the seed that nobody holds: its index."""
        got = self.s.assign(T, peer(n).peer_id, 1)
        self.assertEqual([a.source.peer_id for a in got], [SEED.peer_id])
        return got[0].index

    def from_peer1(self, n):
        """Peer C{n} is sent to peer-1 for piece 0: all its new assignments."""
        got = self.s.assign(T, peer(n).peer_id, 4)
        self.assertEqual([a.source.peer_id for a in got if a.index == 0], ["peer-1"])
        return got

    def test_failure_asks_for_a_check(self):
        """When an asker reports its fetch from a peer failed, that source is
        checked; a "busy" failure, one naming no assignment of the reporter,
        and one about the seed are not."""
        got = self.from_peer1(2)
        self.s.report(T, "peer-2", failed=[(0, "peer-1", "busy")])
        self.s.report(T, "peer-3", failed=[(0, "peer-1")])           # no such assignment
        seed = [a.index for a in got if a.source.peer_id == SEED.peer_id]
        self.s.report(T, "peer-2", failed=[(seed[0], SEED.peer_id)])
        self.assertEqual(self.checks.asked, [])
        self.from_peer1(3)
        self.s.report(T, "peer-3", failed=[(0, "peer-1", "timeout")])
        self.assertEqual(self.checks.asked, ["peer-1"])

    def test_digest_failure_not_checked(self):
        """A piece that failed verification came from a live source: no check."""
        self.from_peer1(2)
        self.s.report(T, "peer-2", failed=[(0, "peer-1", "digest")])
        self.assertEqual(self.checks.asked, [])

    def test_seed_piece_of_dead_asker_released(self):
        """When a peer dies fetching a piece nobody holds from the seed, the
        others get that piece only once it is found unreachable (not after
        the assignment timeout), and a waiter is woken for it."""
        s = self.s
        i = self.seed_piece_of(2)
        got = s.assign(T, "peer-3", 4)
        self.assertNotIn(i, [a.index for a in got])
        for a in got:
            s.report(T, "peer-3", have=[a.index])
        d = s.changed(T, "peer-3")
        self.assertEqual(s.unreachable("peer-2", peer(2), self.clock.seconds()), 1)
        self.successResultOf(d)
        self.assertEqual([(a.index, a.source.peer_id) for a in s.assign(T, "peer-3", 4)],
                         [(i, SEED.peer_id)])
        self.assertEqual(s.task_stats(T)["peers"], 3)     # marked, not removed

    def test_down_source_handed_out_to_nobody(self):
        """A peer found unreachable is nobody's source: its pieces come
        from the seed, and the dashboard shows it down."""
        s = self.s
        self.clock.advance(1)
        s.unreachable("peer-1", peer(1), self.clock.seconds())
        got = s.assign(T, "peer-2", 4)
        self.assertEqual({a.source.peer_id for a in got}, {SEED.peer_id})
        row = [r for r in s.swarm_grid(T)["peers"] if r["peer_id"] == "peer-1"][0]
        self.assertTrue(row["down"])
        self.assertTrue(row["banned"])

    def test_call_since_the_check_wins(self):
        """When the peer called after the check began (alive after all), or
        is now a peer at another address, nothing changes."""
        s = self.s
        since = self.clock.seconds()
        self.clock.advance(1)
        s.report(T, "peer-1")
        self.assertEqual(s.unreachable("peer-1", peer(1), since), 0)
        moved = PeerInfo("peer-1", "127.0.0.2", peer(1).port)
        self.assertEqual(s.unreachable("peer-1", moved, self.clock.seconds()), 0)
        self.assertEqual(s.unreachable("peer-9", peer(9), self.clock.seconds()), 0)
        self.assertEqual(s._tasks[T].peers["peer-1"].down, None)
        self.from_peer1(2)

    def test_sign_of_life_revives(self):
        """When a peer marked down calls again (a report, a heartbeat or a
        registration), it is a source again at once."""
        s = self.s
        for alive in (lambda: s.report(T, "peer-1"), lambda: s.touch(T, "peer-1"),
                      lambda: s.join(T, peer(1))):
            self.clock.advance(1)
            s.unreachable("peer-1", peer(1), self.clock.seconds())
            self.assertIsNotNone(s._tasks[T].peers["peer-1"].down)
            alive()
            self.assertIsNone(s._tasks[T].peers["peer-1"].down)
            self.assertFalse(s._tasks[T].peers["peer-1"].bad)
        self.from_peer1(2)

    def test_other_verdict_kept(self):
        """A peer already marked bad by the askers' reports keeps that
        verdict when found down and when it calls again; its own in-flight
        assignments end all the same."""
        s = self.make(pieces=4, bad_peer_failures=1)
        s.liveness = _Checks()
        self.join(1, 2, 3)
        self.give(1, 0)
        self.from_peer1(2)
        s.report(T, "peer-2", failed=[(0, "peer-1")])
        p1 = s._tasks[T].peers["peer-1"]
        self.assertTrue(p1.bad)
        s.assign(T, "peer-1", 2)
        self.assertTrue(p1.fetching)
        s.unreachable("peer-1", peer(1), self.clock.seconds())
        self.assertEqual((p1.fetching, p1.down), ({}, None))
        s.report(T, "peer-1")
        self.assertTrue(p1.bad)

    def test_down_peer_expires(self):
        """A dead peer marked down is dropped after the peer timeout, as before."""
        s = self.s
        s.unreachable("peer-1", peer(1), self.clock.seconds())
        self.clock.advance(s.peer_timeout)
        s.report(T, "peer-2")
        s.report(T, "peer-3")
        s.expire()
        self.assertNotIn("peer-1", s._tasks[T].peers)


    def test_lost_connection_checks_fetching_peer(self):
        """When a connection of a peer to the seed's piece server ends, that
        peer is checked only while it has assignments in flight (and is
        not marked down already)."""
        s = self.s
        live = LivenessCheck(s, self.clock, connect=lambda host, port: defer.Deferred())
        asked = []
        live.check = asked.append
        live.lost(T, "peer-2")                  # nothing in flight
        live.lost("other-task", "peer-2")
        self.seed_piece_of(2)
        live.lost(T, "peer-2")
        self.assertEqual(asked, [peer(2)])
        s.unreachable("peer-2", peer(2), self.clock.seconds())
        s.assign(T, "peer-2", 1)
        live.lost(T, "peer-2")
        self.assertEqual(asked, [peer(2)])


    def test_cut_upload_checks_its_receiver(self):
        """When an uploader says its upload to a receiver was cut, the
        receiver is checked (after the cut delay) only while it has an
        assignment in flight from that very uploader: not one fetching from
        the seed or another peer only, not one with nothing in flight, not
        one marked down already, not twice while a check of it waits."""
        s = self.s
        live = LivenessCheck(s, self.clock, connect=lambda host, port: defer.Deferred(),
                             cut_delay=0.5)
        asked = []
        live.check = asked.append
        live.cut(T, "peer-1", "peer-2")          # nothing in flight
        self.seed_piece_of(3)
        live.cut(T, "peer-1", "peer-3")          # fetching from the seed only
        live.cut(T, "peer-3", "peer-1")          # peer-1 fetches nothing
        self.clock.advance(1)
        self.assertEqual(asked, [])
        self.from_peer1(2)
        live.cut(T, "peer-3", "peer-2")          # a liar: peer-2 fetches nothing from it
        live.cut("other-task", "peer-1", "peer-2")
        live.cut(T, "peer-1", "peer-2")
        live.cut(T, "peer-1", "peer-2")          # one check waits already
        self.clock.advance(0.4)
        self.assertEqual(asked, [])
        self.clock.advance(0.1)
        self.assertEqual(asked, [peer(2)])
        s.unreachable("peer-2", peer(2), self.clock.seconds())
        live.cut(T, "peer-1", "peer-2")          # marked down: its assignments ended
        self.clock.advance(1)
        self.assertEqual(asked, [peer(2)])

    def test_cut_frees_the_uploaders_slots(self):
        """When a receiver fetching from one peer only dies and the uploader's
        cut report has the supernode find its port refusing, its assignments
        end and the uploader's slots are free for the others at once; a live
        receiver (its port answers) keeps them."""
        s = self.s
        connects = []

        def connect(host, port):
            d = defer.Deferred()
            connects.append(d)
            return d
        live = LivenessCheck(s, self.clock, connect=connect, cut_delay=0.5)
        self.from_peer1(2)
        task = s._tasks[T]
        self.assertEqual(task.peers["peer-1"].uploads, 1)
        live.cut(T, "peer-1", "peer-2")
        self.clock.advance(0.5)
        connects[0].callback(None)               # alive: the kernel answered
        self.assertEqual(task.peers["peer-1"].uploads, 1)
        self.assertIn(0, task.peers["peer-2"].fetching)
        self.clock.advance(10)                   # the next check of that address
        live.cut(T, "peer-1", "peer-2")
        self.clock.advance(0.5)
        connects[1].errback(ConnectionRefusedError())
        self.assertEqual(task.peers["peer-1"].uploads, 0)
        self.assertEqual(task.peers["peer-2"].fetching, {})
        self.assertEqual([a.source.peer_id for a in s.assign(T, "peer-3", 4) if a.index == 0],
                         ["peer-1"])

    def test_cut_checks_bounded(self):
        """At most max_checks cut checks wait at once: a flood of reports
        schedules no more."""
        s = self.s
        live = LivenessCheck(s, self.clock, connect=lambda host, port: defer.Deferred(),
                             max_checks=1, cut_delay=0.5)
        asked = []
        live.check = asked.append
        self.from_peer1(2)
        self.from_peer1(3)
        live.cut(T, "peer-1", "peer-2")
        live.cut(T, "peer-1", "peer-3")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(asked, [peer(2)])

    def test_abandoned_long_poll_checks(self):
        """When a peer's long-poll is abandoned (its client went away), its
        port is checked too, with or without assignments in flight."""
        self.s.abandoned(T, "peer-3")
        self.seed_piece_of(2)
        self.s.abandoned(T, "peer-2")
        self.s.abandoned(T, "peer-9")
        self.assertEqual(self.checks.asked, ["peer-3", "peer-2"])


class LivenessCheckTests(SynchronousTestCase):
    """The check: a refused connection is the only verdict; rate limits."""

    def setUp(self):
        self.clock = Clock()
        self.found = []
        self.connects = []

        class Scheduler:
            def unreachable(s, peer_id, info, since):
                self.found.append((peer_id, since))
                return 1

        def connect(host, port):
            d = defer.Deferred()
            self.connects.append(((host, port), d))
            return d
        self.live = LivenessCheck(Scheduler(), self.clock, connect, timeout=3,
                                  interval=10, max_checks=2)

    def test_refused(self):
        """A refused connection tells the scheduler, with the check's start."""
        self.clock.advance(5)
        d = self.live.check(peer(1))
        self.clock.advance(1)
        self.connects[0][1].errback(ConnectionRefusedError())
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.found, [("peer-1", 5)])
        self.assertEqual(self.live.refused, 1)

    def test_nothing_else_counts(self):
        """A connection that succeeds, times out or breaks otherwise changes nothing."""
        outcomes = [lambda d: d.callback(object()), lambda d: self.clock.advance(3),
                    lambda d: d.errback(ConnectionLost())]
        for n, outcome in enumerate(outcomes):
            d = self.live.check(peer(n))
            outcome(self.connects[-1][1])
            self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.found, [])

    def test_rate_limited(self):
        """One check per address per interval, at most max_checks at once."""
        self.assertIsNotNone(self.live.check(peer(1)))
        self.assertIsNone(self.live.check(peer(1)))                    # running
        self.assertIsNotNone(self.live.check(peer(2)))
        self.assertIsNone(self.live.check(peer(3)))                    # two at once
        self.connects[0][1].callback(None)
        self.assertIsNone(self.live.check(PeerInfo("other-id", "127.0.0.1", peer(1).port)))
        self.assertIsNotNone(self.live.check(peer(3)))
        self.clock.advance(10)
        self.connects[1][1].callback(None)
        self.assertIsNotNone(self.live.check(peer(1)))
        self.assertEqual(self.live.checks, 4)


class RealCheckTests(TestCase):
    """The default connect, on 127.0.0.1."""

    def setUp(self):
        self.found = []
        test = self

        class Scheduler:
            def unreachable(self, peer_id, info, since):
                test.found.append(peer_id)
                return 1
        self.live = LivenessCheck(Scheduler(), reactor)

    async def test_closed_port_refused(self):
        """Nothing listening: refused."""
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                                 interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        self.assertIs(await self.live.check(PeerInfo("dead", "127.0.0.1", number)), True)
        self.assertEqual(self.found, ["dead"])

    async def test_listening_port_alive(self):
        """A listening port: alive, and the connection is closed at once."""
        lost = defer.Deferred()

        class Server(protocol.Protocol):
            def connectionLost(self, reason):
                lost.callback(None)
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIs(await self.live.check(PeerInfo("alive", "127.0.0.1",
                                                     port.getHost().port)), False)
        await lost
        self.assertEqual(self.found, [])

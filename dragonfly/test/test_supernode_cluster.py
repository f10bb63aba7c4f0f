"""Tests for dragonfly.supernode.cluster: rendezvous ownership and health checks."""
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from dragonfly.admission import AdmissionKeys, AdmissionSigner
from dragonfly.supernode.cluster import Cluster

A, B, C = "10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"
TASKS = [f"task-{i}" for i in range(300)]


class Members(Resource):
    """/healthz of every member behind one StubTreq, told apart by Host."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.down = set()
        self.checks = []
        self.bodies = {}

    def render_GET(self, request):
        host = request.getHeader(b"host").decode()
        self.checks.append(host)
        if host in self.down:
            request.setResponseCode(503)
            return b'{"status": "down"}'
        return self.bodies.get(host, b'{"status": "ok"}')


class OwnershipTests(SynchronousTestCase):
    def test_every_node_agrees(self):
        """Nodes given the same membership (each from its own point of view)
        name the same owner for every task."""
        views = [Cluster(Clock(), None, [B, C], self_name=A),
                 Cluster(Clock(), None, [A, C], self_name=B),
                 Cluster(Clock(), None, [A, B, C], self_name=C)]   # self listed too: ignored
        for t in TASKS:
            owners = []
            for v in views:
                o = v.owner(t)
                owners.append(v.self_name if o is None else o)
            self.assertEqual(len(set(owners)), 1, t)

    def test_spread(self):
        """Ownership spreads over the members."""
        c = Cluster(Clock(), None, [B, C], self_name=A)
        mine = sum(1 for t in TASKS if c.is_local(t))
        self.assertTrue(50 < mine < 150, mine)

    def test_single_node(self):
        """Without other members (or before we know our name), every task is ours."""
        self.assertTrue(Cluster(Clock(), None, [], self_name=A).is_local("x"))
        self.assertTrue(Cluster(Clock(), None, [B]).is_local("x"))


class HealthTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.members = Members()
        self.cluster = Cluster(self.clock, StubTreq(self.members), [B, C], self_name=A,
                               interval=5, timeout=2, fail_after=2)

    def test_scheme(self):
        """Health checks go to http URLs, or https ones with scheme="https"."""
        urls = []

        class Recording:
            def get(self, url, **kw):
                urls.append(url)
                return Deferred()
        for scheme in ("http", "https"):
            Cluster(self.clock, Recording(), [B], self_name=A, scheme=scheme).check()
        self.assertEqual(urls, [f"http://{B}/healthz", f"https://{B}/healthz"])

    def test_dead_member_tasks_move(self):
        """When a member fails its checks twice in a row, its tasks move to
        the next member in each task's order and other tasks stay put."""
        before = {t: self.cluster.owner(t) for t in TASKS}
        self.members.down.add(B)
        self.successResultOf(self.cluster.check())
        self.assertEqual({t: self.cluster.owner(t) for t in TASKS}, before)   # one miss
        self.successResultOf(self.cluster.check())
        self.assertEqual(self.cluster.status()["members"], {B: "dead", C: "alive"})
        for t in TASKS:
            order = [m for m in self.cluster.order(t) if m != B]
            expect = None if order[0] == A else order[0]
            self.assertEqual(self.cluster.owner(t), expect)
            if before[t] != B:
                self.assertEqual(self.cluster.owner(t), before[t])
        self.members.down.clear()
        self.successResultOf(self.cluster.check())
        self.assertEqual({t: self.cluster.owner(t) for t in TASKS}, before)

    def test_timer_runs_checks_and_survives(self):
        """The health TimerService checks every interval on the clock and
        keeps running when a check blows up."""
        service = self.cluster.service()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(self.members.checks), [B, C])
        self.cluster._http = Exploding()
        self.clock.advance(5)
        self.assertEqual(self.cluster.status()["members"][B], "alive")   # one failure
        self.clock.advance(5)
        self.assertEqual(self.cluster.status()["members"][B], "dead")
        self.cluster._http = StubTreq(self.members)
        self.clock.advance(5)
        self.assertEqual(self.cluster.status()["members"][B], "alive")
        self.assertTrue(service.running)

    def test_check_timeout(self):
        """A member that does not answer within the timeout counts as a failure."""
        from twisted.internet.defer import Deferred

        class Hanging:
            def get(self, url, **kw):
                return Deferred()

        self.cluster._http = Hanging()
        d = self.cluster.check()
        self.assertNoResult(d)
        self.clock.advance(2)
        self.successResultOf(d)
        self.assertEqual(self.cluster._members[B].failures, 1)


class Exploding:
    def get(self, url, **kw):
        raise RuntimeError("boom")


class KeyTests(SynchronousTestCase):
    def test_members_keys_learned(self):
        """The health checks add each member's admission key (from its
        /healthz) to this node's trusted keys; malformed ones are ignored."""
        import json

        clock = Clock()
        members = Members()
        b, c = AdmissionSigner.generate(clock), AdmissionSigner.generate(clock)
        members.bodies[B] = json.dumps({"status": "ok", "tasks": 2, "keys": b.keys()}).encode()
        members.bodies[C] = json.dumps({"status": "ok", "keys": {c.key_id: "x"}}).encode()
        keys = AdmissionKeys(clock)
        cluster = Cluster(clock, StubTreq(members), [B, C], self_name=A, admission=keys)
        self.successResultOf(cluster.check())
        self.assertEqual(keys.keys(), b.keys())
        self.assertTrue(keys.verify(b.issue("t", "p"), "t", "p"))
        self.assertEqual(cluster._members[B].tasks, 2)

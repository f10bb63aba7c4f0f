"""The egress policy as each role shows it: 403 from the supernode API (register,
schedule, preheat) and the peer API, dfget's line, the flags and config keys."""
import json

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.egress import REFUSAL_PREFIX, EgressPolicy
from dragonfly.egressguard import EgressGuard
from dragonfly.origin import OriginClient, OriginRefused, make_http_client
from dragonfly.peer.api import PeerAPI
from dragonfly.peer.errors import OriginNotAllowed
from dragonfly.peer.node import NodeDeps, PeerNode
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore
from dragonfly.supernode.cdn import CDN
from dragonfly.supernode.preheat import Preheater
from dragonfly.supernode.api import SupernodeAPI
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_egressguard import FakeResolver
from dragonfly.test.test_peer_node import ME, PIECE
from dragonfly.test.peernodes import _Hosts
from dragonfly.test.test_supernode_api import PEER, SEED

DENIED = "http://2130706433:8080/f"
REFUSAL = ("origin not allowed: 2130706433 resolves to 127.0.0.1 (loopback); "
           "allow it with --allow-origin 127.0.0.1:8080")


def _guarded_reactor():
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver({})
    return reactor


class SupernodeRefusalTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = _guarded_reactor()
        policy = EgressPolicy()
        origin = OriginClient(self.reactor, make_http_client(self.reactor, egress=policy))
        from dragonfly.metrics import SupernodeMetrics
        from dragonfly.supernode.wakeups import LongPollScheduler
        self.store = PieceStore(self.mktemp(), clock=self.reactor, runner=SyncRunner())
        self.scheduler = LongPollScheduler(self.reactor)
        self.cdn = CDN(self.reactor, self.store, origin, self.scheduler, 4096,
                       SupernodeMetrics(), SyncRunner(), seed=SEED)
        self.preheater = Preheater(self.reactor, self.cdn, egress=EgressGuard(self.reactor, policy),
                                   new_id=lambda: "job1")
        api = SupernodeAPI(self.reactor, self.cdn, self.scheduler, None, preheater=self.preheater)
        self.client = StubTreq(api.resource())

    def post(self, path, body):
        d = self.client.post("http://supernode.test" + path, data=json.dumps(body).encode())
        self.client.flush()
        r = self.successResultOf(d)
        return r.code, json.loads(self.successResultOf(self.client.content(r)))

    def test_register_is_403(self):
        """A register for a denied origin answers 403 with the refusal line, at once
        (no retries) and without a connection."""
        code, obj = self.post("/api/v1/tasks", {"task_id": task_id_for_url(DENIED),
                                                "url": DENIED, "peer": PEER})
        self.assertEqual((code, obj), (403, {"error": REFUSAL}))
        self.assertEqual(self.reactor.tcpClients, [])
        code, obj = self.post(f"/api/v1/tasks/{task_id_for_url(DENIED)}/schedule",
                              {"peer_id": PEER["peer_id"], "have": [], "failed": [], "want": 1,
                               "wait": 0})
        self.assertEqual(code, 403)
        self.assertEqual(obj["error"], REFUSAL)

    def test_preheat_is_403(self):
        """A preheat of a denied origin (a file, or an image's registry) answers 403
        and starts no job."""
        for body in [{"url": DENIED},
                     {"type": "image", "url": "http://169.254.169.254/v2/a/manifests/latest"}]:
            code, obj = self.post("/api/v1/preheat", body)
            self.assertEqual(code, 403, obj)
            self.assertTrue(obj["error"].startswith(REFUSAL_PREFIX), obj)
        self.assertEqual(self.preheater.jobs(), [])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_preheat_of_unknown_name_is_accepted(self):
        """A name that does not resolve is not a refusal: the job starts (and
        reports the failure itself)."""
        code, obj = self.post("/api/v1/preheat", {"url": "http://nowhere.test/f"})
        self.assertEqual(code, 202, obj)


class _RefusingOrigin(FakeOrigin):
    """An origin client whose policy refuses every URL; counts the attempts."""

    asked = 0

    def get(self, url, headers=None, offset=0, etag=None, last_modified=None):
        from twisted.internet.defer import fail
        self.asked += 1
        return fail(OriginRefused(REFUSAL))


class PeerRefusalTests(SynchronousTestCase):

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(b"x" * 64, PIECE)
        from dragonfly.metrics import PeerMetrics
        metrics = PeerMetrics()
        self.origin = _RefusingOrigin(b"x" * 64)
        self.node = PeerNode(NodeDeps(self.clock, self.store,
                                      _Hosts({"sn.test:8002": self.supernode}),
                                      FakePiecePool(b"x" * 64, PIECE), metrics, SyncRunner(),
                                      origin=self.origin),
                             [("sn.test", 8002)], ME)
        self.http = StubTreq(PeerAPI(self.node, self.store, metrics, self.clock).resource())

    def download(self, body):
        d = self.http.post("http://127.0.0.1:65002/api/v1/download",
                           headers={"Content-Type": "application/json"},
                           data=json.dumps(body).encode())
        self.http.flush()
        r = self.successResultOf(d)
        return r, self.successResultOf(self.http.content(r))

    def test_supernode_refusal_is_403(self):
        """When the supernode refuses the origin (403 with the refusal line), the
        peer API answers 403 with that line, and does not go to the origin itself."""
        self.supernode.register_answer = (403, {"error": REFUSAL})
        r, body = self.download({"url": DENIED})
        self.assertEqual(r.code, 403)
        self.assertEqual(json.loads(body), {"error": REFUSAL})
        self.assertEqual(self.origin.asked, 0)

    def test_own_refusal_is_403(self):
        """With --pattern source the peer's own policy refuses: 403 with the line."""
        r, body = self.download({"url": DENIED, "pattern": "source"})
        self.assertEqual(r.code, 403)
        self.assertEqual(json.loads(body), {"error": REFUSAL})

    def test_node_raises_origin_not_allowed(self):
        """The node's download fails with OriginNotAllowed, a DownloadError."""
        f = self.failureResultOf(self.node.download(DENIED, pattern="source"), OriginNotAllowed)
        self.assertEqual(str(f.value), REFUSAL)


class DfgetRefusalTests(SynchronousTestCase):

    def test_daemon_403_prints_the_line(self):
        """Through a daemon, a 403 with the refusal line becomes dfget's error as is."""
        from dragonfly.dfget.options import DfgetError
        from dragonfly.dfget.viadaemon import DaemonClient

        class Response:
            status = 403

            def read(self, n):
                return json.dumps({"error": REFUSAL}).encode()

        class Conn:
            def close(self):
                pass
        client = DaemonClient("http://127.0.0.1:65002")
        client._request = lambda *a, **kw: (Conn(), None, Response())
        with self.assertRaises(DfgetError) as cm:
            client.download({}, lambda *a: None)
        self.assertEqual(str(cm.exception), REFUSAL)

    def test_options(self):
        """dfget --allow-origin/--deny-origin repeat, split on commas, are checked,
        and reach the embedded peer's config."""
        from dragonfly.dfget.options import OptionsError, parse

        o = parse(["http://o.test/f", "--allow-origin", "127.0.0.1:8080,10.0.0.0/8",
                   "--allow-origin", "o.test", "--deny-origin", "10.1.0.0/16"])
        self.assertEqual(o["allow_origin"], ["127.0.0.1:8080", "10.0.0.0/8", "o.test"])
        self.assertEqual(o["deny_origin"], ["10.1.0.0/16"])
        self.assertEqual(parse(["http://o.test/f"])["allow_origin"], [])
        with self.assertRaises(OptionsError) as cm:
            parse(["http://o.test/f", "--allow-origin", "a b"])
        self.assertIn("--allow-origin", str(cm.exception))

    def test_help(self):
        """dfget --help lists both flags."""
        from dragonfly.dfget.options import help_text
        text = help_text()
        self.assertIn("--allow-origin=", text)
        self.assertIn("--deny-origin=", text)


class FlagTests(SynchronousTestCase):

    def parse(self, options, argv):
        options.parseOptions(["--data-dir", self.mktemp()] + argv)
        return options

    def test_daemon_flags(self):
        """supernode and peer take repeatable, comma-separated --allow-origin and
        --deny-origin, checked into their config; a bad entry names the flag."""
        from twisted.python import usage

        from dragonfly.peer.tap import PeerOptions
        from dragonfly.supernode.tap import Options
        for cls in (Options, PeerOptions):
            o = self.parse(cls(), ["--allow-origin", "127.0.0.1, 10.0.0.0/8",
                                   "--allow-origin", "h.test:80", "--deny-origin", "[::1]:99"])
            self.assertEqual(o.config.allow_origin, ["127.0.0.1", "10.0.0.0/8", "h.test:80"])
            self.assertEqual(o.config.deny_origin, ["[::1]:99"])
            self.assertEqual(self.parse(cls(), []).config.allow_origin, [])
            with self.assertRaises(usage.UsageError) as cm:
                self.parse(cls(), ["--deny-origin", "10.0.0.0/99"])
            self.assertIn("--deny-origin", str(cm.exception))
            self.assertIn("--allow-origin=", str(cls()))

    def test_config_file_keys(self):
        """The TOML keys allow-origin / deny_origin take a string or a list."""
        from dragonfly.config import from_string
        from dragonfly.supernode.tap import Options

        o = Options()
        o.applyMapping(from_string('allow-origin = ["127.0.0.1:8080", "10.0.0.0/8"]\n'
                                   'deny_origin = "10.1.0.0/16"\n'))
        o.parseOptions(["--data-dir", self.mktemp()])
        self.assertEqual(o.config.allow_origin, ["127.0.0.1:8080", "10.0.0.0/8"])
        self.assertEqual(o.config.deny_origin, ["10.1.0.0/16"])

    def test_dfdaemon_registries_are_allowed(self):
        """The dfdaemon's --registry and --allow-registry hosts join its allow list."""
        from dragonfly.dfdaemon.tap import Options

        o = self.parse(Options(), ["--registry", "http://127.0.0.1:5000",
                                   "--insecure-registry", "127.0.0.1:5000",
                                   "--allow-registry", "reg.test", "--allow-origin", "o.test"])
        self.assertEqual(o.config.allow_origin, ["o.test", "127.0.0.1:5000", "reg.test:443"])
        policy = EgressPolicy(o.config.allow_origin, o.config.deny_origin)
        self.assertTrue(policy.decide("127.0.0.1", "127.0.0.1", 5000).allowed)
        self.assertFalse(policy.decide("127.0.0.1", "127.0.0.1", 5001).allowed)




class MirrorAgentTests(SynchronousTestCase):

    def test_upstream_agent_is_guarded(self):
        """The dfdaemon's upstream agent connects to its allowed registry and
        refuses any other denied address."""
        from dragonfly.dfdaemon.service import make_upstream_agent
        from dragonfly.dfdaemon.upstream import Upstreams

        reactor = _guarded_reactor()
        upstreams = Upstreams.from_options("http://127.0.0.1:5000", [], ["127.0.0.1:5000"])
        agent = make_upstream_agent(reactor, upstreams, None,
                                    egress=EgressPolicy(["127.0.0.1:5000"]))
        agent.request(b"GET", b"http://127.0.0.1:5000/v2/")
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("127.0.0.1", 5000)])
        self.failureResultOf(agent.request(b"GET", b"http://127.0.0.1:5001/v2/"), OriginRefused)
        self.assertEqual(len(reactor.tcpClients), 1)

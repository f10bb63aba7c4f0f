"""build_peer, the one assembly of a peer: as a daemon's parts and as dfget's embedded peer."""
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control.http import ControlHTTP
from dragonfly.peer.assembly import PeerConfig, build_peer, ephemeral_listen
from dragonfly.peer.node import PeerNode
from dragonfly.peer.service import PeerService
from dragonfly.runtime.threads import SyncRunner


class _HTTP:
    """An HTTP client nobody calls in these tests."""


class BuildPeerTests(SynchronousTestCase):

    def config(self, **kw):
        return PeerConfig(data_dir=os.path.abspath(self.mktemp()), **kw)

    def test_daemon_parts(self):
        """By default the peer has its API, its own HTTP pools (closed on stop): one
        for the supernodes and one for origins, which the egress policy guards,
        and becomes a PeerService listening on the piece port, then the API port."""
        reactor = MemoryReactorClock()
        peer = build_peer(reactor, self.config(piece_listen="tcp:4100",
                                               api_listen="tcp:4102:interface=127.0.0.1"),
                          runner=SyncRunner())
        self.assertIsInstance(peer.node, PeerNode)
        self.assertIsNotNone(peer.api_site)
        self.assertEqual(len(peer.closers), 2)
        self.assertIsNot(peer.node.deps.origin._http, peer.node.deps.http)
        # The supernode calls go straight on the Agent (dragonfly.control.http).
        self.assertIsInstance(peer.node.deps.http, ControlHTTP)
        svc = peer.service()
        self.assertIsInstance(svc, PeerService)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual([p[0] for p in reactor.tcpServers], [4100, 4102])

    def test_embedded_parts(self):
        """With api=False and the caller's runner and HTTP clients, there is no API
        and nothing of the caller's is closed; the node uses what it was given."""
        runner, http, origin_http = SyncRunner(), _HTTP(), _HTTP()
        peer = build_peer(MemoryReactorClock(), self.config(download_limit=1000),
                          runner=runner, http_client=http, origin_http=origin_http, api=False,
                          user_agent="dfget")
        self.assertIsNone(peer.api_site)
        self.assertIsNone(peer.api_endpoint)
        self.assertEqual(peer.closers, [])
        self.assertIs(peer.node.deps.runner, runner)
        self.assertIs(peer.node.deps.http, http)
        self.assertEqual(peer.node.deps.origin.user_agent, "dfget")
        self.assertIs(peer.node.deps.origin._http, origin_http)

    def test_start_and_stop(self):
        """start() listens on the piece endpoint only and advertises the bound port;
        stop() leaves, drains, stops listening and closes the pools."""
        reactor = MemoryReactorClock()
        peer = build_peer(reactor, self.config(advertise="192.0.2.9",
                                               piece_listen=ephemeral_listen("127.0.0.1")),
                          runner=SyncRunner(), http_client=_HTTP(), api=False)
        from twisted.internet.defer import Deferred
        self.successResultOf(Deferred.fromCoroutine(peer.start()))
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(0, "127.0.0.1")])
        self.assertEqual(peer.node.peer_info.host, "192.0.2.9")
        stopped = []
        peer._port.stopListening = lambda: stopped.append(True)
        self.successResultOf(Deferred.fromCoroutine(peer.stop()))
        self.assertEqual(stopped, [True])
        self.assertIsNone(peer._port)


class EphemeralListenTests(SynchronousTestCase):

    def test_addresses(self):
        """An IPv4 or IPv6 address is listened on as given (colons escaped); a host
        name means every IPv4 address; the port is always ephemeral."""
        self.assertEqual(ephemeral_listen("10.0.0.5"), "tcp:0:interface=10.0.0.5")
        self.assertEqual(ephemeral_listen("::1"), "tcp6:0:interface=\\:\\:1")
        self.assertEqual(ephemeral_listen("host.example"), "tcp:0:interface=0.0.0.0")


class DfgetEmbeddedTests(SynchronousTestCase):

    def test_embedded_peer_is_build_peer(self):
        """dfget's embedded mode gets its peer from build_peer: a PeerNode that
        knows the --supernode list and the advertised address."""
        from dragonfly.dfget import embedded
        from dragonfly.dfget.options import parse

        opts = parse(["http://origin.test/f", "--daemon", "none", "--supernode", "sn.test:8002",
                      "--advertise", "192.0.2.3"])
        job = embedded.Dfget(MemoryReactorClock(), opts, environ={}, http_client=_HTTP(),
                             runner=SyncRunner())
        node, start, stop = job._make_embedded(os.path.abspath(self.mktemp()))
        self.assertIsInstance(node, PeerNode)
        self.assertEqual(node.peer_info.host, "192.0.2.3")
        self.assertEqual(node._supernodes.supernodes, [("sn.test", 8002)])

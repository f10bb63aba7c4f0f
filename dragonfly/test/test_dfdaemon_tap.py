"""Tests for dragonfly.dfdaemon.tap (options, makeService) and the mirror's Site."""
import json
import os

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test import source_file
from dragonfly.dfdaemon import tap
from dragonfly.dfdaemon.mirror import RegistryMirror
from dragonfly.dfdaemon.service import MirrorSite, UpstreamPoolService
from dragonfly.dfdaemon.upstream import Upstreams
from dragonfly.metrics import PeerMetrics



class OptionsTests(SynchronousTestCase):
    def options(self, *argv):
        o = tap.Options()
        base = [] if "--data-dir" in argv else ["--data-dir", self.mktemp()]
        o.parseOptions(base + list(argv))
        return o

    def assertUsage(self, *argv, match):
        o = tap.Options()
        e = self.assertRaises(usage.UsageError, o.parseOptions,
                              ["--data-dir", self.mktemp()] + list(argv))
        self.assertIn(match, str(e))

    def test_defaults(self):
        """With no flags, the SPEC defaults apply: mirror on tcp:65001 in front of
        Docker Hub, plus the peer's own defaults."""
        o = self.options()
        m = o.mirror_config
        self.assertEqual((m.listen, m.registry, m.allow_registry, m.insecure_registry),
                         ("tcp:65001", "https://registry-1.docker.io", [], []))
        self.assertEqual(m.upstream_timeout, 60.0)
        self.assertEqual((o.config.piece_listen, o.config.supernodes),
                         ("tcp:65000", [("127.0.0.1", 8002)]))
        self.assertEqual(tap.Options().default_data_dir, "/var/lib/dragonfly/dfdaemon")

    def test_flags(self):
        """Mirror flags are parsed; --allow-registry and --insecure-registry repeat
        and take comma-separated lists."""
        o = self.options("--listen", "tcp:6001:interface=127.0.0.1",
                         "--registry", "http://127.0.0.1:5000",
                         "--insecure-registry", "127.0.0.1:5000",
                         "--allow-registry", "ghcr.io", "--allow-registry", "quay.io,lab:5000",
                         "--insecure-registry", "lab:5000", "--upstream-timeout", "15",
                         "--supernodes", "10.0.0.1:8002")
        m = o.mirror_config
        self.assertEqual(m.listen, "tcp:6001:interface=127.0.0.1")
        self.assertEqual(m.allow_registry, ["ghcr.io", "quay.io", "lab:5000"])
        self.assertEqual(m.insecure_registry, ["127.0.0.1:5000", "lab:5000"])
        self.assertEqual(m.upstream_timeout, 15.0)
        self.assertEqual(o.config.supernodes, [("10.0.0.1", 8002)])
        ups = Upstreams.from_options(m.registry, m.allow_registry, m.insecure_registry)
        self.assertEqual([u.base for u in ups.all],
                         ["http://127.0.0.1:5000", "https://ghcr.io", "https://quay.io",
                          "http://lab:5000"])

    def test_bad_values(self):
        """Bad mirror settings are refused with a message naming the problem."""
        self.assertUsage("--registry", "http://10.0.0.9:5000", match="--insecure-registry")
        self.assertUsage("--registry", "https://r.example/path", match="scheme://host")
        self.assertUsage("--allow-registry", "a/b", match="HOST[:PORT]")
        self.assertUsage("--insecure-registry", "h:notaport", match="port")
        self.assertUsage("--listen", "bogus:1", match="--listen")
        self.assertUsage("--upstream-timeout", "soon", match="--upstream-timeout")
        self.assertUsage("--upstream-timeout", "0", match="--upstream-timeout")
        self.assertUsage("--piece-listen", "tcp:notaport", match="--piece-listen")

    def test_config_file(self):
        """Mirror settings come from --config (lists included); flags win."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('listen = "tcp:7001"\nregistry = "http://lab:5000"\n'
                    'insecure-registry = ["lab:5000"]\nallow-registry = ["ghcr.io", "quay.io"]\n')
        o = self.options("--config", path, "--listen", "tcp:7777")
        m = o.mirror_config
        self.assertEqual((m.listen, m.registry), ("tcp:7777", "http://lab:5000"))
        self.assertEqual(m.allow_registry, ["ghcr.io", "quay.io"])
        o = self.options("--config", path, "--allow-registry", "gcr.io")
        self.assertEqual(o.mirror_config.allow_registry, ["gcr.io"])

    def test_sample_config_parses(self):
        """The shipped etc/dfdaemon.toml is valid and gives the documented values."""
        o = self.options("--config", source_file("etc", "dfdaemon.toml"))
        self.assertEqual(o.mirror_config.listen, "tcp:65001")
        self.assertEqual(o.mirror_config.registry, "https://registry-1.docker.io")
        self.assertIn("ghcr.io", o.mirror_config.allow_registry)


class MakeServiceTests(SynchronousTestCase):
    def test_peer_plus_mirror(self):
        """makeService builds the peer's service with the mirror as one more
        listener: on start it listens on piece, API and mirror ports (in that
        order) and writes all three to the port file; stopping closes them."""
        reactor = MemoryReactorClock()
        port_file = os.path.abspath(self.mktemp())
        o = tap.Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--port-file", port_file,
                        "--piece-listen", "tcp:40000", "--api-listen", "tcp:40002",
                        "--listen", "tcp:40001:interface=127.0.0.1",
                        "--registry", "http://127.0.0.1:5000",
                        "--insecure-registry", "127.0.0.1:5000"])
        svc = tap.makeService(o, reactor)
        self.assertTrue([s for s in svc if isinstance(s, UpstreamPoolService)])
        svc.startService()
        try:
            ports = [p[0] for p in reactor.tcpServers]
            self.assertEqual(ports, [40000, 40002, 40001])
            mirror_factory = reactor.tcpServers[2][1]
            self.assertIsInstance(mirror_factory, MirrorSite)
            self.assertEqual(reactor.tcpServers[2][3], "127.0.0.1")
            with open(port_file) as f:
                self.assertEqual(set(json.load(f)) >= {"api", "piece", "mirror"}, True)
        finally:
            svc.stopService()
            reactor.advance(1)


class MirrorSiteTests(SynchronousTestCase):
    def site(self):
        ups = Upstreams.from_options("http://127.0.0.1:5000", insecure=["127.0.0.1:5000"])
        mirror = RegistryMirror(MemoryReactorClock(), None, None, ups, PeerMetrics())
        return MirrorSite(mirror.resource(), reactor=MemoryReactorClock())

    def test_tls_on_plain_port_dropped(self):
        """When a client opens a TLS handshake on the plain-HTTP mirror port (skopeo
        does, first), the connection is closed at once rather than left to time out."""
        proto = self.site().buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_plain_http_served(self):
        """A plain HTTP request on the same site is answered (here /healthz)."""
        proto = self.site().buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"), transport.value())
        self.assertIn(b'"status": "ok"', transport.value())

    def test_malformed_content_length_json(self):
        """A malformed Content-Length gets the house JSON 400, not Twisted's empty one."""
        from dragonfly.test.test_httpsite import assert_json_bad_request
        assert_json_bad_request(self, self.site())

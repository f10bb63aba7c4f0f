"""twistd peer: options, config file, and the service it builds (on a MemoryReactor)."""
import json
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.resource import Resource

from dragonfly.interfaces import PeerInfo
from dragonfly.peer.node import PeerNode
from dragonfly.peer.service import PeerConfig, PeerService
from dragonfly.peer.tap import PeerOptions, makeService, make_peer_service
from dragonfly.test import short_dir, source_file


class OptionsTests(SynchronousTestCase):

    def parse(self, *argv):
        o = PeerOptions()
        o.parseOptions(["--data-dir", self.mktemp()] + list(argv))
        return o

    def test_defaults(self):
        """Without flags the peer uses the SPEC defaults."""
        import dragonfly.nodeoptions as nodeoptions
        self.patch(nodeoptions, "check_writable_dir", lambda flag, path: None)
        o = PeerOptions()
        o.parseOptions(["--config", self._empty_config()])
        c = o.config
        self.assertEqual(c.supernodes, [("127.0.0.1", 8002)])
        self.assertEqual(c.piece_listen, "tcp:65000")
        self.assertEqual(c.api_listen, "tcp:65002:interface=127.0.0.1")
        self.assertEqual(c.advertise, "127.0.0.1")
        self.assertEqual(c.data_dir, "/var/lib/dragonfly/peer")
        self.assertEqual((c.cache_size, c.cache_ttl, c.upload_limit, c.download_limit),
                         (0, 0, 0, 0))
        self.assertEqual(c.log_format, "text")

    def _empty_config(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("")
        return path

    def test_flags(self):
        """Every peer flag is parsed and validated into the config."""
        pf = os.path.abspath(self.mktemp())
        c = self.parse("--supernodes", "a:1,[::1]:2", "--piece-listen", "tcp:0",
                       "--api-listen", "tcp:0:interface=127.0.0.1", "--advertise", "10.0.0.5",
                       "--cache-size", "10G", "--cache-ttl", "3600", "--upload-limit", "5M",
                       "--download-limit", "512K", "--log-format", "json",
                       "--port-file", pf).config
        self.assertEqual(c.supernodes, [("a", 1), ("::1", 2)])
        self.assertEqual(c.cache_size, 10 * 1024 ** 3)
        self.assertEqual(c.cache_ttl, 3600.0)
        self.assertEqual(c.upload_limit, 5 * 1024 ** 2)
        self.assertEqual(c.download_limit, 512 * 1024)
        self.assertEqual(c.log_format, "json")
        self.assertEqual(c.port_file, pf)
        self.assertEqual(c.advertise, "10.0.0.5")

    def test_max_file_size(self):
        """--max-file-size defaults to 1T and reaches the node's settings."""
        self.assertEqual(self.parse().config.max_file_size, 1 << 40)
        self.assertEqual(self.parse("--max-file-size", "2G").config.max_file_size, 2 << 30)
        for bad in ("0", "huge"):
            e = self.assertRaises(usage.UsageError, self.parse, "--max-file-size", bad)
            self.assertIn("--max-file-size", str(e))

    def test_bad_flags(self):
        """Bad values are usage errors naming the flag."""
        for argv in (["--supernodes", "nohostport"], ["--piece-listen", "bogus:1"],
                     ["--cache-size", "lots"], ["--cache-ttl", "-5"],
                     ["--upload-limit", "fast"], ["--log-format", "xml"],
                     ["--advertise", "a b"], ["--port-file", "/nonexistent/dir/p.json"],
                     ["--concurrency", "0"]):
            e = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(argv[0], str(e))

    def test_api_socket(self):
        """--api-socket (or api-socket in the file) is an absolute path whose
        directory exists and that fits a socket address; none by default."""
        self.assertIsNone(self.parse().config.api_socket)
        d = short_dir(self)
        self.assertEqual(self.parse("--api-socket", os.path.join(d, "p.sock")).config.api_socket,
                         os.path.join(d, "p.sock"))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'api-socket = "{d}/q.sock"\n')
        self.assertEqual(self.parse("--config", path).config.api_socket, f"{d}/q.sock")
        for bad, words in ((os.path.join(d, "missing", "p.sock"), "does not exist"),
                           ("/tmp/" + "x" * 120 + ".sock", "longer than 107 bytes")):
            e = self.assertRaises(usage.UsageError, self.parse, "--api-socket", bad)
            self.assertIn("--api-socket", str(e))
            self.assertIn(words, str(e))

    def test_config_file(self):
        """Settings come from --config; a flag on the command line beats the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('supernodes = ["s1:8002", "s2:8002"]\ncache-size = "1G"\n'
                    'download_limit = "1M"\nadvertise = "192.0.2.1"\n')
        c = self.parse("--config", path, "--advertise", "192.0.2.9").config
        self.assertEqual(c.supernodes, [("s1", 8002), ("s2", 8002)])
        self.assertEqual(c.cache_size, 1024 ** 3)
        self.assertEqual(c.download_limit, 1024 ** 2)
        self.assertEqual(c.advertise, "192.0.2.9")

    def test_config_unknown_key(self):
        """An unknown key in the config file is a usage error."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('colour = "blue"\n')
        self.assertRaises(usage.UsageError, self.parse, "--config", path)

    def test_subclass(self):
        """A subclass (the dfdaemon's) adds flags and its own data dir default."""
        class DaemonOptions(PeerOptions):
            role = "dfdaemon"
            default_data_dir = "/var/lib/dragonfly/dfdaemon"
            optParameters = [["listen", None, "tcp:65001", "Mirror endpoint."]]

            def postOptions(self):
                PeerOptions.postOptions(self)
                self.config.listen = self["listen"]

        import dragonfly.nodeoptions as nodeoptions
        self.patch(nodeoptions, "check_writable_dir", lambda flag, path: None)
        o = DaemonOptions()
        o.parseOptions(["--listen", "tcp:1", "--supernodes", "x:1",
                        "--config", self._empty_config()])
        self.assertEqual(o.config.listen, "tcp:1")
        self.assertEqual(o.config.supernodes, [("x", 1)])
        self.assertEqual(o.config.data_dir, "/var/lib/dragonfly/dfdaemon")


class ServiceTests(SynchronousTestCase):

    def build(self, *extra):
        self.port_file = os.path.abspath(self.mktemp())
        o = PeerOptions()
        o.parseOptions(["--data-dir", self.mktemp(), "--piece-listen", "tcp:4100",
                        "--api-listen", "tcp:4102:interface=127.0.0.1", "--advertise",
                        "192.0.2.7", "--port-file", self.port_file] + list(extra))
        self.reactor = MemoryReactorClock()
        return make_peer_service(o, self.reactor)

    def test_make_peer_service(self):
        """make_peer_service returns the service, the node and the metrics; starting it
        listens on both ports, advertises the bound piece port and writes the port file."""
        svc, node, metrics = self.build()
        self.assertIsInstance(svc, PeerService)
        self.assertIsInstance(node, PeerNode)
        svc.startService()
        self.addCleanup(svc.stopService)
        ports = sorted(p[0] for p in self.reactor.tcpServers)
        self.assertEqual(ports, [4100, 4102])
        self.assertEqual(node.peer_info.host, "192.0.2.7")
        self.assertEqual(node.peer_info.port, 4100)
        with open(self.port_file) as f:
            written = json.load(f)
        self.assertEqual((written["api"], written["piece"]), (4102, 4100))
        self.assertEqual(written["peer_id"], node.peer_info.peer_id)
        self.assertEqual(self.successResultOf(svc.whenReady())["piece"][1], 4100)

    def test_extra_listener(self):
        """A listener added by a reusing role (the mirror) starts after the API and goes
        into the port file under its name."""
        svc, node, metrics = self.build()
        from twisted.internet.endpoints import serverFromString
        svc.add_listener("mirror", serverFromString(self.reactor, "tcp:4101"),
                         Site(Resource()), "mirror")
        svc.startService()
        self.addCleanup(svc.stopService)
        with open(self.port_file) as f:
            self.assertEqual(json.load(f)["mirror"], 4101)

    def test_api_socket_listener(self):
        """With --api-socket the local API's Site also listens on that unix
        socket, owner-only, right after the TCP API; the port file names its path."""
        sock = os.path.join(short_dir(self), "api.sock")
        svc, node, metrics = self.build("--api-socket", sock)
        svc.startService()
        self.addCleanup(svc.stopService)
        names = [name for name, _, _ in svc._listeners]
        self.assertEqual(names, ["piece", "api", "api-socket"])
        (address, factory, backlog, mode, want_pid), = self.reactor.unixServers
        self.assertEqual((address, mode, want_pid), (sock, 0o600, True))
        self.assertIs(factory, svc.api_site)
        with open(self.port_file) as f:
            self.assertEqual(json.load(f)["api-socket"], sock)

    def test_stop(self):
        """Stopping the service stops listening and removes the port file."""
        svc, node, metrics = self.build()
        svc.startService()
        self.successResultOf(svc.stopService())
        self.assertFalse(os.path.exists(self.port_file))

    def test_gc_timer_survives(self):
        """The GC timer logs an exception from the store and keeps running."""
        svc, node, metrics = self.build()
        calls = []

        def bad_gc():
            calls.append(1)
            raise OSError("disk on fire")
        svc.store.gc = bad_gc
        svc.startService()
        self.addCleanup(svc.stopService)
        self.reactor.advance(60)
        self.reactor.advance(60)
        self.assertEqual(len(calls), 3)  # once at start, then every 60s
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 3)

    def test_makeService(self):
        """makeService (the twistd entry point) returns the PeerService."""
        o = PeerOptions()
        o.parseOptions(["--data-dir", self.mktemp()])
        self.assertIsInstance(makeService(o, MemoryReactorClock()), PeerService)

    def test_config_dataclass(self):
        """make_peer_service also takes a PeerConfig directly."""
        c = PeerConfig(data_dir=os.path.abspath(self.mktemp()))
        svc, node, metrics = make_peer_service(c, MemoryReactorClock())
        self.assertIsInstance(node.peer_info, PeerInfo)


class SampleConfigTests(SynchronousTestCase):

    def test_sample_documents_the_defaults(self):
        """etc/peer.toml, with its commented settings switched on, is valid and
        gives exactly the built-in defaults it claims to show."""
        import re
        import dragonfly.nodeoptions as nodeoptions
        self.patch(nodeoptions, "check_writable_dir", lambda flag, path: None)
        with open(source_file("etc", "peer.toml")) as f:
            text = f.read()
        # Every commented setting but port-file and api-socket, which are
        # examples, not defaults.
        enabled = re.sub(r"(?m)^# ((?!port-file|api-socket)[a-z][a-z_-]* = )", r"\1", text)
        self.assertNotEqual(enabled, text)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(enabled)
        documented, default = PeerOptions(), PeerOptions()
        documented.parseOptions(["--config", path])
        empty = self.mktemp()
        open(empty, "w").close()
        default.parseOptions(["--config", empty])
        self.assertEqual(documented.config, default.config)

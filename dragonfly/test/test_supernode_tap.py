"""Tests for dragonfly.supernode.tap (options, makeService) and service start-up."""
import json
import os

from twisted.application.internet import TimerService
from twisted.application.service import Application, IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test import source_file
from dragonfly.interfaces import PeerInfo
from dragonfly.supernode import tap
from dragonfly.supernode.service import SupernodeService


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv):
        o = tap.Options()
        base = ["--data-dir", self.mktemp()] if "--data-dir" not in argv else []
        o.parseOptions(base + list(argv))
        return o.config

    def assertUsage(self, *argv, match):
        o = tap.Options()
        e = self.assertRaises(usage.UsageError, o.parseOptions,
                              ["--data-dir", self.mktemp()] + list(argv))
        self.assertIn(match, str(e))

    def test_defaults(self):
        """With no flags, the SPEC defaults apply."""
        c = self.parse()
        self.assertEqual((c.listen, c.piece_listen, c.piece_size, c.advertise, c.cluster),
                         ("tcp:8002", "tcp:8001", 4 << 20, None, []))
        self.assertEqual((c.origin_limit, c.upload_limit, c.cache_size, c.cache_ttl, c.log_format),
                         (0, 0, 0, 0, "text"))
        self.assertEqual(tap.Options()["data-dir"], "/var/lib/dragonfly/supernode")

    def test_flags(self):
        """Every flag is parsed into the config."""
        c = self.parse("--listen", "tcp:9002", "--piece-listen", "tcp:9001:interface=127.0.0.1",
                       "--advertise", "10.1.2.3", "--cluster", "a:8002,b:8003",
                       "--piece-size", "1M", "--origin-limit", "10M", "--upload-limit", "2M",
                       "--download-limit", "1K", "--cache-size", "1G", "--cache-ttl", "3600",
                       "--log-format", "json", "--port-file", self.mktemp())
        self.assertEqual(c.cluster, [("a", 8002), ("b", 8003)])
        self.assertEqual((c.piece_size, c.origin_limit, c.upload_limit, c.download_limit),
                         (1 << 20, 10 << 20, 2 << 20, 1024))
        self.assertEqual((c.cache_size, c.cache_ttl, c.log_format, c.advertise),
                         (1 << 30, 3600.0, "json", "10.1.2.3"))

    def test_bad_values(self):
        """Bad values are refused with a message naming the flag."""
        self.assertUsage("--piece-size", "lots", match="--piece-size")
        self.assertUsage("--piece-size", "100", match="between")
        self.assertUsage("--piece-size", "1G", match="between")
        self.assertUsage("--origin-limit", "-5", match="--origin-limit")
        self.assertUsage("--cache-ttl", "soon", match="--cache-ttl")
        self.assertUsage("--cache-ttl", "-1", match="--cache-ttl")
        self.assertUsage("--drain-timeout", "soon", match="--drain-timeout")
        self.assertUsage("--log-format", "xml", match="text or json")
        self.assertUsage("--listen", "bogus:1", match="--listen")
        self.assertUsage("--piece-listen", "tcp:notaport", match="--piece-listen")
        self.assertUsage("--cluster", "nohostport", match="HOST:PORT")
        self.assertUsage("--advertise", "a b", match="--advertise")
        self.assertUsage("--port-file", "/nonexistent-dir/x", match="--port-file")
        self.assertUsage("--cache-size", "1K", match="smaller than one piece")

    def test_max_file_size(self):
        """--max-file-size defaults to 1T, takes a size, and refuses 0 or junk naming the flag."""
        self.assertEqual(self.parse().max_file_size, 1 << 40)
        self.assertEqual(self.parse("--max-file-size", "10G").max_file_size, 10 << 30)
        self.assertUsage("--max-file-size", "0", match="--max-file-size")
        self.assertUsage("--max-file-size", "huge", match="--max-file-size")

    def test_swarm_uploads(self):
        """--swarm-uploads defaults to 4 and sets both the uploads per peer and
        the swarm cap of the scheduler; 0 or junk is refused naming the flag."""
        self.assertEqual(self.parse().swarm_uploads, 4)
        self.assertEqual(self.parse("--swarm-uploads", "1").swarm_uploads, 1)
        self.assertUsage("--swarm-uploads", "0", match="--swarm-uploads")
        self.assertUsage("--swarm-uploads", "few", match="--swarm-uploads")

    def test_max_peers_per_address(self):
        """--max-peers-per-address defaults to 1024; 0 turns the cap off."""
        self.assertEqual(self.parse().max_peers_per_address, 1024)
        self.assertEqual(self.parse("--max-peers-per-address", "0").max_peers_per_address, 0)
        self.assertUsage("--max-peers-per-address", "-1", match="--max-peers-per-address")

    def test_unwritable_data_dir(self):
        """A data dir that cannot be created is refused up front."""
        f = self.mktemp()
        open(f, "w").close()
        o = tap.Options()
        e = self.assertRaises(usage.UsageError, o.parseOptions, ["--data-dir", os.path.join(f, "x")])
        self.assertIn("not a directory", str(e))

    def test_config_file(self):
        """Settings come from --config; flags on the command line win."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('piece-size = "2M"\nlisten = "tcp:7002"\ncluster = ["a:1", "b:2"]\n'
                    f'data-dir = "{self.mktemp()}"\n')
        o = tap.Options()
        o.parseOptions(["--config", path, "--listen", "tcp:6002"])
        self.assertEqual((o.config.piece_size, o.config.listen, o.config.cluster),
                         (2 << 20, "tcp:6002", [("a", 1), ("b", 2)]))

    def test_sample_config_parses(self):
        """etc/supernode.toml is a valid config for these options."""
        sample = source_file("etc", "supernode.toml")
        o = tap.Options()
        o.parseOptions(["--config", sample, "--data-dir", self.mktemp()])
        self.assertEqual(o.config.piece_size, 4 << 20)


class MakeServiceTests(SynchronousTestCase):
    def make(self, *argv):
        self.dir = self.mktemp()
        o = tap.Options()
        o.parseOptions(["--data-dir", self.dir, "--listen", "tcp:0:interface=127.0.0.1",
                        "--piece-listen", "tcp:0", "--port-file", self.dir + ".ports"] + list(argv))
        self.reactor = MemoryReactorClock()
        return tap.makeService(o, reactor=self.reactor)

    def test_shape(self):
        """makeService builds a MultiService with the timers as children and
        the API and piece listeners; nothing listens before start."""
        s = self.make()
        self.assertIsInstance(s, SupernodeService)
        self.assertTrue(IServiceCollection.providedBy(s))
        names = {c.name for c in s}
        self.assertEqual(names, {"scheduler-expire", "store-gc"})
        for c in s:
            self.assertIsInstance(c, TimerService)
            self.assertIs(c.clock, self.reactor)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(s.cdn.piece_size, 4 << 20)

    def test_swarm_uploads(self):
        """--swarm-uploads reaches the scheduler: its uploads per peer and its
        swarm cap; the defaults stay 4 and 4."""
        s = self.make()
        self.assertEqual((s.scheduler.max_uploads_per_peer, s.scheduler.seed_swarm_uploads), (4, 4))
        s = self.make("--swarm-uploads", "1")
        self.assertEqual((s.scheduler.max_uploads_per_peer, s.scheduler.seed_swarm_uploads), (1, 1))

    def test_cluster_adds_health_timer(self):
        """With --cluster, a cluster health TimerService is added."""
        s = self.make("--cluster", "10.0.0.9:8002")
        self.assertIn("cluster-health", {c.name for c in s})
        self.assertEqual(s.cluster.status()["members"], {"10.0.0.9:8002": "alive"})

    def test_start_order_and_port_file(self):
        """On start the piece port listens first and becomes the seed address;
        then the API listens and the port file is written; stop removes it."""
        s = self.make("--advertise", "192.0.2.7")
        s.startService()
        ports = [(port, factory.__class__.__name__) for port, factory, _, _ in self.reactor.tcpServers]
        self.assertEqual([name for _, name in ports], ["PieceServerFactory", "ApiSite"])
        self.assertEqual(self.reactor.tcpServers[1][3], "127.0.0.1")
        self.assertEqual(s.cdn.seed, PeerInfo("supernode-192.0.2.7:0", "192.0.2.7", 0))
        with open(self.dir + ".ports") as f:
            self.assertEqual({k: v for k, v in json.load(f).items() if k in ("api", "piece")},
                             {"api": 0, "piece": 0})
        self.assertEqual(self.successResultOf(s.whenReady())[0], ("0.0.0.0", 0))
        s.stopService()
        self.assertFalse(os.path.exists(self.dir + ".ports"))

    def test_stop_hands_over_first(self):
        """A cluster member's stop waits for the hand-over (--drain-timeout of
        draining, then the moved answers' grace) before it closes its ports."""
        s = self.make("--cluster", "10.0.0.9:8002", "--drain-timeout", "5")
        self.assertEqual(s.handover.timeout, 5.0)
        s.cluster.set_self("10.0.0.1:8002")   # the memory reactor binds port 0
        s.startService()
        s.handover.busy = lambda: True
        d = s.stopService()
        self.assertNoResult(d)
        self.assertTrue(s.handover.draining)
        self.assertTrue(os.path.exists(self.dir + ".ports"))
        self.reactor.advance(5)
        self.assertTrue(s.handover.moving)
        self.assertNoResult(d)
        self.reactor.advance(s.handover.grace)
        self.successResultOf(d)
        self.assertFalse(os.path.exists(self.dir + ".ports"))

    def test_json_log_observer(self):
        """With --log-format json, the Application gets our observer as its
        ILogObserver component (how twistd picks its log observer)."""
        s = self.make("--log-format", "json")
        app = Application("supernode")
        s.setServiceParent(app)
        self.assertIs(app.getComponent(ILogObserver), s.log_observer)


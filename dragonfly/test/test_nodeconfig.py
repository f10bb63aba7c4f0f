"""L{NodeConfig}: the shared settings, and each role's defaults on top of them."""
from dataclasses import fields

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.service import PeerConfig
from dragonfly.runtime.nodeconfig import NodeConfig
from dragonfly.supernode.service import SupernodeConfig


class NodeConfigTests(SynchronousTestCase):

    def test_roles_extend_it(self):
        """Both role configs have every shared field."""
        shared = {f.name for f in fields(NodeConfig)}
        for cls in (PeerConfig, SupernodeConfig):
            self.assertTrue(issubclass(cls, NodeConfig))
            self.assertLessEqual(shared, {f.name for f in fields(cls)})

    def test_role_defaults(self):
        """A role's own defaults win over the base's; the rest are shared."""
        p, s = PeerConfig(), SupernodeConfig()
        self.assertEqual((p.data_dir, p.piece_listen, p.advertise, p.max_uploads),
                         ("/var/lib/dragonfly/peer", "tcp:65000", "127.0.0.1", 8))
        self.assertEqual((s.data_dir, s.piece_listen, s.advertise, s.max_uploads),
                         ("/var/lib/dragonfly/supernode", "tcp:8001", None, 32))
        for c in (p, s):
            self.assertEqual((c.cache_size, c.cache_ttl, c.upload_limit, c.download_limit,
                              c.log_format, c.port_file, c.gc_interval, c.threads),
                             (0, 0, 0, 0, "text", None, 60.0, 4))

    def test_keywords(self):
        """Role and shared fields are set by keyword, as the taps and dfget do."""
        c = PeerConfig(data_dir="/d", supernodes=[("h", 1)], threads=2)
        self.assertEqual((c.data_dir, c.supernodes, c.threads), ("/d", [("h", 1)], 2))
        self.assertIsNot(PeerConfig().supernodes, PeerConfig().supernodes)

    def test_gc_every(self):
        """The store GC runs every gc_interval, or every cache_ttl seconds when
        that is shorter (never under a second)."""
        self.assertEqual(NodeConfig().gc_every(), 60.0)
        self.assertEqual(NodeConfig(cache_ttl=3600).gc_every(), 60.0)
        self.assertEqual(NodeConfig(cache_ttl=10).gc_every(), 10.0)
        self.assertEqual(NodeConfig(cache_ttl=0.2).gc_every(), 1.0)

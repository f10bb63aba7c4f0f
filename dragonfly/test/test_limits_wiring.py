"""--download-limit, --upload-limit and --origin-limit reach the limiters of
the service twistd builds (the same C{makeService} a real twistd calls, on a
memory reactor): the rates on the built objects, not a timed transfer
(``make bench`` measures their effect)."""
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon import tap as dfdaemon_tap
from dragonfly.peer import tap as peer_tap
from dragonfly.supernode import tap as supernode_tap

KiB, MiB = 1024, 1024 * 1024


class SupernodeLimitTests(SynchronousTestCase):

    def build(self, *argv):
        o = supernode_tap.Options()
        o.parseOptions(["--data-dir", self.mktemp()] + list(argv))
        return supernode_tap.makeService(o, reactor=MemoryReactorClock())

    def test_limits_reach_the_limiters(self):
        """--upload-limit is the piece server's bucket; the origin client's
        bucket is the lower of --origin-limit and --download-limit."""
        s = self.build("--upload-limit", "2M", "--origin-limit", "10M", "--download-limit", "20M")
        self.assertEqual(s.piece_factory.upload_limiter.rate, 2 * MiB)
        self.assertEqual(s.cdn.origin._limiter.rate, 10 * MiB)
        s = self.build("--origin-limit", "10M", "--download-limit", "3M")
        self.assertEqual(s.cdn.origin._limiter.rate, 3 * MiB)
        s = self.build("--origin-limit", "5K")
        self.assertEqual(s.cdn.origin._limiter.rate, 5 * KiB)

    def test_zero_is_unlimited(self):
        """Without the flags (or with 0) nothing is limited."""
        for s in (self.build(), self.build("--upload-limit", "0", "--origin-limit", "0",
                                           "--download-limit", "0")):
            self.assertIsNone(s.piece_factory.upload_limiter)
            self.assertIsNone(s.cdn.origin._limiter)


class PeerLimitTests(SynchronousTestCase):
    tap = peer_tap
    options = peer_tap.PeerOptions

    def build(self, *argv):
        o = self.options()
        o.parseOptions(["--data-dir", self.mktemp()] + list(argv))
        return self.tap.makeService(o, MemoryReactorClock())

    def test_limits_reach_the_limiters(self):
        """--upload-limit is the piece server's bucket; --download-limit one
        bucket shared by piece downloads and back-to-source origin reads."""
        s = self.build("--upload-limit", "5M", "--download-limit", "512K")
        self.assertEqual(s.piece_factory.upload_limiter.rate, 5 * MiB)
        self.assertEqual(s.piece_pool.download_limiter.rate, 512 * KiB)
        self.assertIs(s.node.deps.origin._limiter, s.piece_pool.download_limiter)

    def test_zero_is_unlimited(self):
        """Without the flags nothing is limited."""
        s = self.build()
        self.assertIsNone(s.piece_factory.upload_limiter)
        self.assertIsNone(s.piece_pool.download_limiter)
        self.assertIsNone(s.node.deps.origin._limiter)


class DfdaemonLimitTests(PeerLimitTests):
    """The dfdaemon's peer: the same wiring."""
    tap = dfdaemon_tap
    options = dfdaemon_tap.Options

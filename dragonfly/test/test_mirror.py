"""Tests of the registry mirror as a whole (dragonfly.dfdaemon.mirror) in front of
a real PeerNode, and of the seam between them (L{IDownloader})."""
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dragonfly.interfaces import IDownloader
from dragonfly.metrics import sample
from dragonfly.test.mirrorfakes import BLOB, DIGEST, MIRROR, FakePeer, MirrorTestMixin


class _SupernodeClient:
    """The node's HTTP client: every POST goes to the fake supernode."""

    def __init__(self, supernode):
        self.stub = StubTreq(supernode.resource())

    def post(self, url, **kw):
        return self.stub.post(url, **kw)

    def flush(self):
        self.stub.flush()


class RealPeerTests(MirrorTestMixin, SynchronousTestCase):
    """The mirror in front of a real PeerNode (fake supernode, in-memory piece pool)."""

    def setUp(self):
        MirrorTestMixin.setUp(self)
        from dragonfly.interfaces import PeerInfo
        from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
        from dragonfly.storage.store import PieceStore
        from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
        from dragonfly.runtime.threads import SyncRunner

        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(BLOB, piece_size=100)
        self.pool = FakePiecePool(BLOB, 100)
        self.sn_client = _SupernodeClient(self.supernode)
        self.node = PeerNode(NodeDeps(self.clock, self.store, self.sn_client, self.pool,
                                      self.metrics, SyncRunner(), origin=FakeOrigin(BLOB)),
                             [("sn.test", 8002)], PeerInfo("me-1-00000000", "127.0.0.1", 65000),
                             NodeSettings(concurrency=3))
        self.mirror.peer = self.node
        self.addCleanup(self.store.close)

    def pump(self):
        for _ in range(40):
            self.sn_client.flush()
            self.upstream_agent.flush()
            self.client.flush()
            self.clock.advance(0.5)

    def test_blob_from_swarm(self):
        """When a client GETs a blob, the real peer registers the task under the
        digest with the blob URL and the client's Authorization, and the
        verified bytes reach the client as the pieces come in."""
        self.pool.manual = True
        d = self.client.get(MIRROR + f"/v2/library/app/blobs/{DIGEST}", unbuffered=True,
                            headers={b"authorization": [b"Bearer abc"]})
        self.pump()
        self.assertNoResult(d)  # headers go with the first bytes
        self.pool.release(1)
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(BLOB))
        [reg] = self.supernode.registrations
        self.assertEqual(reg["task_id"], DIGEST)
        self.assertEqual(reg["url"], f"http://registry.example:5000/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(reg["headers"], {"Authorization": "Bearer abc"})
        body = response.content()
        for _ in range(20):
            self.pool.release()
            self.pump()
        self.assertEqual(self.successResultOf(body), BLOB)
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_blob_bytes_total"), len(BLOB))
        # Held now: a second client is served from the store.
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(len(self.supernode.registrations), 1)



class DownloaderInterfaceTests(SynchronousTestCase):
    """The mirror knows the peer only as an L{IDownloader}: the real node and
    the tests' fake both provide it."""

    def test_peer_node_provides_downloader(self):
        """A PeerNode provides IDownloader, with the methods the mirror calls."""
        from dragonfly.interfaces import PeerInfo
        from dragonfly.metrics import PeerMetrics
        from dragonfly.peer.node import NodeDeps, PeerNode
        from dragonfly.runtime.threads import SyncRunner
        from dragonfly.storage.store import PieceStore
        from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
        from twisted.internet.task import Clock

        clock = Clock()
        store = PieceStore(self.mktemp(), clock=clock, runner=SyncRunner())
        self.addCleanup(store.close)
        node = PeerNode(NodeDeps(clock, store,
                                 _SupernodeClient(FakeSupernode(BLOB, piece_size=100)),
                                 FakePiecePool(BLOB, 100), PeerMetrics(), SyncRunner(),
                                 origin=FakeOrigin(BLOB)),
                        [("sn.test", 8002)], PeerInfo("me-1-00000000", "127.0.0.1", 65000))
        self.assertTrue(verifyObject(IDownloader, node))

    def test_fake_peer_provides_downloader(self):
        """The fake the mirror's tests use provides IDownloader too."""
        self.assertTrue(verifyObject(IDownloader, FakePeer({DIGEST: BLOB})))

"""The PeerNode test fixture: a fake supernode per host name, and a node over fakes.

Shared by the dragonfly.test.test_peer_node* modules (and the API and dfget
tests, which import the constants and L{_Hosts} through test_peer_node).
"""
from treq.testing import StubTreq
from twisted.internet.task import Clock

from dragonfly.interfaces import PeerInfo
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore
from dragonfly.test.peerfakes import SEED, FakeOrigin, FakePiecePool, FakeSupernode

URL = "http://origin.test/files/blob.bin"
DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes
PIECE = 64
ME = PeerInfo("me-1-00000000", "127.0.0.1", 65000)

SN1 = ("sn1.test", 8002)
SN2 = ("sn2.test", 8002)


class _Hosts:
    """An HTTP client sending each request to the fake supernode named by its host;
    connections to any other host are refused."""

    def __init__(self, by_host):
        self.by_host = by_host
        self._stubs = {}

    def post(self, url, **kw):
        from urllib.parse import urlsplit

        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError as CRE

        fake = self.by_host.get(urlsplit(url).netloc)
        if fake is None:
            return fail(CRE(url))
        if fake not in self._stubs:
            self._stubs[fake] = StubTreq(fake.resource())
        return self._stubs[fake].post(url, **kw)

    def flush(self):
        for stub in self._stubs.values():
            stub.flush()


class _RefusingClient:
    """An HTTP client whose every connection is refused."""

    def __init__(self):
        self.calls = 0

    def post(self, *a, **kw):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError as CRE

        self.calls += 1
        return fail(CRE("refused"))


class NodeMixin:
    """make() builds self.node over a FakeSupernode, a FakePiecePool and a FakeOrigin
    (keyword arguments are L{NodeSettings}; concurrency 3 unless given)."""

    def make(self, data=DATA, sources=(SEED,), supernodes=(SN1,), origin=None, client=None,
             **kw):
        self.clock = Clock()
        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(data, PIECE, sources)
        self.pool = FakePiecePool(data, PIECE)
        self.metrics = PeerMetrics()
        if client is None:
            self.hosts = _Hosts({f"{h}:{p}": self.supernode for h, p in supernodes[:1]})
            client = self.hosts
        self.origin = origin if origin is not None else FakeOrigin(data)
        settings = NodeSettings(**{"concurrency": 3, **kw})
        self.node = PeerNode(NodeDeps(self.clock, self.store, client, self.pool, self.metrics,
                                      SyncRunner(), origin=self.origin),
                             list(supernodes), ME, settings)
        return self.node

    def read_all(self, tf):
        with open(tf.path, "rb") as f:
            return f.read()

"""Shared pieces of the piece protocol tests: a fake store over real files,
a stream decoder for assertions, an endpoint that connects the pool to
StringTransports, and the server and client test mixins."""
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from dragonfly.admission import AdmissionKeys, AdmissionSigner, PeerAdmission
from dragonfly.interfaces import IServedStore, IServedTask, PeerInfo
from dragonfly.protocol import codec
from dragonfly.protocol.clientstate import PieceFetchError
from dragonfly.protocol.codec import FrameDecoder, Hello, HelloAck, Piece, PieceData, encode
from dragonfly.protocol.pool import PieceClientPool
from dragonfly.protocol.server import PieceServerFactory

TASK = "a" * 64
OTHER_TASK = "b" * 64
SOURCE = PeerInfo("seed-1", "127.0.0.1", 65000)


def pattern(n, seed=0):
    """n deterministic, non-repeating-ish bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8)) % 256 for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


@implementer(IServedTask)
class FakeTaskFile:
    """The TaskFile methods the piece server uses, over a real file."""

    def __init__(self, task_id, path, length, piece_size, held=None):
        self.task_id = task_id
        self.path = path
        self.length = length
        self.piece_size = piece_size
        self.piece_count = (length + piece_size - 1) // piece_size
        self.held = set(range(self.piece_count)) if held is None else set(held)
        self.pins = 0

    def has(self, index):
        return index in self.held

    def piece_range(self, index):
        offset = index * self.piece_size
        return offset, min(self.piece_size, self.length - offset)

    def read(self, offset, length):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def pin(self):
        self.pins += 1

    def unpin(self):
        assert self.pins > 0
        self.pins -= 1


@implementer(IServedStore)
class FakeStore:
    def __init__(self, testcase):
        self.testcase = testcase
        self.tasks = {}

    def get(self, task_id):
        return self.tasks.get(task_id)

    def add(self, task_id, data, piece_size, held=None):
        path = self.testcase.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        tf = self.tasks[task_id] = FakeTaskFile(task_id, path, len(data), piece_size, held)
        return tf


def decode(data, max_piece=codec.MAX_PIECE):
    """Messages in C{data}, each piece as (Piece, body)."""
    out, body = [], None
    for ev in FrameDecoder(max_piece=max_piece).feed(data):
        if isinstance(ev, PieceData):
            body[1].append(bytes(ev.data))
            if ev.last:
                out.append((body[0], b"".join(body[1])))
                body = None
        elif isinstance(ev, Piece):
            body = (ev, [])
        else:
            out.append(ev)
    if body is not None:
        out.append((body[0], b"".join(body[1]), "incomplete"))
    return out


def peer_admission(reactor, task_ids, peer_id="me-1"):
    """A L{PeerAdmission} that serves as both sides of a real connection:
    it knows a fresh signer's keys (a server's check) and holds that
    signer's token for C{peer_id} on each of C{task_ids} (a client's)."""
    signer = AdmissionSigner.generate(reactor)
    admission = PeerAdmission(reactor)
    admission.add_all(signer.keys())
    for task_id in task_ids:
        admission.admit(task_id, signer.issue(task_id, peer_id))
    return admission


class ServerTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore(self)
        self.data = pattern(1000 * 1024)
        self.task = self.store.add(TASK, self.data, 256 * 1024, held={0, 1, 3})
        self.uploaded = []
        self.signer = AdmissionSigner.generate(self.clock)
        self.admission = AdmissionKeys(self.clock)
        self.admission.add_all(self.signer.keys())

    def hello(self, task_id=TASK, peer_id="peer-1", version=codec.VERSION):
        """A Hello frame carrying a valid admission token (from version 2)."""
        token = self.signer.issue(task_id, peer_id) if version >= codec.TOKEN_VERSION else None
        return encode(Hello(version, task_id, peer_id, token))

    def make_factory(self, **kw):
        kw.setdefault("admission", self.admission)
        kw.setdefault("on_upload", self.uploaded.append)
        kw.setdefault("chunk_size", 64 * 1024)
        return PieceServerFactory(self.store, self.clock, **kw)

    def connect(self, factory, hello=True, task_id=TASK, host="127.0.0.1"):
        """A connection from C{host}; (None, None) when the factory refuses it."""
        proto = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        if proto is None:
            return None, None
        tr = StringTransport()
        proto.makeConnection(tr)
        if hello:
            proto.dataReceived(self.hello(task_id))
            self.assertEqual(decode(tr.value()), [HelloAck(codec.VERSION)])
            tr.clear()
        return proto, tr

    def drain(self, tr, limit=1000):
        """Play a transport that always has room: resume until the producer leaves."""
        for _ in range(limit):
            if tr.producer is None:
                return
            tr.producer.resumeProducing()
        self.fail("producer never finished")


class FakeEndpoint:
    """Connects the pool's protocol to a StringTransport (or never, or fails)."""

    def __init__(self, mode="connect"):
        self.mode = mode
        self.transports = []
        self.protocols = []
        self.pending = []
        self.cancelled = []

    def __call__(self, host, port):
        return self

    def connect(self, factory):
        if self.mode == "fail":
            return defer.fail(ConnectionRefusedError())
        if self.mode == "hang":
            d = defer.Deferred(self.cancelled.append)
            self.pending.append(d)
            return d
        proto = factory.buildProtocol(None)
        tr = StringTransport()
        proto.makeConnection(tr)
        self.transports.append(tr)
        self.protocols.append(proto)
        return defer.succeed(proto)


class ClientTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def make_pool(self, **kw):
        kw.setdefault("endpoint_factory", self.endpoint)
        return PieceClientPool(self.clock, "me-1", **kw)

    def handshake(self, index=0):
        proto, tr = self.endpoint.protocols[index], self.endpoint.transports[index]
        self.assertEqual(decode(tr.value())[0], Hello(codec.VERSION, TASK, "me-1"))
        tr.clear()
        proto.dataReceived(encode(HelloAck(codec.VERSION)))
        return proto, tr

    def lose(self, proto, reason=None):
        proto.connectionLost(Failure(reason or ConnectionDone()))

    def assertFetchError(self, d, code=None, contains=None):
        err = self.failureResultOf(d, PieceFetchError).value
        self.assertEqual(err.code, code)
        if contains is not None:
            self.assertIn(contains, err.reason)
        return err



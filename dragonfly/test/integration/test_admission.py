"""Admission to pieces against real processes: knowing a task id is not enough.

An origin, a supernode and a peer that holds a file. A stranger speaking the
piece protocol over raw TCP to the peer's and the supernode's piece ports
gets FORBIDDEN and no piece bytes: without a token (protocol v2 or v1), with
a token the supernode gave it for another task, and with a real token for
the task but another peer id. With its own token for the task it is served
(the check is not a blanket refusal), and a normal download through a second
peer is byte-exact. The supernode's signing key sits in its data directory,
readable by its owner only. The same holds for a private registry layer
pulled through a dfdaemon: its blob digest is not enough.
"""
import json
import os
import stat

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from dragonfly.admission import KEY_FILE
from dragonfly.protocol import codec
from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    HTTP, LOOPBACK, MiB, Swarm, poll_until, sha256_file, with_logs)
from dragonfly.test.integration import test_registry_mirror as mirror

STRANGER = "stranger-1-0badc0de"


class _Client(Protocol):
    """Sends C{payload} on connect; decodes what comes back."""

    def __init__(self, payload):
        self.payload = payload
        self.messages = []
        self.piece_bytes = 0
        self.lost = False
        self._decoder = codec.FrameDecoder()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        try:
            for msg in self._decoder.feed(data):
                if isinstance(msg, codec.PieceData):
                    self.piece_bytes += len(msg.data)
                else:
                    self.messages.append(msg)
        except codec.ProtocolError:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.lost = True


def _hello(task_id, peer_id, token=None, version=codec.VERSION, requests=3):
    return (codec.encode(codec.Hello(version, task_id, peer_id, token))
            + b"".join(codec.encode(codec.Request(i)) for i in range(requests)))


async def _speak(port, payload, served=None):
    """The L{_Client} after it sent C{payload} to 127.0.0.1:C{port} and the
    server closed the connection (or, with C{served}, sent that many piece bytes)."""
    proto = _Client(payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5), proto)
    try:
        if served is None:
            await poll_until(reactor, lambda: proto.lost, 15, f"port {port} to close")
        else:
            await poll_until(reactor, lambda: proto.piece_bytes >= served, 15,
                             f"port {port} to serve the pieces")
    finally:
        if not proto.lost:
            proto.transport.abortConnection()
    await poll_until(reactor, lambda: proto.lost, 10, "our connection to close")
    return proto


def assert_refused(test, proto, what):
    """C{proto} got one FORBIDDEN about the connection and nothing else."""
    test.assertEqual(proto.piece_bytes, 0, f"{what}: piece bytes were served")
    kinds = [type(m) for m in proto.messages]
    test.assertNotIn(codec.HelloAck, kinds, f"{what}: the Hello was accepted")
    test.assertNotIn(codec.Piece, kinds, f"{what}: a piece header was sent")
    test.assertEqual([(m.index, m.code) for m in proto.messages],
                     [(None, codec.FORBIDDEN)], what)


class AdmissionTests(unittest.TestCase):
    timeout = 240

    async def register(self, http, sn, url, peer_id):
        """Register C{url} at C{sn} as C{peer_id}; the answer object."""
        body = json.dumps({"task_id": task_id_for_url(url), "url": url, "headers": {},
                           "peer": {"peer_id": peer_id, "host": LOOPBACK, "port": 9}})
        code, _, raw = await http.request("POST", sn.api + "/api/v1/tasks",
                                          data=body.encode(),
                                          headers={"Content-Type": ["application/json"]},
                                          timeout=30)
        self.assertEqual(code, 200, raw)
        return json.loads(raw)

    @with_logs()
    async def test_stranger_gets_no_pieces(self):
        """A stranger who knows the task id gets FORBIDDEN and no piece bytes
        from the peer's and the supernode's piece ports, without a token, with
        another task's token and with another peer's token; its own token for
        the task is served; a normal download still works."""
        http = HTTP(reactor)
        self.addCleanup(http.close)
        swarm = self.swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        await swarm.start_origin({"private.bin": 3 * MiB + 17, "other.bin": MiB})
        sn = await swarm.start_supernode(piece_size="1M")
        holder = await swarm.start_peer()
        url = swarm.origin_url("private.bin")
        r = await swarm.dfget(url, peer=holder, timeout=60)
        self.assertEqual(r.code, 0, repr(r))
        task_id = task_id_for_url(url)

        mode = stat.S_IMODE(os.stat(os.path.join(sn.data_dir, KEY_FILE)).st_mode)
        self.assertEqual(mode, 0o600)

        other = await self.register(http, sn, swarm.origin_url("other.bin"), STRANGER)
        mine = await self.register(http, sn, url, "friend-1-00c0ffee")
        attempts = [
            ("no token", _hello(task_id, STRANGER)),
            ("a version 1 Hello", _hello(task_id, STRANGER, version=1)),
            ("another task's token", _hello(task_id, STRANGER, other["token"])),
            ("another peer's token", _hello(task_id, STRANGER, mine["token"])),
            ("garbage token", _hello(task_id, STRANGER, "x" * 100 + "." + "y" * 86)),
        ]
        for node in (holder, sn):
            for what, payload in attempts:
                proto = await _speak(node.piece_port, payload)
                assert_refused(self, proto, f"{node.name}, {what}")
            # The peer the token names is served.
            proto = await _speak(node.piece_port,
                                 _hello(task_id, "friend-1-00c0ffee", mine["token"]),
                                 served=3 * MiB)
            self.assertEqual(type(proto.messages[0]), codec.HelloAck, node.name)
            self.assertEqual(proto.piece_bytes, 3 * MiB, node.name)

        fetcher = await swarm.start_peer()
        r = await swarm.dfget(url, peer=fetcher, timeout=90)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["private.bin"][1])
        for node in (holder, sn, fetcher):
            self.assertTrue(node.alive(), node.tail())


class PrivateLayerTests(unittest.TestCase):
    """A private registry layer pulled through a dfdaemon: its digest is not
    enough to read it off the dfdaemon's or the supernode's piece port."""

    timeout = 300
    # The registry, the image and the pull of the mirror's own tests.
    setUp = mirror.RegistryMirrorTests.setUp
    start_registry = mirror.RegistryMirrorTests.start_registry
    start_swarm = mirror.RegistryMirrorTests.start_swarm
    pull = mirror.RegistryMirrorTests.pull

    @with_logs()
    async def test_blob_digest_is_not_enough(self):
        """After an authorised pull through a dfdaemon, a stranger who knows
        each blob's digest (its task id) gets FORBIDDEN and no piece bytes from
        the dfdaemon's and the supernode's piece ports."""
        info = await self.start_registry()
        [daemon] = await self.start_swarm(1)
        code, out, err, out_dir = await self.pull(daemon, "pull-1")
        self.assertEqual(code, 0, f"the authorised pull failed: {err}")
        for digest in info["blobs"]:
            for node in (daemon, self.swarm.supernodes[0]):
                proto = await _speak(node.piece_port, _hello(digest, STRANGER))
                assert_refused(self, proto, f"{node.name}, {digest}")

"""Hostile bytes against real processes: every service stays up and useful.

One swarm (origin + supernode + 2 peers) is shared by these tests (each
fetches its own fresh file, so they pass again under ``trial -u``). Each test
throws malformed input at the piece ports (binary protocol) or the HTTP API
ports, checks that the offending connection is dropped or answered with a
4xx JSON error, then that every process is still alive, ``/healthz`` answers
200 and a fresh dfget through the swarm is byte-exact.
"""
import json
import random
import struct

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, SharedSwarmMixin, poll_until, sha256_file, with_logs)

FILE_SIZE = 2 * MiB + 777  # 3 pieces of 1 MiB


class _Garbage(Protocol):
    """Write ``payload`` on connect; remember what comes back and when we lose it."""

    def __init__(self, payload):
        self.payload = payload
        self.received = b""
        self.lost = False

    def connectionMade(self):
        if self.payload:
            self.transport.write(self.payload)

    def dataReceived(self, data):
        if len(self.received) < 1 << 20:
            self.received += data

    def connectionLost(self, reason):
        self.lost = True


async def throw(port, payload, expect_drop, timeout=15):
    """Connect to 127.0.0.1:port, send ``payload``. When ``expect_drop``,
    wait (with a deadline) for the server to close the connection; otherwise
    close it ourselves. Return the protocol (``.received`` holds the reply)."""
    proto = _Garbage(payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5), proto)
    if expect_drop:
        try:
            await poll_until(reactor, lambda: proto.lost, timeout,
                             f"the server on port {port} to drop a connection after {payload[:16]!r}...")
        finally:
            if not proto.lost:
                proto.transport.abortConnection()
    else:
        proto.transport.loseConnection()
    await poll_until(reactor, lambda: proto.lost, 10, "our connection to close")
    return proto


class RobustnessTests(SharedSwarmMixin, unittest.TestCase):
    timeout = 240

    async def setUpSwarm(self, swarm):
        await swarm.start_origin()
        await swarm.start_supernode(piece_size="1M")
        for _ in range(2):
            await swarm.start_peer()

    async def swarm_(self):
        return await self.shared()

    def nodes(self):
        return self.swarm.supernodes + self.swarm.peers

    async def assertStillWorking(self, filename):
        """Every process alive, /healthz 200 everywhere, and a dfget of
        ``filename`` through the first peer byte-exact."""
        swarm = self.swarm
        for node in self.nodes():
            self.assertTrue(node.alive(), f"{node.name} died:\n{node.tail()}")
            self.assertTrue(await swarm.http.healthy(node.api), f"{node.name} /healthz is not 200")
        r = await swarm.dfget(swarm.origin_url(filename), peer=swarm.peers[-1], timeout=60)
        self.assertEqual(r.code, 0, f"dfget after the abuse failed: {r!r}")
        self.assertEqual(sha256_file(r.output), swarm.files[filename][1])

    @with_logs()
    async def test_piece_port_garbage(self):
        """When a piece port gets random bytes, an oversized length prefix, an
        empty or unknown-type frame, an HTTP request or a half handshake, that
        connection is dropped (or just closed) and the node keeps serving."""
        swarm = await self.swarm_()
        from dragonfly.protocol import codec

        rnd = random.Random(20240601)
        hello = codec.encode(codec.Hello(codec.VERSION, "a" * 64, "garbage-1-deadbeef"))
        drops = [
            b"\xff" + rnd.randbytes(64 * 1024),                 # random, huge length
            struct.pack("!IB", 0xFFFFFFFF, codec.T_HELLO) + b"x" * 100,  # oversized prefix
            struct.pack("!IB", 0, 0),                            # empty frame
            struct.pack("!IB", 5, 250) + b"\0" * 4,              # unknown type
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",               # wrong protocol
            struct.pack("!IB", 11, codec.T_HELLO) + b"NOPE" + b"\0\1" + b"\0" * 5,  # bad magic
            codec.encode(codec.Request(0)),                      # request before Hello
        ]
        keeps = [
            hello[: len(hello) // 2],                            # half a handshake
            hello[:3],                                           # half a header
            b"",                                                 # connect and leave
        ]
        for node in self.nodes():
            for payload in drops:
                await throw(node.piece_port, payload, expect_drop=True)
            for payload in keeps:
                await throw(node.piece_port, payload, expect_drop=False)
        await self.assertStillWorking(swarm.new_file("file", FILE_SIZE))

    @with_logs()
    async def test_piece_port_unknown_task(self):
        """When a stranger handshakes for a task the node does not hold and asks
        for pieces, it gets errors (or a closed connection) and never piece data."""
        swarm = await self.swarm_()
        from dragonfly.protocol import codec

        msg = (codec.encode(codec.Hello(codec.VERSION, "f" * 64, "stranger-1-0badc0de"))
               + b"".join(codec.encode(codec.Request(i)) for i in range(3)))
        for node in self.nodes():
            proto = _Garbage(msg)
            await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, node.piece_port, timeout=5), proto)

            def answered():
                return proto.lost or codec.T_ERROR in _types(proto.received)
            try:
                await poll_until(reactor, answered, 15, f"{node.name} to refuse the unknown task")
            finally:
                if not proto.lost:
                    proto.transport.abortConnection()
            await poll_until(reactor, lambda: proto.lost, 10, "our connection to close")
            self.assertNotIn(codec.T_PIECE, _types(proto.received),
                             f"{node.name} sent piece data for a task it does not hold")
        await self.assertStillWorking(swarm.new_file("file", FILE_SIZE))

    @with_logs()
    async def test_api_garbage_http(self):
        """When an API port gets binary garbage, a broken request line, an
        enormous header or too many headers, the connection is answered with a
        4xx and dropped; a TLS hello or a body cut short is harmless; the
        service stays healthy."""
        swarm = await self.swarm_()
        rnd = random.Random(7)
        drops = [
            rnd.randbytes(4096) + b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
        ]
        keeps = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # a TLS hello (no line end)
            b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n{\"task_id\": ",
            b"GET /heal",
        ]
        for node in self.nodes():
            for payload in drops:
                proto = await throw(node.api_port, payload, expect_drop=True)
                if proto.received:
                    self.assertTrue(proto.received.startswith(b"HTTP/1.1 4"),
                                    f"{node.name} answered garbage with {proto.received[:80]!r}")
            for payload in keeps:
                await throw(node.api_port, payload, expect_drop=False)
        await self.assertStillWorking(swarm.new_file("file", FILE_SIZE))

    @with_logs()
    async def test_api_bad_requests(self):
        """When well-formed HTTP carries bad JSON, wrong types, invalid ids,
        traversal paths or an oversized body, the API answers 4xx with a JSON
        {"error": ...} and nothing breaks."""
        swarm = await self.swarm_()
        http = swarm.http
        sn = swarm.supernodes[0]
        peer = swarm.peers[0]
        big = json.dumps({"url": "http://x/", "pad": "a" * (2 * MiB)}).encode()
        name = swarm.new_file("file", FILE_SIZE)
        origin_url = swarm.origin_url(name)
        cases = [
            (sn, "POST", "/api/v1/tasks", b"{not json"),
            (sn, "POST", "/api/v1/tasks", b"[1, 2, 3]"),
            (sn, "POST", "/api/v1/tasks", json.dumps({"task_id": "../../etc", "url": origin_url}).encode()),
            (sn, "POST", "/api/v1/tasks", json.dumps({"task_id": "a" * 64, "url": 42}).encode()),
            (sn, "POST", "/api/v1/tasks", json.dumps({"task_id": "a" * 64, "url": "file:///etc/passwd",
                                                      "peer": {"peer_id": "x-1-00000000",
                                                               "host": LOOPBACK, "port": 1}}).encode()),
            (sn, "POST", "/api/v1/tasks", big),
            (sn, "POST", "/api/v1/tasks/%2e%2e%2f%2e%2e%2fetc/schedule", b"{}"),
            (sn, "POST", "/api/v1/tasks/" + "b" * 64 + "/schedule",
             json.dumps({"peer_id": "nobody-1-00000000", "have": "all", "want": -5}).encode()),
            (sn, "GET", "/api/v1/tasks/" + "c" * 64, None),
            (sn, "POST", "/api/v1/preheat", b"\xff\xfe"),
            (peer, "POST", "/api/v1/download", b"{not json"),
            (peer, "POST", "/api/v1/download", json.dumps({"headers": {}}).encode()),
            (peer, "POST", "/api/v1/download", json.dumps({"url": "file:///etc/passwd"}).encode()),
            (peer, "POST", "/api/v1/download", big),
            (peer, "GET", "/api/v1/tasks/..%2f..%2fetc%2fpasswd/data", None),
            (peer, "GET", "/api/v1/tasks/" + "d" * 64 + "/data", None),
        ]
        for node, method, path, body in cases:
            headers = {"Content-Type": ["application/json"]} if body is not None else None
            code, hdrs, reply = await http.request(method, node.api + path, data=body,
                                                   headers=headers, timeout=30)
            where = f"{node.name} {method} {path[:60]} -> {code} {reply[:200]!r}"
            self.assertTrue(400 <= code < 500, f"expected a 4xx: {where}")
            try:
                obj = json.loads(reply)
            except ValueError:
                self.fail(f"error body is not JSON: {where}")
            self.assertIsInstance(obj, dict, where)
            self.assertIsInstance(obj.get("error"), str, f"no 'error' string: {where}")
            self.assertNotIn("root:", reply.decode("latin-1"), f"leaked a file: {where}")
        self.assertEqual(await swarm.origin.body_bytes(http, name), 0,
                         "a rejected request still reached the origin")
        await self.assertStillWorking(name)


def _types(data):
    """Message types of the frames in ``data`` (a server's reply), best effort."""
    from dragonfly.protocol import codec
    out = []
    dec = codec.FrameDecoder()
    try:
        for item in dec.feed(bytes(data)):
            if not isinstance(item, codec.PieceData):
                out.append({codec.Error: codec.T_ERROR, codec.Piece: codec.T_PIECE,
                            codec.HelloAck: codec.T_HELLO_ACK}.get(type(item)))
    except codec.ProtocolError:
        out.append(None)
    return out

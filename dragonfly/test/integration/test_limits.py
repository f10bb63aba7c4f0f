"""Resource limits against real processes: a lying origin and a flooded piece port.

- An origin announcing 2^40 bytes is refused at once (413 past
  --max-file-size) while ``/healthz`` keeps answering, nothing cached is
  evicted, and an honest registration afterwards succeeds.
- 64 clients that never read and 16 that trickle a handshake one byte at a
  time, against a peer's and the supernode's piece ports, do not stop a
  legitimate download; the stall check and the handshake deadline drop them.
  The readers that never read are admitted (a registered, hostile peer's
  token), so they get past the Hello to the upload slots.

The hostile clients connect from 127.0.0.2 (another loopback address), as a
host other than the legitimate peers would.
"""
import json
import time

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from dragonfly.protocol import codec
from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    HTTP, LOOPBACK, MiB, Swarm, poll_until, sha256_file, with_logs)

ATTACKER = "127.0.0.2"
LIE = 1 << 40


class _LyingOrigin(Protocol):
    """Answers any request with a 200 announcing C{factory.length} bytes, then sends nothing."""

    def dataReceived(self, data):
        if b"\r\n\r\n" in data and not getattr(self, "answered", False):
            self.answered = True
            self.factory.requests += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % self.factory.length)
            self.factory.open.append(self.transport)


class _LyingOriginFactory(Factory):
    protocol = _LyingOrigin

    def __init__(self, length):
        self.length = length
        self.requests = 0
        self.open = []


class _HealthWatch:
    """Polls ``/healthz`` every 50 ms; remembers the slowest answer and any failure."""

    def __init__(self, http, api):
        self.http, self.api = http, api
        self.slowest = 0.0
        self.failures = []
        self.loop = task.LoopingCall(self._poll)
        self._busy = False

    async def _once(self):
        start = time.monotonic()
        try:
            ok = await self.http.healthy(self.api)
        except Exception as e:
            ok = False
            self.failures.append(repr(e))
        if not ok:
            self.failures.append("not 200")
        self.slowest = max(self.slowest, time.monotonic() - start)

    def _poll(self):
        if self._busy:
            return
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._once())
        d.addBoth(lambda _: setattr(self, "_busy", False))

    def start(self):
        self.loop.start(0.05)

    def stop(self):
        if self.loop.running:
            self.loop.stop()


class _NonReader(Protocol):
    """Says Hello (as the admitted C{peer_id}), asks for many pieces, and
    never reads a byte of the answer."""

    def __init__(self, task_id, pieces, peer_id, token):
        self.task_id, self.pieces = task_id, pieces
        self.peer_id, self.token = peer_id, token
        self.lost = False

    def connectionMade(self):
        self.transport.pauseProducing()
        out = codec.encode(codec.Hello(codec.VERSION, self.task_id, self.peer_id, self.token))
        for i in range(60):
            out += codec.encode(codec.Request(i % self.pieces))
        self.transport.write(out)

    def connectionLost(self, reason):
        self.lost = True


class _Trickler(Protocol):
    """Sends a Hello one byte every 10 seconds."""

    def __init__(self, task_id):
        self.data = codec.encode(codec.Hello(codec.VERSION, task_id, "trickle-1-deadbeef"))
        self.lost = False
        self.call = None

    def connectionMade(self):
        self._next(0)

    def _next(self, i):
        self.call = None
        if self.lost or i >= len(self.data):
            return
        self.transport.write(self.data[i:i + 1])
        self.call = reactor.callLater(10, self._next, i + 1)

    def connectionLost(self, reason):
        self.lost = True
        if self.call is not None and self.call.active():
            self.call.cancel()


async def _attack(port, make, n):
    protos = []
    for _ in range(n):
        p = make()
        ep = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5, bindAddress=(ATTACKER, 0))
        try:
            await connectProtocol(ep, p)
        except Exception:
            p.lost = True
        protos.append(p)
    return protos


def _drop_all(protos):
    for p in protos:
        if not p.lost and p.transport is not None:
            p.transport.abortConnection()


class LimitTests(unittest.TestCase):
    timeout = 300

    async def make_swarm(self, files):
        http = HTTP(reactor)
        self.addCleanup(http.close)
        swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        await swarm.start_origin(files)
        return swarm, http

    async def lying_origin(self, length):
        factory = _LyingOriginFactory(length)
        port = await TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(factory)

        def cleanup():
            for t in factory.open:
                t.abortConnection()
            return port.stopListening()
        self.addCleanup(cleanup)
        return factory, f"http://{LOOPBACK}:{port.getHost().port}/huge.bin"

    async def register(self, http, sn, url, peer=None):
        body = {"task_id": task_id_for_url(url), "url": url}
        if peer is not None:
            body["peer"] = peer
        body = json.dumps(body).encode()
        code, _, raw = await http.request("POST", sn.api + "/api/v1/tasks", data=body,
                                          headers={"Content-Type": ["application/json"]},
                                          timeout=30)
        return code, json.loads(raw or b"{}")

    @with_logs()
    async def test_lying_content_length(self):
        """When an origin announces 2^40 bytes, registering it is refused with
        413 within a second, /healthz answers throughout, the cached task is
        not evicted, and an honest registration afterwards succeeds."""
        swarm, http = await self.make_swarm({"cached.bin": 2 * MiB, "honest.bin": MiB + 5})
        self.swarm = swarm
        sn = await swarm.start_supernode(
            piece_size="1M", extra=["--cache-size", "4M", "--max-file-size", "1G"])
        code, _ = await self.register(http, sn, swarm.origin_url("cached.bin"))
        self.assertEqual(code, 200)
        liar, url = await self.lying_origin(LIE)
        watch = _HealthWatch(http, sn.api)
        watch.start()
        self.addCleanup(watch.stop)
        start = time.monotonic()
        code, body = await self.register(http, sn, url)
        took = time.monotonic() - start
        self.assertEqual(code, 413, body)
        self.assertIn("--max-file-size", body["error"])
        self.assertLess(took, 1.0)
        # Under --max-file-size but over the quota: refused, nothing evicted.
        liar.length = 512 * MiB
        code, body = await self.register(http, sn, url + "?b")
        self.assertEqual(code, 507, body)
        code, body = await self.register(http, sn, swarm.origin_url("honest.bin"))
        self.assertEqual(code, 200, body)
        await task.deferLater(reactor, 0.3, lambda: None)
        watch.stop()
        self.assertEqual(watch.failures, [])
        self.assertLess(watch.slowest, 1.0)
        cached = task_id_for_url(swarm.origin_url("cached.bin"))
        info = await http.get_json(f"{sn.api}/api/v1/tasks/{cached}")
        self.assertIn(info["state"], ("done", "cached"), info)
        self.assertEqual(info["seeded"], 2, info)
        r = await swarm.dfget(swarm.origin_url("cached.bin"), supernodes=None, timeout=60)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["cached.bin"][1])

    @with_logs()
    async def test_piece_port_flood(self):
        """When 64 clients that never read and 16 that trickle a handshake hit
        a peer's and the supernode's piece ports, a legitimate download still
        completes byte-exact, and the hostile connections are dropped."""
        swarm, http = await self.make_swarm({"f.bin": 6 * MiB + 3})
        self.swarm = swarm
        sn = await swarm.start_supernode(piece_size="1M")
        holder = await swarm.start_peer()
        url = swarm.origin_url("f.bin")
        r = await swarm.dfget(url, peer=holder, timeout=60)
        self.assertEqual(r.code, 0, repr(r))
        task_id = task_id_for_url(url)
        hog = "hog-1-deadbeef"
        code, body = await self.register(http, sn, url, {"peer_id": hog, "host": ATTACKER,
                                                         "port": 9})
        self.assertEqual(code, 200, body)
        hogs, tricklers = [], []
        for node in (holder, sn):
            hogs += await _attack(node.piece_port,
                                  lambda: _NonReader(task_id, 7, hog, body["token"]), 32)
            tricklers += await _attack(node.piece_port, lambda: _Trickler(task_id), 8)
        self.addCleanup(_drop_all, hogs + tricklers)
        await task.deferLater(reactor, 1.0, lambda: None)
        fetcher = await swarm.start_peer()
        r = await swarm.dfget(url, peer=fetcher, timeout=90)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["f.bin"][1])
        # Readers that never read lose their slots (and connections) to the
        # stall check; tricklers cannot outlast the 30 s handshake deadline.
        await poll_until(reactor, lambda: all(p.lost for p in tricklers), 45,
                         "the trickling connections to be dropped")
        for node in (holder, sn):
            self.assertTrue(node.alive(), node.tail())
            self.assertTrue(await http.healthy(node.api))

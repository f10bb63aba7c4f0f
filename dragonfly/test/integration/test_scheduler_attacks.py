"""Scheduler poisoning with real processes on 127.0.0.1 (issue 10).

An origin, a ``twistd supernode`` and ``dfget`` runs (embedded peer), plus
fake peers that this test process registers through the real supernode API,
as an attacker on the network would: they claim every piece at a listener
that accepts connections and never answers (a tarpit), or try to make the
supernode drop another peer.
"""
import json
import time

from twisted.internet import protocol, reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, poll_until, SwarmMixin, with_logs)
SIZE = 8 * MiB   # 8 pieces of 1M


class _Tarpit(protocol.Protocol):
    """Accepts, reads and never answers."""

    def connectionMade(self):
        self.factory.open.append(self.transport)

    def connectionLost(self, reason=None):
        if self.transport in self.factory.open:
            self.factory.open.remove(self.transport)


class _TarpitFactory(protocol.Factory):
    protocol = _Tarpit
    noisy = False

    def __init__(self):
        self.open = []


class SchedulerAttackTests(SwarmMixin, TestCase):
    timeout = 300

    def tarpit(self):
        """A listener on 127.0.0.1 that accepts and never answers: its port."""
        factory = _TarpitFactory()
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)

        def close():
            for tr in list(factory.open):
                tr.abortConnection()
            return port.stopListening()
        self.addCleanup(close)
        return port.getHost().port

    async def post(self, sn, path, body):
        code, _, raw = await self.http.request("POST", sn.api + path, json=body, timeout=60)
        return code, json.loads(raw)

    async def register(self, sn, url, peer_id=None, port=None):
        """Register C{peer_id} at 127.0.0.1:C{port} for C{url} (None: only seed it)."""
        body = {"task_id": task_id_for_url(url), "url": url, "headers": {}}
        if peer_id is not None:
            body["peer"] = {"peer_id": peer_id, "host": LOOPBACK, "port": port}
        code, obj = await self.post(sn, "/api/v1/tasks", body)
        self.assertEqual(code, 200, obj)
        return obj

    async def seeded(self, sn, url):
        tid = task_id_for_url(url)

        async def complete():
            info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{tid}")
            return info if info["seeded"] == info["piece_count"] else None

        return await poll_until(reactor, complete, 60, "the supernode to seed the file")

    async def timed_dfget(self, url):
        t0 = time.monotonic()
        result = await self.swarm.dfget(url, timeout=200, args=["-v"])
        elapsed = time.monotonic() - t0
        self.assertEqual(result.code, 0, f"dfget failed: {result!r}")
        return elapsed

    @with_logs()
    async def test_tarpit_peers(self):
        """When four fake peers claim every piece at an address that accepts and
        never answers, a victim's download still takes at most about twice its
        baseline (plus the first-byte deadline), not minutes."""
        await self.swarm.start_origin({"base.bin": SIZE, "attacked.bin": SIZE})
        sn = await self.swarm.start_supernode(piece_size="1M")
        base_url = self.swarm.origin_url("base.bin")
        url = self.swarm.origin_url("attacked.bin")
        # Both files cached at the supernode first: the two downloads differ
        # only by the attack.
        await self.register(sn, base_url)
        await self.seeded(sn, base_url)
        baseline = await self.timed_dfget(base_url)

        port = self.tarpit()
        tid = task_id_for_url(url)
        for n in range(4):
            peer_id = f"tarpit-{n}-0000000{n}"
            answer = await self.register(sn, url, peer_id, port)
            code, obj = await self.post(sn, f"/api/v1/tasks/{tid}/schedule", {
                "peer_id": peer_id, "have": list(range(8)), "want": 0,
                "secret": answer["secret"]})
            self.assertEqual(code, 200, obj)
        await self.seeded(sn, url)
        attacked = await self.timed_dfget(url)
        self.assertEqual(self.swarm.files["attacked.bin"][0], SIZE)
        self.assertLess(attacked, 2 * baseline + 10,
                        f"baseline {baseline:.1f}s, under attack {attacked:.1f}s")

    @with_logs()
    async def test_leave_for_another_peer_refused(self):
        """When a caller sends leave (or a heartbeat) for another peer's id, the
        supernode refuses it with 403 and keeps that peer in the swarm."""
        await self.swarm.start_origin({"f.bin": 2 * MiB})
        sn = await self.swarm.start_supernode(piece_size="1M")
        url = self.swarm.origin_url("f.bin")
        tid = task_id_for_url(url)
        victim = await self.register(sn, url, "victim-1-00000001", 9)
        attacker = await self.register(sn, url, "attacker-1-00000001", 10)
        self.assertNotEqual(victim["secret"], attacker["secret"])
        for secret in (attacker["secret"], None):
            body = {"peer_id": "victim-1-00000001"}
            if secret is not None:
                body["secret"] = secret
            code, obj = await self.post(sn, f"/api/v1/tasks/{tid}/leave", body)
            self.assertEqual(code, 403, obj)
            self.assertIn("error", obj)
            code, obj = await self.post(sn, "/api/v1/heartbeat", dict(body, tasks=[tid]))
            self.assertEqual(code, 403, obj)
        info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{tid}")
        self.assertEqual(info["peers"], 2)
        # Taking over the id by registering it again fails too.
        code, obj = await self.post(sn, "/api/v1/tasks", {
            "task_id": tid, "url": url, "headers": {},
            "peer": {"peer_id": "victim-1-00000001", "host": LOOPBACK, "port": 11}})
        self.assertEqual(code, 403, obj)
        code, obj = await self.post(sn, f"/api/v1/tasks/{tid}/leave", {
            "peer_id": "victim-1-00000001", "secret": victim["secret"]})
        self.assertEqual(code, 200, obj)
        info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{tid}")
        self.assertEqual(info["peers"], 1)

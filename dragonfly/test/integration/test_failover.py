"""Losing a supernode mid-download (issue 12), with real processes on 127.0.0.1.

Two supernodes (``--cluster`` naming each other), six peers listing both, a
file kept in flight by ``dfget --limit``. The supernode owning the task is
killed (SIGKILL) or stopped (SIGTERM) at about a quarter of the downloads:
every download completes and verifies, and the origin's own count of the
bytes it sent stays at most two copies (killed, or stopped with a drain too
short) or one (stopped: the supernode drains before it goes).
"""
import os
import signal

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    metric, MiB, poll_until, sha256_file, SwarmMixin, with_logs)

SIZE = 24 * MiB
PEERS = 6
LIMIT = "2M"     # each dfget: about 12 s


class FailoverTests(SwarmMixin, TestCase):
    timeout = 300

    async def start_cluster(self, extra=()):
        swarm = self.swarm
        await swarm.start_origin({"f.bin": SIZE})
        a, b = await swarm.start_cluster(extra)
        for _ in range(PEERS):
            await swarm.start_peer()
        return a, b

    async def owner_of(self, url):
        tid = task_id_for_url(url)
        for node in self.swarm.supernodes:
            if not node.alive():
                continue
            code, _, _ = await self.http.request("GET", f"{node.api}/api/v1/tasks/{tid}")
            if code == 200:
                return node
        return None

    async def run_until_a_quarter(self):
        """Start every download; return (procs, url, owner) once one peer has a quarter."""
        swarm = self.swarm
        url = swarm.origin_url("f.bin")
        procs = [swarm.start_dfget(url, peer=p, args=["--limit", LIMIT]) for p in swarm.peers]

        async def a_quarter():
            for p in swarm.peers:
                m = await p.metrics(swarm.http)
                if metric(m, "dragonfly_peer_download_bytes_total", missing=0) >= SIZE // 4:
                    return True
            return None
        await poll_until(reactor, a_quarter, 120, "a peer to hold a quarter of the file")
        self.assertTrue(all(p.alive() for p in procs), "downloads ended before the failure")
        owner = await self.owner_of(url)
        self.assertIsNotNone(owner, "no supernode holds the task")
        return procs, url, owner

    async def check_all_done(self, procs):
        results = [await self.swarm.wait_dfget(p, timeout=180) for p in procs]
        _, digest = self.swarm.files["f.bin"]
        for r in results:
            self.assertEqual(r.code, 0, f"dfget failed: {r!r}")
            self.assertEqual(os.path.getsize(r.output), SIZE)
            self.assertEqual(sha256_file(r.output), digest, "downloaded bytes differ")
        for p in self.swarm.peers:
            m = await p.metrics(self.swarm.http)
            self.assertEqual(metric(m, "dragonfly_peer_download_bytes_total", missing=0,
                                    source="origin"), 0, f"{p.name} went to the origin")

    async def origin_bytes(self):
        return await self.swarm.origin.body_bytes(self.http, "f.bin")

    @with_logs()
    async def test_owner_killed(self):
        """When the owner is killed (SIGKILL) at a quarter, every download
        completes and verifies, the survivor takes the task over, and the
        origin sends at most two copies of the file (not one per peer)."""
        await self.start_cluster()
        procs, url, owner = await self.run_until_a_quarter()
        owner.kill_now()
        await owner.wait(reactor, 10)
        await self.check_all_done(procs)
        survivor = next(n for n in self.swarm.supernodes if n is not owner)
        self.assertIs(await self.owner_of(url), survivor, "the survivor does not hold the task")
        sent = await self.origin_bytes()
        self.assertLessEqual(sent, 2 * SIZE, f"the origin sent {sent / SIZE:.2f} copies")

    @with_logs()
    async def test_owner_stopped(self):
        """When the owner is stopped (SIGTERM) at a quarter, it drains first:
        every download completes and verifies, the origin sends the file once
        (give or take a piece), and the supernode then exits by itself
        with status 0 after a clean stop."""
        await self.start_cluster()
        procs, url, owner = await self.run_until_a_quarter()
        owner.signal(signal.SIGTERM)
        await self.check_all_done(procs)
        self.assertEqual(await owner.wait(reactor, 30), 0, owner.tail())
        sent = await self.origin_bytes()
        self.assertLessEqual(sent, SIZE + MiB, f"the origin sent {sent / SIZE:.2f} copies")

    @with_logs()
    async def test_owner_stopped_drain_times_out(self):
        """When the owner's drain times out (--drain-timeout 1), it tells its
        peers to move: they register at the next supernode keeping their
        pieces, none goes to the origin, and the origin sends at most two copies."""
        await self.start_cluster(["--drain-timeout", "1"])
        procs, url, owner = await self.run_until_a_quarter()
        owner.signal(signal.SIGTERM)
        await self.check_all_done(procs)
        self.assertEqual(await owner.wait(reactor, 30), 0, owner.tail())
        self.assertIn("moving the peers", owner.read_log())
        sent = await self.origin_bytes()
        self.assertLessEqual(sent, 2 * SIZE, f"the origin sent {sent / SIZE:.2f} copies")

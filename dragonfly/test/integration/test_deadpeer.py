"""A peer SIGKILLed mid-download, with no long-poll out, with real processes on 127.0.0.1.

The victim (one fetch at a time, its download paced by ``dfget --limit``)
holds a piece or more and is fetching the next one from the supernode when
it is killed: between two schedule calls, so the supernode sees no long-poll
dropped. That in-flight piece is held by nobody else, and the seed sends a
piece to one asker at a time while nobody holds it: peers downloading the
file next could not get it before the assignment timed out (60 s, then the
next expiry run; measured before this test's change: 62.5 s). The victim's
connection to the supernode's piece server ends with it; the supernode
finds the victim's piece port refusing connections, ends its assignments
and hands it out to nobody, before anyone else even asks: the next peers
complete at once, from the swarm.

A victim that fetched from peers only (one of them held the whole file
first, and stops once the victim is killed) has no connection to the
supernode's piece server: there the first peer sent to it for one of its
pieces reports the failure, which has the supernode check it.

The same victim with its holder staying and nobody else asking: nobody is
sent to the victim, so nobody reports it, and its assignment held the
holder's upload slot busy in the scheduler for the whole 60 s. The holder
sees its upload to the victim cut and says so (``/cut``), which has the
supernode check the victim.
"""
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    metric, MiB, poll_until, sha256_file, SwarmMixin, with_logs)

SIZE = 8 * MiB          # eight 1 MiB pieces
#: Well under the supernode's assignment timeout (60 s): the old code waits that long.
RELEASED_WITHIN = 30


class DeadPeerTests(SwarmMixin, TestCase):
    timeout = 240

    async def victim_row(self, supernode, task_id, port):
        grid = await self.http.get_json(f"{supernode.api}/api/v1/dashboard/tasks/{task_id}")
        rows = [r for r in grid["grid"]["peers"] if r["port"] == port]
        return rows[0] if rows else None

    async def wait_released(self, supernode, task_id, victim, what):
        """Poll until the dead C{victim}'s assignments ended and it is marked down."""
        async def released():
            row = await self.victim_row(supernode, task_id, victim.piece_port)
            return row is not None and not row["fetching"] and row.get("down")
        await poll_until(reactor, released, RELEASED_WITHIN,
                         f"the dead victim's {what} to end and it to be marked down")

    async def kill_peer_fed_victim(self, others=0):
        """A holder downloads the file first; a victim (one fetch at a time,
        paced) takes pieces from it only and is SIGKILLed, with its dfget,
        while it holds a piece and fetches the next: (supernode, holder,
        victim, url, task id, the C{others} peers started beside it)."""
        swarm = self.swarm
        await swarm.start_origin({"f.bin": SIZE})
        supernode = await swarm.start_supernode()
        holder = await swarm.start_peer()
        url = swarm.origin_url("f.bin")
        task_id = task_id_for_url(url)
        first = await swarm.dfget(url, peer=holder)
        self.assertEqual(first.code, 0, f"dfget failed: {first!r}")
        victim = await swarm.start_peer(extra=["--concurrency", "1"])
        started = [await swarm.start_peer() for _ in range(others)]
        vproc = swarm.start_dfget(url, peer=victim, args=["--limit", "256K"])

        async def fetching():
            row = await self.victim_row(supernode, task_id, victim.piece_port)
            return row is not None and row["held"] >= 1 and row["fetching"]
        await poll_until(reactor, fetching, 60, "the victim to hold a piece and fetch one")
        row = await self.victim_row(supernode, task_id, victim.piece_port)
        self.assertEqual(row["from_supernode"], 0, "the victim fetched from the supernode")
        victim.kill_now()
        vproc.kill_now()
        await victim.wait(reactor, 10)
        await vproc.wait(reactor, 10)
        return supernode, holder, victim, url, task_id, started

    @with_logs()
    async def test_killed_downloader_released(self):
        """When a peer is SIGKILLed between schedule calls while it fetches a
        piece nobody else holds from the supernode, its assignment ends and
        it is handed out to nobody long before the assignment timeout; the
        peers downloading next complete from the swarm."""
        swarm = self.swarm
        await swarm.start_origin({"f.bin": SIZE})
        supernode = await swarm.start_supernode()
        victim = await swarm.start_peer(extra=["--concurrency", "1"])
        others = [await swarm.start_peer(), await swarm.start_peer()]
        url = swarm.origin_url("f.bin")
        task_id = task_id_for_url(url)
        vproc = swarm.start_dfget(url, peer=victim, args=["--limit", "256K"])

        async def fetching_from_seed():
            grid = await self.http.get_json(f"{supernode.api}/api/v1/dashboard/tasks/{task_id}")
            seed_id = grid["grid"]["supernode"]["peer_id"]
            row = await self.victim_row(supernode, task_id, victim.piece_port)
            return (row is not None and row["held"] >= 1
                    and any(f["from"] == seed_id for f in row["fetching"]))
        await poll_until(reactor, fetching_from_seed, 60,
                         "the victim to hold a piece and fetch one from the supernode")
        victim.kill_now()
        vproc.kill_now()
        await victim.wait(reactor, 10)
        await vproc.wait(reactor, 10)

        await self.wait_released(supernode, task_id, victim, "assignments")
        procs = [swarm.start_dfget(url, peer=p) for p in others]
        _, digest = swarm.files["f.bin"]
        for proc in procs:
            result = await swarm.wait_dfget(proc, timeout=120)
            self.assertEqual(result.code, 0, f"dfget failed: {result!r}")
            self.assertEqual(os.path.getsize(result.output), SIZE)
            self.assertEqual(sha256_file(result.output), digest, "downloaded bytes differ")
        for p in others:
            m = await p.metrics(self.http)
            self.assertEqual(metric(m, "dragonfly_peer_download_bytes_total", missing=0,
                                    source="origin"), 0, f"{p.name} went to the origin")

    @with_logs()
    async def test_killed_peer_reported_by_asker(self):
        """When a peer that fetched from peers only is SIGKILLed between
        schedule calls, the first asker sent to it reports it failing, the
        supernode finds its port refusing connections, ends its assignment
        and hands it out to nobody more; everyone completes from the swarm."""
        swarm = self.swarm
        supernode, holder, victim, url, task_id, others = await self.kill_peer_fed_victim(2)
        # The holder leaves (a clean stop): the victim is the only peer
        # holding its pieces, so the next askers are sent to it.
        await holder.stop(reactor)
        procs = [swarm.start_dfget(url, peer=p) for p in others]

        await self.wait_released(supernode, task_id, victim, "assignment")
        _, digest = swarm.files["f.bin"]
        for proc in procs:
            result = await swarm.wait_dfget(proc, timeout=120)
            self.assertEqual(result.code, 0, f"dfget failed: {result!r}")
            self.assertEqual(sha256_file(result.output), digest, "downloaded bytes differ")

    @with_logs()
    async def test_killed_receiver_reported_by_uploader(self):
        """When a peer that fetched from another peer only is SIGKILLed
        between schedule calls and nobody is sent to it afterwards, its
        uploader reports the cut upload, the supernode finds the victim's
        port refusing connections and ends its assignment, so the uploader's
        slot is free long before the assignment timeout; the uploader stays
        a live source."""
        supernode, holder, victim, _, task_id, _ = await self.kill_peer_fed_victim()
        await self.wait_released(supernode, task_id, victim, "assignment")
        row = await self.victim_row(supernode, task_id, holder.piece_port)
        self.assertFalse(row.get("down"), "the live uploader was marked down")
        m = await supernode.metrics(self.http)
        self.assertGreaterEqual(metric(m, "dragonfly_supernode_api_requests_total", missing=0,
                                       endpoint="cut"), 1)

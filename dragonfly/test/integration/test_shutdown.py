"""SIGTERM of each role in the middle of a download, with real processes.

Each role gets SIGTERM while a download runs through it (the origin, nginx,
sends at a throttled rate so the download lasts a few seconds). It must exit
within the harness's grace period with exit status 0, remove its port
file, leave the swarm (the supernode's own view, well before its 120 s peer
timeout could explain it), and leave a store a restart on the same data
directory uses: the restarted node is healthy and the file downloads through it
byte-exact. The dfget whose daemon went away fails cleanly (or, when the file
had already come in, succeeds byte-exact).
"""
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    MiB, SwarmMixin, metric, poll_until, sha256_file, with_logs)

SIZE = 16 * MiB
RATE = 6 * MiB     # the origin's pace: the file takes ~3 s
GRACE = 10         # seconds a role gets between SIGTERM and SIGKILL


class SigtermTests(SwarmMixin, TestCase):
    timeout = 240

    async def start(self, files):
        await self.swarm.start_origin(files, rate=RATE)
        return await self.swarm.start_supernode(piece_size="1M")

    async def has_bytes(self, node, name="dragonfly_peer_download_bytes_total"):
        async def some():
            return metric(await node.metrics(self.http), name) > 0
        await poll_until(reactor, some, 60, f"{node.name} to receive bytes", check=node.check_alive)

    async def assertStopsCleanly(self, node):
        """SIGTERM: the exit comes within GRACE seconds with status 0 (Proc.stop
        raises with the log tail otherwise); the port file is gone."""
        code = await node.stop(reactor, grace=GRACE)
        self.assertEqual(code, 0, node.tail())
        self.assertFalse(os.path.exists(node.port_file), "the port file outlived the process")

    def assertExactOrFailedCleanly(self, result, name):
        if result.code == 0:
            self.assertEqual(sha256_file(result.output), self.swarm.files[name][1])
            return
        self.assertFalse(os.path.exists(result.output), result)
        self.assertTrue(result.stderr.strip(), result)
        self.assertNotIn("Traceback", result.stderr, result)

    async def assertDownloads(self, node, name):
        r = await self.swarm.dfget(self.swarm.origin_url(name), peer=node, timeout=120)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), self.swarm.files[name][1])

    async def wait_swarm_peers(self, sn, url, count, what):
        """Poll the supernode's view of the task until it counts ``count`` peers."""
        async def counted():
            info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{task_id_for_url(url)}")
            return info["peers"] == count
        await poll_until(reactor, counted, 15, what, check=sn.check_alive)

    @with_logs()
    async def test_peer(self):
        """A peer stopped while it and another download the same file: it exits
        cleanly and leaves the task's swarm; the other peer still finishes; a
        peer restarted on its data directory downloads the file."""
        swarm = self.swarm
        sn = await self.start({"p.bin": SIZE})
        a, b = await swarm.start_peer(), await swarm.start_peer()
        url = swarm.origin_url("p.bin")
        pa, pb = swarm.start_dfget(url, peer=a), swarm.start_dfget(url, peer=b)
        await self.has_bytes(a)
        await self.wait_swarm_peers(sn, url, 2, "both peers in the swarm")
        self.assertTrue(pa.alive() and pb.alive(), "the downloads ended before the SIGTERM")

        await self.assertStopsCleanly(a)
        await self.wait_swarm_peers(sn, url, 1, "the stopped peer to leave the swarm")
        self.assertExactOrFailedCleanly(await swarm.wait_dfget(pa), "p.bin")
        rb = await swarm.wait_dfget(pb)
        self.assertEqual(rb.code, 0, rb)
        self.assertEqual(sha256_file(rb.output), swarm.files["p.bin"][1])

        again = await swarm.start_peer(data_dir=a.data_dir)
        await self.assertDownloads(again, "p.bin")
        self.assertEqual(await swarm.origin.body_bytes(self.http, "p.bin"), SIZE,
                         "the origin sent the file more than once")

    @with_logs()
    async def test_supernode(self):
        """A supernode stopped while it fetches a file for a peer exits cleanly;
        restarted on its data directory it still holds the file it had
        completed, and serves it without asking the origin for the body again."""
        swarm = self.swarm
        sn = await self.start({"done.bin": 2 * MiB + 3, "s.bin": SIZE})
        peer = await swarm.start_peer()
        await self.assertDownloads(peer, "done.bin")
        proc = swarm.start_dfget(swarm.origin_url("s.bin"), peer=peer)
        await self.has_bytes(sn, "dragonfly_supernode_origin_bytes_total")
        self.assertTrue(proc.alive(), "the download ended before the SIGTERM")

        await self.assertStopsCleanly(sn)
        self.assertExactOrFailedCleanly(await swarm.wait_dfget(proc), "s.bin")

        again = await swarm.start_supernode(piece_size="1M", data_dir=sn.data_dir)
        tid = task_id_for_url(swarm.origin_url("done.bin"))
        info = await self.http.get_json(f"{again.api}/api/v1/tasks/{tid}")
        self.assertEqual(info["seeded"], info["piece_count"], info)
        fresh = await swarm.start_peer(supernodes=[again])
        await self.assertDownloads(fresh, "done.bin")
        self.assertEqual(await swarm.origin.body_bytes(self.http, "done.bin"), 2 * MiB + 3,
                         "the restarted supernode fetched the file body again")

    @with_logs()
    async def test_dfdaemon(self):
        """A dfdaemon stopped while a download runs through it exits cleanly
        (its mirror port closed too); restarted on its data directory it
        downloads the file."""
        swarm = self.swarm
        await self.start({"d.bin": SIZE})
        daemon = await swarm.start_dfdaemon()
        proc = swarm.start_dfget(swarm.origin_url("d.bin"), peer=daemon)
        await self.has_bytes(daemon)
        self.assertTrue(proc.alive(), "the download ended before the SIGTERM")

        await self.assertStopsCleanly(daemon)
        self.assertExactOrFailedCleanly(await swarm.wait_dfget(proc), "d.bin")

        again = await swarm.start_dfdaemon(data_dir=daemon.data_dir)
        self.assertTrue(await self.http.healthy(again.api))
        await self.assertDownloads(again, "d.bin")


"""Integration tests of ``twistd supernode`` alone: real processes on 127.0.0.1.

A real origin (nginx: Range, ETag, If-None-Match -> 304) and one or two
supernodes; the tests talk to the supernode API directly, as a peer would.
"""
import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    LOOPBACK, metric, MiB, poll_until, SwarmMixin, with_logs)

PEER = {"peer_id": "itest-1-00000001", "host": LOOPBACK, "port": 9}


class SupernodeProcessTests(SwarmMixin, TestCase):
    timeout = 180

    async def register(self, node, url, redirected=False):
        body = {"task_id": task_id_for_url(url), "url": url, "peer": PEER}
        if redirected:
            body["redirected"] = True
        code, headers, raw = await self.http.request(
            "POST", node.api + "/api/v1/tasks", json=body, timeout=60, allow_redirects=False)
        return code, json.loads(raw)

    async def seeded(self, node, url):
        tid = task_id_for_url(url)

        async def complete():
            info = await self.http.get_json(f"{node.api}/api/v1/tasks/{tid}")
            return info if info["seeded"] == info["piece_count"] else None

        return await poll_until(reactor, complete, 60, "the supernode to seed the file")

    @with_logs()
    async def test_restart_revalidates_cache(self):
        """When a supernode restarts over the same data dir, a cached file is
        revalidated with a conditional request (304) and served from the cache
        without downloading it again."""
        await self.swarm.start_origin({"f.bin": 3 * MiB + 5})
        url = self.swarm.origin_url("f.bin")
        sn = await self.swarm.start_supernode(piece_size="1M")
        code, obj = await self.register(sn, url)
        self.assertEqual((code, obj["length"], obj["piece_count"]), (200, 3 * MiB + 5, 4))
        await self.seeded(sn, url)
        self.assertEqual(await self.swarm.origin.body_bytes(self.http, "f.bin"), 3 * MiB + 5)

        await sn.stop(reactor)
        sn2 = await self.swarm.start_supernode(piece_size="1M", extra=["--data-dir", sn.data_dir])
        code, obj = await self.register(sn2, url)
        self.assertEqual(code, 200, obj)
        info = await self.seeded(sn2, url)
        self.assertEqual(info["state"], "done")
        stats = (await self.swarm.origin.stats(self.http))["paths"]["/f.bin"]
        self.assertEqual(stats["body_bytes"], 3 * MiB + 5, "the file was downloaded again")
        self.assertIn("304", {str(k) for k in stats["statuses"]})
        m = await sn2.metrics(self.http)
        self.assertEqual(metric(m, "dragonfly_supernode_origin_fetches_total"), 0)

    @with_logs()
    async def test_origin_error_and_bad_input(self):
        """A missing file answers 502 with the origin's status; malformed
        requests answer 4xx JSON and the supernode stays healthy."""
        await self.swarm.start_origin({"f.bin": 1000})
        sn = await self.swarm.start_supernode(piece_size="1M")
        code, obj = await self.register(sn, self.swarm.origin_url("missing.bin"))
        self.assertEqual((code, obj["origin_status"]), (502, 404))
        for raw in (b"{", b"[]", b"x" * (2 * MiB)):
            code, _, body = await self.http.request("POST", sn.api + "/api/v1/tasks", data=raw)
            self.assertIn(code, (400, 413))
            self.assertIn("error", json.loads(body))
        self.assertTrue(await self.http.healthy(sn.api))

    @with_logs()
    async def test_cluster_owner_and_failover(self):
        """Two supernodes agree on each task's owner: the other one answers 307
        with the owner; when the owner dies, the survivor takes the task."""
        await self.swarm.start_origin({"f.bin": 100000})
        url = self.swarm.origin_url("f.bin")
        a, b = await self.swarm.start_cluster(extra=["--drain-timeout", "0"])
        (ca, oa), (cb, ob) = await self.register(a, url), await self.register(b, url)
        self.assertEqual(sorted([ca, cb]), [200, 307])
        owner, other = (a, b) if ca == 200 else (b, a)
        self.assertEqual((ob if ca == 200 else oa)["owner"], owner.api_hostport)

        await owner.stop(reactor)

        async def taken_over():
            code, obj = await self.register(other, url)
            return obj if code == 200 else None

        obj = await poll_until(reactor, taken_over, 30, "the survivor to take the task over")
        self.assertEqual(obj["length"], 100000)

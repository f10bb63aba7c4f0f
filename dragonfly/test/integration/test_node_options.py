"""Options through real twistd processes: --config precedence, and the
peer's --cache-size (least recently used tasks evicted, downloaded again on
demand) and --cache-ttl."""
import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    MiB, SwarmMixin, metric, poll_until, sha256_file, with_logs)

PIECE = 1024 * 1024


class ConfigFileTests(SwarmMixin, TestCase):
    timeout = 180

    async def preheat(self, sn, url):
        """Preheat ``url`` on ``sn``; the job's final JSON."""
        code, _, body = await self.http.request(
            "POST", sn.api + "/api/v1/preheat", data=json.dumps({"url": url}).encode(),
            headers={"Content-Type": "application/json"})
        self.assertEqual(code, 202, body)
        job = json.loads(body)["id"]

        async def finished():
            state = await self.http.get_json(f"{sn.api}/api/v1/preheat/{job}")
            return state if state["state"] in ("done", "failed") else None
        return await poll_until(reactor, finished, 60, "the preheat to finish")

    async def piece_size(self, sn, url):
        self.assertEqual((await self.preheat(sn, url))["state"], "done")
        info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{task_id_for_url(url)}")
        return info["piece_size"]

    @with_logs()
    async def test_command_line_over_file_over_defaults(self):
        """A supernode started with --config takes the file's piece-size (2M, not
        the default 4M) and max-file-size (a 5 MiB file refused); a flag on the
        command line beats the file (--piece-size 1M; --listen, where the file
        names a socket that cannot exist)."""
        swarm = self.swarm
        await swarm.start_origin({"f.bin": 5 * MiB, "g.bin": 2 * MiB + 1})
        conf = swarm.path("supernode.toml")
        with open(conf, "w") as f:
            f.write('piece-size = "2M"\nmax-file-size = "3M"\n'
                    'listen = "unix:/nonexistent/dragonfly/api.sock"\n')
        from_file = await swarm.start_supernode(piece_size=None, extra=["--config", conf])
        flagged = await swarm.start_supernode(piece_size="1M", extra=["--config", conf])

        self.assertEqual(await self.piece_size(from_file, swarm.origin_url("g.bin")), 2 * PIECE)
        self.assertEqual(await self.piece_size(flagged, swarm.origin_url("g.bin")), PIECE)
        refused = await self.preheat(from_file, swarm.origin_url("f.bin"))
        self.assertEqual(refused["state"], "failed", refused)
        self.assertEqual(await swarm.origin.body_bytes(self.http, "f.bin"), 0,
                         "the file over max-file-size was fetched")


class CacheTests(SwarmMixin, TestCase):
    timeout = 240

    async def downloaded(self, peer):
        m = await peer.metrics(self.http)
        return metric(m, "dragonfly_peer_download_bytes_total")

    async def get(self, peer, name):
        r = await self.swarm.dfget(self.swarm.origin_url(name), peer=peer, timeout=60)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), self.swarm.files[name][1])

    async def held(self, peer):
        """Names of the origin files the peer holds complete."""
        tasks = (await self.http.get_json(peer.api + "/api/v1/tasks"))["tasks"]
        base = self.swarm.origin.base + "/"
        return {t["url"][len(base):] for t in tasks if t["complete"] and t["url"].startswith(base)}

    @with_logs()
    async def test_cache_size_evicts_least_recently_used(self):
        """With --cache-size 5M and three files of 2 MiB and a byte: after A, B,
        A again (from the cache: nothing downloaded) and C, B (least recently
        used) is gone and A and C stay; B downloads again, A still costs nothing."""
        swarm = self.swarm
        size = 2 * MiB + 1
        await swarm.start_origin({n: size for n in ("a.bin", "b.bin", "c.bin")})
        await swarm.start_supernode(piece_size="1M")
        peer = await swarm.start_peer(extra=["--cache-size", "5M"])
        await self.get(peer, "a.bin")
        await self.get(peer, "b.bin")
        before = await self.downloaded(peer)
        await self.get(peer, "a.bin")
        self.assertEqual(await self.downloaded(peer), before, "a cached file was downloaded again")
        await self.get(peer, "c.bin")
        self.assertEqual(await self.held(peer), {"a.bin", "c.bin"})

        before = await self.downloaded(peer)
        await self.get(peer, "b.bin")
        self.assertGreaterEqual(await self.downloaded(peer) - before, size,
                                "the evicted file was not downloaded again")
        before = await self.downloaded(peer)
        await self.get(peer, "c.bin")
        self.assertEqual(await self.downloaded(peer), before)

    @with_logs()
    async def test_cache_ttl_expires_unused_tasks(self):
        """With --cache-ttl 2 a file unused for two seconds is evicted (the store GC
        runs every min(60 s, TTL)), and a later dfget downloads it again."""
        swarm = self.swarm
        await swarm.start_origin({"old.bin": MiB + 5})
        await swarm.start_supernode(piece_size="1M")
        peer = await swarm.start_peer(extra=["--cache-ttl", "2"])
        await self.get(peer, "old.bin")

        async def expired():
            return "old.bin" not in await self.held(peer)
        await poll_until(reactor, expired, 30, "old.bin to expire", check=peer.check_alive)
        before = await self.downloaded(peer)
        await self.get(peer, "old.bin")
        self.assertGreaterEqual(await self.downloaded(peer) - before, MiB + 5)

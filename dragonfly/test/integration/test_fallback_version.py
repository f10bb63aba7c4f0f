"""A peer that falls back to the origin mid-download after the file changed there.

The supernode's CDN fetched version 1 of the file (nginx: a strong ETag and
Last-Modified); a peer downloading it slowly through the swarm holds a few
pieces of version 1 when the file at the origin is replaced by version 2 (same
length) and the supernode dies. The peer's swarm session gives up and the
peer fetches the rest from the origin. Before, it asked for the pieces it
lacked with a plain Range: the origin answered 206 with version 2's bytes,
written around the pieces of version 1, and dfget wrote a file that was
neither version, exit status 0. Now the supernode's registration answer
carries its copy's validators, the peer's Range carries ``If-Range`` on them,
the origin answers 200 (the whole of version 2) and the peer starts the task
afresh from it: dfget writes version 2, all of it, as wget would fetch the
file the origin serves now.
"""
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    MiB, make_random_file, poll_until, sha256_file, SwarmMixin, with_logs)

SIZE = 8 * MiB          # eight 1 MiB pieces


def replace_file(path, size):
    """Version 2 of C{path}: new random bytes of C{size}, renamed into place,
    its mtime 10 s later than version 1's (nginx's ETag and Last-Modified
    are whole seconds). Its sha256."""
    before = os.stat(path).st_mtime
    digest = make_random_file(path + ".new", size)
    os.utime(path + ".new", (before + 10, before + 10))
    os.replace(path + ".new", path)
    return digest


class FallbackVersionTests(SwarmMixin, TestCase):
    timeout = 240

    @with_logs()
    async def test_changed_origin_met_on_fallback(self):
        """When a peer falls back to the origin mid-download and the file
        changed there since the supernode fetched it, dfget writes the
        origin's new version, all of it: never the swarm's pieces of the old
        one with the rest of the new one."""
        swarm = self.swarm
        await swarm.start_origin({"f.bin": SIZE})
        supernode = await swarm.start_supernode()
        peer = await swarm.start_peer(extra=["--concurrency", "1"])
        url = swarm.origin_url("f.bin")
        task_id = task_id_for_url(url)
        proc = swarm.start_dfget(url, peer=peer, args=["--limit", "512K", "--timeout", "150"])

        async def partly_held():
            info = await self.http.get_json(f"{supernode.api}/api/v1/tasks/{task_id}")
            if info.get("state") not in ("done", "cached"):
                return False
            grid = await self.http.get_json(f"{supernode.api}/api/v1/dashboard/tasks/{task_id}")
            rows = [r for r in grid["grid"]["peers"] if r["port"] == peer.piece_port]
            return rows and 2 <= rows[0]["held"] < SIZE // MiB - 2
        await poll_until(reactor, partly_held, 60,
                         "the supernode to hold the file and the peer a few of its pieces")
        v2 = replace_file(os.path.join(swarm.path("origin-root"), "f.bin"), SIZE)
        supernode.kill_now()
        await supernode.wait(reactor, 10)
        result = await swarm.wait_dfget(proc, timeout=180)
        self.assertEqual(result.code, 0, f"dfget failed: {result!r}")
        self.assertEqual(os.path.getsize(result.output), SIZE)
        self.assertEqual(sha256_file(result.output), v2,
                         "the output is not version 2 of the file, all of it")

"""Integration tests of task identity and self-healing: real processes on 127.0.0.1.

An attacker with nothing but HTTP tries to file other bytes under a genuine
URL's task id (the squatting attack); a cached copy edited on disk with its
mtime restored (so the store's seal cannot tell) must heal on the next pull.
"""
import hashlib
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.storage.layout import DATA_NAME, META_NAME
from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, poll_until, sha256_file, SwarmMixin, with_logs)

ATTACKER = {"peer_id": "attacker-1-00000001", "host": LOOPBACK, "port": 9}


def data_file(data_dir, task_id):
    """The data file of C{task_id} in a node's store under C{data_dir}, or None."""
    for root, _, names in os.walk(data_dir):
        if META_NAME in names and DATA_NAME in names:
            try:
                with open(os.path.join(root, META_NAME)) as f:
                    if json.load(f).get("task_id") == task_id:
                        return os.path.join(root, DATA_NAME)
            except (OSError, ValueError):
                continue
    return None


def flip_keeping_mtime(path, offset, n=16):
    """Invert C{n} bytes at C{offset}; restore the mtime (the seal cannot tell)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class IntegrityTests(SwarmMixin, TestCase):
    timeout = 240

    async def register(self, sn, body):
        code, _, raw = await self.http.request(
            "POST", sn.api + "/api/v1/tasks", json=body, timeout=60, allow_redirects=False)
        return code, json.loads(raw)

    @with_logs()
    async def test_squatting_attack(self):
        """Registering the genuine URL's task id (or its content digest) with the
        evil URL through the real supernode API never puts the evil bytes in
        dfget's output: the id is refused (400), the digest squat fails its
        content check (409), and dfget returns the genuine bytes."""
        await self.swarm.start_origin({"good.bin": 2 * MiB + 7, "evil.bin": 2 * MiB + 7})
        good, evil = self.swarm.origin_url("good.bin"), self.swarm.origin_url("evil.bin")
        good_sha = self.swarm.files["good.bin"][1]
        sn = await self.swarm.start_supernode(piece_size="1M")
        peer = await self.swarm.start_peer()

        code, obj = await self.register(sn, {"task_id": task_id_for_url(good), "url": evil,
                                             "peer": ATTACKER})
        self.assertEqual(code, 400, obj)
        self.assertIn("task_id mismatch", obj["error"])
        digest = "sha256:" + good_sha
        code, obj = await self.register(sn, {"task_id": digest, "url": evil, "digest": digest})
        if code == 200:   # the content check may finish after the answer
            async def failed():
                info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{digest}")
                return info if info["state"] == "failed" else None
            obj = await poll_until(reactor, failed, 60, "the digest squat to fail")
        else:
            self.assertEqual(code, 409, obj)
        self.assertIn("content digest mismatch", obj["error"])

        # A download that names the digest of other content fails, and keeps nothing.
        r = await self.swarm.dfget(evil, peer=peer, args=["--digest", digest])
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("content digest mismatch", r.stderr)
        self.assertFalse(os.path.exists(r.output))
        self.assertIsNone(data_file(sn.data_dir, digest))
        self.assertIsNone(data_file(peer.data_dir, digest))

        r = await self.swarm.dfget(good, peer=peer)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), good_sha)
        r = await self.swarm.dfget(good, peer=peer, args=["--digest", digest])
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), good_sha)
        self.assertEqual(sha256_file(data_file(sn.data_dir, digest)), good_sha)

    @with_logs()
    async def test_corrupted_complete_task_heals(self):
        """Bytes flipped in the peer's and the supernode's cached data files (mtime
        kept) heal on the next pull: dfget --md5 returns the right bytes, the
        corrupt copies are dropped and the supernode fetches the file again."""
        await self.swarm.start_origin({"f.bin": 3 * MiB + 11})
        url = self.swarm.origin_url("f.bin")
        sha = self.swarm.files["f.bin"][1]
        tid = task_id_for_url(url)
        sn = await self.swarm.start_supernode(piece_size="1M")
        peer = await self.swarm.start_peer()
        r = await self.swarm.dfget(url, peer=peer)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), sha)
        sn_file, peer_file = data_file(sn.data_dir, tid), data_file(peer.data_dir, tid)
        self.assertIsNotNone(sn_file)
        self.assertIsNotNone(peer_file)
        fetched = await self.swarm.origin.body_bytes(self.http, "f.bin")
        flip_keeping_mtime(sn_file, MiB + 100)
        flip_keeping_mtime(peer_file, 2 * MiB + 5)

        out = self.swarm.path("healed.bin")
        # --md5 checks the bytes but keeps the URL's task id (a sha256 --digest
        # would name another task, the digest's).
        with open(self.swarm.path("origin-root", "f.bin"), "rb") as f:
            md5 = hashlib.md5(f.read()).hexdigest()
        r = await self.swarm.dfget(url, peer=peer, output=out, args=["--md5", md5])
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(out), sha)
        healed = data_file(peer.data_dir, tid)
        self.assertIsNotNone(healed)
        self.assertEqual(sha256_file(healed), sha)

        async def supernode_healed():
            path = data_file(sn.data_dir, tid)
            if path is None:
                return None
            info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{tid}")
            if info["seeded"] != info["piece_count"]:
                return None
            return sha256_file(path) == sha
        # The supernode re-verified its copy, dropped it and fetched it again.
        await poll_until(reactor, supernode_healed, 60, "the supernode's copy to heal")
        self.assertGreater(await self.swarm.origin.body_bytes(self.http, "f.bin"), fetched)

"""Disk pressure against real processes on a real small filesystem.

Each test mounts its own tmpfs (C{mount -t tmpfs -o size=64m}, root only;
skipped with the reason otherwise) as a node's C{--data-dir}, with a
C{--cache-size} far larger than that disk, as an operator who sized the quota
for the wrong disk would:

- a peer: downloads that together exceed its disk all succeed and verify
  (the least recently used tasks are evicted, partial ones first); the disk
  is not left full; with the disk filled by another tenant, C{/healthz} says
  C{degraded} ("disk full") while still answering 200, and ok again after;
- a peer: a download larger than its whole disk succeeds and verifies, passed
  through to dfget without being kept;
- a dfdaemon: a layer larger than its disk pulls through skopeo and verifies;
- a supernode: two files that together exceed its disk, the first complete
  and unpinned: the second succeeds after the first is evicted; with the first
  still being fetched (pinned), the second fails there at once with a 507 to
  every waiting peer, which go back to the origin; a file announced larger
  than its whole disk is refused with a 507 before any of it is stored.
"""
import json
import os
import shutil
import subprocess
import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import test_registry_mirror as registry_mirror
from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    HTTP, MiB, Swarm, metric, poll_until, sha256_file, with_logs)

DISK = 64 * MiB


def mount_tmpfs(case, path, size="64m"):
    """Mount a tmpfs of C{size} at C{path} for the test (unmounted in cleanup,
    always); skip the test with the reason when that is not possible."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("mounting a tmpfs needs root (CI runs .ci/run as root)")
    if shutil.which("mount") is None:
        raise unittest.SkipTest("no mount command")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}")

    def umount():
        r = subprocess.run(["umount", path], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)
    case.addCleanup(umount)
    return path


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, name="other-tenant.bin"):
    """Fill the filesystem at C{path} with one file, as another tenant would."""
    full = os.path.join(path, name)
    chunk = b"\1" * (64 * 1024)
    with open(full, "wb", buffering=0) as f:
        try:
            while f.write(chunk):
                pass
        except OSError:
            pass
    return full


class DiskPressureTests(unittest.TestCase):
    timeout = 400

    async def make_swarm(self, files):
        http = HTTP(reactor)
        self.addCleanup(http.close)
        self.swarm = swarm = Swarm(reactor, self.mktemp(), http)
        disk = mount_tmpfs(self, swarm.path("small-disk"))
        self.addCleanup(swarm.stop)   # runs before the umount (cleanups run LIFO)
        await swarm.start_origin(files)
        return swarm, http, disk

    async def health(self, http, node):
        code, _, body = await http.request("GET", node.api + "/healthz")
        return code, json.loads(body)

    @with_logs()
    async def test_peer_evicts_and_tells(self):
        """Downloads that together exceed the peer's disk all succeed and
        verify; the disk is not left full; /healthz says degraded while
        another tenant fills the disk, and a download works once it is gone."""
        files = {f"f{i}.bin": 24 * MiB for i in range(4)}
        swarm, http, disk = await self.make_swarm(files)
        await swarm.start_supernode(piece_size="1M")
        peer = await swarm.start_peer(extra=("--data-dir", disk, "--cache-size", "1G"))
        for name in files:
            r = await swarm.dfget(swarm.origin_url(name), peer=peer, timeout=120)
            self.assertEqual(r.code, 0, repr(r))
            self.assertEqual(sha256_file(r.output), swarm.files[name][1])
            os.remove(r.output)
        self.assertGreater(free_bytes(disk), 2 * MiB)
        m = await peer.metrics(http)
        self.assertGreaterEqual(metric(m, "dragonfly_peer_store_evictions_total"), 1)
        self.assertGreater(metric(m, "dragonfly_peer_store_free_bytes"), 0)
        self.assertEqual(metric(m, "dragonfly_peer_store_quota_bytes"), 1 << 30)
        code, obj = await self.health(http, peer)
        self.assertEqual((code, obj["status"]), (200, "ok"), obj)

        filler = fill(disk)

        async def degraded():
            code, obj = await self.health(http, peer)
            return code == 200 and obj["status"] == "degraded" and "disk full" in obj["reasons"]
        await poll_until(reactor, degraded, 10, "/healthz to say degraded")
        os.remove(filler)

        async def ok():
            return (await self.health(http, peer))[1]["status"] == "ok"
        await poll_until(reactor, ok, 10, "/healthz to say ok again")
        swarm.add_file("small.bin", 8 * MiB)
        r = await swarm.dfget(swarm.origin_url("small.bin"), peer=peer, timeout=60)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["small.bin"][1])

    @with_logs()
    async def test_peer_passes_through_larger_than_disk(self):
        """A download larger than the peer's whole disk succeeds and verifies:
        the peer streams the verified pieces to dfget without keeping them (dfget
        -v says so), counts it, says degraded meanwhile, and gives the disk back:
        a smaller download afterwards succeeds and is cached."""
        files = {"big.bin": 100 * MiB, "small.bin": 16 * MiB}
        swarm, http, disk = await self.make_swarm(files)
        await swarm.start_supernode(piece_size="1M")
        peer = await swarm.start_peer(extra=("--data-dir", disk, "--cache-size", "1G"))
        r = await swarm.dfget(swarm.origin_url("big.bin"), peer=peer, args=("-v",),
                              timeout=180)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["big.bin"][1])
        os.remove(r.output)
        self.assertIn("streaming without caching", r.stderr)
        m = await peer.metrics(http)
        self.assertEqual(metric(m, "dragonfly_peer_uncached_downloads_total"), 1)
        code, obj = await self.health(http, peer)
        self.assertEqual((code, obj["status"]), (200, "degraded"), obj)
        self.assertIn("disk full", obj["reasons"])
        r = await swarm.dfget(swarm.origin_url("small.bin"), peer=peer, timeout=60)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(r.output), swarm.files["small.bin"][1])
        self.assertGreater(free_bytes(disk), 16 * MiB)
        m = await peer.metrics(http)
        self.assertEqual(metric(m, "dragonfly_peer_uncached_downloads_total"), 1)

    @with_logs()
    async def test_supernode_evicts_complete_task(self):
        """A supernode whose disk holds one of two files: the second succeeds
        after the first (complete, unpinned) is evicted."""
        files = {"a.bin": 40 * MiB, "b.bin": 40 * MiB}
        swarm, http, disk = await self.make_swarm(files)
        sn = await swarm.start_supernode(piece_size="1M",
                                         extra=("--data-dir", disk, "--cache-size", "1G"))
        peer = await swarm.start_peer()
        for name in files:
            r = await swarm.dfget(swarm.origin_url(name), peer=peer, timeout=120)
            self.assertEqual(r.code, 0, repr(r))
            self.assertEqual(sha256_file(r.output), swarm.files[name][1])
            os.remove(r.output)
        m = await http.metrics(sn.api)
        self.assertGreaterEqual(metric(m, "dragonfly_supernode_store_evictions_total"), 1)


    @with_logs()
    async def test_supernode_full_of_a_running_fetch(self):
        """A file announced larger than the supernode's whole disk is refused
        with a 507 before any of it is stored. When the disk is taken by a
        task still being fetched (pinned), a second file fails there at once:
        every waiting peer gets the 507, goes back to the origin with the
        reason in its log, and each dfget still succeeds and verifies."""
        swarm, http, disk = await self.make_swarm({"b.bin": 24 * MiB})
        sn = await swarm.start_supernode(piece_size="1M",
                                         extra=("--data-dir", disk, "--cache-size", "1G"))

        async def register(url):
            body = json.dumps({"task_id": task_id_for_url(url), "url": url}).encode()
            return await http.request("POST", sn.api + "/api/v1/tasks", data=body,
                                      headers={"Content-Type": ["application/json"]})
        code, _, raw = await register(await self.stalling_origin(80 * MiB, 8 * MiB))
        self.assertEqual(code, 507, raw)
        self.assertIn(b"do not fit on the cache's disk", raw)
        self.assertGreater(free_bytes(disk), DISK - MiB)
        url = await self.stalling_origin(60 * MiB, 56 * MiB)
        code, _, raw = await register(url)
        self.assertEqual(code, 200, raw)

        async def stalled():
            info = await http.get_json(f"{sn.api}/api/v1/tasks/{task_id_for_url(url)}")
            return info.get("seeded", 0) >= 50
        await poll_until(reactor, stalled, 30, "the first file to fill the supernode's disk")
        peers = [await swarm.start_peer() for _ in range(2)]
        started = time.monotonic()
        procs = [swarm.start_dfget(swarm.origin_url("b.bin"), peer=p) for p in peers]
        for proc in procs:
            r = await swarm.wait_dfget(proc, timeout=60)
            self.assertEqual(r.code, 0, repr(r))
            self.assertEqual(sha256_file(r.output), swarm.files["b.bin"][1])
        self.assertLess(time.monotonic() - started, 30)
        for p in peers:
            self.assertIn("cache is full", p.read_log())

    async def stalling_origin(self, length, sent):
        """An origin announcing C{length} bytes that sends C{sent} and then nothing."""
        factory = Factory.forProtocol(_Stalling)
        factory.length, factory.sent, factory.open = length, sent, []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

        def cleanup():
            for t in factory.open:
                t.abortConnection()
            return port.stopListening()
        self.addCleanup(cleanup)
        return f"http://127.0.0.1:{port.getHost().port}/stalls.bin"


class _Stalling(Protocol):
    """Answers one request: a 200 of C{factory.length} bytes, of which it sends
    C{factory.sent}, then holds the connection."""

    def dataReceived(self, data):
        if b"\r\n\r\n" in data and not getattr(self, "answered", False):
            self.answered = True
            f = self.factory
            f.open.append(self.transport)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % f.length)
            self.transport.write(os.urandom(f.sent))


class MirrorDiskPressureTests(unittest.TestCase):
    """The registry mirror on a dfdaemon whose cache disk is smaller than a layer."""

    timeout = 400
    # (the module, not the class, is imported: trial would run its tests here too)
    setUp = registry_mirror.RegistryMirrorTests.setUp
    start_registry = registry_mirror.RegistryMirrorTests.start_registry
    pull = registry_mirror.RegistryMirrorTests.pull

    @with_logs()
    async def test_layer_larger_than_disk(self):
        """A layer larger than the dfdaemon's whole cache disk pulls through
        skopeo and verifies: the mirror streams it without keeping it."""
        self.patch(registry_mirror, "LAYERS", (300_000, 80 * MiB))
        disk = mount_tmpfs(self, os.path.join(self.workdir, "small-disk"))
        self.addCleanup(self.swarm.stop)   # before the umount (cleanups run LIFO)
        info = await self.start_registry()
        await self.swarm.start_supernode(piece_size="1M")
        d1 = await rf.start_dfdaemon(self.swarm, self.registry,
                                     extra=("--data-dir", disk, "--cache-size", "1G"))
        code, out, err, out_dir = await self.pull(d1, "pull-big")
        self.assertEqual(code, 0, f"pull through the dfdaemon failed: {err}")
        rf.verify_layout(out_dir)
        pulled = rf.layout_blobs(out_dir)
        for digest, size in info["blobs"].items():
            self.assertEqual(len(pulled[digest]), size)
        m = await self.http.metrics(d1.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), sum(info["blobs"].values()))
        self.assertGreaterEqual(metric(m, "dragonfly_peer_uncached_downloads_total"), 1)

"""Lazy pulling through a real dfdaemon: Range requests on a layer served from
the pieces covering them (real docker-registry, supernode and dfdaemon
processes; the layer pushed with skopeo). A real eStargz image read the way
stargz-snapshotter reads it: test_mirror_estargz."""
import os

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import registry_setup as rs
from dragonfly.test.integration.harness import HTTP, Swarm, metric, with_logs

REPO = "dragonfly/lazy"
TAG = "v1"
LAYER = 6_000_000     # with 1M pieces: 6 pieces


class LazyPullTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        missing = rf.missing_registry_tools()
        if missing:
            raise unittest.SkipTest(f"{' and '.join(missing)} not installed")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.workdir, self.http)
        self.addCleanup(self.swarm.stop)

    async def start_registry(self):
        self.registry = await rs.start_registry(
            self, reactor, os.path.join(self.workdir, "registry"))
        layout = os.path.join(self.workdir, "image")
        info = rf.build_oci_layout(layout, (LAYER,), tag=TAG)
        await rs.push_layout(self, reactor, self.workdir, layout, TAG,
                             f"{self.registry.hostport}/{REPO}:{TAG}")
        [(digest, size)] = info["layers"]
        return digest, rf.layout_blobs(layout)[digest]

    @with_logs()
    async def test_range_near_the_end_then_full_pull(self):
        """A 64 KiB range near the end of a multi-MiB layer comes back right
        (206, its bytes); a second range and then a full GET of the blob
        through the same dfdaemon are right too, and the registry sent the
        blob's bytes once in all."""
        digest, blob = await self.start_registry()
        await self.swarm.start_supernode(piece_size="1M")
        node = await rf.start_dfdaemon(self.swarm, self.registry)
        url = node.mirror + f"/v2/{REPO}/blobs/{digest}"

        first = len(blob) - 200_000
        last = first + 64 * 1024 - 1
        code, headers, body = await self.http.request(
            "GET", url, headers={"Range": f"bytes={first}-{last}"}, timeout=60)
        self.assertEqual(code, 206)
        self.assertEqual(headers.getRawHeaders("content-range"),
                         [f"bytes {first}-{last}/{len(blob)}"])
        self.assertEqual(body, blob[first:last + 1])

        code, headers, body = await self.http.request(
            "GET", url, headers={"Range": "bytes=-1000"}, timeout=60)
        self.assertEqual(code, 206)
        self.assertEqual(body, blob[-1000:])

        code, headers, body = await self.http.request("GET", url, timeout=60)
        self.assertEqual(code, 200)
        self.assertEqual(body, blob)

        gets = self.registry.blob_gets(digest)
        sent = sum(r["written"] for r in gets)
        self.assertLessEqual(sent, len(blob), f"registry sent {sent} bytes of {digest} "
                                              f"({len(blob)} bytes) in {len(gets)} GETs: {gets}")
        m = await self.http.metrics(node.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"),
                         64 * 1024 + 1000 + len(blob))

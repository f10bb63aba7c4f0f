"""The dfdaemon registry mirror with a real registry, a real client and real processes.

A token-auth ``docker-registry`` (Debian's CNCF distribution registry; the
token server runs in this test process), an OCI image of several random
layers built offline and pushed with ``skopeo``, a ``twistd supernode`` and
``twistd dfdaemon`` processes, and ``skopeo copy`` pulling through a
dfdaemon via a ``registries.conf`` mirror -- the very file docs/mirror.md
shows. Everything on 127.0.0.1, ephemeral ports.

skopeo quietly falls back to the registry when a mirror fails, so every
test also checks the mirror's own metrics: it was really used.
"""
import json
import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from dragonfly.test import source_file
from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import registry_setup as rs
from dragonfly.test.integration.harness import (
    HTTP, LOOPBACK, Swarm, metric, poll_until, with_logs)

USER, PASSWORD = "alice", "wonderland-42"
REPO = "dragonfly/test-image"
TAG = "v1"
LAYERS = (300_000, 1_500_000, 5_000_000)   # with 1M pieces: 1, 2 and 5 pieces


class _Raw(Protocol):
    """Send raw bytes, collect the answer until the server closes."""

    def __init__(self, data):
        self.data = data
        self.chunks = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.chunks))


async def raw_request(port, data, timeout=10):
    proto = _Raw(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5), proto)
    timer = reactor.callLater(timeout, proto.transport.abortConnection)
    try:
        return await proto.done
    finally:
        if timer.active():
            timer.cancel()


class DocsTests(unittest.SynchronousTestCase):
    def test_registries_conf_is_the_documented_one(self):
        """The registries.conf the tests pull with is, byte for byte, the drop-in
        docs/mirror.md shows (only the addresses are substituted)."""
        with open(source_file("docs", "mirror.md")) as f:
            text = f.read()
        self.assertIn("```toml\n" + rf.DOCS_REGISTRIES_CONF + "```", text)


class RegistryMirrorTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        missing = rf.missing_registry_tools()
        if missing:
            raise unittest.SkipTest(
                f"{' and '.join(missing)} not installed (Debian packages docker-registry, skopeo)")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.workdir, self.http)
        self.addCleanup(self.swarm.stop)

    async def start_registry(self):
        """Token-auth registry with the test image pushed; returns the layout info."""
        self.registry, self.tokens = await rf.start_token_registry(
            self, reactor, self.workdir, {USER: PASSWORD})
        layout = os.path.join(self.workdir, "image")
        info = rf.build_oci_layout(layout, LAYERS, tag=TAG)
        await rs.push_layout(self, reactor, self.workdir, layout, TAG,
                             f"{self.registry.hostport}/{REPO}:{TAG}", creds=(USER, PASSWORD))
        return info

    async def start_swarm(self, dfdaemons):
        await self.swarm.start_supernode(piece_size="1M")
        return [await rf.start_dfdaemon(self.swarm, self.registry) for _ in range(dfdaemons)]

    async def pull(self, dfdaemon, name, creds=True):
        """skopeo copy from the registry through C{dfdaemon}'s mirror into an OCI dir."""
        conf = rf.registries_conf(os.path.join(self.workdir, f"{name}-registries.conf"),
                                  self.registry.hostport, dfdaemon.mirror_hostport)
        out_dir = os.path.join(self.workdir, name)
        # Credentials for the mirror's host only (skopeo never sends --src-creds
        # to a mirror): if skopeo fell back to the registry, the pull would fail.
        authfile = rf.auth_file(os.path.join(self.workdir, f"{name}-auth.json"),
                                {dfdaemon.mirror_hostport: (USER, PASSWORD)} if creds else {})
        # No --src-tls-verify=false: the documented `insecure = true` is what
        # lets skopeo use the plain-HTTP mirror.
        args = ["copy", "--registries-conf", conf, "--src-authfile", authfile]
        args += [f"docker://{self.registry.hostport}/{REPO}:{TAG}", f"oci:{out_dir}:{TAG}"]
        code, out, err = await rf.skopeo(reactor, self.workdir, name, args)
        return code, out, err, out_dir

    async def mirror_metrics(self, node):
        return await self.http.metrics(node.mirror)

    async def supernode_checked(self, digests):
        """Wait until the supernode's fetch of each blob is done (its content
        check passed, so it attests them)."""
        sn = self.swarm.supernodes[0]

        async def done():
            for digest in digests:
                info = await self.http.get_json(f"{sn.api}/api/v1/tasks/{digest}")
                if info.get("state") != "done":
                    return False
            return True
        await poll_until(reactor, done, 30, "the supernode's checks of the blobs")

    @with_logs()
    async def test_two_dfdaemons_pull_each_blob_once(self):
        """When two hosts pull the same image through their dfdaemons (skopeo with a
        registries.conf mirror and credentials for it), both copies verify, the
        registry sends each blob's bytes once in total, the blobs went through
        the mirrors, and the second host got pieces from the first."""
        info = await self.start_registry()
        d1, d2 = await self.start_swarm(2)

        code, out, err, out1 = await self.pull(d1, "pull-1")
        self.assertEqual(code, 0, f"pull through dfdaemon 1 failed: {err}")
        await self.supernode_checked(info["blobs"])
        code, out, err, out2 = await self.pull(d2, "pull-2")
        self.assertEqual(code, 0, f"pull through dfdaemon 2 failed: {err}")

        for out_dir in (out1, out2):
            rf.verify_layout(out_dir)
            pulled = rf.layout_blobs(out_dir)
            for digest, size in info["blobs"].items():
                self.assertIn(digest, pulled, f"{digest} missing from {out_dir}")
                self.assertEqual(len(pulled[digest]), size)
            self.assertIn(info["manifest_digest"], pulled)

        for digest, size in info["blobs"].items():
            gets = self.registry.blob_gets(digest)
            sent = sum(r["written"] for r in gets)
            self.assertEqual(sent, size, f"registry sent {sent} bytes of {digest} "
                                         f"({size} bytes) in {len(gets)} GETs: {gets}")

        total = sum(info["blobs"].values())
        for node in (d1, d2):
            m = await self.mirror_metrics(node)
            self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), total,
                             f"{node.name}: blobs did not all go through the mirror")
            self.assertGreaterEqual(
                metric(m, "dragonfly_mirror_requests_total", kind="blob", code="200"),
                len(info["blobs"]))
            self.assertGreaterEqual(
                metric(m, "dragonfly_mirror_requests_total", kind="passthrough", code="200"), 1,
                f"{node.name}: the manifest did not go through the mirror")
        m2 = await self.mirror_metrics(d2)
        self.assertGreater(metric(m2, "dragonfly_peer_download_bytes_total", source="peer"), 0,
                           "the second dfdaemon got nothing from the first")
        # The supernode had checked every blob: the second dfdaemon took its
        # word (the attestation) and hashed none of them itself.
        self.assertEqual(metric(m2, "dragonfly_mirror_blob_hash_bytes_total"), 0)
        # The first dfdaemon streamed each blob while the supernode fetched
        # it (cold): the supernode promised its word, so the dfdaemon
        # deferred its hashing, and the word came at the end: none hashed.
        m1 = await self.mirror_metrics(d1)
        self.assertEqual(metric(m1, "dragonfly_mirror_blob_hash_bytes_total"), 0)

    @with_logs()
    async def test_poisoned_blob_never_served_complete(self):
        """When the registry's stored copy of a layer is corrupt (a byte
        flipped, the length kept), a GET of it through the mirror is cut
        before its last bytes, or refused with 502 when the supernode had
        already dropped the task: the supernode's check fails, so nothing is
        attested, and the dfdaemon's own hash (or the failed task) stops the
        answer; the mirror stays healthy."""
        info = await self.start_registry()
        digest, size = max(info["blobs"].items(), key=lambda kv: kv[1])
        hexd = digest.partition(":")[2]
        path = os.path.join(self.registry.directory, "storage", "docker", "registry", "v2",
                            "blobs", "sha256", hexd[:2], hexd, "data")
        with open(path, "r+b") as f:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        [d1] = await self.start_swarm(1)
        token = self.tokens.signer.sign(USER, [{"type": "repository", "name": REPO,
                                                "actions": ["pull"]}])
        answer = await raw_request(d1.ports["mirror"], (
            f"GET /v2/{REPO}/blobs/{digest} HTTP/1.1\r\nHost: {d1.mirror_hostport}\r\n"
            f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n").encode(), 60)
        head, _, body = answer.partition(b"\r\n\r\n")
        # Two honest outcomes, depending on which side of the supernode's
        # failed check the first request lands: the answer began (200 with
        # the blob's length) and is cut before its end, or the task was
        # already dropped and the mirror answers 502 with no blob bytes (or
        # the connection is cut before the head goes out).
        if not answer:
            pass  # the abort came before the head was read: nothing served
        elif head.startswith(b"HTTP/1.1 200"):
            self.assertIn(b"content-length: %d" % size, head.lower())
            self.assertLess(len(body), size, "a corrupt blob was served complete")
        else:
            self.assertTrue(head.startswith(b"HTTP/1.1 502"), head[:200])
            self.assertLess(len(body), 4096, body[:200])
        sn = self.swarm.supernodes[0]
        task = await self.http.get_json(f"{sn.api}/api/v1/tasks/{digest}")
        self.assertNotEqual(task.get("state"), "done", task)
        self.assertTrue(await self.http.healthy(d1.mirror))

    @with_logs()
    async def test_pull_without_credentials_fails_cleanly(self):
        """When the client has no credentials, the pull through the mirror fails
        with the registry's authorization error, no blob leaves the registry,
        the mirror passed the challenge back, and it stays healthy."""
        info = await self.start_registry()
        [d1] = await self.start_swarm(1)
        code, out, err, out_dir = await self.pull(d1, "pull-anon", creds=False)
        self.assertNotEqual(code, 0, "an anonymous pull of a private image succeeded")
        self.assertRegex(err.lower(), "unauthorized|denied|authentication required")
        for digest in info["blobs"]:
            self.assertEqual(sum(r["written"] for r in self.registry.blob_gets(digest)), 0)
        m = await self.mirror_metrics(d1)
        self.assertGreaterEqual(
            metric(m, "dragonfly_mirror_requests_total", kind="passthrough", code="401"), 1,
            "the mirror never saw the pull")
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), 0)
        self.assertTrue(await self.http.healthy(d1.mirror))

    @with_logs()
    async def test_refusals(self):
        """When a request names a registry that is not allowed (?ns=), is an
        absolute-URL proxy request or a CONNECT, it gets 403; a malformed
        digest gets 400 JSON; nothing reaches the registry and the daemon
        stays healthy."""
        await self.start_registry()
        [d1] = await self.start_swarm(1)
        before = len(self.registry.requests())

        code, headers, body = await self.http.request(
            "GET", d1.mirror + f"/v2/{REPO}/manifests/{TAG}?ns=evil.example")
        self.assertEqual(code, 403)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "DENIED")

        port = d1.ports["mirror"]
        answer = await raw_request(port, b"GET http://evil.example/v2/ HTTP/1.1\r\n"
                                         b"Host: evil.example\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403"), answer[:200])
        answer = await raw_request(port, b"CONNECT evil.example:443 HTTP/1.1\r\n"
                                         b"Host: evil.example:443\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403"), answer[:200])

        for bad in ["sha256:1234", "sha256:" + "g" * 64, "sha1:" + "0" * 40, "nodigest"]:
            code, headers, body = await self.http.request(
                "GET", d1.mirror + f"/v2/{REPO}/blobs/{bad}")
            self.assertEqual(code, 400, bad)
            obj = json.loads(body)
            self.assertEqual(obj["errors"][0]["code"], "DIGEST_INVALID")
            self.assertIn("error", obj)

        self.assertEqual(len(self.registry.requests()), before,
                         "a refused request reached the registry")
        self.assertTrue(await self.http.healthy(d1.mirror))
        m = await self.mirror_metrics(d1)
        self.assertEqual(metric(m, "dragonfly_mirror_requests_total", kind="refused"), 3)
        self.assertEqual(metric(m, "dragonfly_mirror_requests_total", kind="invalid", code="400"), 4)

"""Pushes through the dfdaemon registry mirror, with a real registry and real clients.

A token-auth ``docker-registry`` (the token server runs in this test
process), a ``twistd supernode`` and two ``twistd dfdaemon``s on 127.0.0.1.
``skopeo copy`` pushes a multi-layer image *to* the registry through the
first dfdaemon (the mirror's address as the registry, as docs/mirror.md
says for podman and skopeo), then a second host pulls it through its own
dfdaemon; every blob verifies, the registry's log shows the upload went
through the mirror and each blob sent once on the pull.
"""
import os
import tarfile

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test import source_file
from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import registry_setup as rs
from dragonfly.test.integration.harness import HTTP, Swarm, metric, with_logs

USER, PASSWORD = "alice", "wonderland-42"
REPO = "dragonfly/pushed-image"
TAG = "v1"
# With 1M pieces: 1, 2 and 5 pieces, and a 24 MB layer for the memory check.
LAYERS = (300_000, 1_500_000, 5_000_000, 24_000_000)


# docs/mirror.md, containerd: the hosts.toml that pushes through the mirror too.
DOCS_HOSTS_TOML_PUSH = """\
server = "https://registry.example.com"

[host."http://127.0.0.1:65001"]
  capabilities = ["pull", "resolve", "push"]
"""


class DocsTests(unittest.SynchronousTestCase):
    def test_push_hosts_toml_is_the_documented_one(self):
        """The hosts.toml the containerd push test uses is, byte for byte, the
        one docs/mirror.md shows (only the addresses are substituted)."""
        with open(source_file("docs", "mirror.md")) as f:
            self.assertIn("```toml\n" + DOCS_HOSTS_TOML_PUSH + "```", f.read())


def push_hosts_toml(hosts_dir, registry_url, mirror_url):
    """The documented push hosts.toml at ``HOSTS_DIR/HOST:PORT/hosts.toml``."""
    host = registry_url.split("://", 1)[1].rstrip("/")
    os.makedirs(os.path.join(hosts_dir, host), exist_ok=True)
    path = os.path.join(hosts_dir, host, "hosts.toml")
    with open(path, "w") as f:
        f.write(DOCS_HOSTS_TOML_PUSH
                .replace('"https://registry.example.com"', f'"{registry_url}"')
                .replace('"http://127.0.0.1:65001"', f'"{mirror_url}"'))
    return path


def oci_archive(layout, path):
    """The OCI image layout directory C{layout} as a tar (what ``ctr images import`` reads)."""
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(os.path.join(layout, name), arcname=name)
    return path


def peak_rss(pid):
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


class RegistryPushTests(unittest.TestCase):
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
        """An empty token-auth registry."""
        self.registry, self.tokens = await rf.start_token_registry(
            self, reactor, self.workdir, {USER: PASSWORD})

    async def pull(self, dfdaemon, name):
        """skopeo copy from the registry through C{dfdaemon}'s mirror (the
        documented registries.conf, credentials for the mirror's host only)."""
        conf = rf.registries_conf(os.path.join(self.workdir, f"{name}-registries.conf"),
                                  self.registry.hostport, dfdaemon.mirror_hostport)
        authfile = rf.auth_file(os.path.join(self.workdir, f"{name}-auth.json"),
                                {dfdaemon.mirror_hostport: (USER, PASSWORD)})
        out_dir = os.path.join(self.workdir, name)
        code, out, err = await rf.skopeo(reactor, self.workdir, name, [
            "copy", "--registries-conf", conf, "--src-authfile", authfile,
            f"docker://{self.registry.hostport}/{REPO}:{TAG}", f"oci:{out_dir}:{TAG}"])
        self.assertEqual(code, 0, f"pull through {dfdaemon.name} failed: {err}")
        return out_dir

    @with_logs()
    async def test_push_through_mirror_then_pull(self):
        """When skopeo pushes a multi-layer image to the mirror's address, the
        whole upload (POST, PATCH, PUT of each blob, the manifest) goes through
        the mirror to the registry and succeeds; the pushing dfdaemon keeps
        nothing of it and its memory stays flat; a second host then pulls the
        image through its own dfdaemon, every blob verifies, and the registry
        sends each blob once. No secret reaches the dfdaemon's log."""
        await self.start_registry()
        await self.swarm.start_supernode(piece_size="1M")
        d1 = await rf.start_dfdaemon(self.swarm, self.registry)
        d2 = await rf.start_dfdaemon(self.swarm, self.registry)
        layout = os.path.join(self.workdir, "image")
        info = rf.build_oci_layout(layout, LAYERS, tag=TAG)
        biggest = max(size for _, size in info["layers"])

        before = peak_rss(d1.pid)
        await rs.push_layout(self, reactor, self.workdir, layout, TAG,
                             f"{d1.mirror_hostport}/{REPO}:{TAG}", creds=(USER, PASSWORD),
                             failed="skopeo push through the mirror failed")
        grown = peak_rss(d1.pid) - before
        self.assertLess(grown, biggest // 3,
                        f"the dfdaemon's peak memory grew by {grown} bytes during the push "
                        f"of a {biggest}-byte layer")

        # The registry got the upload: each blob's session closed by a PUT, the manifest put.
        requests = self.registry.requests()
        puts = [r for r in requests if r["method"] == "PUT" and r["status"] == 201]
        for digest in info["blobs"]:
            self.assertTrue([r for r in puts if "/blobs/uploads/" in r["path"]],
                            f"no upload of {digest} completed: {requests}")
        self.assertTrue([r for r in puts if r["path"] == f"/v2/{REPO}/manifests/{TAG}"],
                        f"the manifest was not put: {requests}")
        self.assertEqual(len([r for r in puts if "/blobs/uploads/" in r["path"]]),
                         len(info["blobs"]))
        # ... through the mirror: it relayed every one of those PUTs (the
        # registry's absolute Locations were kept on the mirror).
        m1 = await self.http.metrics(d1.mirror)
        self.assertEqual(metric(m1, "dragonfly_mirror_requests_total", kind="write", code="201"),
                         len(info["blobs"]) + 1)
        self.assertGreaterEqual(
            metric(m1, "dragonfly_mirror_requests_total", kind="write", code="202"),
            len(info["blobs"]))
        # A pushed blob is not cached on the way up.
        self.assertEqual(metric(m1, "dragonfly_mirror_blob_bytes_total"), 0)
        self.assertEqual(sum(r["written"] for d in info["blobs"]
                             for r in self.registry.blob_gets(d)), 0)

        out_dir = await self.pull(d2, "pull-2")
        rf.verify_layout(out_dir)
        pulled = rf.layout_blobs(out_dir)
        for digest, size in info["blobs"].items():
            self.assertEqual(len(pulled.get(digest, b"")), size, digest)
            sent = sum(r["written"] for r in self.registry.blob_gets(digest))
            self.assertEqual(sent, size, f"registry sent {sent} bytes of {digest} ({size})")
        m2 = await self.http.metrics(d2.mirror)
        self.assertEqual(metric(m2, "dragonfly_mirror_blob_bytes_total"),
                         sum(info["blobs"].values()))
        self.assertTrue(await self.http.healthy(d1.mirror))
        # Nothing secret in the pushing dfdaemon's log: no token, no password,
        # no signed upload state (the access log shows "?<redacted>").
        logged = d1.read_log()
        self.assertIn("/blobs/uploads/", logged)
        for secret in ("_state=", "eyJ", PASSWORD, "Bearer "):
            self.assertNotIn(secret, logged)


class _EnginePushTest(unittest.TestCase):
    """A plain-HTTP registry, a supernode, a dfdaemon and an engine."""

    timeout = 180
    engine = None
    PACKAGES = {"containerd": "containerd", "podman": "podman", "docker": "docker.io"}

    def setUp(self):
        missing = rf.missing_registry_tools() + [name for name, path in
                                      rf.engine_binaries(self.engine).items() if path is None]
        if missing:
            raise unittest.SkipTest(f"{', '.join(missing)} not installed (Debian packages "
                                    f"docker-registry, skopeo, {self.PACKAGES[self.engine]})")
        if os.geteuid() != 0:
            raise unittest.SkipTest(f"{self.engine} runs rootful here: needs root")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.workdir, self.http)
        self.addCleanup(self.swarm.stop)

    async def start(self, engine):
        """The registry, supernode and dfdaemon, the engine started, the test
        image's OCI layout built; returns (registry, dfdaemon, layout, info)."""
        registry = await rs.start_registry(self, reactor, os.path.join(self.workdir, "registry"))
        await self.swarm.start_supernode(piece_size="1M")
        node = await rf.start_dfdaemon(self.swarm, registry)
        self.addCleanup(engine.stop, reactor)
        await engine.start(reactor)
        layout = os.path.join(self.workdir, "image")
        info = rf.build_oci_layout(layout, (300_000, 2_500_000), tag=TAG)
        return registry, node, layout, info

    async def docker_archive(self, layout):
        """The test image as a docker-archive tar named REPO:TAG (for ``load``)."""
        archive = os.path.join(self.workdir, "image.tar")
        code, out, err = await rf.skopeo(reactor, self.workdir, "skopeo-archive", [
            "copy", f"oci:{layout}:{TAG}", f"docker-archive:{archive}:{REPO}:{TAG}"])
        self.assertEqual(code, 0, err)
        return archive

    async def assert_pushed_through(self, registry, node, blobs):
        """The registry completed C{blobs} uploads and a manifest, each of
        them relayed by the mirror, and the mirror cached nothing."""
        requests = registry.requests()
        done = [r for r in requests if r["method"] == "PUT" and r["status"] == 201]
        uploads = [r for r in done if "/blobs/uploads/" in r["path"]]
        self.assertEqual(len(uploads), blobs, requests)
        self.assertTrue([r for r in done if "/manifests/" in r["path"]], requests)
        m = await self.http.metrics(node.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_requests_total", kind="write", code="201"),
                         len(done), "the push did not all go through the mirror")
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), 0)


class ContainerdPushTests(_EnginePushTest):
    engine = "containerd"

    @with_logs()
    async def test_ctr_push_through_mirror(self):
        """When containerd pushes an image with the documented hosts.toml (the
        dfdaemon with the push capability), every blob upload and the manifest
        go through the mirror to the registry, and the pushed image is there."""
        ctd = rf.Containerd(self.workdir)
        registry, node, layout, info = await self.start(ctd)
        ref = f"{registry.hostport}/{REPO}:{TAG}"
        code, out, err = await ctd.ctr(reactor, "ctr-import", [
            "images", "import", "--snapshotter", "native", "--base-name",
            f"{registry.hostport}/{REPO}", oci_archive(layout, layout + ".tar")])
        self.assertEqual(code, 0, f"ctr images import failed:\n{out}\n{err}")
        hosts_dir = os.path.join(self.workdir, "certs.d")
        push_hosts_toml(hosts_dir, registry.url, node.mirror)
        code, out, err = await ctd.ctr(reactor, "ctr-push", [
            "images", "push", "--hosts-dir", hosts_dir, ref])
        self.assertEqual(code, 0, f"ctr images push failed:\n{out}\n{err}")

        await self.assert_pushed_through(registry, node, len(info["blobs"]))
        code, out, err = await rf.skopeo(reactor, self.workdir, "skopeo-inspect", [
            "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"])
        self.assertEqual(code, 0, err)
        self.assertIn(info["config_digest"], out)


class PodmanPushTests(_EnginePushTest):
    engine = "podman"

    @with_logs()
    async def test_podman_push_to_mirror_address(self):
        """When rootful podman pushes an image to the dfdaemon's address (the
        documented command), the image lands in the dfdaemon's registry and
        every upload went through the mirror."""
        podman = rf.Podman(self.workdir)
        registry, node, layout, info = await self.start(podman)
        archive = await self.docker_archive(layout)
        code, out, err = await podman.podman(reactor, "podman-load", ["load", "-i", archive])
        self.assertEqual(code, 0, f"podman load failed:\n{out}\n{err}")
        code, out, err = await podman.podman(reactor, "podman-push", [
            "push", "--tls-verify=false", f"{REPO}:{TAG}",
            f"{node.mirror_hostport}/{REPO}:{TAG}"])
        self.assertEqual(code, 0, f"podman push failed:\n{out}\n{err}")
        await self.assert_pushed_through(registry, node, len(info["blobs"]))


class DockerPushTests(_EnginePushTest):
    engine = "docker"

    @with_logs()
    async def test_docker_push_to_mirror_address(self):
        """When dockerd pushes an image tagged with the dfdaemon's address (the
        documented commands), the image lands in the dfdaemon's registry and
        every upload went through the mirror."""
        dockerd = rf.Dockerd(self.workdir, "http://127.0.0.1:1")
        registry, node, layout, info = await self.start(dockerd)
        archive = await self.docker_archive(layout)
        code, out, err = await dockerd.docker(reactor, "docker-load", ["load", "-i", archive])
        self.assertEqual(code, 0, f"docker load failed:\n{out}\n{err}")
        dest = f"{node.mirror_hostport}/{REPO}:{TAG}"
        code, out, err = await dockerd.docker(reactor, "docker-tag", ["tag", f"{REPO}:{TAG}", dest])
        self.assertEqual(code, 0, err)
        code, out, err = await dockerd.docker(reactor, "docker-push", ["push", dest])
        self.assertEqual(code, 0, f"docker push failed:\n{out}\n{err}")
        await self.assert_pushed_through(registry, node, len(info["blobs"]))

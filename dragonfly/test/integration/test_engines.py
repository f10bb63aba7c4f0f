"""docker, containerd and podman pulling through the dfdaemon registry mirror,
each configured with the very snippet docs/mirror.md shows.

A plain-HTTP ``docker-registry`` on 127.0.0.1 holding an OCI image of random
layers (built offline, pushed with ``skopeo``), a ``twistd supernode`` and a
``twistd dfdaemon`` (``--registry`` that registry, ``--insecure-registry``),
then the real engine with private state:

- containerd 1.6: its own root/state/socket (CRI plugin off, ``native``
  snapshotter), ``ctr images pull --hosts-dir`` with the documented
  ``hosts.toml``;
- podman 4.3: rootful, ``--storage-driver vfs``, private ``--root/--runroot``,
  the documented ``registries.conf`` drop-in via ``CONTAINERS_REGISTRIES_CONF``;
- dockerd 20.10: private data-root/exec-root/socket, no bridge, no iptables,
  vfs, the documented ``daemon.json`` (``registry-mirrors``), and
  ``docker pull NAME:TAG`` (a Docker Hub name: Docker uses mirrors for those
  only; the image is in the local registry under ``library/NAME``).

Engines fall back to the registry quietly when a mirror fails, so each test
checks the mirror really served the pull: its metrics count every blob byte,
and the registry's log shows each blob fetched once, by the supernode, never
by the engine. Each engine's test is skipped when its binary is missing
(Debian packages containerd, podman, docker.io) or without root.
"""
import json
import os

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test import source_file
from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import registry_setup as rs
from dragonfly.test.integration.harness import HTTP, Swarm, metric, with_logs

REPO = "dragonfly/engine-test"
DOCKER_NAME = "dragonfly-engine-test"   # docker pull NAME = docker.io/library/NAME
TAG = "v1"
LAYERS = (300_000, 1_500_000, 3_000_000)   # with 1M pieces: 1, 2 and 3 pieces
SUPERNODE_AGENT = "dragonfly"              # user agent prefix of the swarm's fetches

PACKAGES = {"containerd": "containerd", "podman": "podman", "docker": "docker.io"}


def _docs():
    with open(source_file("docs", "mirror.md")) as f:
        return f.read()


class DocsTests(unittest.SynchronousTestCase):
    def test_daemon_json_is_the_documented_one(self):
        """The daemon.json the docker test uses is, byte for byte, the one
        docs/mirror.md shows (only the mirror address is substituted)."""
        self.assertIn("```json\n" + rf.DOCS_DAEMON_JSON + "```", _docs())

    def test_hosts_toml_is_the_documented_one(self):
        """The hosts.toml the containerd test uses is, byte for byte, the one
        docs/mirror.md shows for a registry other than Docker Hub (only the
        addresses are substituted)."""
        self.assertIn("```toml\n" + rf.DOCS_HOSTS_TOML + "```", _docs())

    def test_substitution_changes_only_addresses(self):
        """When the documented snippets are written for the test's addresses,
        only the addresses change."""
        tmp = self.mktemp()
        os.makedirs(tmp)
        path = rf.hosts_toml(tmp, "http://127.0.0.1:5000", "http://127.0.0.1:6000")
        self.assertEqual(path, os.path.join(tmp, "127.0.0.1:5000", "hosts.toml"))
        with open(path) as f:
            self.assertEqual(f.read(), rf.DOCS_HOSTS_TOML
                             .replace("https://ghcr.io", "http://127.0.0.1:5000")
                             .replace("127.0.0.1:65001", "127.0.0.1:6000"))
        path = rf.daemon_json(os.path.join(tmp, "daemon.json"), "http://127.0.0.1:6000")
        with open(path) as f:
            self.assertEqual(f.read(), rf.DOCS_DAEMON_JSON.replace("65001", "6000"))


class _Logs:
    """Log tails of the registry and the engine, for ``with_logs``."""

    def __init__(self):
        self.sources = []

    def logs(self, lines=40):
        out = []
        for src in self.sources:
            if isinstance(src, rf.Registry):
                if src.proc is not None:
                    tail = "\n".join(line[:300] for line in src.proc.tail(10).splitlines())
                    out.append(f"----- registry {src.log_path}\n{tail}")
            else:
                out.append(src.logs(lines))
        return "\n".join(out)


class _EngineTest(unittest.TestCase):
    timeout = 120
    engine = None

    def setUp(self):
        missing = [name for name, path in (("docker-registry", rf.DOCKER_REGISTRY),
                                           ("skopeo", "/usr/bin/skopeo"))
                   if rf.which(name, path) is None]
        missing += [name for name, path in rf.engine_binaries(self.engine).items()
                    if path is None]
        if missing:
            raise unittest.SkipTest(
                f"{', '.join(missing)} not installed (Debian packages docker-registry, "
                f"skopeo, {PACKAGES[self.engine]})")
        if os.geteuid() != 0:
            raise unittest.SkipTest(f"{self.engine} runs rootful here: needs root")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.workdir, self.http)
        self.addCleanup(self.swarm.stop)
        self.extra = _Logs()
        self.log_sources = [self.swarm, self.extra]

    async def start_registry(self, name="registry"):
        registry = await rs.start_registry(self, reactor, os.path.join(self.workdir, name))
        self.extra.sources.append(registry)
        return registry

    async def push(self, registry, repo):
        """Build the test image offline and push it to C{registry} as REPO:TAG."""
        layout = os.path.join(self.workdir, "image")
        if not os.path.exists(layout):
            self.info = rf.build_oci_layout(layout, LAYERS, tag=TAG)
        await rs.push_layout(self, reactor, self.workdir, layout, TAG,
                             f"{registry.hostport}/{repo}:{TAG}")
        return self.info

    async def start_mirror(self, repo):
        """Registry with the image pushed as C{repo}, a supernode and a dfdaemon."""
        self.registry = await self.start_registry()
        info = await self.push(self.registry, repo)
        await self.swarm.start_supernode(piece_size="1M")
        self.dfdaemon = await rf.start_dfdaemon(self.swarm, self.registry)
        return info

    async def start_engine(self, engine):
        self.addCleanup(engine.stop, reactor)
        self.extra.sources.append(engine)
        await engine.start(reactor)
        return engine

    async def assert_mirror_served(self, info, registry=None, node=None):
        """Every blob went through the mirror and left the registry exactly
        once, fetched by the swarm (never by the engine directly)."""
        registry = registry or self.registry
        node = node or self.dfdaemon
        m = await self.http.metrics(node.mirror)
        total = sum(info["blobs"].values())
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), total,
                         "the blobs did not all go through the mirror")
        self.assertGreaterEqual(
            metric(m, "dragonfly_mirror_requests_total", kind="blob", code="200"),
            len(info["blobs"]))
        self.assertGreaterEqual(
            metric(m, "dragonfly_mirror_requests_total", kind="passthrough", code="200"), 1,
            "the manifest did not go through the mirror")
        for digest, size in info["blobs"].items():
            gets = registry.blob_gets(digest)
            self.assertEqual(sum(r["written"] for r in gets), size,
                             f"registry sent {digest} ({size} bytes) in {gets}")
            for r in gets:
                self.assertTrue(r["user_agent"].startswith(SUPERNODE_AGENT),
                                f"the engine fetched {digest} from the registry itself: {r}")


class ContainerdTests(_EngineTest):
    engine = "containerd"

    @with_logs("log_sources")
    async def test_ctr_pull_through_mirror(self):
        """When containerd pulls an image of a registry whose hosts.toml (the
        documented one) names the dfdaemon as a mirror, the image is pulled
        and unpacked, the manifest and every blob come through the mirror
        (containerd's ?ns= names the registry), and the registry sends each
        blob once, to the swarm."""
        info = await self.start_mirror(REPO)
        ctd = await self.start_engine(rf.Containerd(self.workdir))
        hosts_dir = os.path.join(self.workdir, "certs.d")
        rf.hosts_toml(hosts_dir, self.registry.url, self.dfdaemon.mirror)
        ref = f"{self.registry.hostport}/{REPO}:{TAG}"

        code, out, err = await ctd.ctr(reactor, "ctr-pull", [
            "images", "pull", "--snapshotter", "native", "--hosts-dir", hosts_dir, ref])
        self.assertEqual(code, 0, f"ctr images pull failed:\n{out}\n{err}")

        code, out, err = await ctd.ctr(reactor, "ctr-ls", ["images", "ls"])
        self.assertEqual(code, 0, err)
        [line] = [x for x in out.splitlines() if x.startswith(ref + " ")]
        self.assertIn(info["manifest_digest"], line)
        code, out, err = await ctd.ctr(reactor, "ctr-check", ["images", "check"])
        self.assertEqual(code, 0, err)
        [line] = [x for x in out.splitlines() if x.startswith(ref + " ")]
        self.assertIn("complete", line)
        await self.assert_mirror_served(info)

    @with_logs("log_sources")
    async def test_registry_not_allowed_falls_back_to_server(self):
        """When containerd's hosts.toml sends a registry the dfdaemon does not
        allow to the mirror, the mirror refuses it (403, nothing fetched) and
        containerd pulls from the hosts.toml server instead, as documented."""
        await self.start_mirror(REPO)
        other = await self.start_registry("other-registry")
        info = await self.push(other, REPO)
        ctd = await self.start_engine(rf.Containerd(self.workdir))
        hosts_dir = os.path.join(self.workdir, "certs.d")
        rf.hosts_toml(hosts_dir, other.url, self.dfdaemon.mirror)

        code, out, err = await ctd.ctr(reactor, "ctr-pull", [
            "images", "pull", "--snapshotter", "native", "--hosts-dir", hosts_dir,
            f"{other.hostport}/{REPO}:{TAG}"])
        self.assertEqual(code, 0, f"ctr images pull failed:\n{out}\n{err}")

        m = await self.http.metrics(self.dfdaemon.mirror)
        self.assertGreaterEqual(metric(m, "dragonfly_mirror_requests_total",
                                       kind="refused", code="403"), 1)
        self.assertEqual(metric(m, "dragonfly_mirror_requests_total", code="200",
                                kind="blob", missing=0), 0)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), 0)
        for digest, size in info["blobs"].items():
            gets = other.blob_gets(digest)
            self.assertEqual(sum(r["written"] for r in gets), size)
            self.assertTrue(all(r["user_agent"].startswith("containerd") for r in gets), gets)
            self.assertEqual(self.registry.blob_gets(digest), [])
        self.assertTrue(await self.http.healthy(self.dfdaemon.mirror))


class PodmanTests(_EngineTest):
    engine = "podman"

    @with_logs("log_sources")
    async def test_podman_pull_through_mirror(self):
        """When rootful podman pulls with the documented registries.conf drop-in
        naming the dfdaemon as the registry's mirror, the image is stored, the
        manifest and every blob come through the mirror, and the registry
        sends each blob once, to the swarm."""
        info = await self.start_mirror(REPO)
        conf = rf.registries_conf(os.path.join(self.workdir, "registries.conf"),
                                  self.registry.hostport, self.dfdaemon.mirror_hostport)
        podman = await self.start_engine(rf.Podman(self.workdir))
        ref = f"{self.registry.hostport}/{REPO}:{TAG}"

        # No --tls-verify=false: the registry speaks plain HTTP, so a fallback
        # from the mirror to it would fail; `insecure = true` on the mirror
        # entry is what lets podman use the plain-HTTP mirror.
        code, out, err = await podman.podman(reactor, "podman-pull", ["pull", ref],
                                             registries_conf=conf)
        self.assertEqual(code, 0, f"podman pull failed:\n{out}\n{err}")
        image_id = info["config_digest"].split(":", 1)[1]
        self.assertEqual(out.strip().splitlines()[-1], image_id)

        code, out, err = await podman.podman(reactor, "podman-inspect", [
            "image", "inspect", "--format", "{{.Digest}}", ref], registries_conf=conf)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), info["manifest_digest"])
        await self.assert_mirror_served(info)


class DockerTests(_EngineTest):
    engine = "docker"

    @with_logs("log_sources")
    async def test_docker_pull_through_mirror(self):
        """When dockerd has the documented daemon.json (registry-mirrors = the
        dfdaemon) and pulls a Docker Hub name, the dfdaemon -- whose
        --registry is the local registry holding library/NAME -- serves it:
        the pull succeeds (Docker's fallback, Docker Hub, is unreachable
        here and has no such image), every blob comes through the mirror,
        and the registry sends each blob once, to the swarm."""
        info = await self.start_mirror(f"library/{DOCKER_NAME}")
        dockerd = await self.start_engine(rf.Dockerd(self.workdir, self.dfdaemon.mirror))
        with open(dockerd.config_file) as f:
            config = json.load(f)
        self.assertEqual(config["registry-mirrors"], [self.dfdaemon.mirror])

        code, out, err = await dockerd.docker(reactor, "docker-pull",
                                              ["pull", f"{DOCKER_NAME}:{TAG}"])
        self.assertEqual(code, 0, f"docker pull failed:\n{out}\n{err}")
        self.assertIn(f"Digest: {info['manifest_digest']}", out)

        code, out, err = await dockerd.docker(reactor, "docker-inspect", [
            "image", "inspect", "--format", "{{.Id}} {{index .RepoDigests 0}}",
            f"{DOCKER_NAME}:{TAG}"])
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split(), [info["config_digest"],
                                       f"{DOCKER_NAME}@{info['manifest_digest']}"])
        await self.assert_mirror_served(info)

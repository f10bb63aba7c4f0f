"""dfget's Dragonfly dialects and dfctl, with real processes on 127.0.0.1.

One origin, one supernode and two peers: a 1.x command line
(C{-u URL -o FILE --node SN -s 8M --notbs -m MD5}) downloads through a
daemon, and C{-p cdn} takes every byte from the supernode, none from peers;
C{dfctl preheat --wait} warms a file so that the next dfget costs the origin
nothing, and C{dfctl task ls/rm} see and drop it on the peer.
"""
import base64
import hashlib
import json
import os
import sys
import time

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    ALLOW_LOOPBACK, HTTP, MiB, DfgetResult, Proc, Swarm, executable, metric, sha256_file,
    with_logs)
from dragonfly.taskid import task_id_for_url

SIZE = 5 * MiB + 321


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DragonflyOneTests(unittest.TestCase):
    timeout = 300

    async def _swarm(self):
        http = HTTP(reactor)
        self.addCleanup(http.close)
        self.swarm = swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        await swarm.start_origin({"one.bin": SIZE})
        await swarm.start_supernode(piece_size="1M")
        await swarm.start_peer()
        await swarm.start_peer()
        return swarm

    async def _dfget(self, swarm, argv, output, timeout=120):
        proc = Proc(f"dfget-{len(swarm.dfgets) + 1}", [executable("dfget")] + argv,
                    swarm.workdir, separate_stderr=True)
        proc.output = output
        swarm.dfgets.append(proc)
        await proc.wait(swarm.clock, timeout)
        return DfgetResult(proc, output)

    @with_logs()
    async def test_dragonfly1_command_line_and_cdn_pattern(self):
        """A Dragonfly 1.x command line downloads through the daemon, verifies and
        keeps to its -s rate (the daemon paces it); a second peer with -p cdn takes
        the file from the supernode only, no peer."""
        swarm = await self._swarm()
        url = swarm.origin_url("one.bin")
        md5 = md5_file(os.path.join(swarm.origin.root, "one.bin"))
        first, second = swarm.peers
        out = swarm.path("one.out")
        started = time.monotonic()
        r = await self._dfget(swarm, [
            "-u", url, "-o", out, "--node", swarm.supernode_list(), "-s", "2M", "--notbs",
            "-m", md5, "--callsystem", "ci", "--daemon", first.api] + list(ALLOW_LOOPBACK), out)
        took = time.monotonic() - started
        self.assertEqual(r.code, 0, repr(r))
        # A lower bound only (it cannot flake on a slow machine): 2 MiB/s.
        self.assertGreaterEqual(took, SIZE / (2 * MiB) * 0.95, "-s 2M was not respected")
        self.assertEqual(sha256_file(out), swarm.files["one.bin"][1])
        self.assertEqual(r.stderr.count("warning"), 1, r.stderr)

        before = await second.metrics(swarm.http)
        out2 = swarm.path("one.cdn")
        r = await self._dfget(swarm, [
            "-u", url, "-o", out2, "-p", "cdn", "--notbs", "--daemon", second.api], out2)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(out2), swarm.files["one.bin"][1])
        after = await second.metrics(swarm.http)

        def delta(source):
            return (metric(after, "dragonfly_peer_download_bytes_total", source=source)
                    - metric(before, "dragonfly_peer_download_bytes_total", source=source))
        self.assertEqual((delta("supernode"), delta("peer"), delta("origin")), (SIZE, 0, 0))
        origin = await swarm.origin.body_bytes(swarm.http, "one.bin")
        self.assertEqual(origin, SIZE, "the origin sent the file more than once")

    async def _dfctl(self, swarm, argv, timeout=120):
        proc = Proc(f"dfctl-{len(swarm.dfgets) + 1}",
                    [sys.executable, "-m", "dragonfly.dfctl"] + argv, swarm.workdir,
                    separate_stderr=True)
        swarm.dfgets.append(proc)
        await proc.wait(swarm.clock, timeout)
        return proc.returncode, proc.read_log(), proc.read_log(err=True)

    @with_logs()
    async def test_dfctl_preheat_then_dfget_and_task_commands(self):
        """dfctl preheat --wait warms a file (the origin sends it once); the dfget
        after it takes nothing from the origin; dfctl task ls lists it on the
        peer, task rm drops it, and cluster reports the supernode healthy."""
        swarm = await self._swarm()
        swarm.add_file("warm.bin", SIZE)
        url = swarm.origin_url("warm.bin") + "?sig=s3cr3t"
        sn = swarm.supernode_list()
        code, out, err = await self._dfctl(swarm, ["preheat", url, "--filter", "sig", "--wait",
                                                   "--supernodes", sn])
        self.assertEqual(code, 0, err)
        self.assertIn("done", out)
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, "warm.bin"), SIZE)
        peer = swarm.peers[0]
        out_path = swarm.path("warm.out")
        r = await self._dfget(swarm, ["-u", url, "-o", out_path, "-f", "sig", "--notbs",
                                      "--daemon", peer.api] + list(ALLOW_LOOPBACK), out_path)
        self.assertEqual(r.code, 0, repr(r))
        self.assertEqual(sha256_file(out_path), swarm.files["warm.bin"][1])
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, "warm.bin"), SIZE,
                         "the dfget after the preheat went to the origin")

        tid = task_id_for_url(url, ["sig"])
        code, out, err = await self._dfctl(swarm, ["task", "ls", "--json", "--peer", peer.api])
        self.assertEqual(code, 0, err)
        [row] = [t for t in json.loads(out)["tasks"] if t["task_id"] == tid]
        self.assertTrue(row["complete"])
        self.assertNotIn("s3cr3t", row["url"])
        code, out, err = await self._dfctl(swarm, ["task", "rm", tid, "--peer", peer.api])
        self.assertEqual(code, 0, err)
        code, out, err = await self._dfctl(swarm, ["task", "ls", "--json", "--peer", peer.api])
        self.assertNotIn(tid, [t["task_id"] for t in json.loads(out)["tasks"]])
        code, out, err = await self._dfctl(swarm, ["cluster", "--json", "--supernodes", sn])
        self.assertEqual(code, 0, err)
        [row] = json.loads(out)["supernodes"]
        self.assertEqual(row["health"], "ok")
        self.assertGreaterEqual(row["tasks"], 1)


class ImagePreheatTests(unittest.TestCase):
    """dfctl preheat of a 3-layer image from a local registry, then a pull."""
    timeout = 300

    def registry_swarm(self):
        """The registry fixtures, an HTTP client and a fresh swarm, cleaned up
        after the test; skips without docker-registry and skopeo."""
        from dragonfly.test.integration import registry_fixtures as rf
        if rf.missing_registry_tools():
            raise unittest.SkipTest("docker-registry or skopeo not installed")
        http = HTTP(reactor)
        self.addCleanup(http.close)
        self.swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(self.swarm.stop)
        return rf, http, self.swarm

    async def anonymous_registry(self, rf, swarm):
        from dragonfly.test.integration import registry_setup as rs
        return await rs.start_registry(self, reactor, swarm.path("registry"))

    async def push(self, swarm, target, **kw):
        """The layout C{swarm.path("image")}, tag v1, pushed to C{target}."""
        from dragonfly.test.integration import registry_setup as rs
        await rs.push_layout(self, reactor, swarm.workdir, swarm.path("image"), "v1", target, **kw)

    @with_logs()
    async def test_preheat_image_then_pull(self):
        """dfctl preheat --wait REGISTRY/NAME:TAG warms the config and the three layers;
        the pull through a dfdaemon after it takes no blob bytes from the registry."""
        rf, http, swarm = self.registry_swarm()
        registry = await self.anonymous_registry(rf, swarm)
        info = rf.build_oci_layout(swarm.path("image"), (300_000, 1_500_000, 3_000_000))
        await self.push(swarm, f"{registry.hostport}/team/app:v1")
        await swarm.start_supernode(piece_size="1M")
        dfdaemon = await rf.start_dfdaemon(swarm, registry)

        proc = Proc("dfctl-image", [sys.executable, "-m", "dragonfly.dfctl", "preheat",
                                    f"{registry.hostport}/team/app:v1", "--insecure", "--wait",
                                    "--json", "--supernodes", swarm.supernode_list()],
                    swarm.workdir, separate_stderr=True)
        swarm.dfgets.append(proc)
        await proc.wait(reactor, 120)
        self.assertEqual(proc.returncode, 0, proc.read_log(err=True))
        job = json.loads(proc.read_log())["job"]
        self.assertEqual(job["state"], "done")
        self.assertEqual({t["task_id"] for t in job["tasks"]}, set(info["blobs"]))
        warmed = {d: sum(r["written"] for r in registry.blob_gets(d)) for d in info["blobs"]}
        self.assertEqual(warmed, info["blobs"])

        conf = rf.registries_conf(swarm.path("registries.conf"), registry.hostport,
                                  dfdaemon.mirror_hostport)
        code, out, err = await rf.skopeo(reactor, swarm.workdir, "skopeo-pull", [
            "copy", "--registries-conf", conf, f"docker://{registry.hostport}/team/app:v1",
            f"oci:{swarm.path('pulled')}:v1"])
        self.assertEqual(code, 0, err)
        rf.verify_layout(swarm.path("pulled"))
        after = {d: sum(r["written"] for r in registry.blob_gets(d)) for d in info["blobs"]}
        self.assertEqual(after, info["blobs"], "the pull took blob bytes from the registry")
        m = await http.metrics(dfdaemon.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), sum(info["blobs"].values()),
                         "the blobs did not go through the mirror")

    @with_logs()
    async def test_preheat_picks_the_platform_of_an_index(self):
        """dfctl preheat --platform linux/arm64 of a two-platform image index warms
        the arm64 image's config and layers and takes nothing of the amd64 one."""
        rf, http, swarm = self.registry_swarm()
        registry = await self.anonymous_registry(rf, swarm)
        layout = rf.build_multiarch_layout(swarm.path("image"))
        await self.push(swarm, f"{registry.hostport}/team/multi:v1", all_images=True)
        await swarm.start_supernode(piece_size="1M")

        proc = Proc("dfctl-multi", [sys.executable, "-m", "dragonfly.dfctl", "preheat",
                                    f"{registry.hostport}/team/multi:v1", "--platform",
                                    "linux/arm64", "--insecure", "--wait", "--json",
                                    "--supernodes", swarm.supernode_list()],
                    swarm.workdir, separate_stderr=True)
        swarm.dfgets.append(proc)
        await proc.wait(reactor, 120)
        self.assertEqual(proc.returncode, 0, proc.read_log(err=True))
        job = json.loads(proc.read_log())["job"]
        self.assertEqual(job["state"], "done", job)
        arm, amd = layout["images"]["linux/arm64"], layout["images"]["linux/amd64"]
        self.assertEqual({t["task_id"] for t in job["tasks"]}, set(arm["blobs"]))
        warmed = {d: sum(r["written"] for r in registry.blob_gets(d)) for d in arm["blobs"]}
        self.assertEqual(warmed, arm["blobs"])
        for digest in set(amd["blobs"]) - set(arm["blobs"]):
            self.assertEqual(registry.blob_gets(digest), [], "an amd64 blob was fetched")

    @with_logs()
    async def test_preheat_from_a_token_auth_registry_then_pull(self):
        """dfctl preheat --wait of one platform of a two-platform index in a
        registry with token auth, with Basic credentials for the token service:
        the supernode does the token dance and warms that platform's blobs;
        a blob GET at the dfdaemon without credentials gets the registry's 401,
        not the blob; then skopeo (with credentials) pulls that platform
        through the dfdaemon and the registry sends no blob bytes for it."""
        rf, http, swarm = self.registry_swarm()
        user, password, repo = "alice", "wonderland-42", "team/multi"
        registry, tokens = await rf.start_token_registry(
            self, reactor, swarm.workdir, {user: password})
        layout = rf.build_multiarch_layout(swarm.path("image"))
        await self.push(swarm, f"{registry.hostport}/{repo}:v1", all_images=True,
                        creds=(user, password))
        await swarm.start_supernode(piece_size="1M")
        dfdaemon = await rf.start_dfdaemon(swarm, registry)

        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        proc = Proc("dfctl-token", [sys.executable, "-m", "dragonfly.dfctl", "preheat",
                                    f"{registry.hostport}/{repo}:v1", "--platform", "linux/arm64",
                                    "--insecure", "-H", f"Authorization: Basic {basic}",
                                    "--wait", "--json", "--supernodes", swarm.supernode_list()],
                    swarm.workdir, separate_stderr=True)
        swarm.dfgets.append(proc)
        await proc.wait(reactor, 120)
        self.assertEqual(proc.returncode, 0, proc.read_log(err=True))
        job = json.loads(proc.read_log())["job"]
        self.assertEqual(job["state"], "done", job)
        self.assertIn((user, [f"repository:{repo}:pull"]), tokens.issued)
        arm, amd = layout["images"]["linux/arm64"], layout["images"]["linux/amd64"]
        self.assertEqual({t["task_id"] for t in job["tasks"]}, set(arm["blobs"]))
        warmed = {d: sum(r["written"] for r in registry.blob_gets(d)) for d in arm["blobs"]}
        self.assertEqual(warmed, arm["blobs"])
        for digest in set(amd["blobs"]) - set(arm["blobs"]):
            self.assertEqual(registry.blob_gets(digest), [], "an amd64 blob was fetched")
        for logged in [sn.read_log() for sn in swarm.supernodes] + [proc.read_log(),
                                                                   proc.read_log(err=True)]:
            self.assertNotIn(basic, logged, "the credentials were logged")

        # A caller without credentials gets the registry's refusal, not the blob.
        layer = max(arm["blobs"], key=arm["blobs"].get)
        code, headers, body = await http.request(
            "GET", f"{dfdaemon.mirror}/v2/{repo}/blobs/{layer}")
        self.assertEqual(code, 401, body[:200])
        m = await http.metrics(dfdaemon.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), 0)

        conf = rf.registries_conf(swarm.path("registries.conf"), registry.hostport,
                                  dfdaemon.mirror_hostport)
        authfile = rf.auth_file(swarm.path("auth.json"),
                                {dfdaemon.mirror_hostport: (user, password)})
        code, out, err = await rf.skopeo(reactor, swarm.workdir, "skopeo-pull", [
            "--override-os", "linux", "--override-arch", "arm64", "copy", "--registries-conf",
            conf, "--src-authfile", authfile, f"docker://{registry.hostport}/{repo}:v1",
            f"oci:{swarm.path('pulled')}:v1"])
        self.assertEqual(code, 0, err)
        rf.verify_layout(swarm.path("pulled"))
        pulled = rf.layout_blobs(swarm.path("pulled"))
        self.assertTrue(set(arm["blobs"]) <= set(pulled), "the pull is not the arm64 image")
        after = {d: sum(r["written"] for r in registry.blob_gets(d)) for d in arm["blobs"]}
        self.assertEqual(after, arm["blobs"], "the pull took blob bytes from the registry")
        m = await http.metrics(dfdaemon.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"),
                         sum(arm["blobs"].values()), "the blobs did not go through the mirror")

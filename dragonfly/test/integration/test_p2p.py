"""End-to-end P2P distribution with real processes on 127.0.0.1.

An origin (nginx, whose access log counts the body bytes it sends), a
``twistd supernode``, ``twistd peer`` processes and ``dfget`` runs, all
separate OS processes on ephemeral loopback ports.

``SwarmTests`` share one swarm (origin + supernode + 3 peers), started by the
first test that needs it and stopped (exit statuses checked) after the last;
each of its tests adds fresh files to the origin (``Swarm.new_file``: they
pass again under ``trial -u``) and compares counters as before/after deltas.
Tests that kill processes build their own swarm.
"""
import hashlib
import os

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    HTTP, LOOPBACK, MiB, SharedSwarmMixin, Swarm, metric, poll_until, refused_url, sha256_file,
    with_logs)

PIECE_SIZE = "1M"
BIG = 24 * MiB  # 24 pieces
SMALL = 2 * MiB + 12345  # 3 pieces, the last one short


class _Base(unittest.TestCase):
    timeout = 300

    def new_http(self):
        http = HTTP(reactor)
        self.addCleanup(http.close)
        return http

    def assertDownloaded(self, result, swarm, name):
        """dfget exited 0 and wrote exactly the origin's bytes."""
        self.assertEqual(result.code, 0, f"dfget failed: {result!r}")
        self.assertTrue(os.path.isfile(result.output), f"no output file: {result!r}")
        size, digest = swarm.files[name]
        self.assertEqual(os.path.getsize(result.output), size)
        self.assertEqual(sha256_file(result.output), digest, "downloaded bytes differ from the origin's")

    def assertFailedCleanly(self, result):
        """dfget exited non-zero with a reason on stderr and left nothing behind."""
        self.assertNotEqual(result.code, 0, f"dfget should have failed: {result!r}")
        self.assertFalse(os.path.exists(result.output), f"output file exists after a failure: {result!r}")
        leftovers = [n for n in os.listdir(os.path.dirname(result.output))
                     if n.startswith(os.path.basename(result.output))]
        self.assertEqual(leftovers, [], "temporary files left next to the output")
        reason = result.stderr.strip()
        self.assertTrue(reason, "dfget failed without saying why on stderr")
        self.assertNotIn("Traceback", reason, "dfget printed a traceback instead of a reason")
        return reason


async def _snapshot(swarm):
    sn = swarm.supernodes[0]
    snm = await sn.metrics(swarm.http)
    peers = await swarm.peer_metrics()
    return {
        "sn_origin": metric(snm, "dragonfly_supernode_origin_bytes_total"),
        "sn_upload": metric(snm, "dragonfly_supernode_upload_bytes_total"),
        "peer_dl": [{s: metric(m, "dragonfly_peer_download_bytes_total", source=s)
                     for s in ("peer", "supernode", "origin")} for m in peers],
        "peer_ul": [metric(m, "dragonfly_peer_upload_bytes_total") for m in peers],
    }


class SwarmTests(SharedSwarmMixin, _Base):
    """One supernode and three peers, shared by these tests."""

    async def setUpSwarm(self, swarm):
        await swarm.start_origin()
        await swarm.start_supernode(piece_size=PIECE_SIZE)
        for _ in range(3):
            await swarm.start_peer()

    async def swarm_(self):
        return await self.shared()

    @with_logs()
    async def test_concurrent_download(self):
        """When three hosts dfget the same multi-piece file at once through
        their peers, every copy is byte-identical to the origin's, the origin
        sends the file exactly once, and some pieces travel peer to peer."""
        swarm = await self.swarm_()
        big = swarm.new_file("big", BIG)
        before = await _snapshot(swarm)
        url = swarm.origin_url(big)
        procs = [swarm.start_dfget(url, peer=p) for p in swarm.peers]
        results = [await swarm.wait_dfget(p, timeout=180) for p in procs]
        for r in results:
            self.assertDownloaded(r, swarm, big)
        after = await _snapshot(swarm)

        self.assertEqual(await swarm.origin.body_bytes(swarm.http, big), BIG,
                         "the origin did not send the file exactly once")
        self.assertEqual(after["sn_origin"] - before["sn_origin"], BIG,
                         "supernode origin byte counter disagrees with the origin")
        p2p = sum(a["peer"] - b["peer"] for a, b in zip(after["peer_dl"], before["peer_dl"]))
        self.assertGreater(p2p, 0, "no piece travelled peer to peer")
        uploaded = sum(a - b for a, b in zip(after["peer_ul"], before["peer_ul"]))
        self.assertGreater(uploaded, 0, "no peer counted an upload")
        for i, (a, b) in enumerate(zip(after["peer_dl"], before["peer_dl"])):
            got = sum(a[s] - b[s] for s in a)
            self.assertGreaterEqual(got, BIG, f"peer {i} downloaded {got} bytes, less than the file")
            self.assertEqual(a["origin"] - b["origin"], 0, f"peer {i} went back to the origin")
        served = after["sn_upload"] - before["sn_upload"]
        self.assertLess(served, 3 * BIG, "the supernode served every copy itself")

    @with_logs()
    async def test_body_without_content_length(self):
        """When the origin sends a file chunked, without Content-Length, ETag or
        Last-Modified (nginx's SSI filter), dfget through two peers gets the
        exact bytes both times, and the origin sent the body once."""
        swarm = await self.swarm_()
        name = swarm.new_file("chunked", SMALL)
        url = swarm.origin_url("chunked/" + name)
        for peer in swarm.peers[:2]:
            r = await swarm.dfget(url, peer=peer, timeout=60)
            self.assertDownloaded(r, swarm, name)
        bodies = [r for r in swarm.origin.requests()
                  if r["uri"] == "/chunked/" + name and r["method"] == "GET"]
        self.assertEqual([r["status"] for r in bodies], [200], bodies)
        self.assertGreaterEqual(bodies[0]["bytes"], SMALL, bodies)

    @with_logs()
    async def test_verbose_and_unexpected_error(self):
        """A successful dfget prints nothing on stderr (not a terminal); with -v
        it says which daemon it uses and what it asks for. An unexpected
        exception (the OSError of an output name over the filesystem's limit,
        which no check of dfget's maps to a reason) is one line and exit 1
        without -v; with -v the traceback comes before that line."""
        swarm = await self.swarm_()
        peer = swarm.peers[0]
        name = swarm.new_file("verbose", 1000)
        url = swarm.origin_url(name)
        quiet = await swarm.dfget(url, peer=peer, timeout=60)
        self.assertDownloaded(quiet, swarm, name)
        self.assertEqual(quiet.stderr, "")
        loud = await swarm.dfget(url, peer=peer, args=["-v"], timeout=60)
        self.assertDownloaded(loud, swarm, name)
        self.assertIn(f"[dfget] using the peer daemon at {peer.api}\n", loud.stderr)
        self.assertIn(f"[dfget] asking the peer daemon at {peer.api} for {url}\n", loud.stderr)

        os.makedirs(swarm.path("long-out"), exist_ok=True)
        too_long = os.path.join(swarm.path("long-out"), "n" * 300)
        for args in ([], ["-v"]):
            r = await swarm.dfget(url, peer=peer, output=too_long, args=args, timeout=60)
            self.assertEqual(r.code, 1, r)
            lines = r.stderr.splitlines()
            self.assertTrue(lines and lines[-1].startswith("dfget: error: OSError: [Errno 36]"), r)
            if args:
                self.assertIn("Traceback (most recent call last):", r.stderr)
            else:
                self.assertEqual(len(lines), 1, r)
            self.assertEqual(os.listdir(swarm.path("long-out")), [])

    @with_logs()
    async def test_origin_404(self):
        """When the origin answers 404, dfget exits non-zero with a one-line
        reason naming the status and leaves no output file."""
        swarm = await self.swarm_()
        r = await swarm.dfget(swarm.origin_url("no-such-file.bin"), peer=swarm.peers[0], timeout=60)
        reason = self.assertFailedCleanly(r)
        self.assertTrue("404" in reason or "not found" in reason.lower(),
                        f"reason does not mention the 404: {reason!r}")

    @with_logs()
    async def test_digest(self):
        """When --digest does not match, dfget exits non-zero and no file
        appears; with the right sha256 (or --md5) it succeeds."""
        swarm = await self.swarm_()
        name = swarm.new_file("digest", SMALL)
        url = swarm.origin_url(name)
        wrong = hashlib.sha256(b"not the file").hexdigest()
        r = await swarm.dfget(url, peer=swarm.peers[1], args=["--digest", f"sha256:{wrong}"], timeout=60)
        reason = self.assertFailedCleanly(r)
        self.assertTrue(any(w in reason.lower() for w in ("digest", "sha256", "mismatch", "checksum")),
                        f"reason does not mention the digest: {reason!r}")

        r = await swarm.dfget(url, peer=swarm.peers[1],
                              args=["--digest", f"sha256:{swarm.files[name][1]}"], timeout=60)
        self.assertDownloaded(r, swarm, name)

        with open(os.path.join(swarm.origin.root, name), "rb") as f:
            md5 = hashlib.md5(f.read()).hexdigest()
        r = await swarm.dfget(url, peer=swarm.peers[2], args=["--md5", md5], timeout=60)
        self.assertDownloaded(r, swarm, name)

    @with_logs()
    async def test_header_passing(self):
        """When dfget is given -H 'Authorization: ...', the origin fetch carries
        it: an auth-protected file downloads; without the header it fails."""
        swarm = await self.swarm_()
        denied, secret = swarm.new_file("secret-denied", SMALL), swarm.new_file("secret", SMALL)
        r = await swarm.dfget(swarm.origin_url("auth/" + denied), peer=swarm.peers[0], timeout=60)
        self.assertFailedCleanly(r)

        r = await swarm.dfget(swarm.origin_url("auth/" + secret), peer=swarm.peers[0],
                              args=["-H", "Authorization: Bearer x"], timeout=60)
        self.assertDownloaded(r, swarm, secret)
        stats = (await swarm.origin.stats(swarm.http))["paths"]["/auth/" + secret]
        self.assertNotIn("401", stats["statuses"], "an origin request lacked the header")
        self.assertEqual(stats["body_bytes"], SMALL)

    @with_logs()
    async def test_embedded_peer(self):
        """When no local peer answers --daemon, dfget runs an embedded peer that
        joins the swarm: the file comes through the supernode, verified."""
        swarm = await self.swarm_()
        name = swarm.new_file("embedded", SMALL)
        before = await _snapshot(swarm)
        r = await swarm.dfget(swarm.origin_url(name), daemon=refused_url(), timeout=60)
        self.assertDownloaded(r, swarm, name)
        after = await _snapshot(swarm)
        self.assertEqual(after["sn_origin"] - before["sn_origin"], SMALL,
                         "the supernode did not fetch the file (dfget bypassed the swarm?)")
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, name), SMALL)
        self.assertGreaterEqual(after["sn_upload"] - before["sn_upload"], SMALL,
                                "the embedded peer got no pieces from the supernode")


class PeerFailureTests(_Base):
    """A swarm that loses a peer while downloads run."""

    @with_logs()
    async def test_peer_killed_mid_download(self):
        """When one peer is killed (SIGKILL) while three downloads run, the other
        two still finish with correct bytes and the origin still sends the file
        only once; the killed peer's dfget fails cleanly or completes."""
        self.swarm = swarm = Swarm(reactor, self.mktemp(), self.new_http())
        self.addCleanup(swarm.stop)
        size = 16 * MiB
        # a throttled origin (8 MiB/s) keeps the downloads running for ~2 s
        await swarm.start_origin({"slow.bin": size}, rate=8 * MiB)
        await swarm.start_supernode(piece_size=PIECE_SIZE)
        for _ in range(3):
            await swarm.start_peer()
        victim, survivors = swarm.peers[0], swarm.peers[1:]
        url = swarm.origin_url("slow.bin")
        procs = [swarm.start_dfget(url, peer=p) for p in swarm.peers]

        async def victim_has_data():
            m = await victim.metrics(swarm.http)
            return metric(m, "dragonfly_peer_download_bytes_total") > 0
        await poll_until(reactor, victim_has_data, 60, "the victim peer to receive a piece",
                         check=victim.check_alive)
        self.assertTrue(all(p.alive() for p in procs[1:]), "downloads ended before the kill")
        victim.kill_now()
        await victim.wait(reactor, 10)

        results = [await swarm.wait_dfget(p, timeout=180) for p in procs]
        for r in results[1:]:
            self.assertDownloaded(r, swarm, "slow.bin")
        if results[0].code == 0:
            self.assertDownloaded(results[0], swarm, "slow.bin")
        else:
            self.assertFailedCleanly(results[0])
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, "slow.bin"), size,
                         "losing a peer sent someone back to the origin")
        for p in survivors:
            self.assertTrue(await swarm.http.healthy(p.api), f"{p.name} unhealthy after the kill")


class BackSourceTests(_Base):
    """Downloads when the supernode is gone."""

    @with_logs()
    async def test_supernode_down(self):
        """When the supernode has died, dfget through a running peer still
        succeeds by fetching from the origin directly; with --no-back-source it
        fails cleanly; an embedded peer with no supernode back-sources too."""
        self.swarm = swarm = Swarm(reactor, self.mktemp(), self.new_http())
        self.addCleanup(swarm.stop)
        await swarm.start_origin({"bs.bin": SMALL, "bs-none.bin": SMALL, "bs-embedded.bin": SMALL})
        sn = await swarm.start_supernode(piece_size=PIECE_SIZE)
        peer = await swarm.start_peer()
        sn.kill_now()
        await sn.wait(reactor, 10)

        before = metric(await peer.metrics(swarm.http), "dragonfly_peer_download_bytes_total",
                        source="origin")
        r = await swarm.dfget(swarm.origin_url("bs.bin"), peer=peer, timeout=120)
        self.assertDownloaded(r, swarm, "bs.bin")
        after = metric(await peer.metrics(swarm.http), "dragonfly_peer_download_bytes_total",
                       source="origin")
        self.assertEqual(after - before, SMALL, "the peer did not count the origin bytes")
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, "bs.bin"), SMALL)

        r = await swarm.dfget(swarm.origin_url("bs-none.bin"), peer=peer,
                              args=["--no-back-source"], timeout=120)
        self.assertFailedCleanly(r)
        self.assertEqual(await swarm.origin.body_bytes(swarm.http, "bs-none.bin"), 0,
                         "--no-back-source still fetched from the origin")

        r = await swarm.dfget(swarm.origin_url("bs-embedded.bin"),
                              daemon=refused_url(),
                              supernodes=f"{LOOPBACK}:{sn.api_port}", timeout=120)
        self.assertDownloaded(r, swarm, "bs-embedded.bin")

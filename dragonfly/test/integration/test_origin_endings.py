"""How an origin's body ends, replayed through real processes on 127.0.0.1.

The origin is L{dragonfly.test.integration.rough_origin}, a raw-socket
process: a body without a length that ends in a reset (RST) must fail the
download (the supernode's CDN and the peer's back-to-source alike), one that
ends in a clean close is the whole file; a file that changes between a
broken download and its resume, at an origin without validators, comes out
as one version, all of it, never a mix of the two.
"""
import hashlib
import json
import os
import sys

from twisted.trial.unittest import TestCase

from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, Service, SwarmMixin, sha256_file, with_logs)
from dragonfly.test.integration.rough_origin import LAST_MODIFIED, body_of

SIZE = 10 * MiB + 123
CUT = 9 * MiB        # the first /flip/ answer stops here: two 4 MiB pieces held


class RoughOrigin(Service):
    def __init__(self, logdir):
        port_file = os.path.join(logdir, "rough-origin.port")
        argv = [sys.executable, "-m", "dragonfly.test.integration.rough_origin",
                "--port-file", port_file, "--size", str(SIZE), "--cut", str(CUT)]
        Service.__init__(self, "rough-origin", argv, logdir, port_file)

    @property
    def base(self):
        return f"http://{LOOPBACK}:{self.ports['port']}"

    def url(self, path):
        return f"{self.base}/{path.lstrip('/')}"


def sha_of(path, version):
    return hashlib.sha256(body_of(path, version, SIZE)).hexdigest()


class OriginEndingTests(SwarmMixin, TestCase):
    timeout = 300

    async def start(self, piece_size="1M"):
        swarm = self.swarm
        swarm.origin = RoughOrigin(swarm.workdir)
        await swarm.origin.wait_ports(swarm.clock, ["port"])
        await swarm.start_supernode(piece_size=piece_size)
        return await swarm.start_peer()

    async def until_whole(self, url, name, peer, tries=3):
        """dfget C{url} up to C{tries} times: each fails leaving no file, or
        gives version 2 of C{name}, all of it; the last one must succeed."""
        codes = []
        for _ in range(tries):
            r = await self.swarm.dfget(url, peer=peer)
            codes.append(r.code)
            if r.code != 0:
                self.assertFalse(os.path.exists(r.output), r)
                continue
            self.assertEqual(sha256_file(r.output), sha_of(name, 2), r)
            break
        self.assertEqual(codes[-1], 0, codes)
        return codes

    async def origin_log(self):
        code, _, raw = await self.http.request("GET", self.swarm.origin.url("/__log"))
        self.assertEqual(code, 200, raw)
        return json.loads(raw)

    @with_logs()
    async def test_reset_lengthless_body_fails(self):
        """An origin answering without Content-Length (nor chunked encoding)
        that resets the connection after the bytes fails dfget (non-zero, the
        lost connection named) and leaves no file under the output name: not
        through the supernode's CDN, not through the peer's back-to-source
        (with and without --pattern source)."""
        peer = await self.start()
        for name, args in (("/reset/a.bin", []), ("/reset/b.bin", ["--pattern", "source"])):
            r = await self.swarm.dfget(self.swarm.origin.url(name), peer=peer,
                                       args=["--timeout", "120"] + args, timeout=150)
            self.assertNotEqual(r.code, 0, r)
            self.assertIn("connection lost after", r.stderr, r)
            self.assertFalse(os.path.exists(r.output), r)
        paths = [e["path"] for e in await self.origin_log()]
        self.assertIn("/reset/a.bin", paths)
        self.assertIn("/reset/b.bin", paths)

    @with_logs()
    async def test_clean_close_lengthless_body_is_whole(self):
        """An origin answering without Content-Length (nor chunked encoding)
        that closes the connection cleanly after the bytes gives the whole
        file, through the supernode and with --pattern source."""
        peer = await self.start()
        for name, args in (("/clean/a.bin", []), ("/clean/b.bin", ["--pattern", "source"])):
            r = await self.swarm.dfget(self.swarm.origin.url(name), peer=peer, args=args)
            self.assertEqual(r.code, 0, r)
            self.assertEqual(sha256_file(r.output), sha_of(name, 1))

    async def break_then_change(self, name):
        """dfget --pattern source of C{name} twice: version 1 breaks off after
        two pieces (non-zero, no file); the next gets version 2 whole, with
        200 (the answer to any request). The origin's log of C{name}."""
        peer = await self.start()
        url = self.swarm.origin.url(name)
        r = await self.swarm.dfget(url, peer=peer, args=["--pattern", "source"])
        self.assertNotEqual(r.code, 0, r)
        self.assertFalse(os.path.exists(r.output), r)
        r = await self.swarm.dfget(url, peer=peer, args=["--pattern", "source"])
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), sha_of(name, 2))
        return [e for e in await self.origin_log() if e["path"] == name]

    @with_logs()
    async def test_changed_without_validators_back_to_source(self):
        """Version 1 breaks off after two pieces; without validators the peer
        cannot have the origin check its version, so it asks for the whole
        file again (no Range), which is version 2 (200, no validators): the
        back-to-source writes version 2, all of it, not its held pieces of
        version 1 with the rest of version 2."""
        log = await self.break_then_change("/flip/bs.bin")
        self.assertEqual([e["range"] for e in log], [None, None])

    @with_logs()
    async def test_changed_resume_answered_200_back_to_source(self):
        """Version 1 (Last-Modified, no ETag) breaks off after two pieces; the
        resume (Range + If-Range) is answered 200 with version 2, under
        another Last-Modified: the back-to-source writes version 2, all of
        it, not its held pieces of version 1 with the rest of version 2."""
        log = await self.break_then_change("/flip-lm/bs.bin")
        self.assertEqual([(e["range"], e["if_range"]) for e in log],
                         [(None, None), (f"bytes={8 * MiB}-", LAST_MODIFIED[1][15:-2].decode())])

    @with_logs()
    async def test_changed_without_validators_through_supernode(self):
        """The same change met by the supernode's CDN (its resume answered 200
        with version 2, no validators): no dfget ever gets a mix; a failed
        one leaves no file, and a later one gets version 2, all of it."""
        peer = await self.start()
        name = "/flip/cdn.bin"
        await self.until_whole(self.swarm.origin.url(name), name, peer)

    @with_logs()
    async def test_held_pieces_of_another_version_met_in_swarm(self):
        """The peer holds pieces of version 1 from a broken back-to-source;
        the supernode's copy is version 2 (same length and piece size, no
        validators): the peer's held pieces are checked against the swarm's
        piece digests, so the download fails and drops them (or gives version
        2 whole), and the next gives version 2, all of it, never a mix."""
        peer = await self.start(piece_size="4M")
        name = "/flip/held.bin"
        url = self.swarm.origin.url(name)
        r = await self.swarm.dfget(url, peer=peer, args=["--pattern", "source"])
        self.assertNotEqual(r.code, 0, r)
        codes = await self.until_whole(url, name, peer)
        if codes[0] != 0:
            self.assertEqual(len(codes), 2, codes)

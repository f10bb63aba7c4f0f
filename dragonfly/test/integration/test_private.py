"""Private content and the loopback API with real processes.

An origin whose ``/auth/`` files need ``Authorization: Bearer x``, one
supernode and two peers. The token holder downloads through the first peer;
a second caller without the token, or with a wrong one, through either peer
(the supernode's check, and the peer's own for a task it holds), gets the
origin's 401 as dfget's error line and no bytes. A request to a peer's local
API that a web page could have sent starts nothing. A registry behind single
sign-on (302 to a login page for anonymous requests) grants an anonymous
pull through the mirror nothing, after an authorised one.
"""
import hashlib
import json
import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration.harness import (
    LOOPBACK, metric, sha256_file, SwarmMixin, with_logs)

SIZE = 3 * 1024 * 1024 + 17
TOKEN = ["-H", "Authorization: Bearer x"]
LAYER = os.urandom(1024 * 1024 + 5)
DIGEST = "sha256:" + hashlib.sha256(LAYER).hexdigest()


class _SSORegistry(Resource):
    """A registry behind single sign-on: blobs for ``Bearer good``, a 302 to
    its login page (a 200 web page) for anyone else."""

    isLeaf = True

    def render(self, request):
        if request.path == b"/login":
            request.setHeader(b"content-type", b"text/html")
            return b"<html><form>sign in</form></html>"
        if request.getHeader(b"authorization") != b"Bearer good":
            request.redirect(b"/login?next=" + request.path)
            return b""
        if request.path.endswith(DIGEST.encode()):
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"docker-content-digest", DIGEST.encode())
            return LAYER
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class PrivateTests(SwarmMixin, TestCase):
    timeout = 300

    async def start(self):
        swarm = self.swarm
        await swarm.start_origin({"secret.bin": SIZE, "open.bin": 1000})
        await swarm.start_supernode()
        await swarm.start_peer()
        await swarm.start_peer()
        return swarm

    def assertRefused(self, r, why):
        self.assertNotEqual(r.code, 0, r)
        self.assertEqual(r.stderr.strip().splitlines()[-1], f"dfget: error: {why}", r)
        self.assertFalse(os.path.exists(r.output), r)
        self.assertEqual([n for n in os.listdir(os.path.dirname(r.output))], [], r)

    @with_logs()
    async def test_second_caller_gets_the_refusal(self):
        """After the token holder's download, a caller without the token or with
        a wrong one gets the origin's 401 and no byte, through another peer and
        through the holder's own peer; the token works through both."""
        swarm = await self.start()
        a, b = swarm.peers
        url = swarm.origin_url("auth/secret.bin")
        r = await swarm.dfget(url, peer=a, args=TOKEN, timeout=90)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), swarm.files["secret.bin"][1])
        for peer in (b, a):
            for args in ([], ["-H", "Authorization: Bearer wrong"]):
                r = await swarm.dfget(url, peer=peer, args=args, timeout=90)
                self.assertRefused(r, "origin answered 401")
        for peer in (b, a):
            r = await swarm.dfget(url, peer=peer, args=TOKEN, timeout=90)
            self.assertEqual(r.code, 0, r)
            self.assertEqual(sha256_file(r.output), swarm.files["secret.bin"][1])
        stats = (await swarm.origin.stats(swarm.http))["paths"]["/auth/secret.bin"]
        self.assertEqual(stats["body_bytes"], SIZE, "the origin sent the file more than once")
        # The bytes are not to be had at a peer's /data without a grant either.
        tid = task_id_for_url(url)
        for peer in (a, b):
            code, _, _ = await self.http.request("GET", f"{peer.api}/api/v1/tasks/{tid}/data")
            self.assertEqual(code, 403)

    @with_logs()
    async def test_browser_requests_start_nothing(self):
        """A text/plain, foreign-Host or Origin-bearing POST to the local API is
        refused and starts nothing: no task, no origin request."""
        swarm = await self.start()
        peer = swarm.peers[0]
        body = json.dumps({"url": swarm.origin_url("open.bin")}).encode()
        host = peer.api.split("//", 1)[1]
        for headers, code in (({"Content-Type": ["text/plain"]}, 415),
                              ({"Content-Type": ["application/json"],
                                "Host": ["attacker.example"]}, 403),
                              ({"Content-Type": ["application/json"],
                                "Origin": ["http://attacker.example"]}, 403),
                              ({"Content-Type": ["text/plain"], "Host": ["attacker.example"],
                                "Origin": ["http://attacker.example"]}, 403)):
            answer, _, raw = await self.http.request("POST", f"{peer.api}/api/v1/download",
                                                     data=body, headers=headers)
            self.assertEqual(answer, code, (headers, raw))
            self.assertIn("error", json.loads(raw))
        _, _, raw = await self.http.request("GET", f"{peer.api}/api/v1/tasks",
                                            headers={"Host": [host]})
        self.assertEqual(json.loads(raw)["tasks"], [])
        stats = (await swarm.origin.stats(swarm.http))["paths"]
        self.assertNotIn("/open.bin", stats)


class SSORegistryTests(SwarmMixin, TestCase):
    timeout = 300

    @with_logs()
    async def test_login_redirect_grants_nothing(self):
        """After an authorised pull of a layer through the mirror, an anonymous
        GET of it gets the registry's 302 to its login page and no byte."""
        site = Site(_SSORegistry())
        site.noisy = False
        port = await TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(site)
        self.addCleanup(port.stopListening)

        class Registry:
            hostport = f"{LOOPBACK}:{port.getHost().port}"
            url = f"http://{hostport}"
        await self.swarm.start_supernode()
        d = await rf.start_dfdaemon(self.swarm, Registry)
        url = f"{d.mirror}/v2/team/app/blobs/{DIGEST}"
        code, _, body = await self.http.request("GET", url, timeout=60,
                                                headers={"Authorization": ["Bearer good"]})
        self.assertEqual((code, hashlib.sha256(body).hexdigest()), (200, DIGEST[7:]))
        for headers in ({}, {"Authorization": ["Bearer bad"]}):
            code, h, body = await self.http.request("GET", url, timeout=60, headers=headers,
                                                    allow_redirects=False)
            self.assertEqual(code, 302, body[:200])
            self.assertTrue(h.getRawHeaders("location")[0].startswith("/login"))
            self.assertNotIn(LAYER[:64], body)
            self.assertLess(len(body), 1000)
        m = await self.http.metrics(d.mirror)
        self.assertEqual(metric(m, "dragonfly_mirror_blob_bytes_total"), len(LAYER))

"""Private content and the loopback API with real processes.

An origin whose ``/auth/`` files need ``Authorization: Bearer x``, one
supernode and two peers. The token holder downloads through the first peer;
a second caller without the token, or with a wrong one, through either peer
(the supernode's check, and the peer's own for a task it holds), gets the
origin's 401 as dfget's error line and no bytes. A request to a peer's local
API that a web page could have sent starts nothing.
"""
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import HTTP, Swarm, sha256_file, with_logs

SIZE = 3 * 1024 * 1024 + 17
TOKEN = ["-H", "Authorization: Bearer x"]


class PrivateTests(TestCase):
    timeout = 300

    def setUp(self):
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.mktemp(), self.http)
        self.addCleanup(self.swarm.stop)

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

"""The egress policy with real processes: a listener the policy denies is never
contacted, whoever asks and however.

A real origin on 127.0.0.1, allowed by HOST:PORT only; a redirector (in this
process, also allowed) that answers 302 to the trap; and the trap itself, a
TCP listener on 127.0.0.2 (loopback, denied by default) that counts every
connection. The supernode and the peer run with
``--allow-origin 127.0.0.1:ORIGIN,127.0.0.1:REDIRECTOR``; so does dfget for its
embedded peer.
"""
import json

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    LOOPBACK, refused_url, sha256_file, SwarmMixin, with_logs)

TRAP_HOST = "127.0.0.2"
PEER = {"peer_id": "itest-1-00000002", "host": LOOPBACK, "port": 9}


class _Trap(Factory):
    """Counts connections and hangs up at once."""

    def __init__(self):
        self.connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        p = Protocol()
        p.factory = self
        return p


class _Redirect(Resource):
    isLeaf = True

    def __init__(self, target):
        Resource.__init__(self)
        self.target = target
        self.requests = 0

    def render_GET(self, request):
        self.requests += 1
        request.redirect(self.target.encode("ascii"))
        return b""


class EgressTests(SwarmMixin, TestCase):
    timeout = 240

    async def start_listeners(self):
        self.trap = _Trap()
        port = await TCP4ServerEndpoint(reactor, 0, interface=TRAP_HOST).listen(self.trap)
        self.addCleanup(port.stopListening)
        self.trap_url = f"http://{TRAP_HOST}:{port.getHost().port}/f.bin"
        self.redirect = _Redirect(self.trap_url)
        site = Site(self.redirect)
        site.noisy = False
        rport = await TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(site)
        self.addCleanup(rport.stopListening)
        self.redirect_url = f"http://{LOOPBACK}:{rport.getHost().port}/f.bin"
        return rport.getHost().port

    def assertRefusal(self, text, address):
        self.assertIn(f"origin not allowed: {address} resolves to {address} (loopback); "
                      f"allow it with --allow-origin {address}:", text)

    async def post(self, node, path, body):
        code, _, raw = await self.http.request("POST", node.api + path, json=body, timeout=60,
                                               allow_redirects=False)
        return code, json.loads(raw)

    async def dfget_refused(self, url, **kw):
        r = await self.swarm.dfget(url, **kw)
        self.assertNotEqual(r.code, 0, r)
        line = r.stderr.strip().splitlines()[-1]
        self.assertTrue(line.startswith("dfget: error: origin not allowed: "), r)
        self.assertRefusal(line, TRAP_HOST)

    @with_logs()
    async def test_denied_listener_gets_no_connection(self):
        """A register (through a peer and directly), a preheat, dfget through the
        peer (p2p and --pattern source), dfget's embedded peer (p2p and source)
        and a redirect from an allowed origin never connect to a denied address:
        each gets 403 or dfget's error line naming it, while the allowed origin
        (HOST:PORT) still serves."""
        await self.swarm.start_origin({"f.bin": 200000})
        rport = await self.start_listeners()
        allow = ("--allow-origin",
                 f"{LOOPBACK}:{self.swarm.origin.ports['port']},{LOOPBACK}:{rport}")
        sn = await self.swarm.start_supernode(piece_size="64K", egress=allow)
        peer = await self.swarm.start_peer(egress=allow)

        # The allowed origin works.
        ok = await self.swarm.dfget(self.swarm.origin_url("f.bin"), peer=peer, egress=allow)
        self.assertEqual(ok.code, 0, ok)
        self.assertEqual(sha256_file(ok.output), self.swarm.files["f.bin"][1])

        # The supernode API: register and preheat answer 403.
        for url in (self.trap_url, self.redirect_url):
            code, obj = await self.post(sn, "/api/v1/tasks", {
                "task_id": task_id_for_url(url), "url": url, "peer": PEER})
            self.assertEqual(code, 403, obj)
            self.assertRefusal(obj["error"], TRAP_HOST)
        code, obj = await self.post(sn, "/api/v1/preheat", {"url": self.trap_url})
        self.assertEqual(code, 403, obj)
        self.assertRefusal(obj["error"], TRAP_HOST)

        # The peer API answers 403 too.
        code, obj = await self.post(peer, "/api/v1/download",
                                    {"url": self.trap_url, "pattern": "source"})
        self.assertEqual(code, 403, obj)
        self.assertRefusal(obj["error"], TRAP_HOST)

        # dfget, every way.
        dead = refused_url()
        for url in (self.trap_url, self.redirect_url):
            await self.dfget_refused(url, peer=peer, egress=allow)
            await self.dfget_refused(url, daemon=dead, egress=allow)
        await self.dfget_refused(self.trap_url, peer=peer, egress=allow,
                                 args=["--pattern", "source"])
        await self.dfget_refused(self.trap_url, daemon=dead, egress=allow,
                                 args=["--pattern", "source"])
        await self.dfget_refused(self.redirect_url, daemon=dead, egress=allow,
                                 args=["--pattern", "source"])

        self.assertGreater(self.redirect.requests, 0)
        self.assertEqual(self.trap.connections, 0)
        self.assertTrue(await self.http.healthy(sn.api))

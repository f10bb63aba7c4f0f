"""Bad input against real processes: secrets, credentials in URLs, IPv6
origins, malformed request heads, an origin that breaks off mid-body.

One swarm (origin + supernode + peer + a dfdaemon) is shared by these tests;
each adds its own fresh files (``Swarm.new_file``: they pass again under
``trial -u``). The half-body origin runs in the test process
(it only has to answer one request at a time, then hang up).
"""
import glob
import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, SharedSwarmMixin, poll_until, sha256_file, start_nginx, with_logs)

FILE_SIZE = 2 * MiB + 321
TOKEN = "QueryT0ken4711"
PRESIGN = "PresignSig0815"
PASSWORD = "Passw0rdZ9z"
BEARER = "BearerCred777"


#: The IPv6 test's origin is on ::1, which the default egress policy denies too.
ALLOW_LOOPBACKS = ("--allow-origin", f"{LOOPBACK},::1")


async def _setup(swarm):
    await swarm.start_origin()
    await swarm.start_supernode(piece_size="1M", egress=ALLOW_LOOPBACKS)
    await swarm.start_peer(egress=ALLOW_LOOPBACKS)
    swarm.dfdaemon = await _start_dfdaemon(swarm)


async def _start_dfdaemon(swarm):
    """A dfdaemon whose (unused) registry is the swarm's origin: its mirror port
    is what the malformed-request test needs."""
    name = swarm._name("dfdaemon")
    origin_hostport = swarm.origin.base.split("//", 1)[1]
    args = ["--supernodes", swarm.supernode_list(),
            "--listen", f"tcp:0:interface={LOOPBACK}",
            "--piece-listen", f"tcp:0:interface={LOOPBACK}",
            "--api-listen", f"tcp:0:interface={LOOPBACK}",
            "--advertise", LOOPBACK,
            "--registry", swarm.origin.base, "--insecure-registry", origin_hostport]
    node = await swarm._start_node(name, "dfdaemon", args, ALLOW_LOOPBACKS)
    swarm.peers.append(node)
    await node.wait_ports(swarm.clock, ["api", "piece", "mirror"])
    node.mirror_port = node.ports["mirror"]
    return node


def ipv6_loopback():
    """True when this host can listen on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class _HalfBody(Protocol):
    """Answers any request with a Content-Length of ``size`` and half the bytes, then closes."""

    size = 4 * MiB

    def dataReceived(self, data):
        if b"\r\n\r\n" not in data or self.transport.disconnecting:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % self.size)
        self.transport.write(b"h" * (self.size // 2))
        self.transport.loseConnection()


class _Raw(Protocol):
    def __init__(self, payload):
        self.payload, self.received, self.lost = payload, b"", False

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


async def raw_exchange(port, payload, timeout=10):
    """Send ``payload`` to 127.0.0.1:port; the bytes answered once the server closes."""
    proto = _Raw(payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5), proto)
    try:
        await poll_until(reactor, lambda: proto.lost, timeout, f"port {port} to close")
    finally:
        if not proto.lost:
            proto.transport.abortConnection()
    return proto.received


class BadInputTests(SharedSwarmMixin, unittest.TestCase):
    timeout = 300

    async def setUpSwarm(self, swarm):
        await _setup(swarm)

    async def swarm_(self):
        return await self.shared()

    def own_logs(self):
        """{path: text} of every log our processes wrote (the origin's excluded:
        it is not ours, and it is told the real URL)."""
        out = {}
        for path in glob.glob(os.path.join(self.swarm.workdir, "*.log")) + \
                glob.glob(os.path.join(self.swarm.workdir, "*.stderr")):
            if os.path.basename(path).startswith("origin"):
                continue
            with open(path, "rb") as f:
                out[path] = f.read().decode("utf-8", "replace")
        return out

    def assert_no_secret(self, text, where):
        for secret in (TOKEN, PRESIGN, PASSWORD, BEARER):
            self.assertNotIn(secret, text, f"{secret} appears in {where}")

    @with_logs()
    async def test_secrets_never_shown(self):
        """After a dfget (-v, with Authorization and Cookie headers) of a URL
        with a token in its query, a preheat of a
        URL with a presigned query, a GET of both tasks and a refused URL
        with a password, none of the secrets appears in any log line or API
        answer; the download itself used the real URL."""
        swarm = await self.swarm_()
        sn, peer = swarm.supernodes[0], swarm.peers[0]
        b0, b1, b2 = (swarm.new_file("b", FILE_SIZE) for _ in range(3))
        url = swarm.origin_url(b0) + f"?token={TOKEN}"
        r = await swarm.dfget(url, peer=peer, args=["-v", "-H", f"Authorization: Bearer {BEARER}",
                                                    "-H", f"Cookie: session={BEARER}"])
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), swarm.files[b0][1])
        self.assertIn("?<redacted>", r.stderr)

        answers = []
        code, _, body = await self.http.request(
            "GET", f"{sn.api}/api/v1/tasks/{task_id_for_url(url)}")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["url"], swarm.origin_url(b0) + "?<redacted>")
        answers.append(body)

        purl = swarm.origin_url(b1) + f"?X-Amz-Signature={PRESIGN}"
        code, _, body = await self.http.request(
            "POST", sn.api + "/api/v1/preheat", data=json.dumps({"url": purl}).encode(),
            headers={"Content-Type": "application/json"})
        self.assertEqual(code, 202, body)
        answers.append(body)
        job = json.loads(body)["id"]

        async def done():
            c, _, b = await self.http.request("GET", f"{sn.api}/api/v1/preheat/{job}")
            answers.append(b)
            return json.loads(b)["state"] in ("done", "failed")
        await poll_until(reactor, done, 60, "the preheat to finish")
        self.assertEqual(json.loads(answers[-1])["state"], "done", answers[-1])
        code, _, body = await self.http.request(
            "GET", f"{sn.api}/api/v1/tasks/{task_id_for_url(purl)}")
        answers.append(body)

        bad = swarm.origin_url(b2).replace("//", f"//user:{PASSWORD}@", 1)
        r = await swarm.dfget(bad, peer=peer, args=["-v"], timeout=30)
        self.assertNotEqual(r.code, 0)
        self.assertIn("Authorization", r.stderr)
        for base, path, body in ((peer.api, "/api/v1/download", {"url": bad}),
                                 (sn.api, "/api/v1/preheat", {"url": bad})):
            code, _, answer = await self.http.request(
                "POST", base + path, data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"})
            self.assertEqual(code, 400, answer)
            answers.append(answer)

        for i, a in enumerate(answers):
            self.assert_no_secret(a.decode("utf-8", "replace"), f"API answer {i}: {a[:300]!r}")
        logs = self.own_logs()
        self.assertTrue(any("<redacted>" in t for t in logs.values()))
        for path, text in logs.items():
            self.assert_no_secret(text, path)

    @with_logs()
    async def test_userinfo_refused_at_once(self):
        """dfget with user:pass@ in the URL fails at once, sends nothing to
        the origin, and says to use -H 'Authorization: ...'."""
        swarm = await self.swarm_()
        name = swarm.new_file("b", FILE_SIZE)
        url = swarm.origin_url("auth/" + name).replace("//", "//user:pw@", 1)
        r = await swarm.dfget(url, peer=swarm.peers[0], timeout=20)
        self.assertNotEqual(r.code, 0)
        self.assertIn("-H 'Authorization: ", r.stderr)
        stats = await swarm.origin.stats(self.http)
        self.assertNotIn("/auth/" + name, stats["paths"])

    @with_logs()
    async def test_ipv6_origin(self):
        """An origin at http://[::1]:PORT/ downloads through the peer and
        with --pattern source."""
        if not ipv6_loopback():
            raise unittest.SkipTest("this host cannot listen on ::1")
        swarm = await self.swarm_()
        origin6 = await start_nginx(reactor, swarm.workdir, swarm.path("origin-root"),
                                    name="origin6", host="::1")
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(origin6.stop(reactor)))
        name = swarm.new_file("b", FILE_SIZE)
        url = f"{origin6.base}/{name}"
        for args in ([], ["--pattern", "source"]):
            r = await swarm.dfget(url, peer=swarm.peers[0], args=args, timeout=60)
            self.assertEqual(r.code, 0, r)
            self.assertEqual(sha256_file(r.output), swarm.files[name][1])

    @with_logs()
    async def test_malformed_content_length_json(self):
        """A malformed Content-Length gets a JSON 400 from the supernode API,
        the peer API and the mirror, and each stays healthy."""
        swarm = await self.swarm_()
        ports = {"supernode": swarm.supernodes[0].api_port, "peer": swarm.peers[0].api_port,
                 "mirror": swarm.dfdaemon.mirror_port}
        for name, port in ports.items():
            answer = await raw_exchange(port, b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                              b"Content-Length: 12abc\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400"), (name, answer))
            self.assertIn(b"content-type: application/json", head.lower(), (name, answer))
            self.assertIn("Content-Length", json.loads(body)["error"], name)
        for node in (swarm.supernodes[0], swarm.peers[0]):
            self.assertTrue(await self.http.healthy(node.api))

    async def half_body_origin(self):
        port = await TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK).listen(
            Factory.forProtocol(_HalfBody))
        self.addCleanup(port.stopListening)
        return f"http://{LOOPBACK}:{port.getHost().port}"

    @with_logs()
    async def test_half_body_origin_fails_fast(self):
        """An origin that sends half its Content-Length and closes fails dfget
        with the origin's fault (not dfget's own --timeout), through the peer,
        through the peer without back-to-source, and with --pattern source."""
        swarm = await self.swarm_()
        base = await self.half_body_origin()
        cases = [("half1.bin", []), ("half2.bin", ["--no-back-source"]),
                 ("half3.bin", ["--pattern", "source"])]
        for name, args in cases:
            r = await swarm.dfget(f"{base}/{name}", peer=swarm.peers[0],
                                  args=["--timeout", "60"] + args, timeout=90)
            self.assertNotEqual(r.code, 0, r)
            self.assertNotIn("timed out after", r.stderr, (name, args, r))
            self.assertIn("connection lost after", r.stderr, (name, args, r))
            self.assertFalse(os.path.exists(r.output), r)
        sn = swarm.supernodes[0]
        self.assertTrue(await self.http.healthy(sn.api))


"""Mutual TLS with real processes: certificates from C{dragonfly-pki}, a
supernode and three peers speaking TLS on the supernode API and every piece
port, strangers refused at the handshake, identity bound to the peer id, and a
certificate replaced on SIGHUP while a download runs.
"""
import json
import os
import shutil
import signal

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from dragonfly import pki
from dragonfly.taskid import task_id_for_url
from dragonfly.test.integration.harness import (
    HTTP, LOOPBACK, MiB, Swarm, child_env, executable, free_port, poll_until, sha256_file,
    with_logs)
from dragonfly.tls import NodeTLS, TLSFiles

BIG = 24 * MiB


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """Sends C{payload} once connected; keeps what comes back, the server's
    certificate once the handshake is done, and why the connection ended."""

    def __init__(self, payload):
        self.payload = payload
        self.data = b""
        self.server_cert = None
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def handshakeCompleted(self):
        self.server_cert = self.transport.getPeerCertificate()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


def _pem(path):
    with open(path, "rb") as f:
        return f.read()


class TLSTests(TestCase):
    timeout = 300

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.ca_dir = os.path.join(self.dir, "ca")
        self.other_dir = os.path.join(self.dir, "other-ca")
        for d in (self.ca_dir, self.other_dir):
            self.assertEqual(pki.main(["init", d], stdout=open(os.devnull, "w")), 0)
        self.client = self.issue("tester")
        self.http = HTTP(reactor, NodeTLS(TLSFiles(*self.client)))
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, os.path.join(self.dir, "swarm"), HTTP(reactor))
        self.addCleanup(self.swarm.http.close)
        self.addCleanup(self.swarm.stop)

    def issue(self, name, ca_dir=None):
        """(cert, key, ca) paths of a fresh node certificate for 127.0.0.1."""
        ca_dir = ca_dir or self.ca_dir
        with open(os.devnull, "w") as out:
            self.assertEqual(pki.main(["issue", ca_dir, name, "--ip", LOOPBACK], stdout=out), 0)
        return (os.path.join(ca_dir, name + ".pem"), os.path.join(ca_dir, name + ".key"),
                os.path.join(ca_dir, "ca.pem"))

    def flags(self, files):
        return ["--tls-cert", files[0], "--tls-key", files[1], "--tls-ca", files[2]]

    async def probe(self, port, client=None, payload=b"GET /healthz HTTP/1.0\r\n\r\n"):
        """Connect to 127.0.0.1:PORT over TLS trusting our CA, presenting
        C{client} ((cert, key, ca) paths) or no certificate: the L{_Probe}."""
        cert = None
        if client is not None:
            cert = PrivateCertificate.loadPEM(_pem(client[0]) + _pem(client[1]))
        creator = optionsForClientTLS(
            LOOPBACK, trustRoot=Certificate.loadPEM(_pem(os.path.join(self.ca_dir, "ca.pem"))),
            clientCertificate=cert)
        proto = _Probe(payload)
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5))
        await connectProtocol(endpoint, proto)
        await proto.lost.addTimeout(10, reactor)
        return proto

    async def start_fleet(self):
        await self.swarm.start_origin({"a.bin": 3 * MiB + 17, "big.bin": BIG})
        self.sn_dir = os.path.join(self.dir, "sn-tls")
        os.makedirs(self.sn_dir)
        sn_files = self.issue("supernode1")
        self.sn_tls = tuple(os.path.join(self.sn_dir, n) for n in ("node.pem", "node.key")) + (
            sn_files[2],)
        for src, dst in zip(sn_files[:2], self.sn_tls[:2]):
            shutil.copy(src, dst)
        sn = await self.swarm.start_supernode(extra=self.flags(self.sn_tls), tls_http=self.http)
        for i in range(3):
            await self.swarm.start_peer(extra=self.flags(self.issue(f"peer{i + 1}")))
        return sn

    async def assert_refused(self, port, what):
        """No certificate, or one of another CA: the handshake fails, no byte comes back."""
        stranger = self.issue("stranger", self.other_dir) if not hasattr(self, "_stranger") \
            else self._stranger
        self._stranger = stranger
        for client, who in ((None, "no certificate"), (stranger, "another CA's certificate")):
            proto = await self.probe(port, client)
            self.assertEqual(proto.data, b"", f"{what} answered a client with {who}")
            # The server's alert (SSL.Error), or its reset when it came first.
            self.assertTrue(proto.reason.check(SSL.Error, ConnectionLost),
                            f"{what}, {who}: {proto.reason!r}")

    @with_logs()
    async def test_fleet(self):
        """A TLS fleet distributes a file to every peer and each copy verifies;
        strangers are refused at the handshake on the API and every piece port;
        a peer id outside its certificate's names is refused with 403."""
        sn = await self.start_fleet()
        url = self.swarm.origin_url("a.bin")
        for peer in self.swarm.peers:
            result = await self.swarm.wait_dfget(self.swarm.start_dfget(url, peer=peer))
            self.assertEqual(result.code, 0, repr(result))
            self.assertEqual(sha256_file(result.output), self.swarm.files["a.bin"][1])
        embedded = self.issue("dfget1")
        result = await self.swarm.wait_dfget(self.swarm.start_dfget(
            url, daemon="none", args=self.flags(embedded)))
        self.assertEqual(result.code, 0, repr(result))
        self.assertEqual(sha256_file(result.output), self.swarm.files["a.bin"][1])

        ok = await self.probe(sn.api_port, self.client)
        self.assertIn(b" 200 ", ok.data.split(b"\r\n")[0])
        await self.assert_refused(sn.api_port, "the supernode API")
        await self.assert_refused(sn.piece_port, "the supernode's piece port")
        for peer in self.swarm.peers:
            await self.assert_refused(peer.piece_port, f"{peer.name}'s piece port")

        ctl = [executable("dfctl"), "cluster", "--json", "--supernodes", sn.api_hostport]
        out, err, code = await getProcessOutputAndValue(
            ctl[0], ctl[1:] + self.flags(self.client), env=child_env())
        self.assertEqual(code, 0, err)
        _, _, code = await getProcessOutputAndValue(ctl[0], ctl[1:], env=child_env())
        self.assertNotEqual(code, 0, "dfctl without a certificate reached the TLS supernode")

        for peer_id, code in (("peer1-1-00000001", 403), ("tester-1-00000001", 200)):
            resp = await self.http.client.post(
                sn.api + "/api/v1/tasks", json={
                    "task_id": task_id_for_url(url), "url": url,
                    "peer": {"peer_id": peer_id, "host": LOOPBACK, "port": 9}}, timeout=30)
            body = await resp.json()
            self.assertEqual(resp.code, code, body)

    @with_logs()
    async def test_sighup_reload(self):
        """SIGHUP makes the supernode present a new certificate to new
        connections while a download through it goes on to finish."""
        sn = await self.start_fleet()
        old = (await self.probe(sn.api_port, self.client)).server_cert.get_serial_number()
        proc = self.swarm.start_dfget(self.swarm.origin_url("big.bin"), peer=self.swarm.peers[0],
                                      args=["--limit", "8M"])
        nxt = self.issue("supernode1-next")
        for src, dst in zip(nxt[:2], self.sn_tls[:2]):
            shutil.copy(src, dst + ".new")
            os.replace(dst + ".new", dst)
        self.assertTrue(proc.alive(), "the download ended before the reload")
        sn.signal(signal.SIGHUP)
        want = Certificate.loadPEM(_pem(nxt[0])).original.get_serial_number()
        self.assertNotEqual(old, want)

        async def presents_new():
            proto = await self.probe(sn.api_port, self.client)
            return proto.server_cert.get_serial_number() == want
        await poll_until(reactor, presents_new, 15, "the supernode to present its new certificate")
        result = await self.swarm.wait_dfget(proc)
        self.assertEqual(result.code, 0, repr(result))
        self.assertEqual(sha256_file(result.output), self.swarm.files["big.bin"][1])
        self.assertTrue(sn.alive())

    @with_logs()
    async def test_cluster(self):
        """Two TLS supernodes check each other's health over mutual TLS, and a
        peer that asks the one not owning a task follows its owner redirect
        over TLS to the owner and gets the file."""
        await self.swarm.start_origin({"c.bin": 2 * MiB + 5})
        url = self.swarm.origin_url("c.bin")
        ports = free_port(), free_port()
        nodes = []
        for i, (mine, other) in enumerate((ports, ports[::-1])):
            nodes.append(await self.swarm.start_supernode(tls_http=self.http, extra=[
                "--listen", f"tcp:{mine}:interface={LOOPBACK}",
                "--cluster", f"{LOOPBACK}:{other}", "--cluster-check-interval", "0.5",
                *self.flags(self.issue(f"sn{i}"))]))

        async def both_alive():
            views = [json.loads((await self.http.request("GET", n.api + "/healthz"))[2])
                     for n in nodes]
            return all(set(v.get("cluster", {}).get("members", {}).values()) == {"alive"}
                       for v in views)
        await poll_until(reactor, both_alive, 30, "both supernodes to see each other alive")
        resp = await self.http.client.post(nodes[0].api + "/api/v1/tasks", json={
            "task_id": task_id_for_url(url), "url": url}, timeout=30, allow_redirects=False)
        await resp.content()
        self.assertIn(resp.code, (200, 307))
        not_owner, owner = (nodes[1], nodes[0]) if resp.code == 200 else (nodes[0], nodes[1])
        # The peer asks the non-owner first; it follows the redirect (to a
        # supernode of its list: the only owners a peer follows).
        peer = await self.swarm.start_peer(
            supernodes=f"{not_owner.api_hostport},{owner.api_hostport}",
            extra=self.flags(self.issue("peer1")))
        result = await self.swarm.wait_dfget(self.swarm.start_dfget(
            url, peer=peer, args=["--no-back-source"]))
        self.assertEqual(result.code, 0, repr(result))
        self.assertEqual(sha256_file(result.output), self.swarm.files["c.bin"][1])

"""Tests of the dfdaemon's HTTP proxy (dragonfly.dfdaemon.proxy) on raw HTTP/1.1 bytes:
P2P for rule matches, pass-through, the egress policy's 403, CONNECT tunnels, 400s.

The origin is a Twisted resource behind a RequestTraversalAgent, the peer the
mirror's L{FakePeer} (its tasks named as dfget names them), the egress guard the
real one (literal addresses: no DNS), the target of a tunnel a MemoryReactor
connection."""
import hashlib
import json

from treq.testing import RequestTraversalAgent
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from dragonfly.dfdaemon.proxy import HTTPProxy, ProxyMetrics, ProxySite
from dragonfly.dfdaemon.proxyrules import Rules
from dragonfly.egress import EgressPolicy
from dragonfly.egressguard import EgressGuard
from dragonfly.metrics import PeerMetrics, sample
from dragonfly.peer.errors import DownloadError, OriginNotAllowed
from dragonfly.taskid import derive_task_id
from dragonfly.test.mirrorfakes import FakePeer

ORIGIN = "http://10.0.0.5"
DENIED = "http://10.0.0.9"
WHEEL = b"wheel-bytes-" * 300
INDEX = b"<a href='a-1.0-py3-none-any.whl'>a</a>"


class FakeOrigin(Resource):
    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []

    def render(self, request):
        self.requests.append({"method": request.method, "uri": request.uri,
                              "headers": dict(request.requestHeaders.getAllRawHeaders()),
                              "body": request.content.read()})
        if request.path.endswith(b"/missing.whl"):
            request.setResponseCode(404)
            return b"no such file"
        if request.path.endswith(b".whl"):
            return WHEEL
        request.setHeader(b"content-type", b"text/html")
        return INDEX


class UrlPeer(FakePeer):
    """The fake peer, its tasks named from the URL as dfget (and the real peer) name them."""

    def download(self, url, headers=None, on_start=None, digest=None, filters=(), tag="", **kw):
        task_id = derive_task_id(url, filters, tag, digest)
        d = FakePeer.download(self, url, headers, task_id, on_start, digest)
        self.downloads[-1].update(filters=filters, tag=tag, digest=digest)
        return d


class ProxyFixture:
    """A proxy in front of the fake origin and peer; raw connections to its Site."""

    rules = [r"\.whl$", r"/by-hash/(?P<sha256>[0-9a-f]{64})$", r"\.bin$ digest-header=X-Digest"]

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.origin = FakeOrigin()
        self.agent = RequestTraversalAgent(self.origin)
        self.peer = UrlPeer({derive_task_id(ORIGIN + "/a-1.0-py3-none-any.whl"): WHEEL})
        policy = EgressPolicy(allow=["10.0.0.5", "10.0.0.9"], deny=["10.0.0.9"])
        self.metrics = PeerMetrics()
        self.proxy = HTTPProxy(self.reactor, self.peer, Rules(self.rules),
                               EgressGuard(self.reactor, policy), self.agent,
                               ProxyMetrics(self.metrics.registry))

    def connect(self):
        site = ProxySite(self.proxy.resource(), reactor=self.reactor)
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.addCleanup(lambda: proto.connectionLost(Failure(ConnectionDone()))
                        if transport.connected else None)
        return proto, transport

    def send(self, data):
        """Send raw bytes on a new connection; return (status, headers, body) of the answer."""
        proto, transport = self.connect()
        proto.dataReceived(data)
        for _ in range(10):
            self.reactor.advance(0)     # the request body's cooperator
            self.agent.flush()
        return parse(transport.value())

    def get(self, url, headers=b""):
        return self.send(b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")

    def count(self, outcome):
        return sample(self.metrics, "dragonfly_proxy_requests_total", {"outcome": outcome})



class ProxyTests(ProxyFixture, SynchronousTestCase):
    def test_rule_match_goes_through_p2p(self):
        """When a GET matches a rule, the peer downloads it under dfget's task id for the
        URL with the client's end-to-end headers, the client gets its bytes, and the
        origin receives nothing from the proxy."""
        url = ORIGIN + "/a-1.0-py3-none-any.whl"
        status, headers, body = self.get(url, b"User-Agent: pip/24\r\nAccept-Encoding: gzip\r\n"
                                              b"Proxy-Connection: keep-alive\r\n")
        self.assertEqual((status, body), (200, WHEEL))
        self.assertEqual(headers[b"via"], b"1.1 dragonfly")
        [dl] = self.peer.downloads
        self.assertEqual(dl["task_id"], derive_task_id(url))
        self.assertEqual(dl["headers"], {"User-Agent": "pip/24"})
        self.assertEqual(self.origin.requests, [])
        self.assertEqual(self.count("p2p"), 1)
        self.assertEqual(sample(self.metrics, "dragonfly_proxy_bytes_total", {"path": "p2p"}),
                         len(WHEEL))

    def test_credentials_go_to_the_peer(self):
        """When a matching GET carries Authorization or Cookie, they reach the peer's
        download as dfget -H would pass them (the peer's private-content rules apply)."""
        self.get(ORIGIN + "/a-1.0-py3-none-any.whl",
                 b"Authorization: Bearer t\r\nCookie: s=1\r\nProxy-Authorization: Basic x\r\n")
        self.assertEqual(self.peer.downloads[0]["headers"],
                         {"Authorization": "Bearer t", "Cookie": "s=1"})

    def test_digest_from_url_names_the_task(self):
        """When the rule captures a sha256 from the URL, the task is that digest and
        the body is checked against it: a mismatch never ends in a clean answer."""
        data = b"content" * 50
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.peer.blobs[digest] = data
        status, _, body = self.get(ORIGIN + "/by-hash/" + digest[7:])
        self.assertEqual((status, body), (200, data))
        self.assertEqual(self.peer.downloads[0]["task_id"], digest)
        self.peer.serve[digest] = b"x" * len(data)
        proto, transport = self.connect()
        proto.dataReceived(b"GET " + (ORIGIN + "/by-hash/" + digest[7:]).encode()
                           + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        status, headers, body = parse(transport.value())
        self.assertEqual(headers[b"content-length"], b"%d" % len(data))
        self.assertLess(len(body), len(data))      # the last bytes were held back
        self.assertEqual(self.peer.dropped[0][0], digest)
        proto.connectionLost(Failure(ConnectionDone()))     # the abort, as a socket sees it
        self.assertEqual(self.count("failed"), 1)

    def test_digest_header_not_forwarded(self):
        """When a rule reads a digest header, the digest names the task and the
        header is never sent on to the origin."""
        data = b"model" * 40
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.peer.blobs[digest] = data
        status, _, body = self.get(ORIGIN + "/m.bin", b"X-Digest: " + digest.encode() + b"\r\n")
        self.assertEqual((status, body), (200, data))
        self.assertEqual(self.peer.downloads[0]["task_id"], digest)
        self.assertNotIn("X-Digest", self.peer.downloads[0]["headers"])
        status, _, _ = self.get(ORIGIN + "/m.bin", b"X-Digest: sha256:zz\r\n")
        self.assertEqual(status, 400)

    def test_range_served_from_p2p(self):
        """When a matching GET asks for a range, it gets 206 with that window of the file."""
        status, headers, body = self.get(ORIGIN + "/a-1.0-py3-none-any.whl",
                                         b"Range: bytes=100-199\r\n")
        self.assertEqual((status, body), (206, WHEEL[100:200]))
        self.assertEqual(headers[b"content-range"], b"bytes 100-199/%d" % len(WHEEL))

    def test_p2p_failure_relays_the_origin(self):
        """When P2P cannot start the file (e.g. the origin said 404), the client gets
        the origin's own answer."""
        self.peer.fail = DownloadError("origin answered 404")
        status, _, body = self.get(ORIGIN + "/missing.whl")
        self.assertEqual((status, body), (404, b"no such file"))
        self.assertEqual(self.count("p2p_fallback"), 1)

    def test_p2p_egress_refusal_is_403(self):
        """When the peer's own egress policy refuses the origin, the client gets 403."""
        self.peer.fail = OriginNotAllowed("origin not allowed: 10.0.0.5 (listed)")
        status, _, body = self.get(ORIGIN + "/a-1.0-py3-none-any.whl")
        self.assertEqual(status, 403)
        self.assertIn("origin not allowed", json.loads(body)["error"])

    def test_no_rule_passes_through(self):
        """When a GET matches no rule, it goes to the origin without hop-by-hop headers
        (those its Connection header names too) and with Via; the answer comes back
        with Via."""
        status, headers, body = self.get(
            ORIGIN + "/simple/a/", b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
                                   b"Proxy-Authorization: Basic eA==\r\nAccept: text/html\r\n")
        self.assertEqual((status, body), (200, INDEX))
        self.assertEqual(headers[b"via"], b"1.1 dragonfly")
        [seen] = self.origin.requests
        self.assertEqual(seen["uri"], b"/simple/a/")
        names = {k.lower() for k in seen["headers"]}
        self.assertNotIn(b"x-secret-hop", names)
        self.assertNotIn(b"proxy-authorization", names)
        self.assertEqual(seen["headers"][b"Via"], [b"1.1 dragonfly"])
        self.assertEqual(self.peer.downloads, [])
        self.assertEqual(self.count("passthrough"), 1)

    def test_other_methods_pass_through_with_body(self):
        """When a request has another method and a body, the origin gets both."""
        status, _, _ = self.send(b"POST " + ORIGIN.encode() + b"/upload HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(status, 200)
        self.assertEqual((self.origin.requests[0]["method"], self.origin.requests[0]["body"]),
                         (b"POST", b"hello"))

    def test_not_allowed_host_is_403_and_never_contacted(self):
        """When the egress policy refuses the host, the client gets 403 naming it, the
        peer is not asked and the origin receives nothing -- for a rule match too."""
        for path in ("/simple/", "/a-1.0-py3-none-any.whl"):
            status, _, body = self.get(DENIED + path)
            self.assertEqual(status, 403)
            self.assertIn("origin not allowed: 10.0.0.9", json.loads(body)["error"])
        self.assertEqual((self.origin.requests, self.peer.downloads), ([], []))
        self.assertEqual(self.count("denied"), 2)

    def test_default_policy_denies_loopback(self):
        """When the target is loopback and nothing allows it, 403."""
        status, _, _ = self.get("http://127.0.0.1:8080/a-1.0-py3-none-any.whl")
        self.assertEqual(status, 403)

    def test_malformed_requests_are_400(self):
        """When the request target is a path, malformed, or the request line or headers
        are broken, the answer is a JSON 400 and nothing is fetched."""
        for raw in (b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET ftp://h/x HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET http://u:p@10.0.0.5/x HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"CONNECT 10.0.0.5 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GARBAGE\r\n\r\n",
                    b"GET http://10.0.0.5/ HTTP/1.1\r\nBad Header\r\n\r\n"):
            status, _, body = self.send(raw)
            self.assertEqual(status, 400, raw)
            self.assertIn("error", json.loads(body))
        self.assertEqual((self.origin.requests, self.peer.downloads), ([], []))


class TunnelTests(ProxyFixture, SynchronousTestCase):
    """CONNECT: a raw tunnel to allowed hosts only."""

    def test_connect_denied(self):
        """When CONNECT names a host the policy refuses, 403 and no connection is made."""
        status, _, body = self.send(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\nHost: 10.0.0.9:443\r\n\r\n")
        self.assertEqual(status, 403)
        self.assertIn("origin not allowed", json.loads(body)["error"])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.count("denied"), 1)

    def test_connect_allowed_splices_bytes(self):
        """When CONNECT names an allowed host, the proxy connects there, answers 200
        and then relays raw bytes both ways (no HTTP parsing any more)."""
        proto, client = self.connect()
        proto.dataReceived(b"CONNECT 10.0.0.5:443 HTTP/1.1\r\nHost: 10.0.0.5:443\r\n\r\n")
        [(host, port, factory, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("10.0.0.5", 443))
        upstream = factory.buildProtocol(None)
        server = StringTransport()
        upstream.makeConnection(server)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 Connection established\r\n"))
        client.clear()
        proto.dataReceived(b"\x16\x03\x01 not http at all\r\n\r\n")
        self.assertEqual(server.value(), b"\x16\x03\x01 not http at all\r\n\r\n")
        upstream.dataReceived(b"server hello")
        self.assertEqual(client.value(), b"server hello")
        self.assertEqual(self.count("tunnel"), 1)
        self.assertEqual(sample(self.metrics, "dragonfly_proxy_bytes_total", {"path": "tunnel"}),
                         len(b"server hello"))
        upstream.connectionLost(None)
        self.assertTrue(client.disconnecting)

    def test_idle_tunnel_closed(self):
        """When a tunnel carries no byte either way for its idle timeout, both
        connections are closed; traffic keeps it open."""
        proto, client = self.connect()
        proto.dataReceived(b"CONNECT 10.0.0.5:443 HTTP/1.1\r\nHost: 10.0.0.5:443\r\n\r\n")
        [(_, _, factory, _, _)] = self.reactor.tcpClients
        upstream = factory.buildProtocol(None)
        server = StringTransport()
        upstream.makeConnection(server)
        self.reactor.advance(500)
        proto.dataReceived(b"ping")
        self.reactor.advance(500)
        self.assertFalse(client.disconnecting or server.disconnecting)
        self.reactor.advance(101)
        self.assertTrue(client.disconnecting and server.disconnecting)

    def test_connect_unreachable_is_502(self):
        """When the allowed target refuses the connection, the client gets 502."""
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        proto, client = self.connect()
        proto.dataReceived(b"CONNECT 10.0.0.5:443 HTTP/1.1\r\nHost: 10.0.0.5:443\r\n\r\n")
        [(_, _, factory, _, _)] = self.reactor.tcpClients
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(parse(client.value())[0], 502)


def parse(raw):
    """(status, {lower-case name: value}, body) of one HTTP/1.1 answer (chunked decoded)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/"):
        return None, {}, raw
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        out = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out += rest[:n]
            body = rest[n + 2:]
        body = out
    return status, headers, body


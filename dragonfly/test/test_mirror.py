"""Unit tests for the dfdaemon registry mirror: proxy logic, blobs through P2P, upstreams."""
import hashlib
import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from dragonfly.dfdaemon.mirror import BlobSink, RegistryMirror, parse_range
from dragonfly.dfdaemon.upstream import (
    Refused, UpstreamError, Upstreams, UpstreamTLSPolicy, parse_upstream)
from dragonfly.metrics import PeerMetrics, sample

BLOB = b"layer-bytes-" * 100
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
OTHER = b"another layer" * 7
OTHER_DIGEST = "sha256:" + hashlib.sha256(OTHER).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "layers": [{"digest": DIGEST}]}).encode()
MANIFEST_TYPE = b"application/vnd.oci.image.manifest.v1+json"
REALM = b'Bearer realm="https://auth.example/token",service="registry.example"'
MIRROR = "http://mirror.local:65001"


class FakeRegistry(Resource):
    """An upstream registry: records each request, answers like distribution.

    With C{token} set, every request lacking ``Authorization: Bearer <token>``
    gets a 401 challenge.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.token = None
        self.blobs = {DIGEST: BLOB, OTHER_DIGEST: OTHER}
        self.redirect_manifests = False

    def seen(self, method=None):
        return [r for r in self.requests if method is None or r["method"] == method]

    def render(self, request):
        self.requests.append({
            "method": request.method.decode(), "uri": request.uri.decode(),
            "headers": {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
        })
        if self.token and request.getHeader(b"authorization") != b"Bearer " + self.token:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", REALM)
            request.setHeader(b"content-type", b"application/json")
            return b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        path = request.path
        if path == b"/v2/":
            request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        if b"/manifests/" in path:
            if self.redirect_manifests:
                request.setResponseCode(307)
                request.setHeader(b"location", b"https://storage.example/m")
                return b""
            accepts = request.requestHeaders.getRawHeaders(b"accept") or []
            if not any(MANIFEST_TYPE in a for a in accepts):
                request.setResponseCode(404)
                return b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
            request.setHeader(b"content-type", MANIFEST_TYPE)
            request.setHeader(b"docker-content-digest",
                              b"sha256:" + hashlib.sha256(MANIFEST).hexdigest().encode())
            return MANIFEST
        if b"/tags/list" in path:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"uri": request.uri.decode()}).encode()
        if b"/blobs/" in path:
            digest = path.rsplit(b"/", 1)[1].decode()
            data = self.blobs.get(digest)
            if data is None:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"application/json")
                return b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"docker-content-digest", digest.encode())
            return data
        request.setResponseCode(404)
        return b"{}"


class FakeTaskFile:
    def __init__(self, task_id, url, length):
        self.task_id = task_id
        self.url = url
        self.length = length


@implementer(IPullProducer)
class _FakeStream:
    """One chunk per resumeProducing, like the peer's ordered stream; C{hold}
    makes bytes past C{available} wait for release()."""

    def __init__(self, peer, data, consumer, start):
        self.peer = peer
        self.data = data
        self.consumer = consumer
        self.offset = start
        self.done = defer.Deferred()
        self.stopped = False
        self.resumes = 0
        self.waiting = False

    def resumeProducing(self):
        self.resumes += 1
        if self.stopped or self.done.called:
            return
        if self.offset >= self.peer.available:
            self.waiting = True
            return
        n = min(self.peer.chunk, self.peer.available - self.offset, len(self.data) - self.offset)
        chunk = self.data[self.offset:self.offset + n]
        self.offset += n
        last = self.offset >= len(self.data)
        if last:
            self.consumer.unregisterProducer()
        self.consumer.write(chunk)
        if last:
            self.done.callback(None)

    def stopProducing(self):
        self.stopped = True
        if not self.done.called:
            self.done.errback(Exception("consumer stopped reading"))


class FakePeer:
    """The blob source: PeerNode.download(on_start=...) and PeerNode.stream()."""

    def __init__(self, blobs):
        self.blobs = dict(blobs)
        self.downloads = []
        self.streams = []
        self.fail = None
        self.chunk = 100
        self.available = 1 << 60
        self.serve = {}  # digest -> bytes served instead (corruption)

    def download(self, url, headers=None, task_id=None, on_start=None, **kw):
        self.downloads.append({"url": url, "headers": dict(headers or {}), "task_id": task_id})
        if self.fail is not None:
            e = self.fail
            if on_start is not None:
                on_start.errback(e)
            return defer.fail(e)
        data = self.serve.get(task_id, self.blobs[task_id])
        tf = FakeTaskFile(task_id, url, len(self.blobs[task_id]) if task_id not in self.serve
                          else len(data))
        if on_start is not None:
            on_start.callback(tf)
        return defer.succeed(tf)

    def stream(self, task_file, consumer, start=0, end=None):
        data = self.serve.get(task_file.task_id, self.blobs.get(task_file.task_id))
        s = _FakeStream(self, data, consumer, start)
        self.streams.append(s)
        consumer.registerProducer(s, False)
        return s.done

    def release(self, available=1 << 60):
        self.available = available
        for s in self.streams:
            if s.waiting:
                s.waiting = False
                s.resumeProducing()


class _RecordingAgent:
    """Wraps an agent, recording the URLs asked for; can fail or hang instead."""

    def __init__(self, agent):
        self.agent = agent
        self.urls = []
        self.fail = None
        self.hang = False

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.urls.append((method, uri))
        if self.fail is not None:
            return defer.fail(self.fail)
        if self.hang:
            return defer.Deferred()
        return self.agent.request(method, uri, headers, bodyProducer)


class MirrorTestMixin:
    registry_url = "http://registry.example:5000"
    allow = ("https://other.example",)
    insecure = ("registry.example:5000",)

    def setUp(self):
        self.clock = Clock()
        self.registry = FakeRegistry()
        self.upstream_agent = RequestTraversalAgent(self.registry)
        self.agent = _RecordingAgent(self.upstream_agent)
        self.peer = FakePeer({DIGEST: BLOB, OTHER_DIGEST: OTHER})
        self.metrics = PeerMetrics()
        self.upstreams = Upstreams.from_options(self.registry_url, self.allow, self.insecure)
        self.mirror = RegistryMirror(self.clock, self.agent, self.peer, self.upstreams,
                                     self.metrics, header_timeout=30)
        self.client = StubTreq(self.mirror.resource())

    def pump(self):
        for _ in range(20):
            self.upstream_agent.flush()
            self.client.flush()

    def get(self, path, method="GET", headers=None, unbuffered=False):
        d = self.client.request(method, MIRROR + path, headers=headers, unbuffered=unbuffered,
                                allow_redirects=False)
        self.pump()
        return self.successResultOf(d)

    def body(self, response):
        d = response.content()
        self.pump()
        return self.successResultOf(d)

    def error_of(self, response):
        obj = json.loads(self.body(response))
        self.assertIn("error", obj)
        return obj["errors"][0]["code"]

    def raw(self, data):
        """Send raw bytes to the mirror's Site; return what it wrote back."""
        site = Site(self.mirror.resource())
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        self.pump()
        proto.connectionLost(None)
        return transport.value()


class PassthroughTests(MirrorTestMixin, SynchronousTestCase):
    def test_repeated_accept_lines_reach_upstream(self):
        """When a client sends several Accept lines (as skopeo does), the upstream
        gets every one of them, in order, as separate values; and the manifest
        comes back with its status, headers and body unchanged."""
        accepts = [b"application/vnd.docker.distribution.manifest.v2+json",
                   MANIFEST_TYPE, b"application/vnd.oci.image.index.v1+json"]
        headers = Headers({b"accept": accepts, b"user-agent": [b"skopeo/1.9.3"],
                           b"x-custom": [b"a", b"b"]})
        response = self.get("/v2/library/app/manifests/v1", headers=headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), MANIFEST)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [MANIFEST_TYPE])
        self.assertEqual(response.headers.getRawHeaders(b"docker-content-digest"),
                         [b"sha256:" + hashlib.sha256(MANIFEST).hexdigest().encode()])
        [seen] = self.registry.requests
        self.assertEqual(seen["method"], "GET")
        self.assertEqual(seen["uri"], "/v2/library/app/manifests/v1")
        self.assertEqual([a.encode() if isinstance(a, str) else a for a in seen["headers"][b"accept"]],
                         accepts)
        self.assertEqual(seen["headers"][b"x-custom"], [b"a", b"b"])
        self.assertEqual(seen["headers"][b"user-agent"], [b"skopeo/1.9.3"])
        self.assertEqual(seen["headers"][b"host"], [b"registry.example:5000"])
        self.assertEqual(self.agent.urls, [(b"GET", b"http://registry.example:5000/v2/library/app/manifests/v1")])

    def test_challenge_passed_back(self):
        """When the upstream answers 401 with a Bearer challenge, the client gets
        the same status, WWW-Authenticate header and body."""
        self.registry.token = b"t0k"
        response = self.get("/v2/")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [REALM])
        self.assertIn(b"UNAUTHORIZED", self.body(response))

    def test_authorization_forwarded(self):
        """When the client sends Authorization, the upstream receives it unchanged."""
        self.registry.token = b"t0k"
        response = self.get("/v2/", headers={b"authorization": [b"Bearer t0k"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.registry.requests[0]["headers"][b"authorization"], [b"Bearer t0k"])
        self.assertEqual(response.headers.getRawHeaders(b"docker-distribution-api-version"),
                         [b"registry/2.0"])

    def test_query_kept_ns_removed(self):
        """When containerd adds ?ns=, the mirror strips it and keeps every other
        query parameter as sent."""
        response = self.get("/v2/library/app/tags/list?n=10&ns=registry.example:5000&last=a%2Fb")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.registry.requests[0]["uri"], "/v2/library/app/tags/list?n=10&last=a%2Fb")

    def test_ns_selects_allowed_upstream(self):
        """When ?ns= names an allowed registry, the request goes to that registry."""
        self.get("/v2/library/app/manifests/v1?ns=other.example",
                 headers={b"accept": [MANIFEST_TYPE]})
        self.assertEqual(self.agent.urls,
                         [(b"GET", b"https://other.example/v2/library/app/manifests/v1")])
        self.assertEqual(self.registry.requests[0]["headers"][b"host"], [b"other.example"])

    def test_ns_other_host_refused(self):
        """When ?ns= names a registry that is not allowed, the mirror answers 403
        and contacts nobody."""
        response = self.get("/v2/library/app/manifests/v1?ns=evil.example")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.error_of(response), "DENIED")
        self.assertEqual(self.agent.urls, [])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "refused", "code": "403"}), 1)

    def test_absolute_url_refused(self):
        """When a client uses the mirror as an HTTP proxy (absolute URL or CONNECT),
        it gets 403 and nothing is contacted."""
        out = self.raw(b"GET http://evil.example/v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 403"), out)
        out = self.raw(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 403"), out)
        self.assertEqual(self.agent.urls, [])

    def test_redirect_handed_to_client(self):
        """When the upstream answers a redirect on a passthrough request, the
        client gets the redirect (status and Location), not its target."""
        self.registry.redirect_manifests = True
        response = self.get("/v2/library/app/manifests/v1")
        self.assertEqual(response.code, 307)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"https://storage.example/m"])
        self.assertEqual(len(self.agent.urls), 1)

    def test_read_only(self):
        """When a client tries to push through the mirror, it gets 405."""
        response = self.get("/v2/library/app/blobs/uploads/", method="POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertEqual(self.agent.urls, [])

    def test_bad_paths(self):
        """When the path is not a registry path or smuggles traversal or escapes,
        the mirror answers 4xx JSON and contacts nobody."""
        for path, code in [("/v3/x", 404), ("/", 404), ("/v2/a/../../etc/passwd", 400),
                           ("/v2/a//b/manifests/x", 400), ("/v2/a%2F..%2Fb/manifests/x", 400)]:
            response = self.get(path)
            self.assertEqual(response.code, code, path)
            self.error_of(response)
        self.assertEqual(self.agent.urls, [])

    def test_upstream_unreachable(self):
        """When the upstream cannot be reached, the client gets 502 JSON."""
        self.agent.fail = ConnectionRefusedError("nope")
        response = self.get("/v2/")
        self.assertEqual(response.code, 502)
        self.assertEqual(self.error_of(response), "UNAVAILABLE")

    def test_upstream_timeout(self):
        """When the upstream does not answer within the header timeout, the client
        gets 504."""
        self.agent.hang = True
        d = self.client.get(MIRROR + "/v2/")
        self.pump()
        self.assertNoResult(d)
        self.clock.advance(31)
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)

    def test_healthz_and_metrics(self):
        """When asked on the mirror port, /healthz answers 200 JSON and /metrics
        the Prometheus text with the mirror counters."""
        response = self.get("/healthz")
        self.assertEqual(response.code, 200)
        obj = json.loads(self.body(response))
        self.assertEqual(obj["status"], "ok")
        self.assertEqual(obj["upstreams"][0]["url"], "http://registry.example:5000")
        self.get("/v2/")
        response = self.get("/metrics")
        self.assertEqual(response.code, 200)
        text = self.body(response).decode()
        self.assertIn('dragonfly_mirror_requests_total{code="200",kind="passthrough"} 1.0', text)
        self.assertIn("dragonfly_peer_download_bytes_total", text)


class BlobTests(MirrorTestMixin, SynchronousTestCase):
    def test_blob_through_p2p(self):
        """When a client GETs a blob, the bytes come from P2P (task id = digest,
        URL = upstream blob URL, the client's Authorization passed on), with
        Content-Length and Docker-Content-Digest; the registry only answers
        a HEAD access check."""
        self.registry.token = b"t0k"
        response = self.get(f"/v2/library/app/blobs/{DIGEST}",
                            headers={b"authorization": [b"Bearer t0k"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(response.length, len(BLOB))
        self.assertEqual(response.headers.getRawHeaders(b"docker-content-digest"), [DIGEST.encode()])
        self.assertEqual(self.peer.downloads, [{
            "url": f"http://registry.example:5000/v2/library/app/blobs/{DIGEST}",
            "headers": {"Authorization": "Bearer t0k"}, "task_id": DIGEST}])
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD"])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_blob_bytes_total"), len(BLOB))
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob", "code": "200"}), 1)

    def test_blob_via_ns(self):
        """When ?ns= picks another allowed registry, the P2P URL points at it."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}?ns=other.example")
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(self.peer.downloads[0]["url"],
                         f"https://other.example/v2/library/app/blobs/{DIGEST}")

    def test_malformed_digest(self):
        """When the digest is malformed, the client gets 400 DIGEST_INVALID and
        neither the registry nor the swarm is asked."""
        for ref in ["sha256:zz", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63]:
            response = self.get(f"/v2/library/app/blobs/{ref}")
            self.assertEqual(response.code, 400, ref)
            self.assertEqual(self.error_of(response), "DIGEST_INVALID")
        response = self.get(f"/v2/Library/App/blobs/{DIGEST}")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.error_of(response), "NAME_INVALID")
        self.assertEqual(self.agent.urls, [])
        self.assertEqual(self.peer.downloads, [])

    def test_access_denied_by_registry(self):
        """When the registry refuses the client (no token), the client gets the
        registry's own 401 challenge and body; the swarm is not asked."""
        self.registry.token = b"t0k"
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [REALM])
        self.assertIn(b"UNAUTHORIZED", self.body(response))
        self.assertEqual(self.peer.downloads, [])

    def test_unknown_blob(self):
        """When the registry does not have the blob, the client gets its 404."""
        missing = "sha256:" + "1" * 64
        response = self.get(f"/v2/library/app/blobs/{missing}")
        self.assertEqual(response.code, 404)
        self.assertIn(b"BLOB_UNKNOWN", self.body(response))
        self.assertEqual(self.peer.downloads, [])

    def test_digest_mismatch_aborts(self):
        """When the bytes from P2P do not match the digest, the response is cut
        off (the client sees a failed transfer, never a complete one)."""
        self.peer.serve[DIGEST] = b"X" * len(BLOB)
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 200)
        d = response.content()
        self.pump()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob-corrupt", "code": "502"}), 1)

    def test_p2p_failure_falls_back_to_registry(self):
        """When the swarm cannot provide the blob, it is relayed from the registry."""
        self.peer.fail = Exception("no supernode")
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD", "GET"])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob-direct", "code": "200"}), 1)

    def test_streams_as_pieces_arrive(self):
        """When only the start of the blob is available, the client already has
        the headers and those bytes; the rest follows as it arrives."""
        self.peer.available = 300
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", unbuffered=True)
        self.assertEqual(response.code, 200)
        got = []
        done = defer.Deferred()

        from twisted.internet.protocol import Protocol

        class Collect(Protocol):
            def dataReceived(self, data):
                got.append(data)

            def connectionLost(self, reason):
                done.callback(reason.value)

        response.deliverBody(Collect())
        self.pump()
        # All available bytes but the held-back tail are there already.
        self.assertEqual(b"".join(got), BLOB[:300])
        self.assertNoResult(done)
        self.peer.release()
        self.pump()
        self.assertEqual(b"".join(got), BLOB)
        self.assertIsInstance(self.successResultOf(done), ResponseDone)

    def test_range(self):
        """When the client asks for a byte range, it gets 206 with that window."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", headers={b"range": [b"bytes=5-104"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(self.body(response), BLOB[5:105])
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes 5-104/%d" % len(BLOB)])
        response = self.get(f"/v2/library/app/blobs/{DIGEST}",
                            headers={b"range": [b"bytes=%d-" % len(BLOB)]})
        self.assertEqual(response.code, 416)

    def test_blob_head_passthrough(self):
        """When a client HEADs a blob, the registry's answer (size) comes back."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", method="HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"%d" % len(BLOB)])
        self.assertEqual(self.peer.downloads, [])
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD"])

    def test_client_disconnect_stops_stream(self):
        """When the client goes away mid-blob, the stream from the swarm is stopped."""
        self.peer.available = 200
        site = Site(self.mirror.resource())
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /v2/library/app/blobs/%s HTTP/1.1\r\nHost: m\r\n\r\n"
                           % DIGEST.encode())
        self.pump()
        self.assertIn(b"200 OK", transport.value())
        [stream] = self.peer.streams
        self.assertFalse(stream.stopped)
        proto.connectionLost(ConnectionRefusedError("gone"))
        self.assertTrue(stream.stopped)


@implementer(IPullProducer)
class _CountingPull:
    def __init__(self):
        self.resumes = 0
        self.stopped = False

    def resumeProducing(self):
        self.resumes += 1

    def stopProducing(self):
        self.stopped = True


class _FakeRequest:
    def __init__(self):
        self.channel = object()
        self.producer = None
        self.written = []

    def registerProducer(self, producer, streaming):
        assert self.producer is None and streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.written.append(data)


class BlobSinkTests(SynchronousTestCase):
    def test_pull_producer_paced_by_client(self):
        """When the client's socket is full (paused), no more chunks are asked
        for; when it drains, exactly one more is."""
        request = _FakeRequest()
        sink = BlobSink(request, DIGEST, len(BLOB))
        pull = _CountingPull()
        sink.registerProducer(pull, False)
        self.assertIs(request.producer, sink)
        self.assertEqual(pull.resumes, 1)
        sink.write(BLOB[:10])
        self.assertEqual(pull.resumes, 2)
        sink.pauseProducing()
        sink.write(BLOB[10:20])
        self.assertEqual(pull.resumes, 2)
        sink.resumeProducing()
        self.assertEqual(pull.resumes, 3)
        sink.stopProducing()
        self.assertTrue(pull.stopped)
        self.assertIsNone(request.producer)

    def test_verifies_whole_blob(self):
        """When all bytes arrive and match, verified() is true; a wrong byte or
        a short or long stream makes it false."""
        for data, ok in [(BLOB, True), (BLOB[:-1] + b"!", False), (BLOB[:-1], False),
                         (BLOB + b"x", False)]:
            sink = BlobSink(_FakeRequest(), DIGEST, len(BLOB))
            sink.write(data)
            self.assertEqual(sink.verified(), ok)

    def test_window(self):
        """When a window is set, only those bytes are written but all are hashed."""
        request = _FakeRequest()
        sink = BlobSink(request, DIGEST, len(BLOB), first=7, last=20)
        for i in range(0, len(BLOB), 9):
            sink.write(BLOB[i:i + 9])
        self.assertEqual(b"".join(request.written), BLOB[7:18])  # the tail is held back
        self.assertTrue(sink.verified())
        sink.release()
        self.assertEqual(b"".join(request.written), BLOB[7:21])


class RangeTests(SynchronousTestCase):
    def test_parse_range(self):
        """Single byte ranges are understood; others are ignored or unsatisfiable."""
        self.assertEqual(parse_range(None, 10), None)
        self.assertEqual(parse_range(b"bytes=0-4", 10), (0, 4))
        self.assertEqual(parse_range(b"bytes=3-", 10), (3, 9))
        self.assertEqual(parse_range(b"bytes=5-100", 10), (5, 9))
        self.assertEqual(parse_range(b"bytes=-3", 10), (7, 9))
        self.assertEqual(parse_range(b"bytes=-30", 10), (0, 9))
        self.assertEqual(parse_range(b"bytes=0-1,3-4", 10), None)
        self.assertEqual(parse_range(b"items=0-1", 10), None)
        self.assertEqual(parse_range(b"bytes=5-2", 10), None)
        self.assertEqual(parse_range(b"bytes=a-b", 10), None)
        self.assertRaises(ValueError, parse_range, b"bytes=10-", 10)
        self.assertRaises(ValueError, parse_range, b"bytes=-0", 10)


class UpstreamTests(SynchronousTestCase):
    def test_default_is_docker_hub(self):
        """With no --registry, the upstream is Docker Hub over verified HTTPS and
        containerd's ns=docker.io selects it."""
        ups = Upstreams.from_options(None)
        self.assertEqual(ups.default.base, "https://registry-1.docker.io")
        self.assertFalse(ups.default.insecure)
        self.assertIs(ups.select("docker.io"), ups.default)
        self.assertIs(ups.select(None), ups.default)

    def test_plain_http_needs_opt_in(self):
        """A plain-HTTP upstream is refused unless listed with --insecure-registry."""
        self.assertRaises(UpstreamError, Upstreams.from_options, "http://127.0.0.1:5000")
        ups = Upstreams.from_options("http://127.0.0.1:5000", insecure=["127.0.0.1:5000"])
        self.assertEqual(ups.default.base, "http://127.0.0.1:5000")
        self.assertTrue(ups.default.insecure)

    def test_bad_addresses(self):
        """Registry addresses with paths, credentials or bad ports are rejected."""
        for bad in ["https://h/path", "https://u:p@h", "ftp://h", "h:0", "h:99999", "a/b", ""]:
            self.assertRaises(UpstreamError, parse_upstream, bad)

    def test_select(self):
        """ns= matches allowed registries by host[:port]; anything else is Refused."""
        ups = Upstreams.from_options("https://reg.example", ["10.0.0.5:5000", "http://lab:80"],
                                     insecure=["lab"])
        self.assertEqual(ups.select("REG.example").base, "https://reg.example")
        self.assertEqual(ups.select("reg.example:443").base, "https://reg.example")
        self.assertEqual(ups.select("10.0.0.5:5000").base, "https://10.0.0.5:5000")
        self.assertEqual(ups.select("lab").base, "http://lab")
        for other in ["10.0.0.5", "reg.example:5000", "evil.example", "reg.example/x", "a b"]:
            self.assertRaises(Refused, ups.select, other)

    def test_tls_policy(self):
        """HTTPS upstreams are verified; only those marked insecure are not."""
        ups = Upstreams.from_options("https://reg.example", ["https://selfsigned.example:8443"],
                                     insecure=["selfsigned.example:8443"])
        policy = UpstreamTLSPolicy(ups)
        unverified = policy.creatorForNetloc(b"selfsigned.example", 8443)
        verified = policy.creatorForNetloc(b"reg.example", 443)
        self.assertEqual(type(unverified).__name__, "_UnverifiedTLS")
        self.assertNotEqual(type(verified).__name__, "_UnverifiedTLS")
        self.assertEqual(type(policy.creatorForNetloc(b"selfsigned.example", 443)).__name__,
                         type(verified).__name__)


class _SupernodeClient:
    """The node's HTTP client: every POST goes to the fake supernode."""

    def __init__(self, supernode):
        self.stub = StubTreq(supernode.resource())

    def post(self, url, **kw):
        return self.stub.post(url, **kw)

    def flush(self):
        self.stub.flush()


class RealPeerTests(MirrorTestMixin, SynchronousTestCase):
    """The mirror in front of a real PeerNode (fake supernode, in-memory piece pool)."""

    def setUp(self):
        MirrorTestMixin.setUp(self)
        from dragonfly.interfaces import PeerInfo
        from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
        from dragonfly.storage.store import PieceStore
        from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
        from dragonfly.runtime.threads import SyncRunner

        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(BLOB, piece_size=100)
        self.pool = FakePiecePool(BLOB, 100)
        self.sn_client = _SupernodeClient(self.supernode)
        self.node = PeerNode(NodeDeps(self.clock, self.store, self.sn_client, self.pool,
                                      self.metrics, SyncRunner(), origin=FakeOrigin(BLOB)),
                             [("sn.test", 8002)], PeerInfo("me-1-00000000", "127.0.0.1", 65000),
                             NodeSettings(concurrency=3))
        self.mirror.peer = self.node
        self.addCleanup(self.store.close)

    def pump(self):
        for _ in range(40):
            self.sn_client.flush()
            self.upstream_agent.flush()
            self.client.flush()
            self.clock.advance(0.5)

    def test_blob_from_swarm(self):
        """When a client GETs a blob, the real peer registers the task under the
        digest with the blob URL and the client's Authorization, and the
        verified bytes reach the client as the pieces come in."""
        self.pool.manual = True
        d = self.client.get(MIRROR + f"/v2/library/app/blobs/{DIGEST}", unbuffered=True,
                            headers={b"authorization": [b"Bearer abc"]})
        self.pump()
        self.assertNoResult(d)  # headers go with the first bytes
        self.pool.release(1)
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(BLOB))
        [reg] = self.supernode.registrations
        self.assertEqual(reg["task_id"], DIGEST)
        self.assertEqual(reg["url"], f"http://registry.example:5000/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(reg["headers"], {"Authorization": "Bearer abc"})
        body = response.content()
        for _ in range(20):
            self.pool.release()
            self.pump()
        self.assertEqual(self.successResultOf(body), BLOB)
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_blob_bytes_total"), len(BLOB))
        # Held now: a second client is served from the store.
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(len(self.supernode.registrations), 1)

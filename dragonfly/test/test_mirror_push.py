"""Tests of pushes through the mirror: every registry method passed through
(dragonfly.dfdaemon.routes, passthrough), the registry's Location kept on the
mirror (dragonfly.dfdaemon.locations), and request bodies streamed with
back-pressure (dragonfly.dfdaemon.upload)."""
import hashlib

from twisted.internet import defer
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dragonfly.dfdaemon.locations import client_location
from dragonfly.dfdaemon.service import MirrorSite
from dragonfly.dfdaemon.upload import BodyPipe
from dragonfly.dfdaemon.upstream import Upstreams
from dragonfly.metrics import sample
from dragonfly.test.mirrorfakes import UPLOAD_STATE, MirrorTestMixin

LAYER = b"pushed layer " * 5000
LAYER_DIGEST = "sha256:" + hashlib.sha256(LAYER).hexdigest()
TOKEN = b"Bearer push-t0k3n"


class LocationTests(SynchronousTestCase):
    """client_location: which Locations become mirror paths, which stay as sent."""

    def setUp(self):
        ups = Upstreams.from_options("https://reg.example", ["other.example"],
                                     ["lab.example:5000"])
        self.reg = ups.default
        self.lab = Upstreams.from_options("lab.example:5000", (), ["lab.example:5000"]).default
        self.asked = b"https://reg.example/v2/app/blobs/uploads/"

    def test_table(self):
        """Each Location, as the client gets it."""
        u = b"/v2/app/blobs/uploads/u1?_state=abc"
        cases = [
            # on the upstream asked: a path on the mirror, query kept
            (b"https://reg.example/v2/app/blobs/uploads/u1?_state=abc", None, u),
            (b"https://REG.example:443/v2/app/blobs/uploads/u1?_state=abc", None, u),
            (b"https://reg.example./v2/app/blobs/uploads/u1?_state=abc", None, u),
            (u, None, u),                                     # already relative
            (b"u1?_state=abc", None, u),                      # relative to the URL asked
            (b"https://reg.example/v2/app/blobs/sha256:ab", None, b"/v2/app/blobs/sha256:ab"),
            # containerd's ns added back, so the next request reaches the same upstream
            (b"https://reg.example/v2/app/blobs/uploads/u1?_state=abc", "reg.example",
             u + b"&ns=reg.example"),
            (b"https://reg.example/v2/app/blobs/uploads/u1", "reg.example",
             b"/v2/app/blobs/uploads/u1?ns=reg.example"),
            # anywhere else: exactly as sent
            (b"https://storage.example/blobs/sha256:ab?X-Amz-Signature=s", None, None),
            (b"https://other.example/v2/app/blobs/uploads/u1", None, None),   # another upstream
            (b"https://reg.example:8443/v2/app/blobs/uploads/u1", None, None),  # another port
            (b"http://reg.example/v2/app/blobs/uploads/u1", None, None),      # another scheme
            (b"https://user:pw@reg.example/v2/app/", None, None),            # userinfo
            (b"https://reg.example/login?next=/v2/", None, None),            # not the API
            (b"https://reg.example:99999/v2/", None, None),                  # bad port
            ("https://r\u00e9g.example/v2/".encode("utf-8"), None, None),    # not ASCII
        ]
        for location, ns, want in cases:
            got = client_location(location, self.asked, self.reg, ns)
            self.assertEqual(got, location if want is None else want, location)

    def test_port_and_ns_of_a_lab_registry(self):
        """A plain-HTTP registry on a port: its own absolute Locations become
        mirror paths; ns with a port is kept readable."""
        got = client_location(b"http://lab.example:5000/v2/a/blobs/uploads/x",
                              b"http://lab.example:5000/v2/a/blobs/uploads/", self.lab,
                              "lab.example:5000")
        self.assertEqual(got, b"/v2/a/blobs/uploads/x?ns=lab.example:5000")


class PushTests(MirrorTestMixin, SynchronousTestCase):
    """A push through the mirror (StubTreq in front, the fake registry behind)."""

    def auth(self, extra=None):
        headers = {b"authorization": [TOKEN]}
        headers.update(extra or {})
        return headers

    def push_layer(self, query=""):
        """POST, PATCH, PUT of LAYER through the mirror; the three responses."""
        opened = self.get("/v2/library/app/blobs/uploads/" + query, method="POST",
                          headers=self.auth())
        location = opened.headers.getRawHeaders(b"location")[0].decode()
        d = self.client.request("PATCH", "http://mirror.local:65001" + location, data=LAYER,
                                headers=self.auth({b"content-type": [b"application/octet-stream"]}))
        self.pump()
        patched = self.successResultOf(d)
        location = patched.headers.getRawHeaders(b"location")[0].decode()
        sep = "&" if "?" in location else "?"
        closed = self.get(location + sep + "digest=" + LAYER_DIGEST, method="PUT",
                          headers=self.auth())
        return opened, patched, closed

    def test_push_passes_through(self):
        """When a client pushes a blob (POST, PATCH with the bytes, PUT ?digest=),
        each request reaches the registry with the client's Authorization and
        body, each Location comes back as a path on the mirror (the signed
        _state kept), Docker-Upload-UUID, Range and Docker-Content-Digest are
        kept, and the blob is not handed to the swarm."""
        self.registry.token = TOKEN[7:]
        opened, patched, closed = self.push_layer()
        self.assertEqual(opened.code, 202)
        self.assertEqual(opened.headers.getRawHeaders(b"location"),
                         [b"/v2/library/app/blobs/uploads/u1?_state=" + UPLOAD_STATE])
        self.assertEqual(opened.headers.getRawHeaders(b"docker-upload-uuid"), [b"u1"])
        self.assertEqual(patched.code, 202)
        self.assertEqual(patched.headers.getRawHeaders(b"range"), [b"0-%d" % (len(LAYER) - 1)])
        self.assertEqual(closed.code, 201)
        self.assertEqual(closed.headers.getRawHeaders(b"location"),
                         [b"/v2/library/app/blobs/" + LAYER_DIGEST.encode()])
        self.assertEqual(closed.headers.getRawHeaders(b"docker-content-digest"),
                         [LAYER_DIGEST.encode()])
        seen = self.registry.requests
        self.assertEqual([r["method"] for r in seen], ["POST", "PATCH", "PUT"])
        for r in seen:
            self.assertEqual(r["headers"][b"authorization"], [TOKEN])
        self.assertEqual(seen[1]["body"], LAYER)
        self.assertEqual(seen[1]["uri"], "/v2/library/app/blobs/uploads/u1?_state="
                         + UPLOAD_STATE.decode())
        self.assertEqual(self.registry.blobs[LAYER_DIGEST], LAYER)
        self.assertEqual(self.peer.downloads, [])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "write", "code": "202"}), 2)

    def test_push_with_ns(self):
        """When containerd pushes with ?ns=, the Locations carry the same ns, and
        the next request (containerd adding its own ns again) reaches the same
        upstream, without ns."""
        opened, patched, closed = self.push_layer("?ns=registry.example:5000")
        self.assertEqual(closed.code, 201)
        self.assertIn(b"&ns=registry.example:5000", opened.headers.getRawHeaders(b"location")[0])
        for method, url in self.agent.urls:
            self.assertNotIn(b"ns=", url)
            self.assertTrue(url.startswith(b"http://registry.example:5000/v2/library/app/"), url)
        response = self.get("/v2/library/app/manifests/v1?ns=registry.example:5000"
                            "&ns=registry.example:5000", method="DELETE")
        self.assertEqual(response.code, 202)
        response = self.get("/v2/library/app/manifests/v1?ns=registry.example:5000"
                            "&ns=other.example", method="DELETE")
        self.assertEqual(response.code, 400)

    def test_challenge_on_push(self):
        """When the registry challenges a push, the client gets the 401 and its
        WWW-Authenticate as for a pull."""
        self.registry.token = b"t0k"
        response = self.get("/v2/library/app/blobs/uploads/", method="POST")
        self.assertEqual(response.code, 401)
        self.assertTrue(response.headers.getRawHeaders(b"www-authenticate")[0].startswith(
            b"Bearer realm="))

    def test_storage_location_left_alone(self):
        """When the registry names another host in Location (a storage URL), the
        client gets it unchanged and the mirror contacts nobody but the registry."""
        self.registry.location_base = b"https://storage.example"
        response = self.get("/v2/library/app/blobs/uploads/", method="POST")
        self.assertEqual(response.headers.getRawHeaders(b"location"),
                         [b"https://storage.example/v2/library/app/blobs/uploads/u1?_state="
                          + UPLOAD_STATE])
        self.assertEqual(len(self.agent.urls), 1)

    def test_writes_use_the_allow_list(self):
        """When a write names a registry that is not allowed, it gets 403 and
        nothing is contacted, whatever the method."""
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = self.get("/v2/library/app/blobs/uploads/?ns=evil.example",
                                method=method, headers=self.auth())
            self.assertEqual(response.code, 403, method)
            self.assertEqual(self.error_of(response), "DENIED")
        self.assertEqual(self.agent.urls, [])

    def test_other_methods_refused(self):
        """When a method is not one of the registry API's, the mirror answers 405
        with the methods it takes, and contacts nobody."""
        for method in ("OPTIONS", "TRACE", "PROPFIND"):
            response = self.get("/v2/library/app/blobs/uploads/", method=method)
            self.assertEqual(response.code, 405, method)
            self.assertEqual(response.headers.getRawHeaders(b"allow"),
                             [b"GET, HEAD, POST, PUT, PATCH, DELETE"])
        self.assertEqual(self.agent.urls, [])

    def test_delete_and_manifest_put(self):
        """When a client deletes a manifest or puts one, the registry gets the
        request (with the manifest body) and the client its answer."""
        response = self.get("/v2/library/app/manifests/sha256:" + "a" * 64, method="DELETE")
        self.assertEqual(response.code, 202)
        d = self.client.put("http://mirror.local:65001/v2/library/app/manifests/v2",
                            data=b'{"schemaVersion": 2}')
        self.pump()
        self.assertEqual(self.successResultOf(d).code, 201)
        self.assertEqual(self.registry.requests[-1]["method"], "PUT")
        self.assertEqual(self.registry.requests[-1]["body"], b'{"schemaVersion": 2}')

    def test_secrets_not_logged(self):
        """When a push fails upstream, nothing logged carries the client's
        Authorization or the upload's signed state."""
        self.agent.fail = ConnectionRefusedError("nope")
        with capturedLogs() as events:
            response = self.get("/v2/library/app/blobs/uploads/u1?_state="
                                + UPLOAD_STATE.decode(), method="PATCH", headers=self.auth())
        self.assertEqual(response.code, 502)
        body = self.body(response)
        self.assertTrue(events)
        for event in events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(UPLOAD_STATE.decode(), text)
            self.assertNotIn(TOKEN[7:].decode(), text)
        self.assertNotIn(UPLOAD_STATE, body)


@implementer(IConsumer)
class _Upstream:
    """The upstream socket a body is written to; pauses its producer when told."""

    def __init__(self):
        self.chunks = []
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.chunks.append(data)


class _Response:
    """An upstream response: status, headers, an empty body."""

    def __init__(self, code, headers):
        self.code = code
        self.phrase = b"Accepted"
        self.headers = Headers(headers)
        self.length = 0

    def deliverBody(self, protocol):
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ResponseDone()))


class _HoldingAgent:
    """Records each request (with its body producer) and answers when told."""

    def __init__(self):
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        d = defer.Deferred()
        self.requests.append((method, uri, headers, bodyProducer, d))
        return d


class StreamingTests(MirrorTestMixin, SynchronousTestCase):
    """The mirror's own Site on a StringTransport: a PATCH body streamed up."""

    HEAD = (b"PATCH /v2/library/app/blobs/uploads/u1?_state=st HTTP/1.1\r\n"
            b"Host: mirror.local\r\nAuthorization: " + TOKEN + b"\r\n"
            b"Content-Length: %d\r\n\r\n")

    def setUp(self):
        MirrorTestMixin.setUp(self)
        self.holding = _HoldingAgent()
        self.mirror.passthrough.agent = self.holding
        site = MirrorSite(self.mirror.resource(), reactor=self.clock)
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def open(self, length):
        self.channel.dataReceived(self.HEAD % length)
        [(method, uri, headers, body, d)] = self.holding.requests
        return method, uri, headers, body, d

    def test_body_streams_with_back_pressure(self):
        """When a client sends a PATCH, the upstream request starts before the
        body has arrived; each chunk goes up as it comes; while the upstream is
        full the client's socket is paused and no more than what was already
        in flight is held; the answer comes back with its Location on the mirror."""
        chunk = b"x" * 65536
        n = 64
        method, uri, headers, body, d = self.open(len(chunk) * n)
        self.assertEqual((method, uri), (b"PATCH", b"http://registry.example:5000"
                                         b"/v2/library/app/blobs/uploads/u1?_state=st"))
        self.assertEqual(headers.getRawHeaders(b"authorization"), [TOKEN])
        verifyObject(IBodyProducer, body)
        self.assertEqual(body.length, len(chunk) * n)

        # The upstream is still connecting: chunks are held, then the client paused.
        for _ in range(5):
            self.channel.dataReceived(chunk)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertLessEqual(body.held, BodyPipe.HIGH + len(chunk))

        upstream = _Upstream()
        done = body.startProducing(upstream)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(upstream.chunks), 5)

        for i in range(5, n - 1):
            if i % 10 == 0:
                body.pauseProducing()                 # the upstream socket is full
                self.assertEqual(self.transport.producerState, "paused")
            self.channel.dataReceived(chunk)          # already in flight
            self.assertLessEqual(body.held, 2 * len(chunk))
            if i % 10 == 0:
                body.resumeProducing()
                self.assertEqual(self.transport.producerState, "producing")
                self.assertEqual(body.held, 0)
        self.assertNoResult(done)
        self.channel.dataReceived(chunk)
        self.successResultOf(done)
        self.assertEqual(b"".join(upstream.chunks), chunk * n)

        d.callback(_Response(202, {b"location": [b"http://registry.example:5000/v2/library"
                                                 b"/app/blobs/uploads/u1?_state=st2"],
                                   b"range": [b"0-%d" % (len(chunk) * n - 1)]}))
        out = self.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 202"), out[:100])
        self.assertIn(b"\r\nLocation: /v2/library/app/blobs/uploads/u1?_state=st2\r\n", out)
        self.assertNotIn(b"Connection: close", out)
        self.assertFalse(self.transport.disconnecting)

    def test_client_gone_mid_body(self):
        """When the client disconnects before its body ended, the upstream
        request's body fails (so the agent drops that request), and the
        failed upstream request is not logged as the upstream's fault."""
        method, uri, headers, body, d = self.open(1000)
        done = body.startProducing(_Upstream())
        self.channel.dataReceived(b"y" * 10)
        with capturedLogs() as events:
            self.channel.connectionLost(Failure(ConnectionLost()))
            self.failureResultOf(done)
            d.errback(ConnectionLost("request body failed"))
        self.assertEqual([formatEvent(e) for e in events if e.get("log_level") is not None
                          and e["log_level"].name in ("warn", "error", "critical")], [])

    def test_answered_before_body_ended(self):
        """When the upstream answers before the client sent its whole body, the
        client gets the answer with Connection: close, the connection closes,
        and the rest of the body is ignored without error."""
        method, uri, headers, body, d = self.open(100000)
        self.channel.dataReceived(b"z" * 1000)
        d.callback(_Response(404, {}))
        self.channel.dataReceived(b"z" * 99000)
        self.channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        out = self.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 404"), out[:100])
        self.assertIn(b"Connection: close", out)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.holding.requests), 1)

    def test_refused_write_with_body(self):
        """When a write with a body is refused (registry not allowed), nothing is
        contacted, the client gets 403 and the connection closes."""
        self.channel.dataReceived(b"PUT /v2/a/blobs/uploads/u?ns=evil.example HTTP/1.1\r\n"
                                  b"Host: m\r\nContent-Length: 5000\r\n\r\n" + b"w" * 5000)
        out = self.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 403"), out[:100])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.holding.requests, [])

    def test_chunked_body(self):
        """When the client sends its body chunked, the upstream gets it chunked
        (unknown length), every byte, in order."""
        self.channel.dataReceived(b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: m\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n")
        [(_, _, _, body, d)] = self.holding.requests
        self.assertIs(body.length, UNKNOWN_LENGTH)
        upstream = _Upstream()
        done = body.startProducing(upstream)
        self.channel.dataReceived(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        self.successResultOf(done)
        self.assertEqual(b"".join(upstream.chunks), b"hello world")

    def test_upload_timeout_runs_from_the_last_byte(self):
        """While a body streams up, each byte sent restarts the upstream timeout;
        with no progress for the timeout, the request is cancelled (504)."""
        method, uri, headers, body, d = self.open(300)
        body.startProducing(_Upstream())
        for _ in range(2):
            self.clock.advance(20)
            self.channel.dataReceived(b"a" * 100)
        self.clock.advance(20)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(11)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 504"))

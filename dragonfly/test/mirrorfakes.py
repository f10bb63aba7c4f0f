"""Fakes for the registry mirror's tests: an upstream registry, a blob source
(the peer, as an L{IDownloader}), a recording agent, and the mixin that wires a
L{RegistryMirror} to them behind a StubTreq client."""
import hashlib
import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from dragonfly.dfdaemon.mirror import RegistryMirror
from dragonfly.dfdaemon.upstream import Upstreams
from dragonfly.interfaces import IDownloader
from dragonfly.metrics import PeerMetrics

BLOB = b"layer-bytes-" * 100
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
OTHER = b"another layer" * 7
OTHER_DIGEST = "sha256:" + hashlib.sha256(OTHER).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "layers": [{"digest": DIGEST}]}).encode()
MANIFEST_TYPE = b"application/vnd.oci.image.manifest.v1+json"
REALM = b'Bearer realm="https://auth.example/token",service="registry.example"'
MIRROR = "http://mirror.local:65001"
UPLOAD_STATE = b"s3cr3t-upload-state"


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
        #: With a token: anonymous requests get 302 to a login page (single sign-on).
        self.login_redirect = False
        #: Blobs answered with this redirect (code, URL prefix) to a blob store.
        self.blob_redirect = None
        #: Upload sessions: uuid -> bytes so far.
        self.uploads = {}
        self.upload_count = 0
        #: Base of upload Locations (default: http:// + the Host asked).
        self.location_base = None

    def seen(self, method=None):
        return [r for r in self.requests if method is None or r["method"] == method]

    def render(self, request):
        self.requests.append({
            "method": request.method.decode(), "uri": request.uri.decode(),
            "headers": {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read() if request.content is not None else b"",
        })
        host = request.getRequestHostname()
        if host == b"sso.example":   # the login page: 200 to anyone
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return b"<html><body><form>log in</form></body></html>"
        if host == b"storage.example" and b"/blobs/" in request.path:   # signed URLs
            data = self.blobs.get(request.path.rsplit(b"/", 1)[1].decode(), b"")
            request.setHeader(b"content-type", b"application/octet-stream")
            return data
        if self.token and request.getHeader(b"authorization") != b"Bearer " + self.token:
            if self.login_redirect:
                request.setResponseCode(302)
                request.setHeader(b"location", b"https://sso.example/login?next=/v2/")
                return b""
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", REALM)
            request.setHeader(b"content-type", b"application/json")
            return b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        path = request.path
        if path == b"/v2/":
            request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        if b"/blobs/uploads/" in path:
            return self.upload(request)
        if request.method in (b"DELETE", b"PUT"):
            request.setResponseCode(202 if request.method == b"DELETE" else 201)
            return b""
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
            if self.blob_redirect is not None:
                code, prefix = self.blob_redirect
                request.setResponseCode(code)
                request.setHeader(b"location", prefix + digest.encode())
                return b""
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"docker-content-digest", digest.encode())
            return data
        request.setResponseCode(404)
        return b"{}"


    def upload(self, request):
        """distribution's upload session: POST opens it, PATCH appends, PUT
        ?digest= closes it; Locations absolute, from the Host asked, with a
        signed-looking C{_state} (L{location_base} overrides the base)."""
        name = request.path.split(b"/blobs/uploads/")[0]
        base = self.location_base or b"http://" + request.getHeader(b"host")
        if request.method == b"POST":
            self.upload_count += 1
            uuid = b"u%d" % self.upload_count
            self.uploads[uuid] = b""
        else:
            uuid = request.path.rsplit(b"/", 1)[1]
            if uuid not in self.uploads:
                request.setResponseCode(404)
                return b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}'
            self.uploads[uuid] += self.requests[-1]["body"]
        data = self.uploads[uuid]
        if request.method == b"PUT":
            digest = request.args.get(b"digest", [b""])[0].decode()
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                request.setResponseCode(400)
                return b'{"errors":[{"code":"DIGEST_INVALID"}]}'
            self.blobs[digest] = data
            request.setResponseCode(201)
            request.setHeader(b"location", base + name + b"/blobs/" + digest.encode())
            request.setHeader(b"docker-content-digest", digest.encode())
            return b""
        request.setResponseCode(202)
        request.setHeader(b"location", base + name + b"/blobs/uploads/" + uuid
                          + b"?_state=" + UPLOAD_STATE)
        request.setHeader(b"docker-upload-uuid", uuid)
        request.setHeader(b"range", b"0-%d" % (max(len(data), 1) - 1))
        return b""


class FakeTaskFile:
    is_complete = False    # never remembered as a verified blob

    def __init__(self, task_id, url, length):
        self.task_id = task_id
        self.url = url
        self.length = length

    def intact(self):
        return True


@implementer(IPullProducer)
class _FakeStream:
    """One chunk per resumeProducing of [start, end), like the peer's ordered
    stream; bytes past the peer's C{available} and outside its C{held}
    windows wait for release() / release_window()."""

    def __init__(self, peer, data, consumer, start, end=None):
        self.peer = peer
        self.data = data
        self.consumer = consumer
        self.start = start
        self.offset = start
        self.end = len(data) if end is None else min(end, len(data))
        self.done = defer.Deferred()
        self.stopped = False
        self.resumes = 0
        self.waiting = False

    def resumeProducing(self):
        self.resumes += 1
        if self.stopped or self.done.called:
            return
        limit = self.peer.held_until(self.offset)
        if limit <= self.offset:
            self.waiting = True
            return
        n = min(self.peer.chunk, limit - self.offset, self.end - self.offset)
        chunk = self.data[self.offset:self.offset + n]
        self.offset += n
        last = self.offset >= self.end
        if last:
            self.consumer.unregisterProducer()
        self.consumer.write(chunk)
        if last:
            self.done.callback(None)

    def stopProducing(self):
        self.stopped = True
        if not self.done.called:
            self.done.errback(Exception("consumer stopped reading"))


@implementer(IDownloader)
class FakePeer:
    """The blob source: PeerNode.download(on_start=...) and PeerNode.stream()."""

    def __init__(self, blobs):
        self.blobs = dict(blobs)
        self.downloads = []
        self.streams = []
        self.fail = None
        self.chunk = 100
        self.available = 1 << 60
        self.held = []  # (lo, hi) byte windows held besides [0, available)
        self.serve = {}  # digest -> bytes served instead (corruption)
        self.dropped = []  # (task_id, reason) given to drop_corrupt

    def download(self, url, headers=None, task_id=None, on_start=None, digest=None, want=None,
                 **kw):
        self.downloads.append({"url": url, "headers": dict(headers or {}), "task_id": task_id,
                               "want": want})
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

    def drop_corrupt(self, task_id, reason):
        self.dropped.append((task_id, reason))
        return defer.succeed(None)

    def stream(self, task_file, consumer, start=0, end=None):
        data = self.serve.get(task_file.task_id, self.blobs.get(task_file.task_id))
        s = _FakeStream(self, data, consumer, start, end)
        self.streams.append(s)
        consumer.registerProducer(s, False)
        return s.done

    def held_until(self, offset):
        """The end of the held bytes from C{offset} on (C{offset} if it is not held)."""
        if offset < self.available:
            return self.available
        return max([hi for lo, hi in self.held if lo <= offset < hi], default=offset)

    def release_window(self, lo, hi):
        """Hold bytes [lo, hi) too (the pieces covering them arrived)."""
        self.held.append((lo, hi))
        self.release(self.available)

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

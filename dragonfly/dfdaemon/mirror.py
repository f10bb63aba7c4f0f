"""The registry mirror: OCI distribution API in front of allowed upstream registries.

- ``GET /v2/<name>/blobs/<digest>`` goes through P2P. The task id is the
  content digest; the registry is asked first (a ``HEAD`` with the client's
  own headers, redirects not followed) whether this client may read that
  blob, so a layer held by the swarm is never handed to a client the
  registry would refuse. Bytes are streamed to the client in order as the
  pieces arrive, with ``Content-Length`` and ``Docker-Content-Digest``; the
  whole blob is hashed on the way and a mismatch aborts the connection (the
  client sees a truncated transfer, never a clean finish). If P2P fails
  before the first byte, the blob is relayed straight from the upstream.
- Everything else under ``/v2/`` (``/v2/``, manifests, tags/list, blob HEAD,
  ...) passes through unchanged: every request header is kept, repeated
  ``Accept`` lines included (Twisted ``Headers`` keep each value), and the
  upstream's status, headers (``WWW-Authenticate`` too) and streamed body come
  back as they are, so clients do the Bearer-token dance themselves.
  Redirects are handed to the client, not followed.
- ``?ns=<host>`` (containerd) picks one of the allowed upstreams; any other
  host, an absolute-URL (proxy-style) request or ``CONNECT`` gets 403.
  The mirror is read-only: other methods get 405.
- ``/healthz`` and ``/metrics`` live on the same port.

Errors are JSON in both the OCI shape and the house shape:
``{"errors": [{"code", "message", "detail"}], "error": "..."}``.
"""
import hashlib
import json
import re
from urllib.parse import unquote_plus

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from dragonfly.dfdaemon.upstream import Refused
from dragonfly.taskid import is_oci_digest

# The OCI distribution spec's repository name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"\A{_COMPONENT}(?:/{_COMPONENT})*\Z")
_BLOB_RE = re.compile(rb"\A/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)\Z")
# Characters a passthrough path may contain (no %, no spaces, no backslashes).
_SAFE_PATH_RE = re.compile(rb"\A/v2/[A-Za-z0-9._/:@+=~-]*\Z")
MAX_URI = 8192
MAX_NAME = 255

# Never forwarded in either direction (RFC 9110 7.6.1), plus Host (the agent sets it).
_HOP_BY_HOP = frozenset(h.lower() for h in (
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"))
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Range, conditionals and encodings are not for a HEAD that only asks "may I?".
_NOT_FOR_ACCESS_CHECK = {b"range", b"if-range", b"if-match", b"if-none-match",
                         b"if-modified-since", b"if-unmodified-since"}


class MirrorError(Exception):
    """A request the mirror answers itself with an error (status, OCI code, message)."""

    def __init__(self, status, code, message):
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code, message):
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}],
                       "error": message}).encode()


def parse_range(value, length):
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range of a C{length}-byte body.

    Returns (first, last) inclusive; None to ignore the header (malformed or
    several ranges: the whole body is sent, as RFC 9110 allows); raises
    ValueError when the range cannot be satisfied (416).
    """
    if value is None:
        return None
    value = value.strip()
    if not value.startswith(b"bytes=") or b"," in value:
        return None
    first, sep, last = value[6:].partition(b"-")
    first, last = first.strip(), last.strip()
    if not sep or (first and not first.isdigit()) or (last and not last.isdigit()) \
            or not (first or last):
        return None
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or length == 0:
            raise ValueError("empty suffix range")
        return max(0, length - n), length - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= length:
        raise ValueError("range starts past the end")
    return start, length - 1 if end is None else min(end, length - 1)


def _unregister(request):
    """Unregister the request's producer, also after the client went away."""
    if request.channel is not None:
        request.unregisterProducer()
    else:
        request.producer = None


def _abort(request):
    """Drop the client connection without completing the response."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) if channel is not None else None
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()


@implementer(IConsumer, IPushProducer)
class BlobSink:
    """Receives a blob's bytes in order, hashes all of them, writes a window to the request.

    To the blob source it is a consumer; to the request it is a push
    producer, so the client's socket paces the swarm end to end. A pull
    producer (one chunk per C{resumeProducing}, like the peer's ordered
    stream) is driven here directly -- one chunk asked for after each chunk
    written, none while the client's socket is full -- rather than by
    Twisted's C{_PullToPush}, whose cooperator would spin while the producer
    waits for pieces from the network.
    """

    def __init__(self, request, digest, length, first=0, last=None, on_bytes=None):
        algo, _, self.expected = digest.partition(":")
        self._hash = hashlib.new(algo)
        self.request = request
        self.length = length
        self.first = first
        self.last = length - 1 if last is None else last
        self.offset = 0
        self.producer = None
        self.streaming = False
        self._registered = False
        self._paused = False
        self._pulling = False
        self._again = False
        self._on_bytes = on_bytes or (lambda n: None)
        self.overflow = False
        self.closed = False
        self._held = None

    # IConsumer, for the blob source

    def registerProducer(self, producer, streaming):
        if self.closed:
            producer.stopProducing()
            return
        self.producer = producer
        self.streaming = bool(streaming)
        if not self._registered and self.request.channel is not None:
            self.request.registerProducer(self, True)
            self._registered = True
        if self.streaming:
            if self._paused:
                producer.pauseProducing()
        else:
            self._pull()

    def unregisterProducer(self):
        self.producer = None
        if self._registered:
            self._registered = False
            _unregister(self.request)

    def write(self, data):
        if self.closed:
            return
        n = len(data)
        end = self.offset + n
        if end > self.length:
            self.overflow = True
            self.close()
            return
        self._hash.update(data)
        lo = max(self.first, self.offset)
        hi = min(self.last + 1, end)
        if hi > lo:
            chunk = data if (lo == self.offset and hi == end) else bytes(
                memoryview(data)[lo - self.offset:hi - self.offset])
            if hi == self.last + 1:
                # The window's final bytes wait for the digest: a client must
                # never receive a complete response for a corrupt blob.
                self._held = chunk
            else:
                self.request.write(chunk)
                self._on_bytes(len(chunk))
        self.offset = end
        if self.producer is not None and not self.streaming:
            self._pull()

    # IPushProducer, for the request

    def pauseProducing(self):
        self._paused = True
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self.producer is None:
            return
        if self.streaming:
            self.producer.resumeProducing()
        else:
            self._pull()

    def stopProducing(self):
        self.close()

    def _pull(self):
        """Ask a pull producer for its next chunk, without recursing per chunk."""
        if self._pulling:
            self._again = True
            return
        self._pulling = True
        try:
            while not (self._paused or self.closed or self.producer is None):
                self._again = False
                self.producer.resumeProducing()
                if not self._again:
                    break
        finally:
            self._pulling = False

    def verified(self):
        return (not self.overflow and self.offset == self.length
                and self._hash.hexdigest() == self.expected)

    def release(self):
        """Write the held-back final bytes (call only once verified())."""
        held, self._held = self._held, None
        if held:
            self.request.write(held)
            self._on_bytes(len(held))

    def close(self):
        """Stop accepting bytes and stop the producer (client gone, or an error)."""
        if self.closed:
            return
        self.closed = True
        producer, self.producer = self.producer, None
        self.unregisterProducer()
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:  # noqa: BLE001 - already stopped is fine
                pass


class _Relay(Protocol):
    """Streams an upstream response body to the client, paced by the client's socket."""

    def __init__(self, request, finished):
        self.request = request
        self.finished = finished
        self.bytes = 0

    def connectionMade(self):
        if self.request.channel is None:
            self.transport.stopProducing()
            return
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.bytes += len(data)
        if self.request.channel is not None:
            self.request.write(data)

    def connectionLost(self, reason):
        _unregister(self.request)
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(self.bytes)
        else:
            self.finished.errback(reason)


class _Exchange:
    """One client request: its kind (for metrics) and whether the client went away."""

    def __init__(self, request):
        self.request = request
        self.kind = "other"
        self.gone = False
        self.on_gone = []
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _reason):
        self.gone = True
        callbacks, self.on_gone = self.on_gone, []
        for f in callbacks:
            f()


class RegistryMirror:
    """The mirror's HTTP side. ``resource()`` is what the listening Site serves.

    @param agent: an C{IAgent} for the upstreams (no redirect following, no
        cookies, no content decoding: bytes pass through as they are).
    @param peer: the blob source, a L{dragonfly.peer.node.PeerNode}:
        ``download(url, headers=, task_id=, on_start=Deferred)`` (C{on_start}
        fires with the TaskFile once its length is known, before the pieces)
        and ``stream(task_file, consumer, start=0)`` -> Deferred fired when
        every byte has been written to C{consumer}.
    @param upstreams: a L{dragonfly.dfdaemon.upstream.Upstreams}.
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param health: optional callable returning a dict merged into /healthz.
    """

    log = Logger()

    def __init__(self, reactor, agent, peer, upstreams, metrics,
                 header_timeout=60.0, health=None, check_access=True):
        self.reactor = reactor
        self.agent = agent
        self.peer = peer
        self.upstreams = upstreams
        self.metrics = metrics
        self.header_timeout = header_timeout
        self.health = health
        self.check_access = check_access

    def resource(self):
        return _MirrorResource(self)

    # ------------------------------------------------------------ dispatch

    def render(self, request):
        request.defaultContentType = None
        ex = _Exchange(request)
        request.notifyFinish().addBoth(lambda _: self._count(ex))
        try:
            coro = self._dispatch(ex)
        except MirrorError as e:
            self._error(request, e)
            return NOT_DONE_YET
        if coro is None:
            return NOT_DONE_YET
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._failed, ex)
        return NOT_DONE_YET

    def _count(self, ex):
        self.metrics.mirror_requests.labels(kind=ex.kind, code=str(ex.request.code)).inc()

    def _dispatch(self, ex):
        """Validate and route synchronously; return a coroutine for the async part."""
        request = ex.request
        method = request.method
        uri = request.uri
        if method == b"CONNECT" or not uri.startswith(b"/"):
            ex.kind = "refused"
            raise MirrorError(403, "DENIED", "this is a registry mirror, not a proxy")
        if len(uri) > MAX_URI:
            ex.kind = "invalid"
            raise MirrorError(414, "UNSUPPORTED", "request URI too long")
        path, _, query = uri.partition(b"?")
        if path in (b"/healthz", b"/metrics"):
            ex.kind = path[1:].decode()
            if method not in (b"GET", b"HEAD"):
                raise MirrorError(405, "UNSUPPORTED", "only GET and HEAD")
            (self._healthz if path == b"/healthz" else self._metrics)(request)
            return None
        if not (path == b"/v2" or path.startswith(b"/v2/")):
            ex.kind = "invalid"
            raise MirrorError(404, "NOT_FOUND", "not a registry API path (want /v2/...)")
        if method not in (b"GET", b"HEAD"):
            ex.kind = "refused"
            request.setHeader(b"allow", b"GET, HEAD")
            raise MirrorError(405, "UNSUPPORTED", "the mirror is read-only (GET and HEAD only)")
        ns, query = self._split_ns(query)
        try:
            upstream = self.upstreams.select(ns)
        except Refused as e:
            ex.kind = "refused"
            raise MirrorError(403, "DENIED", str(e))
        if path == b"/v2":
            path = b"/v2/"
        self._check_path(ex, path)
        blob = _BLOB_RE.match(path)
        if blob and blob.group("ref") != b"uploads":
            name = blob.group("name").decode("ascii")
            ref = blob.group("ref").decode("ascii")
            if len(name) > MAX_NAME or not NAME_RE.match(name):
                ex.kind = "invalid"
                raise MirrorError(400, "NAME_INVALID", f"invalid repository name {name!r}")
            if not is_oci_digest(ref):
                ex.kind = "invalid"
                raise MirrorError(400, "DIGEST_INVALID",
                                  f"invalid blob digest {ref!r} (want sha256:<64 hex> or sha512:<128 hex>)")
            if method == b"GET":
                ex.kind = "blob"
                return self._blob(ex, upstream, name, ref, path, query)
            ex.kind = "blob-head"
        else:
            ex.kind = "passthrough"
        return self._passthrough(ex, upstream.url(path, query))

    @staticmethod
    def _split_ns(query):
        """Remove containerd's ``ns`` parameter; return (ns or None, remaining raw query)."""
        if not query:
            return None, b""
        kept, ns = [], []
        for item in query.split(b"&"):
            key, _, value = item.partition(b"=")
            if unquote_plus(key.decode("latin-1")) == "ns":
                ns.append(unquote_plus(value.decode("latin-1")))
            elif item:
                kept.append(item)
        if len(ns) > 1:
            raise MirrorError(400, "UNSUPPORTED", "more than one ns parameter")
        return (ns[0] if ns else None), b"&".join(kept)

    @staticmethod
    def _check_path(ex, path):
        segments = path[4:].split(b"/")
        bad = not _SAFE_PATH_RE.match(path) or any(
            s in (b".", b"..") for s in segments) or b"" in segments[:-1]
        if bad:
            ex.kind = "invalid"
            raise MirrorError(400, "NAME_INVALID", "malformed registry path")

    # ------------------------------------------------------------ local answers

    def _healthz(self, request):
        body = {"status": "ok", "role": "dfdaemon", "upstreams": self.upstreams.describe()}
        if self.health is not None:
            try:
                body.update(self.health())
            except Exception as e:  # noqa: BLE001 - report, don't crash
                body.update({"status": "error", "error": str(e)})
        if body.get("status") != "ok":
            request.setResponseCode(503)
        self._json(request, body)

    def _metrics(self, request):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        data = self.metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    @staticmethod
    def _json(request, obj):
        data = json.dumps(obj).encode()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _error(self, request, e):
        if request.startedWriting:
            _abort(request)
            return
        data = error_body(e.code, e.message)
        request.setResponseCode(e.status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _failed(self, failure, ex):
        if ex.gone or ex.request.finished:
            return None
        if failure.check(MirrorError):
            self._error(ex.request, failure.value)
            return None
        self.log.failure("mirror request {uri} failed", failure,
                         uri=ex.request.uri.decode("latin-1"))
        self._error(ex.request, MirrorError(500, "UNKNOWN", "internal error"))
        return None

    # ------------------------------------------------------------ upstream

    def _forward_headers(self, request, drop=frozenset()):
        """The client's headers for the upstream: all of them, repeated lines included,
        minus hop-by-hop ones and C{drop}."""
        out = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            lname = name.lower()
            if lname in _NOT_FORWARDED or lname in drop:
                continue
            out.setRawHeaders(name, list(values))
        return out

    async def _upstream(self, method, url, headers):
        d = self.agent.request(method, url, headers, None)
        timer = self.reactor.callLater(self.header_timeout, d.cancel)
        try:
            return await d
        except defer.CancelledError:
            raise MirrorError(504, "UNAVAILABLE", f"upstream did not answer within "
                                                  f"{self.header_timeout:g}s")
        except MirrorError:
            raise
        except Exception as e:  # noqa: BLE001 - every connection failure is a 502
            self.log.warn("upstream {url} failed: {error}", url=url.decode("latin-1"),
                          error=_describe(e))
            raise MirrorError(502, "UNAVAILABLE", f"upstream registry unreachable: {_describe(e)}")
        finally:
            if timer.active():
                timer.cancel()

    async def _passthrough(self, ex, url, method=None):
        request = ex.request
        method = method or request.method
        response = await self._upstream(method, url, self._forward_headers(request))
        if ex.gone:
            response.deliverBody(_Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            request.responseHeaders.setRawHeaders(name, list(values))
        if method != b"HEAD" and response.length is not UNKNOWN_LENGTH:
            # The agent keeps a body's Content-Length out of .headers.
            request.setHeader(b"content-length", b"%d" % response.length)
        if method == b"HEAD" or response.code in (204, 304) or response.length == 0:
            response.deliverBody(_Discard())
            request.finish()
            return
        finished = defer.Deferred()
        relay = _Relay(request, finished)
        ex.on_gone.append(lambda: relay.transport and relay.transport.stopProducing())
        response.deliverBody(relay)
        try:
            await finished
        except Exception as e:  # noqa: BLE001
            if not ex.gone:
                self.log.warn("upstream body for {url} broke: {error}",
                              url=url.decode("latin-1"), error=_describe(e))
                _abort(request)
            return
        if not ex.gone:
            request.finish()

    # ------------------------------------------------------------ blobs

    async def _blob(self, ex, upstream, name, digest, path, query):
        request = ex.request
        url = upstream.url(path, query)
        if self.check_access:
            # May this client read this blob? The registry decides, not the swarm.
            response = await self._upstream(
                b"HEAD", url, self._forward_headers(request, drop=_NOT_FOR_ACCESS_CHECK))
            response.deliverBody(_Discard())
            if not 200 <= response.code < 400:
                # Hand the client the registry's own answer (challenge, 404, ...), body and all.
                ex.kind = "blob-denied"
                return await self._passthrough(ex, url)
            if ex.gone:
                return
        headers = {}
        auth = request.getHeader(b"authorization")
        if auth:
            headers["Authorization"] = auth.decode("latin-1")
        blob_url = upstream.blob_url(name, digest)
        started = defer.Deferred()
        download = self.peer.download(blob_url, headers=headers, task_id=digest,
                                      on_start=started)
        # The download goes on if this client leaves (it will likely retry);
        # its outcome reaches us through `started` and the stream.
        download.addErrback(lambda f: None if started.called else started.errback(f))
        try:
            task_file = await started
        except Exception as e:  # noqa: BLE001 - anything: fall back to the registry
            if ex.gone:
                return
            self.log.warn("P2P failed for {digest} ({error}); relaying from {upstream}",
                          digest=digest, error=_describe(e), upstream=upstream.base)
            ex.kind = "blob-direct"
            return await self._passthrough(ex, url)
        if ex.gone:
            return
        await self._send_blob(ex, task_file, digest)

    async def _send_blob(self, ex, task_file, digest):
        request = ex.request
        length = task_file.length
        try:
            window = parse_range(request.getHeader(b"range"), length)
        except ValueError:
            request.setHeader(b"content-range", b"bytes */%d" % length)
            raise MirrorError(416, "BLOB_UNKNOWN", "requested range not satisfiable")
        first, last = window if window else (0, length - 1)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", digest.encode())
        request.setHeader(b"etag", b'"%s"' % digest.encode())
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"cache-control", b"max-age=31536000")
        if window:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, length))
        request.setHeader(b"content-length", b"%d" % (last - first + 1 if length else 0))
        if length == 0:
            if hashlib.new(digest.partition(":")[0]).hexdigest() != digest.partition(":")[2]:
                self.log.error("empty blob does not match {digest}", digest=digest)
                _abort(request)
                return
            request.finish()
            return
        sink = BlobSink(request, digest, length, first, last,
                        on_bytes=self.metrics.mirror_blob_bytes.inc)
        stream = self.peer.stream(task_file, sink, 0)
        ex.on_gone.append(sink.close)
        ex.on_gone.append(stream.cancel)
        try:
            await stream
        except Exception as e:  # noqa: BLE001
            sink.close()
            if not ex.gone:
                self.log.warn("P2P stream of {digest} failed after {offset} bytes: {error}",
                              digest=digest, offset=sink.offset, error=_describe(e))
                if request.startedWriting:
                    _abort(request)
                else:
                    raise MirrorError(502, "UNAVAILABLE", f"P2P download failed: {_describe(e)}")
            return
        sink.unregisterProducer()
        if ex.gone:
            return
        if not sink.verified():
            self.log.error(
                "blob {digest} failed verification ({offset} of {length} bytes): aborting",
                digest=digest, offset=sink.offset, length=length)
            ex.kind = "blob-corrupt"
            request.setResponseCode(502)  # for the metrics label; headers are long gone
            _abort(request)
            return
        sink.release()
        request.finish()


def _describe(e):
    if isinstance(e, Failure):
        e = e.value
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r) for r in reasons)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class _Discard(Protocol):
    def connectionLost(self, reason):
        pass


class _MirrorResource(Resource):
    isLeaf = True

    def __init__(self, mirror):
        Resource.__init__(self)
        self._mirror = mirror

    def render(self, request):
        return self._mirror.render(request)

    def getChildWithDefault(self, path, request):  # pragma: no cover - isLeaf
        return self

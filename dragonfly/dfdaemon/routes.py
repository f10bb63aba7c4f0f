"""The mirror's routing: which requests it takes, where each goes, what it answers itself.

L{Routes.dispatch} checks a request synchronously and says where it goes:
``GET /v2/<name>/blobs/<digest>`` to the blobs (P2P), everything else under
``/v2/`` to the pass-through, on the upstream that ``?ns=<host>``
(containerd) picks among the allowed ones: a push's ``POST``/``PUT``/
``PATCH``/``DELETE`` too (L{REGISTRY_METHODS}, kind ``write``), through the
same allow list. Another host, an absolute-URL (proxy-style) request or
``CONNECT`` gets 403; a method the registry API does not use gets 405;
malformed names, digests and paths get 400.
``/healthz`` and ``/metrics`` are answered here, on the same port. Errors are
L{MirrorError}s, written as JSON in both the OCI shape and the house shape:
``{"errors": [{"code", "message", "detail"}], "error": "..."}``.
"""
import re
from urllib.parse import unquote_plus

from twisted.web.resource import Resource

from dragonfly.dfdaemon.upstream import Refused
from dragonfly.httpio import write_json
from dragonfly.redact import redact_text
from dragonfly.taskid import is_oci_digest

# The OCI distribution spec's repository name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"\A{_COMPONENT}(?:/{_COMPONENT})*\Z")
_BLOB_RE = re.compile(rb"\A/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)\Z")
# Characters a passthrough path may contain (no %, no spaces, no backslashes).
_SAFE_PATH_RE = re.compile(rb"\A/v2/[A-Za-z0-9._/:@+=~-]*\Z")
MAX_URI = 8192
MAX_NAME = 255
#: The methods of the OCI distribution API; the pass-through takes each of them.
REGISTRY_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE")


class MirrorError(Exception):
    """A request the mirror answers itself with an error (status, OCI code, message)."""

    def __init__(self, status, code, message):
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message


def oci_error(code, message):
    """An error body in the OCI shape and the house shape at once (URLs redacted)."""
    message = redact_text(message)
    return {"errors": [{"code": code, "message": message, "detail": None}], "error": message}


def write_error(request, e):
    """Answer C{request} with the L{MirrorError} C{e}."""
    write_json(request, e.status, oci_error(e.code, e.message))


class Exchange:
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


class Target:
    """Where a registry request goes: an upstream, a path and a query; for a blob
    GET also the repository C{name} and the blob's C{digest}; C{ns} is the
    client's containerd ``ns`` (None without one)."""

    def __init__(self, upstream, path, query, name=None, digest=None, ns=None):
        self.upstream = upstream
        self.path = path
        self.query = query
        self.name = name
        self.digest = digest
        self.ns = ns

    @property
    def url(self):
        return self.upstream.url(self.path, self.query)


class Routes:
    """Checks and routes requests; answers /healthz and /metrics.

    @param upstreams: a L{dragonfly.dfdaemon.upstream.Upstreams}.
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param health: optional callable returning a dict merged into /healthz.
    """

    def __init__(self, upstreams, metrics, health=None):
        self.upstreams = upstreams
        self.metrics = metrics
        self.health = health

    def dispatch(self, ex):
        """The L{Target} of C{ex}'s request, None when answered here; sets C{ex.kind}.

        Raises L{MirrorError} for a request the mirror refuses.
        """
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
            (self.healthz if path == b"/healthz" else self.metrics_page)(request)
            return None
        if not (path == b"/v2" or path.startswith(b"/v2/")):
            ex.kind = "invalid"
            raise MirrorError(404, "NOT_FOUND", "not a registry API path (want /v2/...)")
        if method not in REGISTRY_METHODS:
            ex.kind = "refused"
            request.setHeader(b"allow", b", ".join(REGISTRY_METHODS))
            raise MirrorError(405, "UNSUPPORTED", "not a registry API method")
        ns, query = split_ns(query)
        try:
            upstream = self.upstreams.select(ns)
        except Refused as e:
            ex.kind = "refused"
            raise MirrorError(403, "DENIED", str(e))
        if path == b"/v2":
            path = b"/v2/"
        check_path(ex, path)
        target = self._target(ex, upstream, path, query)
        target.ns = ns
        return target

    @staticmethod
    def _target(ex, upstream, path, query):
        blob = _BLOB_RE.match(path)
        write = ex.request.method not in (b"GET", b"HEAD")
        if not blob or blob.group("ref") == b"uploads":
            ex.kind = "write" if write else "passthrough"
            return Target(upstream, path, query)
        name = blob.group("name").decode("ascii")
        ref = blob.group("ref").decode("ascii")
        if len(name) > MAX_NAME or not NAME_RE.match(name):
            ex.kind = "invalid"
            raise MirrorError(400, "NAME_INVALID", f"invalid repository name {name!r}")
        if not is_oci_digest(ref):
            ex.kind = "invalid"
            raise MirrorError(400, "DIGEST_INVALID",
                              f"invalid blob digest {ref!r} (want sha256:<64 hex> or sha512:<128 hex>)")
        if ex.request.method == b"GET":
            ex.kind = "blob"
            return Target(upstream, path, query, name, ref)
        ex.kind = "write" if write else "blob-head"
        return Target(upstream, path, query)

    # ------------------------------------------------------------ local answers

    def healthz(self, request):
        body = {"status": "ok", "role": "dfdaemon", "upstreams": self.upstreams.describe()}
        if self.health is not None:
            try:
                body.update(self.health())
            except Exception as e:  # noqa: BLE001 - report, don't crash
                body.update({"status": "error", "error": str(e)})
        write_json(request, 200 if body.get("status") in ("ok", "degraded") else 503, body)

    def metrics_page(self, request):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        data = self.metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()


def split_ns(query):
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
    if len(set(ns)) > 1:
        # The same one twice is fine: a Location the mirror rewrote carries
        # it, and containerd may add its own.
        raise MirrorError(400, "UNSUPPORTED", "more than one ns parameter")
    return (ns[0] if ns else None), b"&".join(kept)


def check_path(ex, path):
    """Refuse (400) a registry path with odd characters, dot segments or empty segments."""
    segments = path[4:].split(b"/")
    bad = not _SAFE_PATH_RE.match(path) or any(
        s in (b".", b"..") for s in segments) or b"" in segments[:-1]
    if bad:
        ex.kind = "invalid"
        raise MirrorError(400, "NAME_INVALID", "malformed registry path")


class MirrorResource(Resource):
    """The leaf resource that hands every request to the mirror's C{render}."""

    isLeaf = True

    def __init__(self, mirror):
        Resource.__init__(self)
        self._mirror = mirror

    def render(self, request):
        return self._mirror.render(request)

    def getChildWithDefault(self, path, request):  # pragma: no cover - isLeaf
        return self

"""The peer's local HTTP API (loopback only): what dfget talks to.

- C{POST /api/v1/download} C{{"url", "headers"?, "task_id"?, "filter"?, "tag"?,
  "digest"?, "pattern"?, "back_source"?, "limit"?}} (the task id is derived
  from the url, filter, tag and digest; a C{task_id} given must be that id)
  -> 200 C{application/x-ndjson}: progress lines C{{"completed": bytes,
  "length": n}}, then one final line, either
  C{{"state": "done", "path", "length", "task_id", "data_dir", "grant"}}
  (C{data_dir}: the store's root, which C{path} is inside; C{grant}: see
  C{/data}) or
  C{{"state": "failed", "error"}}. A malformed request is a 4xx JSON error.
  When the client hangs up, its interest in the download ends (the download
  stops if nobody else wants it). C{"limit"} (bytes/s, a non-negative
  integer; 0 or absent = none) paces this download (dfget C{--limit}; when
  several callers share a task see L{dragonfly.peer.pacing}).
- C{POST /api/v1/tasks/<task_id>/corrupt} C{{"reason"}} -> 202: a client
  found the task's content wrong; the peer drops it and tells its supernode.
- C{GET /api/v1/tasks/<task_id>/data}: the bytes of a task held complete
  (single C{Range: bytes=a-b} honoured), written by the node's push producer
  (L{dragonfly.peer.stream.OrderedPushProducer}). A private task
  (L{dragonfly.privacy}) only with C{X-Dragonfly-Grant} set to the C{"grant"}
  of a download answer for it (valid for 10 minutes), else 403.
- C{GET /api/v1/tasks}: C{{"tasks": [{"task_id", "url", "length", "completed",
  "complete", "downloading", "last_access"}, ...]}} (URLs without query or
  userinfo); C{DELETE /api/v1/tasks/<task_id>}: drop a held task (409 while it
  downloads) and leave its swarm. Both for C{dfctl task}.
- C{GET /healthz}, C{GET /metrics}.

Every route answers only a request a web page in a browser on the host could
not have sent (L{local_refusal}, applied once by L{LocalOnlyResource}): its
C{Host} is a loopback name or address, it has no C{Origin} header (else 403),
and a POST body is C{application/json} (else 415).
"""
import json
import re
import secrets
from collections import OrderedDict
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from dragonfly.httpio import RangeNotSatisfiable, content_range, error_body, json_body, parse_range
from dragonfly.metrics import MetricsResource
from dragonfly.peer.errors import OriginNotAllowed
from dragonfly.peer.node import DownloadError, StreamStopped
from dragonfly.redact import has_userinfo, redact_text, redact_url, userinfo_error
from dragonfly.taskid import derive_task_id, validate_task_id

__all__ = ["PeerAPI", "MAX_BODY"]

MAX_BODY = 64 * 1024


class BadRequest(Exception):
    def __init__(self, message, code=400):
        Exception.__init__(self, message)
        self.code = code


def _read_json(request, cap=MAX_BODY):
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            if int(length) > cap:
                raise BadRequest(f"request body over {cap} bytes", 413)
        except ValueError:
            raise BadRequest("bad Content-Length")
    raw = request.content.read(cap + 1) if request.content is not None else b""
    if len(raw) > cap:
        raise BadRequest(f"request body over {cap} bytes", 413)
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BadRequest("request body is not JSON")
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def parse_download_request(obj):
    """Validate a download request body: kwargs for PeerNode.download (plus task_id)."""
    url = obj.get("url")
    if not isinstance(url, str) or not re.match(r"\Ahttps?://[^/\s]", url, re.I) \
            or len(url) > 8192 or any(c in url for c in "\r\n\0 "):
        raise BadRequest("url must be an http(s) URL")
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port or IPv6 literal
    except ValueError:
        raise BadRequest("url must be an http(s) URL")
    if has_userinfo(url):
        raise BadRequest(userinfo_error(url))
    headers = obj.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise BadRequest("headers must be an object of strings")
    for k, v in headers.items():
        if not re.match(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z", k) or any(c in v for c in "\r\n\0"):
            raise BadRequest(f"bad header {k!r}")
    filters = obj.get("filter") or []
    if isinstance(filters, str):
        filters = [f for f in filters.split(",") if f]
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        raise BadRequest("filter must be a list of query parameter names")
    tag = obj.get("tag") or ""
    if not isinstance(tag, str):
        raise BadRequest("tag must be a string")
    digest = obj.get("digest")
    try:
        task_id = derive_task_id(url, filters, tag, digest)
    except ValueError as e:
        raise BadRequest(str(e))
    claimed = obj.get("task_id")
    if claimed is not None:
        try:
            validate_task_id(claimed)
        except ValueError:
            raise BadRequest("malformed task_id")
        if claimed != task_id:
            raise BadRequest(f"task_id mismatch: {claimed} is not the id of this request "
                             f"({task_id})")
    pattern = obj.get("pattern", "p2p")
    if pattern not in ("p2p", "cdn", "source"):
        raise BadRequest("pattern must be p2p, cdn or source")
    back_source = obj.get("back_source", True)
    if not isinstance(back_source, bool):
        raise BadRequest("back_source must be true or false")
    limit = obj.get("limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise BadRequest("limit must be a non-negative integer (bytes per second)")
    return {"url": url, "headers": headers, "task_id": task_id, "pattern": pattern,
            "back_source": back_source, "limit": limit, "filters": tuple(filters), "tag": tag,
            "digest": digest or None}


_LOOPBACK_HOST_RE = re.compile(
    r"\A(localhost|127(\.\d{1,3}){3}|\[::1\]|\[::ffff:127(\.\d{1,3}){3}\])(:\d{1,5})?\Z",
    re.I)
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def local_refusal(request):
    """Why a request a browser page could have sent (DNS rebinding, CSRF) is
    refused, as C{(code, message)}, or None for a request the API may serve.

    Served: a C{Host} that is a loopback name or address (C{localhost},
    C{127.x.y.z}, C{[::1]}, optional port), no C{Origin} header, and for a
    method with a body a C{Content-Type} of C{application/json} (a page can
    send C{text/plain} cross-origin without a preflight, never JSON).
    """
    hosts = request.requestHeaders.getRawHeaders(b"host") or []
    host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
    if request.requestHeaders.hasHeader(b"origin") or not _LOOPBACK_HOST_RE.match(host):
        return 403, "only loopback clients without an Origin may use this API"
    if request.method in _BODY_METHODS:
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            return 415, "request bodies must be application/json"
    return None


class LocalOnlyResource(Resource):
    """Wraps the Klein resource: every route answers only what
    L{local_refusal} lets through, checked here in one place."""

    isLeaf = True

    def __init__(self, inner):
        Resource.__init__(self)
        self._inner = inner

    def render(self, request):
        refusal = local_refusal(request)
        if refusal is not None:
            return error_body(request, *refusal)
        return self._inner.render(request)


class Grants:
    """Who may read a private task's bytes at C{/data}: the holders of a grant
    from a download answer (a random token naming the task, for C{ttl} s)."""

    def __init__(self, clock, ttl=600.0, limit=10_000):
        self._clock = clock
        self._grants = OrderedDict()
        self.ttl = ttl
        self.limit = limit

    def issue(self, task_id):
        token = secrets.token_urlsafe(18)
        self._grants[token] = (task_id, self._clock.seconds() + self.ttl)
        while len(self._grants) > self.limit:
            self._grants.popitem(last=False)
        return token

    def valid(self, token, task_id):
        entry = self._grants.get(token) if token else None
        if entry is None or entry[1] < self._clock.seconds():
            self._grants.pop(token, None)
            return False
        return entry[0] == task_id


class PeerAPI:
    """Klein app of one peer. C{resource()} gives the twisted.web resource."""

    app = Klein()
    log = Logger()

    def __init__(self, node, store, metrics, clock, progress_interval=0.25):
        self._node = node
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.progress_interval = progress_interval
        self._grants = Grants(clock)

    def resource(self):
        return LocalOnlyResource(self.app.resource())

    # -- errors -------------------------------------------------------------

    @app.handle_errors(BadRequest)
    def _bad_request(self, request, failure):
        return error_body(request, failure.value.code, str(failure.value))

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return error_body(request, 404, "not found")

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request, failure):
        return error_body(request, 405, "method not allowed")

    # -- routes ---------------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request):
        body = {"status": "ok", "role": "peer", "peer_id": self._node.peer_info.peer_id,
                "downloads": len(self._node.active()), "tasks": len(self._store.tasks()),
                "data_dir": self._store.root}
        report = getattr(self._store, "health_report", None)
        if report is not None:
            body.update(report())   # "degraded" (200) or "unavailable" (503), with reasons
        return json_body(request, 503 if body["status"] == "unavailable" else 200, body)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        self._metrics.cache_bytes.set(self._store.held_bytes()
                                      if hasattr(self._store, "held_bytes") else 0)
        return MetricsResource(self._metrics)

    @app.route("/api/v1/download", methods=["POST"])
    def download(self, request):
        params = parse_download_request(_read_json(request))
        return Deferred.fromCoroutine(self._download(request, params))

    async def _download(self, request, params):
        gone = []
        request.notifyFinish().addBoth(gone.append)
        last = [None]
        started = []
        held, told = [], []   # the task file; whether "uncached" was said

        def line(obj):
            if not started:   # the status is 200 once a line is out
                started.append(True)
                request.setResponseCode(200)
                request.setHeader(b"content-type", b"application/x-ndjson")
                request.setHeader(b"cache-control", b"no-store")
            if not gone:
                request.write(json.dumps(obj).encode() + b"\n")

        def progress(completed, length):
            if held and held[0].uncached and not told:   # the cache is full
                told.append(True)
                line({"uncached": True, "task_id": held[0].task_id, "length": length,
                      "grant": self._grants.issue(held[0].task_id)})
            now = self._clock.seconds()
            if completed < length and last[0] is not None \
                    and now - last[0] < self.progress_interval:
                return
            last[0] = now
            line({"completed": completed, "length": length})

        self.log.info("download {url} ({task})", url=redact_url(params["url"]),
                      task=params["task_id"])
        try:
            tf = await self._node.download(on_progress=progress, on_start=held.append,
                                           **params)
        except DownloadError as e:
            if isinstance(e, OriginNotAllowed) and not started:
                return error_body(request, 403, str(e))
            line({"state": "failed", "error": redact_text(str(e))})
            return None
        line({"completed": tf.length, "length": tf.length})
        if not tf.is_complete:   # passed through: the bytes went (go) out through /data
            line({"state": "done", "uncached": True, "length": tf.length,
                  "task_id": tf.task_id, "grant": self._grants.issue(tf.task_id)})
            return None
        line({"state": "done", "path": tf.path, "length": tf.length, "task_id": tf.task_id,
              "data_dir": self._store.root, "grant": self._grants.issue(tf.task_id)})
        return None

    @app.route("/api/v1/tasks", methods=["GET"])
    def tasks(self, request):
        active = set(self._node.active())
        rows = [{"task_id": tf.task_id, "url": redact_url(tf.url), "length": tf.length,
                 "completed": tf.completed_bytes, "complete": tf.is_complete,
                 "downloading": tf.task_id in active, "last_access": tf.last_access}
                for tf in sorted(self._store.tasks(), key=lambda t: t.task_id)]
        return json_body(request, 200, {"tasks": rows})

    @app.route("/api/v1/tasks/<string:task_id>", methods=["DELETE"])
    def remove_task(self, request, task_id):
        try:
            validate_task_id(task_id)
        except ValueError:
            raise BadRequest("malformed task id")
        if task_id in self._node.active():
            return error_body(request, 409, "the task is downloading")
        if self._store.get(task_id) is None:
            return error_body(request, 404, "task not held")
        self._store.remove(task_id)
        self._node.leave(task_id).addErrback(
            lambda f: self.log.warn("leaving the swarm of {task}: {why}", task=task_id,
                                    why=f.getErrorMessage()))
        self.log.info("task {task} removed through the API", task=task_id)
        return json_body(request, 200, {"task_id": task_id, "removed": True})

    @app.route("/api/v1/tasks/<string:task_id>/corrupt", methods=["POST"])
    def corrupt(self, request, task_id):
        """dfget found the task's content wrong (its --digest): drop our copy and
        tell the supernode (L{PeerNode.drop_corrupt})."""
        try:
            validate_task_id(task_id)
        except ValueError:
            raise BadRequest("malformed task id")
        reason = _read_json(request).get("reason")
        if not isinstance(reason, str):
            reason = "a client found the content wrong"
        self._node.drop_corrupt(task_id, reason[:1000])
        return json_body(request, 202, {})

    @app.route("/api/v1/tasks/<string:task_id>/data", methods=["GET", "HEAD"])
    def data(self, request, task_id):
        try:
            validate_task_id(task_id)
        except ValueError:
            raise BadRequest("malformed task id")
        tf = self._store.get(task_id)
        if tf is None or not (tf.is_complete or tf.uncached):   # uncached: streamed once
            return error_body(request, 404, "task not held")
        grant = (request.getHeader(b"x-dragonfly-grant") or b"").decode("latin-1")
        if self._node.is_private(task_id) and not self._grants.valid(grant, task_id):
            return error_body(request, 403, "the task is private: ask for it with "
                                            "POST /api/v1/download first")
        try:
            window = parse_range(request.getHeader(b"range"), tf.length)
        except RangeNotSatisfiable:
            request.setHeader(b"content-range", content_range(None, tf.length))
            return error_body(request, 416, "range not satisfiable")
        start, end = 0, tf.length
        if window is not None:
            start, end = window[0], window[1] + 1
            request.setResponseCode(206)
            request.setHeader(b"content-range", content_range(window, tf.length))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-length", str(end - start).encode())
        tf.touch()
        if request.method == b"HEAD" or start == end:
            return b""
        tf.pin()
        d = self._node.stream(tf, request, start, end)

        def done(result):
            tf.unpin()
            return result

        def stopped(f):
            f.trap(StreamStopped)
            return None
        d.addBoth(done)
        d.addErrback(stopped)
        return d


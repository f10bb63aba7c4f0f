"""The peer's local HTTP API (loopback only): what dfget talks to.

- C{POST /api/v1/download} C{{"url", "headers"?, "task_id"?, "filter"?, "tag"?,
  "digest"?, "pattern"?, "back_source"?}} (the task id is derived from the
  url, filter, tag and digest; a C{task_id} given must be that id) -> 200
  C{application/x-ndjson}: progress lines C{{"completed": bytes, "length":
  n}}, then one final line, either
  C{{"state": "done", "path", "length", "task_id"}} or
  C{{"state": "failed", "error"}}. A malformed request is a 4xx JSON error.
  When the client hangs up, its interest in the download ends (the download
  stops if nobody else wants it).
- C{POST /api/v1/tasks/<task_id>/corrupt} C{{"reason"}} -> 202: a client
  found the task's content wrong; the peer drops it and tells its supernode.
- C{GET /api/v1/tasks/<task_id>/data}: the bytes of a task held complete
  (single C{Range: bytes=a-b} honoured), streamed by a pull producer.
- C{GET /healthz}, C{GET /metrics}.
"""
import json
import re

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from dragonfly.httpio import RangeNotSatisfiable, content_range, error_body, json_body, parse_range
from dragonfly.metrics import MetricsResource
from dragonfly.peer.node import DownloadError, StreamStopped
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
    if pattern not in ("p2p", "source"):
        raise BadRequest("pattern must be p2p or source")
    back_source = obj.get("back_source", True)
    if not isinstance(back_source, bool):
        raise BadRequest("back_source must be true or false")
    return {"url": url, "headers": headers, "task_id": task_id, "pattern": pattern,
            "back_source": back_source, "filters": tuple(filters), "tag": tag,
            "digest": digest or None}


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

    def resource(self):
        return self.app.resource()

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
        return json_body(request, 200, {
            "status": "ok", "role": "peer", "peer_id": self._node.peer_info.peer_id,
            "downloads": len(self._node.active()), "tasks": len(self._store.tasks())})

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
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.setHeader(b"cache-control", b"no-store")
        gone = []
        request.notifyFinish().addBoth(gone.append)
        last = [None]

        def line(obj):
            if not gone:
                request.write(json.dumps(obj).encode() + b"\n")

        def progress(completed, length):
            now = self._clock.seconds()
            if completed < length and last[0] is not None \
                    and now - last[0] < self.progress_interval:
                return
            last[0] = now
            line({"completed": completed, "length": length})

        self.log.info("download {url} ({task})", url=params["url"], task=params["task_id"])
        try:
            tf = await self._node.download(on_progress=progress, **params)
        except DownloadError as e:
            line({"state": "failed", "error": str(e)})
            return None
        line({"completed": tf.length, "length": tf.length})
        line({"state": "done", "path": tf.path, "length": tf.length, "task_id": tf.task_id})
        return None

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
        if tf is None or not tf.is_complete:
            return error_body(request, 404, "task not held")
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


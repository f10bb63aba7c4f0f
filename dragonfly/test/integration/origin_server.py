"""A Twisted origin for the demo (and ``Swarm.start_origin(server="twisted")``),
run as its own process. The integration tests' origin is nginx
(``harness.NginxOrigin``); origins that misbehave on purpose (cut bodies,
stalls, lying lengths) live in the tests that need them.

    python -m dragonfly.test.integration.origin_server --root DIR --port-file F

Serves the files under ``--root`` with ``twisted.web.static.File`` (so Range,
suffix ranges and multi-range requests, ``Last-Modified`` and
``If-Modified-Since`` behave like a real web server) plus a strong ``ETag``
with ``If-None-Match`` -> 304. Once listening it writes ``{"port": N}`` to the
port file (atomically: temp name, then rename).

Test hooks, all under ``/__``-prefixed paths so they never shadow a file:

- ``GET /__stats``: JSON ``{"total_body_bytes": n, "paths": {"/x": {"requests":
  n, "body_bytes": n, "ranges": [...], "statuses": {...}, "user_agents":
  [...]}}}``. ``body_bytes`` counts the response body bytes the server wrote
  to the connection for that path (headers excluded, HEAD and 304 count 0).
- ``POST /__reset``: zero the counters.
- ``GET /__headers``: echo the request headers back as JSON.
- ``/auth/<file>``: the same files, but only with ``Authorization: Bearer
  <token>`` (``--auth-token``, default ``x``); otherwise 401.
- ``--rate BYTES_PER_SECOND``: throttle every body (a pull of at most
  rate/10 bytes every 100 ms per response), to make downloads last long
  enough to interrupt them.
"""
import argparse
import json
import os
import sys

from twisted.internet import endpoints
from twisted.python import log
from twisted.web import http, resource, server, static


class Stats:
    def __init__(self):
        self.reset()

    def reset(self):
        self.paths = {}
        self.total = 0

    def _entry(self, path):
        return self.paths.setdefault(path, {
            "requests": 0, "body_bytes": 0, "ranges": [], "statuses": {},
            "user_agents": []})

    def request(self, path, rng, user_agent):
        e = self._entry(path)
        e["requests"] += 1
        if rng is not None and len(e["ranges"]) < 1000:
            e["ranges"].append(rng)
        if user_agent and user_agent not in e["user_agents"] and len(e["user_agents"]) < 20:
            e["user_agents"].append(user_agent)

    def body(self, path, n):
        self._entry(path)["body_bytes"] += n
        self.total += n

    def status(self, path, code):
        st = self._entry(path)["statuses"]
        st[str(code)] = st.get(str(code), 0) + 1

    def to_json(self):
        return {"total_body_bytes": self.total, "paths": self.paths}


class CountingRequest(server.Request):
    """A Request that counts the body bytes it writes, per path."""

    _stats = None  # the Site's Stats, captured in process()

    def _statsPath(self):
        return self.path.decode("utf-8", "replace")

    def _counted(self):
        return not self.path.startswith(b"/__")

    def process(self):
        self._stats = self.channel.site.stats
        if self._counted():
            rng = self.getHeader(b"range")
            ua = self.getHeader(b"user-agent")
            self._stats.request(
                self._statsPath(),
                rng.decode("latin-1") if rng is not None else None,
                ua.decode("latin-1") if ua is not None else None)
        server.Request.process(self)

    def write(self, data):
        if (self._stats is not None and self._counted() and self.method != b"HEAD" and data
                and self.code != http.NOT_MODIFIED and not self.finished
                and not self._disconnected):
            self._stats.body(self._statsPath(), len(data))
        self._countStatus()
        server.Request.write(self, data)

    def finish(self):
        self._countStatus()
        return server.Request.finish(self)

    def _countStatus(self):
        # once per response, when its headers go out
        if (self._stats is not None and self._counted() and not self.startedWriting
                and not getattr(self, "_statusCounted", False)):
            self._statusCounted = True
            self._stats.status(self._statsPath(), self.code)


class OriginFile(static.File):
    """static.File with a strong ETag and no directory listings."""

    def directoryListing(self):
        return resource.ForbiddenResource("no directory listings")

    def render_GET(self, request):
        self.restat(False)
        if self.exists() and not self.isdir():
            st = os.stat(self.path)
            etag = '"%x-%x"' % (st.st_size, st.st_mtime_ns)
            if request.setETag(etag.encode("ascii")) == http.CACHED:
                return b""
        return static.File.render_GET(self, request)

    render_HEAD = render_GET


class Origin(resource.Resource):
    def __init__(self, root, auth_token, rate, clock):
        resource.Resource.__init__(self)
        if rate:
            self.files = RateLimitedFile(root)
            self.files.rate, self.files.clock = rate, clock
        else:
            self.files = OriginFile(root)
        self.auth_token = auth_token

    def getChild(self, name, request):
        if name == b"__stats":
            return StatsResource()
        if name == b"__reset":
            return ResetResource()
        if name == b"__headers":
            return HeadersResource()
        if name == b"auth":
            want = b"Bearer " + self.auth_token.encode()
            if request.getHeader(b"authorization") != want:
                return JSONError(http.UNAUTHORIZED, "authorization required")
            return self.files
        return self.files.getChildWithDefault(name, request)

    def render(self, request):
        return self.files.render(request)


class JSONError(resource.Resource):
    isLeaf = True

    def __init__(self, code, message):
        resource.Resource.__init__(self)
        self.code, self.message = code, message

    def render(self, request):
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        if self.code == http.UNAUTHORIZED:
            request.setHeader(b"www-authenticate", b'Bearer realm="origin"')
        return json.dumps({"error": self.message}).encode()


class StatsResource(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(request.site.stats.to_json()).encode()


class ResetResource(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.site.stats.reset()
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class HeadersResource(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        headers = {}
        for k, vs in request.requestHeaders.getAllRawHeaders():
            headers[k.decode("latin-1").lower()] = [v.decode("latin-1") for v in vs]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(headers).encode()


class RateLimitedFile(OriginFile):
    """Serve bodies at ``rate`` bytes per second (approximately)."""

    rate = 0
    clock = None

    def createSimilarFile(self, path):
        f = OriginFile.createSimilarFile(self, path)
        f.rate, f.clock = self.rate, self.clock
        return f

    def makeProducer(self, request, fileForReading):
        inner = static.File.makeProducer(self, request, fileForReading)
        return _PacedProducer(inner, request, self.rate, self.clock)


class _PacedProducer:
    """Let static.File's pull producer run, but meter request.write.

    We register ourselves as the request's pull producer and forward
    resumeProducing to static.File's producer only while the current 100 ms
    budget lasts; otherwise the next chunk waits for the budget to refill.
    """

    def __init__(self, inner, request, rate, clock):
        self.inner = inner
        self.request = request
        self.rate = rate
        self.clock = clock
        self.allowance = rate / 10.0
        self.pending = None
        self.stopped = False

    def start(self):
        # static's producers register themselves as a pull producer with the
        # request; we register instead and drive the inner one ourselves.
        inner = self.inner
        real_register = self.request.registerProducer

        def register(producer, streaming):
            real_register(self, False)
        self.request.registerProducer = register
        try:
            inner.start()
        finally:
            self.request.registerProducer = real_register

    def resumeProducing(self):
        if self.stopped or self.pending is not None:
            return
        if self.allowance <= 0:
            self.pending = self.clock.callLater(0.1, self._refill)
            return
        before = self.request.sentLength
        self.inner.resumeProducing()
        self.allowance -= max(0, self.request.sentLength - before)

    def _refill(self):
        self.pending = None
        # carry any overdraft so the long-run rate stays at ``rate``
        self.allowance = min(self.allowance + self.rate / 10.0, self.rate / 10.0)
        self.resumeProducing()

    def stopProducing(self):
        self.stopped = True
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        self.inner.stopProducing()

    def pauseProducing(self):
        pass


def write_port_file(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="directory of files to serve")
    p.add_argument("--port-file", required=True, help='write {"port": N} here once bound')
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1", help="endpoint string")
    p.add_argument("--auth-token", default="x", help="token /auth/ paths require")
    p.add_argument("--rate", type=int, default=0, help="throttle bodies to N bytes/s (0 = off)")
    p.add_argument("--log", default=None, help="access log file (default: stdout)")
    args = p.parse_args(argv)

    from twisted.internet import reactor

    log.startLogging(sys.stdout)
    site = server.Site(Origin(os.path.abspath(args.root), args.auth_token, args.rate, reactor),
                       logPath=args.log)
    site.requestFactory = CountingRequest
    site.stats = Stats()

    def bound(port):
        write_port_file(args.port_file, {"port": port.getHost().port})

    def failed(f):
        log.err(f, "cannot listen")
        reactor.stop()

    d = endpoints.serverFromString(reactor, args.listen).listen(site)
    d.addCallbacks(bound, failed)
    reactor.run()


if __name__ == "__main__":
    main()

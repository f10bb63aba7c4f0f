"""A scriptable HTTP origin (a twisted.web Resource) for StubTreq-based tests."""
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class FakeOrigin(Resource):
    """Serves C{files} {path: bytes} with ETag/Last-Modified, Range and
    conditional requests, and misbehaves on demand:

      - C{breaks[path]}: a list of byte counts; each request for path takes
        the first one, sends that many body bytes, then drops the connection;
      - C{no_range}: paths that ignore Range (always 200, full body);
      - C{chunked}: paths sent without Content-Length;
      - C{status[path]}: answer this status instead;
      - C{redirects[path]}: 302 to this location;
      - C{hold}: paths whose answers wait for L{release} (then flush the StubTreq);
      - C{auth[path]}: C{allowed(headers, query) -> status or None}: a status
        (401, 403) refuses the request, None serves it; C{challenge[path]} is
        the C{WWW-Authenticate} sent with such a 401;
      - C{no_head}: paths that answer HEAD with 405;
      - C{open_ranges}: paths that answer ``bytes=a-b`` as if it were ``bytes=a-``.

    C{requests} records (method, path, {lower-case header: value}).
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.files = {}
        self.etags = {}
        self.last_modified = {}
        self.breaks = {}
        self.no_range = set()
        self.chunked = set()
        self.status = {}
        self.redirects = {}
        self.hold = set()
        self.held = []
        self.auth = {}
        self.challenge = {}
        self.no_head = set()
        self.open_ranges = set()
        self.requests = []

    def release(self):
        """Answer the requests parked because their path is in C{hold}."""
        held, self.held = self.held, []
        for request, body in held:
            if not request.finished and not request._disconnected:
                request.write(body)
                request.finish()

    def add(self, path, data, etag=None, last_modified=None):
        self.files[path] = data
        if etag is not None:
            self.etags[path] = etag
        if last_modified is not None:
            self.last_modified[path] = last_modified

    def gets(self, path=None):
        return [r for r in self.requests if r[0] == "GET" and (path is None or r[1] == path)]

    def render(self, request):
        path = request.path.decode("utf-8")
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method.decode("ascii"), path, headers))
        if path in self.redirects:
            request.setResponseCode(302)
            request.setHeader(b"location", self.redirects[path].encode("ascii"))
            return b""
        if path in self.status:
            request.setResponseCode(self.status[path])
            return b"scripted error\n"
        if path in self.auth:
            query = request.uri.decode("latin-1").partition("?")[2]
            refusal = self.auth[path](headers, query)
            if refusal is not None:
                request.setResponseCode(refusal)
                if refusal == 401 and path in self.challenge:
                    request.setHeader(b"www-authenticate", self.challenge[path].encode("latin-1"))
                return b"go away\n"
        if request.method == b"HEAD" and path in self.no_head:
            request.setResponseCode(405)
            return b""
        data = self.files.get(path)
        if data is None:
            request.setResponseCode(404)
            return b"not found\n"
        etag = self.etags.get(path)
        lm = self.last_modified.get(path)
        if etag:
            request.setHeader(b"etag", etag.encode("latin-1"))
        if lm:
            request.setHeader(b"last-modified", lm.encode("latin-1"))
        inm = headers.get("if-none-match")
        ims = headers.get("if-modified-since")
        if (inm is not None and etag is not None and inm == etag) or (
                inm is None and ims is not None and lm is not None and ims == lm):
            request.setResponseCode(304)
            return b""
        start = 0
        rng = headers.get("range")
        if rng == "bytes=0-0" and path not in self.no_range and data:
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes 0-0/{len(data)}".encode())
            request.setHeader(b"content-length", b"1")
            return data[:1]
        stop = len(data)
        if rng and path not in self.no_range and rng.startswith("bytes=") and "," not in rng:
            if_range = headers.get("if-range")
            if if_range is None or if_range in (etag, lm):
                first, _, last = rng[len("bytes="):].partition("-")
                start = int(first)
                if start >= len(data):
                    request.setResponseCode(416)
                    request.setHeader(b"content-range", f"bytes */{len(data)}".encode())
                    return b""
                stop = min(int(last) + 1, len(data)) if last and path not in self.open_ranges \
                    else len(data)
                request.setResponseCode(206)
                request.setHeader(b"content-range",
                                  f"bytes {start}-{stop - 1}/{len(data)}".encode())
        body = data[start:stop]
        brk = self.breaks.get(path)
        if brk:
            n = brk.pop(0)
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body[:n])
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        if path in self.hold:
            request.setHeader(b"content-length", str(len(body)).encode())
            self.held.append((request, body))
            return NOT_DONE_YET
        if path in self.chunked:
            request.write(body)
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"content-length", str(len(body)).encode())
        return body

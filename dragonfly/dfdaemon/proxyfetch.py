"""The proxy's P2P path: a GET a rule matched, served from the peer as dfget would fetch it.

The download is the peer's own (L{dragonfly.interfaces.IDownloader}, the
same C{download} then C{stream} the mirror's blobs use): the task id is the
one dfget derives for the URL with the rule's C{filter} and C{tag} (a sha256
digest names the task), the client's end-to-end request headers go to the
origin as C{dfget -H} would send them (so a request carrying
C{Authorization} or C{Cookie} makes its task private and the peer checks
each later caller with the origin: L{dragonfly.privacy}), and the bytes reach
the client through the mirror's L{dragonfly.dfdaemon.blobs.BlobSink}
(the peer's consumer and the request's producer: the client's socket paces
the swarm). With a digest the whole body is hashed on the way and its last
bytes are held back until it matched; a mismatch aborts the connection and
the peer drops its copy.

A C{Range} request is served like the mirror's lazy path: the window is
streamed from its first piece (pieces are checked against their own digests
before they are stored) while the rest of the file goes on downloading. An
C{If-Range} other than the file's ETag gets the whole file. Conditional
headers (C{If-None-Match}, C{If-Modified-Since}) are not evaluated: the
answer is a full 200 (a cache may do so).

When P2P fails before the first byte (the origin refused the caller, a 404,
no supernode and no way to the origin), L{P2PFailed} says so and the proxy
relays the origin's own answer instead; an egress refusal is a 403.
"""
import hashlib

from twisted.internet import defer
from twisted.logger import Logger

from dragonfly.dfdaemon.blobsink import GONE, BlobSink, StreamFailed, stream_checked
from dragonfly.httpio import RangeNotSatisfiable, abort, content_range, describe, parse_range
from dragonfly.origin import clean_headers
from dragonfly.peer.errors import OriginNotAllowed
from dragonfly.redact import redact_text, redact_url

__all__ = ["P2PFetch", "P2PFailed", "ProxyError", "origin_headers"]


class ProxyError(Exception):
    """A request the proxy answers itself: C{status} and a one-line C{message}."""

    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status
        self.message = message


class P2PFailed(Exception):
    """P2P could not start the file (before any byte was sent): relay the origin instead."""


def origin_headers(request, drop=frozenset()):
    """The client's headers as dfget's C{-H} would pass them: {name: value} of
    str, without hop-by-hop, range, conditional and encoding headers (the
    origin client owns those: L{dragonfly.origin.clean_headers}), without the
    ones named in C{Connection}, C{Via}, and the lower-case names in C{drop}."""
    connection = request.requestHeaders.getRawHeaders(b"connection") or []
    named = {t.strip().lower() for v in connection for t in v.split(b",") if t.strip()}
    out = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        lname = name.lower()
        if lname in named or lname == b"via" or lname.decode("latin-1") in drop:
            continue
        out[name.decode("latin-1")] = ", ".join(v.decode("latin-1") for v in values)
    try:
        return clean_headers(out)
    except ValueError as e:
        raise ProxyError(400, f"bad request header: {e}")


def _window(request, task_file):
    """The (first, last) byte window to send, setting the status and range headers."""
    length = task_file.length
    ranges = request.getHeader(b"range")
    if_range = request.getHeader(b"if-range")
    etag = getattr(task_file, "etag", None)
    if if_range is not None and (not etag or etag.startswith("W/")
                                 or if_range.strip().decode("latin-1") != etag):
        ranges = None   # RFC 9110 13.1.5: only our strong ETag keeps the range
    try:
        window = parse_range(ranges, length)
    except RangeNotSatisfiable:
        request.setHeader(b"content-range", content_range(None, length))
        raise ProxyError(416, "requested range not satisfiable")
    if window:
        request.setResponseCode(206)
        request.setHeader(b"content-range", content_range(window, length))
    return window if window else (0, length - 1)


class P2PFetch:
    """Serves a GET through the peer.

    @param peer: an L{dragonfly.interfaces.IDownloader} (the dfdaemon's peer node).
    @param on_bytes: called with the number of bytes sent to a client.
    @param via: the C{Via} value this proxy adds.
    """

    log = Logger()

    def __init__(self, peer, on_bytes, via):
        self.peer = peer
        self.on_bytes = on_bytes
        self.via = via

    async def serve(self, ex, url, decision, headers):
        """Answer the exchange C{ex} (a GET of C{url}) from P2P.

        @param decision: the L{dragonfly.dfdaemon.proxyrules.Decision} (rule, digest).
        @param headers: the request headers for the origin (L{origin_headers}).
        Raises L{P2PFailed} when nothing was sent yet and the origin should answer.
        """
        rule, digest = decision.rule, decision.digest
        named = {"digest": digest} if digest and digest.startswith("sha256:") else {}
        started = defer.Deferred()
        download = self.peer.download(url, headers=headers, on_start=started,
                                      filters=rule.filters, tag=rule.tag, **named)
        # The download goes on if this client leaves; its outcome comes through
        # `started` and the stream.
        download.addErrback(lambda f: None if started.called else started.errback(f))
        try:
            task_file = await started
        except OriginNotAllowed as e:
            raise ProxyError(403, str(e))
        except Exception as e:  # noqa: BLE001 - anything else: the origin answers
            self.log.info("P2P could not serve {url} ({error}); relaying the origin",
                          url=redact_url(url), error=redact_text(describe(e)))
            raise P2PFailed(describe(e))
        if not ex.gone:
            await self._send(ex, task_file, digest)

    async def _send(self, ex, task_file, digest):
        request = ex.request
        length = task_file.length
        first, last = _window(request, task_file)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"via", self.via)
        for name in ("etag", "last_modified"):    # the origin's validators, when known
            value = getattr(task_file, name, None)
            if value:
                request.setHeader(name.replace("_", "-").encode(), value.encode("latin-1"))
        request.setHeader(b"content-length", b"%d" % (last - first + 1 if length else 0))
        if length == 0:
            if digest and hashlib.new(digest.partition(":")[0]).hexdigest() != \
                    digest.partition(":")[2]:
                abort(request)      # an empty file is not the one the digest names
                return
            request.finish()
            return
        whole = digest is not None and first == 0 and last == length - 1
        sink = BlobSink(request, digest or "none:", length, first, last,
                        on_bytes=self.on_bytes, whole=whole)
        ex.on_gone.append(sink.close)
        try:
            ok = await stream_checked(self.peer, ex, sink, task_file, self.log,
                                      redact_url(task_file.url), failed_kind="failed")
        except StreamFailed as e:
            raise ProxyError(502, f"P2P download failed: {e}")
        if ok is GONE:
            return
        if not ok:
            self.log.error("{url} does not match {digest}: aborting",
                           url=redact_url(task_file.url), digest=digest)
            ex.kind = "failed"
            sink.close()
            abort(request)
            if ok is False and whole and sink.offset == length:
                self.peer.drop_corrupt(task_file.task_id, f"content does not match {digest}")
            return
        await sink.release()
        if not ex.gone:
            request.finish()

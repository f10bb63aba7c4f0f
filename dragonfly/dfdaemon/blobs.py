"""The mirror's blobs: a layer sent from the peer, verified against its digest on the way.

``GET /v2/<name>/blobs/<digest>`` goes through P2P. The task id is the
content digest; the registry is asked first (L{dragonfly.dfdaemon.access}:
a ``HEAD`` with the client's own headers, only a final 2xx describing the
blob counts) whether this client may read that blob, so a layer held by the
swarm is never handed to a client the registry would refuse. Bytes are streamed to the client in order as the pieces
arrive, with ``Content-Length`` and ``Docker-Content-Digest``, through a
L{BlobSink} that is the peer's consumer and the request's push producer (the
client's socket paces the swarm; memory does not grow with the blob). The
whole blob is hashed on the way and a mismatch aborts the connection (the
client sees a truncated transfer, never a clean finish) and the peer drops
the task and reports it to its supernode. If P2P fails before
the first byte, the blob is relayed straight from the upstream.

A ``Range`` request (what lazy-pulling snapshotters send) is streamed from
its first byte only: the peer's stream cursor starts at the range's first
piece, so the swarm hands out the covering pieces first, and each one is
written as soon as it is in the store -- pieces are checked against their
piece digests before they are stored, so the range carries exactly the
verified bytes, without waiting for (or hashing) the rest of the blob. The
download of the whole blob goes on in the background ("always": the next
range and the full pull are then local, and the registry sends the blob
once), and the whole-blob digest still gates every full GET and the
supernode's "task complete". Several ranges get the whole body (200),
an ``If-Range`` other than the blob's ETag gets the whole body, a range
past the end gets 416.
"""
import hashlib

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.dfdaemon.access import check as check_access
from dragonfly.dfdaemon.multipart import Parts
from dragonfly.dfdaemon.passthrough import NOT_FOR_ACCESS_CHECK, forward_headers
from dragonfly.dfdaemon.routes import MirrorError
from dragonfly.httpio import (
    RangeNotSatisfiable, abort, content_range, describe, parse_ranges, unregister)
from dragonfly.redact import redact_text, redact_url


def _named_by(digest):
    """The download arguments naming a blob's task by its digest (sha256 only:
    a longer digest is no task id, and the peer derives the id from the URL)."""
    return {"digest": digest} if digest.startswith("sha256:") else {}


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

    def __init__(self, request, digest, length, first=0, last=None, on_bytes=None,
                 whole=True, parts=None):
        algo, _, self.expected = digest.partition(":")
        #: True: the source sends the whole blob, hashed here and the window's
        #: end held back until it matches; False: it sends only the window
        #: (bytes of pieces already verified by their piece digests).
        self.whole = whole
        self._hash = hashlib.new(algo) if whole else None
        self.request = request
        self.length = length
        self.first = first
        self.last = length - 1 if last is None else last
        self.offset = 0 if whole else first
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
        #: a L{Parts} (several windows, multipart) or None
        self.parts = parts

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
            unregister(self.request)

    def write(self, data):
        if self.closed:
            return
        n = len(data)
        end = self.offset + n
        if end > (self.length if self.whole else self.last + 1):
            self.overflow = True
            self.close()
            return
        if self._hash is not None:
            self._hash.update(data)
        lo = max(self.first, self.offset)
        hi = min(self.last + 1, end)
        if hi > lo:
            chunk = data if (lo == self.offset and hi == end) else bytes(
                memoryview(data)[lo - self.offset:hi - self.offset])
            if hi == self.last + 1 and self.whole:
                # The window's final bytes wait for the digest: a client must
                # never receive a complete response for a corrupt blob.
                self._held = chunk
            elif self.parts is not None:
                out, sent = self.parts.cut(lo, chunk)
                for part in out:
                    self.request.write(part)
                self._on_bytes(sent)
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
        """Whole: every byte came and the blob matches its digest. A window:
        every byte of the window came (each piece matched its own digest)."""
        if not self.whole:
            return not self.overflow and self.offset == self.last + 1
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


class Blobs:
    """Answers blob GETs from the peer, after the registry said the client may read them.

    @param peer: the blob source, an L{dragonfly.interfaces.IDownloader} (the
        peer node).
    @param passthrough: the L{dragonfly.dfdaemon.passthrough.Passthrough} that
        asks the registry and relays its answer when P2P is refused or fails.
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param check_access: ask the registry before serving a blob.
    """

    log = Logger()

    def __init__(self, peer, passthrough, metrics, check_access=True):
        self.peer = peer
        self.passthrough = passthrough
        self.metrics = metrics
        self.check_access = check_access

    async def get(self, ex, target):
        """Answer the exchange C{ex}, a GET of the blob C{target.digest}."""
        request = ex.request
        url = target.url
        digest = target.digest
        access = None
        if self.check_access:
            # May this client read this blob? The registry decides, not the swarm.
            access = await check_access(self.passthrough, url,
                                        forward_headers(request, drop=NOT_FOR_ACCESS_CHECK),
                                        digest)
            if not access.allowed:
                return await self._denied(ex, url, digest, access.reason)
            if ex.gone:
                return
        headers = {}
        auth = request.getHeader(b"authorization")
        if auth:
            headers["Authorization"] = auth.decode("latin-1")
        blob_url = target.upstream.blob_url(target.name, digest)
        started = defer.Deferred()
        # The digest names the task: the supernode publishes it complete only
        # once the whole blob matched it.
        download = self.peer.download(blob_url, headers=headers, task_id=digest,
                                      on_start=started, want=self._wanted(request, digest, access),
                                      **_named_by(digest))
        # The download goes on if this client leaves (it will likely retry);
        # its outcome reaches us through `started` and the stream.
        download.addErrback(lambda f: None if started.called else started.errback(f))
        try:
            task_file = await started
        except Exception as e:  # noqa: BLE001 - anything: fall back to the registry
            if ex.gone:
                return
            self.log.warn("P2P failed for {digest} ({error}); relaying from {upstream}",
                          digest=digest, error=redact_text(describe(e)),
                          upstream=redact_url(target.upstream.base))
            ex.kind = "blob-direct"
            return await self.passthrough.relay(ex, url)
        if ex.gone:
            return
        if access is not None and not access.matches(task_file.length):
            return await self._denied(ex, url, digest, f"registry's length {access.length} "
                                      f"is not the blob's {task_file.length}")
        await self._send(ex, task_file, digest)

    async def _denied(self, ex, url, digest, reason):
        """Hand the client the registry's own answer (challenge, 404, a redirect
        to a login page, ...), body and all."""
        self.log.info("registry refused access to {digest}: {reason}", digest=digest,
                      reason=redact_text(reason or ""))
        ex.kind = "blob-denied"
        if not ex.gone:
            await self.passthrough.relay(ex, url)

    @staticmethod
    def _ranges(request, digest):
        """The Range header to honour: None when absent, or when an
        C{If-Range} other than our (strong) ETag says the client's copy is stale."""
        etag = b'"%s"' % digest.encode()
        if_range = request.getHeader(b"if-range")
        if if_range is not None and if_range.strip() != etag:
            # RFC 9110 13.1.5: a validator that is not our (strong) ETag -- an
            # old one, a weak one or a date (we send no Last-Modified) --
            # means the client's partial copy is stale: the whole body.
            return None
        return request.getHeader(b"range")

    @classmethod
    def _wanted(cls, request, digest, access):
        """The bytes (first, last) a range request needs first, with the
        registry's length (None: the whole blob, or the length unknown)."""
        length = getattr(access, "length", None)
        ranges = cls._ranges(request, digest)
        if not length or ranges is None:
            return None
        try:
            windows = parse_ranges(ranges, length)
        except RangeNotSatisfiable:
            return None
        if not windows or windows == [(0, length - 1)]:
            return None
        return windows[0][0], windows[-1][1]

    @classmethod
    def _headers(cls, request, digest, length):
        """Set the blob answer's headers; return the window (first, last) to
        send and its L{Parts} when several ranges make a multipart answer."""
        etag = b'"%s"' % digest.encode()
        try:
            windows = parse_ranges(cls._ranges(request, digest), length)
        except RangeNotSatisfiable:
            request.setHeader(b"content-range", content_range(None, length))
            raise MirrorError(416, "BLOB_UNKNOWN", "requested range not satisfiable")
        parts = Parts(windows, length) if windows and len(windows) > 1 else None
        window = windows[0] if windows and parts is None else None
        first, last = window if window else (parts.first, parts.last) if parts else (0, length - 1)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", digest.encode())
        request.setHeader(b"etag", etag)
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"cache-control", b"max-age=31536000")
        if window:
            request.setResponseCode(206)
            request.setHeader(b"content-range", content_range(window, length))
        if parts is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-type", parts.content_type)
            request.setHeader(b"content-length", b"%d" % parts.content_length)
            return first, last, parts
        request.setHeader(b"content-length", b"%d" % (last - first + 1 if length else 0))
        return first, last, None

    async def _send(self, ex, task_file, digest):
        request = ex.request
        length = task_file.length
        first, last, parts = self._headers(request, digest, length)
        if length == 0:
            if hashlib.new(digest.partition(":")[0]).hexdigest() != digest.partition(":")[2]:
                self.log.error("empty blob does not match {digest}", digest=digest)
                abort(request)
                return
            request.finish()
            return
        # A part of the blob streams from its first piece (which the swarm
        # then hands out first); the whole blob from 0, hashed on the way.
        whole = parts is None and first == 0 and last == length - 1
        sink = BlobSink(request, digest, length, first, last,
                        on_bytes=self.metrics.mirror_blob_bytes.inc, whole=whole, parts=parts)
        stream = self.peer.stream(task_file, sink, 0 if whole else first,
                                  None if whole else last + 1)
        ex.on_gone.append(sink.close)
        ex.on_gone.append(stream.cancel)
        try:
            await stream
        except Exception as e:  # noqa: BLE001
            sink.close()
            if not ex.gone:
                self.log.warn("P2P stream of {digest} failed after {offset} bytes: {error}",
                              digest=digest, offset=sink.offset, error=describe(e))
                if request.startedWriting:
                    abort(request)
                else:
                    raise MirrorError(502, "UNAVAILABLE", f"P2P download failed: {describe(e)}")
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
            abort(request)
            if sink.whole and sink.offset == length:
                # The whole blob came and did not match: our copy is wrong.
                self.peer.drop_corrupt(
                    task_file.task_id, f"blob content does not match {digest}")
            return
        sink.release()
        request.finish()

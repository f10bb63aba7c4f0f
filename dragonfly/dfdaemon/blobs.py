"""The mirror's blobs: a layer sent from the peer, verified against its digest on the way.

``GET /v2/<name>/blobs/<digest>`` goes through P2P. The task id is the
content digest; the registry is asked first (L{dragonfly.dfdaemon.access}:
a ``HEAD`` with the client's own headers, only a final 2xx describing the
blob counts) whether this client may read that blob, so a layer held by the
swarm is never handed to a client the registry would refuse. Bytes are streamed to the client in order as the pieces
arrive, with ``Content-Length`` and ``Docker-Content-Digest``, through a
L{BlobSink} that is the peer's consumer and the request's push producer (the
client's socket paces the swarm; memory does not grow with the blob): held
pieces go from the store's file to a plain TCP socket with sendfile (a blob held whole, for a
client on this host: through one buffer, L{dragonfly.runtime.sendfile}). The
whole blob is hashed in a thread in parallel (L{BlobSink} holds its last
bytes until then) and a mismatch aborts the connection (the client sees a
truncated transfer, never a clean finish) and the peer drops the task and
reports it to its supernode. A blob the supernode attests (its own copy
matched the digest whole; at the stream's start or during it) is not hashed
here: its final bytes wait for the task file's piece digests to match the
attested copy's (L{BlobSink.attest}; the trust chain in docs/design.md).
A task file that matched once in this process
and is still sealed is not hashed again. If P2P fails before
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
import weakref

from twisted.internet import defer
from twisted.logger import Logger

from dragonfly.dfdaemon.access import check as check_access
from dragonfly.dfdaemon.blobsink import GONE, BlobSink, StreamFailed, stream_checked
from dragonfly.dfdaemon.multipart import Parts
from dragonfly.dfdaemon.passthrough import NOT_FOR_ACCESS_CHECK, forward_headers
from dragonfly.dfdaemon.routes import MirrorError
from dragonfly.httpio import RangeNotSatisfiable, abort, content_range, describe, parse_ranges
from dragonfly.redact import redact_text, redact_url
from dragonfly.runtime.sendfile import FileSender, on_this_host, socket_of

__all__ = ["BlobSink", "Blobs"]


def _named_by(digest):
    """The download arguments naming a blob's task by its digest (sha256 only:
    a longer digest is no task id, and the peer derives the id from the URL)."""
    return {"digest": digest} if digest.startswith("sha256:") else {}


class Blobs:
    """Answers blob GETs from the peer, after the registry said the client may read them.

    @param peer: the blob source, an L{dragonfly.interfaces.IDownloader} (the
        peer node).
    @param passthrough: the L{dragonfly.dfdaemon.passthrough.Passthrough} that
        asks the registry and relays its answer when P2P is refused or fails.
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param check_access: ask the registry before serving a blob.
    @param reactor: the reactor whose plain TCP connections get held pieces
        by sendfile; None: every byte goes through the request.
    @param runner: the L{dragonfly.interfaces.IRunner} hashing blobs (a
        thread pool; default inline).
    """

    log = Logger()

    def __init__(self, peer, passthrough, metrics, check_access=True, reactor=None,
                 runner=None):
        self.peer = peer
        self.passthrough = passthrough
        self.metrics = metrics
        self.check_access = check_access
        self.reactor = reactor
        self.runner = runner
        # Task files whose whole content matched their digest in this process
        # (and are sealed: the store drops one whose file changed since).
        self._good = weakref.WeakSet()

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

    def _sender(self, request, cached=False):
        """A FileSender on the client's socket, when it is plain TCP (and the
        answer has a body: a HEAD never reaches us, but make sure); a blob
        C{cached} whole for a client on this host goes through its copy path."""
        if self.reactor is None or request.channel is None or request.method != b"GET":
            return None
        transport = request.channel.transport
        sock = socket_of(transport)
        if sock is None:
            return None
        return FileSender(self.reactor, transport, sock, copy=cached and on_this_host(transport))

    def _known_good(self, task_file):
        return task_file in self._good and task_file.is_complete and task_file.intact()

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
                        on_bytes=self.metrics.mirror_blob_bytes.inc, whole=whole,
                        known_good=whole and self._known_good(task_file),
                        runner=self.runner, parts=parts,
                        sender=None if parts is not None else self._sender(request, task_file.is_complete),
                        task_file=task_file, on_hashed=self.metrics.mirror_blob_hash_bytes.inc,
                        clock=self.reactor)
        ex.on_gone.append(sink.close)
        # The supernode's word that its copy matched the digest (now or later).
        on_verified = getattr(self.peer, "on_verified", None)
        forget = on_verified(task_file.task_id, sink.attest) if on_verified and sink.gated \
            else None
        attests = getattr(self.peer, "attests", None)
        if forget is not None and attests is not None and attests(task_file.task_id):
            sink.defer()     # promised: hash nothing, wait for the word at the end
        try:
            await self._stream(ex, sink, task_file, digest)
        finally:
            if forget is not None:
                forget()
            sink.close()

    async def _stream(self, ex, sink, task_file, digest):
        try:
            ok = await stream_checked(self.peer, ex, sink, task_file, self.log, digest)
        except StreamFailed as e:
            raise MirrorError(502, "UNAVAILABLE", f"P2P download failed: {e}")
        if ok is GONE:
            return
        if not ok:
            self._corrupt(ex, sink, task_file, digest, ok)
            return
        if sink.gated and task_file.is_complete:
            self._good.add(task_file)
        await sink.release()
        if not ex.gone:
            ex.request.finish()

    def _corrupt(self, ex, sink, task_file, digest, ok):
        """The blob did not verify: the client gets a truncated response."""
        length = task_file.length
        self.log.error(
            "blob {digest} failed verification ({offset} of {length} bytes): aborting",
            digest=digest, offset=sink.offset, length=length)
        ex.kind = "blob-corrupt"
        ex.request.setResponseCode(502)  # for the metrics label; headers are long gone
        sink.close()     # our duplicate of the socket goes before the abort
        abort(ex.request)
        if ok is False and sink.whole and sink.offset == length:
            # The whole blob came and did not match: our copy is wrong.
            self.peer.drop_corrupt(
                task_file.task_id, f"blob content does not match {digest}")

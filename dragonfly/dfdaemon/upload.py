"""The mirror's request bodies: a push's blob streamed to the upstream as it arrives.

Twisted's HTTP server reads a whole request body (into memory, then a temp
file) before a resource sees the request. A push through the mirror must
not wait for, nor hold, a layer: L{StreamingChannel} hands a request with a
body (any method but C{GET}/C{HEAD}) to the resource as soon as its head is
in, and its L{StreamingRequest} feeds each received chunk into a
L{BodyPipe}, the C{IBodyProducer} the upstream request is sent with. The
pipe pauses the client's socket while the upstream's socket is full (or
before the upstream connection is up, beyond L{BodyPipe.HIGH} bytes) and
resumes it when the upstream drains: back-pressure end to end, memory flat
in the blob's size. Nothing of the body is stored (a pushed blob is never
cached on the way up).

When the answer goes out before the client sent its whole body (a refusal,
an early error from the upstream), the connection is closed after the
answer and the rest of the body is ignored.
"""
import io

from twisted.internet import defer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.server import Request
from zope.interface import implementer

from dragonfly.httpsite import JSONErrorChannel

__all__ = ["BodyPipe", "FileBody", "StreamingRequest", "StreamingChannel", "body_of"]

#: Methods whose body is never forwarded (and so never streamed).
NO_BODY = frozenset({b"GET", b"HEAD"})


@implementer(IBodyProducer)
class BodyPipe:
    """A request body on its way from the client (C{feed}, C{end}) to the
    upstream (the consumer given to C{startProducing}).

    @param source: the client's transport, an C{IPushProducer}: paused while
        the upstream cannot take more.
    @param length: the body's length (the client's C{Content-Length}), or
        None for a chunked body (then the upstream gets it chunked too).
    """

    #: Bytes held before the upstream is connected (or while it is paused)
    #: before the client's socket is paused too.
    HIGH = 256 * 1024

    def __init__(self, source, length=None):
        self.source = source
        self.length = UNKNOWN_LENGTH if length is None else length
        self.received = False     # the client sent the whole body
        self.client_left = False  # ... or went away before it did
        self.sent = 0             # bytes given to the upstream
        self.on_progress = None   # called after each write to the upstream
        self._chunks = []
        self._held = 0
        self._consumer = None
        self._done = None
        self._paused = False      # the upstream asked us to pause
        self._source_paused = False
        self._closed = False

    # from the client side

    def feed(self, data):
        """A chunk of the client's body."""
        if self._closed or not data:
            return
        if self._consumer is not None and not self._paused and not self._chunks:
            self._write(data)
        else:
            self._chunks.append(data)
            self._held += len(data)
        if self._paused or self._held >= self.HIGH:
            self._pause_source()

    def end(self):
        """The client's body is complete."""
        self.received = True
        self._finish_if_drained()

    def fail(self, reason):
        """The client went away before its body was complete."""
        if self._closed:
            return
        self._closed = True
        self.client_left = True
        self._chunks, self._held = [], 0
        if self._done is not None and not self._done.called:
            self._done.errback(reason)

    def close(self):
        """The answer went out: take no more of the body."""
        self._closed = True
        self._chunks, self._held = [], 0

    @property
    def held(self):
        """Bytes received from the client and not yet given to the upstream."""
        return self._held

    # IBodyProducer, for the upstream request

    def startProducing(self, consumer):
        self._consumer = consumer
        self._done = defer.Deferred()
        self._drain()
        return self._done

    def pauseProducing(self):
        self._paused = True
        self._pause_source()

    def resumeProducing(self):
        self._paused = False
        self._drain()

    def stopProducing(self):
        # The upstream connection is gone; the request's Deferred says why.
        self._closed = True
        self._chunks, self._held = [], 0

    # inside

    def _write(self, data):
        self.sent += len(data)
        self._consumer.write(data)
        if self.on_progress is not None:
            self.on_progress()

    def _drain(self):
        while self._chunks and not self._paused and not self._closed:
            data = self._chunks.pop(0)
            self._held -= len(data)
            self._write(data)
        if not self._chunks and not self._paused and not self._closed:
            self._resume_source()
            self._finish_if_drained()

    def _finish_if_drained(self):
        if self.received and not self._chunks and self._done is not None \
                and not self._done.called and not self._closed:
            self._done.callback(None)

    def _pause_source(self):
        # Every time, not once: the HTTP channel resumes its transport when
        # its own output drains, whatever we asked.
        if self.source is not None and not self.received:
            self._source_paused = True
            self.source.pauseProducing()

    def _resume_source(self):
        if self._source_paused:
            self._source_paused = False
            if self.source is not None:
                self.source.resumeProducing()


class StreamingRequest(Request):
    """A C{Request} whose body, when the channel says so (L{stream_body}),
    goes to a L{BodyPipe} (C{self.body}) as it arrives, the resource having
    been called as soon as the head was in."""

    body = None

    def stream_body(self, command, path, version, length):
        """Called by L{StreamingChannel} once the head is in; runs the resource now."""
        self.body = BodyPipe(self.channel.transport, length)
        if self.content is not None:
            self.content.close()
        self.content = io.BytesIO()
        Request.requestReceived(self, command, path, version)

    def handleContentChunk(self, data):
        if self.body is not None:
            self.body.feed(data)
        else:
            Request.handleContentChunk(self, data)

    def requestReceived(self, command, path, version):
        if self.body is not None:   # already running: the body just ended
            self.body.end()
            return
        Request.requestReceived(self, command, path, version)

    def write(self, data):
        if not self.startedWriting and self.body is not None and not self.body.received:
            # Answered before the body ended: close after the answer and
            # ignore the rest of the body (it is nobody's any more).
            self.body.close()
            self.setHeader(b"connection", b"close")
            if self.channel is not None:
                self.channel.persistent = False
                self.channel.discard_input()
        Request.write(self, data)

    def connectionLost(self, reason):
        if self.body is not None and not self.body.received:
            self.body.fail(reason)
        Request.connectionLost(self, reason)


class StreamingChannel(JSONErrorChannel):
    """An HTTP channel that starts a request with a body (not C{GET}/C{HEAD})
    once its head is in, if its request is a L{StreamingRequest}."""

    _discarding = False

    def allHeadersReceived(self):
        JSONErrorChannel.allHeadersReceived(self)
        request = self.requests[-1]
        if self.length != 0 and self._command not in NO_BODY \
                and isinstance(request, StreamingRequest):
            request.stream_body(self._command, self._path, self._version, self.length)

    def discard_input(self):
        """Read no more requests: the connection closes after this answer."""
        self._discarding = True

    def dataReceived(self, data):
        if not self._discarding:
            JSONErrorChannel.dataReceived(self, data)

    def rawDataReceived(self, data):
        if not self._discarding:
            JSONErrorChannel.rawDataReceived(self, data)

    def allContentReceived(self):
        if self._discarding and not self.requests:
            return
        JSONErrorChannel.allContentReceived(self)


@implementer(IBodyProducer)
class FileBody:
    """A body Twisted already read into C{request.content} (a plain C{Site},
    a test's C{StubTreq}), produced in chunks as the upstream takes them."""

    CHUNK = 65536

    def __init__(self, f, length):
        self._file = f
        self.length = length
        self._consumer = None
        self._done = None
        self._paused = False
        self._stopped = False

    def startProducing(self, consumer):
        self._consumer = consumer
        self._done = defer.Deferred()
        self._pump()
        return self._done

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._stopped = True

    def _pump(self):
        while not self._paused and not self._stopped and not self._done.called:
            chunk = self._file.read(self.CHUNK)
            if not chunk:
                self._done.callback(None)
                return
            self._consumer.write(chunk)


def body_of(request):
    """The C{IBodyProducer} for the upstream request carrying C{request}'s body,
    or None when there is none to forward (C{GET}, C{HEAD}, an empty body)."""
    if request.method in NO_BODY:
        return None
    body = getattr(request, "body", None)
    if body is not None:
        return body
    content = request.content
    if content is None:
        return None
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    return FileBody(content, length) if length else None

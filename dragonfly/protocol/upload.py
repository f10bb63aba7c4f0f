"""Streaming one piece to a client: L{PieceUpload}, a pull producer.

It writes the Piece header, then exactly the piece's bytes from the task's
data file in bounded chunks, each on the transport's request, so memory never
grows with piece size and back-pressure is honoured: through os.sendfile on
plain TCP when no upload limit applies or the kernel paces the socket
(L{dragonfly.protocol.uplink}), else read and written (paced by the shared
upload limiter). It releases the file, the upload slot and the task's
pin exactly once, however the upload ends, and tells its connection
(L{dragonfly.protocol.server.PieceServerProtocol}) when it is done or must be
aborted.
"""
import os

from twisted.internet.interfaces import IPullProducer, ISSLTransport
from zope.interface import implementer

from dragonfly.protocol import codec

CHUNK_SIZE = 256 * 1024
#: Bytes handed to os.sendfile per resumeProducing before yielding to the reactor.
SENDFILE_BUDGET = 2 * 1024 * 1024


def _sendfile_socket(transport):
    """The socket under C{transport} when os.sendfile may write to it directly."""
    if not hasattr(os, "sendfile") or ISSLTransport.providedBy(transport):
        return None
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or not hasattr(transport, "startWriting"):
        return None
    try:
        sock = get_handle()
        sock.fileno()
    except Exception:
        return None
    return sock


@implementer(IPullProducer)
class PieceUpload:
    """Streams one piece: its header, then exactly C{length} bytes of the file.

    A pull producer: the transport calls C{resumeProducing} whenever it has
    sent everything it was given, and each call hands over one bounded chunk.
    With sendfile, the kernel copies file pages straight to the socket; the
    transport's own buffer is empty whenever we are called back (except the
    first call, which therefore only waits for the header to leave), and
    C{transport.startWriting()} asks for a callback once the socket can take
    more.
    """

    def __init__(self, proto, task, index, fd, offset, length):
        self.proto = proto
        self.task = task
        self.index = index
        self.length = length
        self.done = False
        self._fd = fd
        self._pos = offset
        self._left = length
        factory = self._factory = proto.factory
        self._limiter = factory.upload_limiter
        self._clock = factory.clock
        self._on_upload = factory.on_upload
        self._chunk = factory.chunk_size
        if self._limiter is not None and self._limiter.rate > 0 and not proto.kernel_paced:
            # Keep each limiter wait short so one slow piece does not stall
            # the connection's inactivity timer or hog the shared bucket.
            self._chunk = max(16 * 1024, min(self._chunk, self._limiter.rate // 8))
            self._sock = None
        else:
            self._limiter = None
            self._sock = _sendfile_socket(proto.transport) if factory.use_sendfile else None
        self._delayed = None
        self._tls_registered = False
        self._first = True
        self._mark = None       # bytes left at the last stall check

    def start(self):
        transport = self.proto.transport
        transport.write(codec.encode_piece(codec.Piece(self.index, self.length)))
        if self._left == 0:
            self._finish()
            return
        transport.registerProducer(self, False)
        # Behind TLS the transport holds a wrapper of us, not us: remember it.
        self._tls_registered = ISSLTransport.providedBy(transport)

    # IPullProducer
    def resumeProducing(self):
        if self.done or self._delayed is not None:
            return
        self.proto.timer.touch()
        try:
            if self._sock is not None and self._first:
                # The first call comes from registerProducer, while the
                # header still sits in the transport's buffer: let it go
                # first (the transport calls us again once its buffer is
                # empty), so every byte of the piece goes by sendfile.
                self._first = False
                self.proto.transport.startWriting()
            elif self._sock is not None:
                self._send_file()
            else:
                self._send_chunk()
        except OSError as e:
            self.proto.log.warn(
                "aborting piece {index} to {peer}: {error}",
                index=self.index, peer=self.proto.peer_id, error=e)
            self.abort()

    def stopProducing(self):
        """The connection went away: give back what we hold."""
        self._cleanup()

    def _send_chunk(self):
        n = min(self._chunk, self._left)
        data = os.pread(self._fd, n, self._pos)
        if len(data) != n:
            raise OSError(f"data file ended {self._left - len(data)} bytes early")
        self._pos += n
        self._left -= n
        delay = self._limiter.consume(n) if self._limiter is not None else 0
        if delay > 0:
            self._delayed = self._clock.callLater(delay, self._write_delayed, data)
        else:
            self._write(data)

    def _write_delayed(self, data):
        self._delayed = None
        if not self.done:
            self.proto.timer.touch()
            self._write(data)

    def _write(self, data):
        self.proto.transport.write(data)
        self._on_upload(len(data))
        if self._left == 0:
            self._finish()

    def _send_file(self):
        fileno = self._sock.fileno()
        budget = SENDFILE_BUDGET
        sent = 0
        try:
            while self._left and sent < budget:
                try:
                    n = os.sendfile(fileno, self._fd, self._pos, min(self._left, budget - sent))
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                if n == 0:
                    raise OSError(f"data file ended {self._left} bytes early")
                self._pos += n
                self._left -= n
                sent += n
        finally:
            if sent:
                self._on_upload(sent)
        if self._left:
            # Our callback comes from the transport's doWrite once the socket
            # is writable: its buffer is empty, so it calls resumeProducing.
            self.proto.transport.startWriting()
        else:
            self._finish()

    def stalled(self, min_bytes):
        """The stall tick (every stall interval): True when fewer than
        C{min_bytes} went out since the previous tick while not waiting for
        the upload limiter. The first tick only sets the mark (the upload
        may have started just before it)."""
        mark, self._mark = self._mark, self._left
        if mark is None or self.done or self._delayed is not None:
            return False
        return mark - self._left < min(min_bytes, mark)

    def _cleanup(self):
        """Release the file, the upload slot and the pin, once."""
        if self.done:
            return False
        self.done = True
        if self._delayed is not None:
            if self._delayed.active():
                self._delayed.cancel()
            self._delayed = None
        try:
            os.close(self._fd)
        except OSError:
            pass
        self.task.unpin()
        self._factory.upload_ended(self.proto)
        return True

    def _unregister(self, transport):
        if getattr(transport, "producer", None) is self or self._tls_registered:
            self._tls_registered = False
            transport.unregisterProducer()

    def _finish(self):
        if self._cleanup():
            self._unregister(self.proto.transport)
            self.proto.upload_finished(self)

    def abort(self):
        """Stop mid-piece: the framing cannot recover, so the connection goes."""
        if self._cleanup():
            self._unregister(self.proto.transport)
            self.proto.abort_connection()

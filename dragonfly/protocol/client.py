"""The piece client's Twisted protocol: one connection to one source for one task.

L{PieceClientProtocol} feeds the bytes it receives to a L{codec.FrameDecoder}
and the decoded events to its L{RequestQueue} (the sans-IO request state
machine in L{dragonfly.protocol.clientstate}), and carries out what the queue
answers: writes, Deferreds fired, the connection dropped. What the glue owns
itself is time and flow: the piece timer of the request at the head, the idle
timer, the first-byte deadline (a source that has not begun to answer
the request at the head within it is dropped), back-pressure from the download limiter (the transport is paused until
the debt is paid) and the socket's receive low-water mark. The pool that
opens these connections is L{dragonfly.protocol.pool}.

On a plain TCP connection (Twisted's own C{tcp} transport delivering to this
protocol directly; never under TLS, whose transport decrypts in memory and has
no socket to read from) the protocol reads the socket itself: it replaces the
transport's C{doRead} with L{PieceClientProtocol._read}, which reads frame
headers with small C{recv}s (never past the frame the header starts) and a
chunked request's body with C{recv_into} straight into a piece-sized buffer
from the pool's L{dragonfly.protocol.recvbuf.RecvBuffers}: no bytes object per
read, no decoder pass over body bytes, one view per piece (issue 20, round
five; bench/README.md).
"""
from errno import EWOULDBLOCK

from twisted.internet import defer, main, tcp
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.protocol import codec
from dragonfly.protocol.clientstate import (
    Close, Deliver, Fail, PieceFetchError, PieceRequest, ReceivedPiece, RequestQueue, Send,
)
from dragonfly.runtime.tuning import tune_receiver

__all__ = ["PieceClientProtocol", "PieceFetchError", "ReceivedPiece", "READ_SIZE", "MAX_PIPELINE"]

#: Requests sent ahead on one connection; more wait locally.
MAX_PIPELINE = 16
#: Bytes asked of the socket per read on piece connections (Twisted's default is
#: 64 KiB), and the receive low-water mark inside a body. Each read is a trip
#: through the reactor and the decoder and, later, one hash update that gives
#: up the GIL: 512 KiB halves those against 256 KiB (a receiving peer's
#: reactor thread ~0.47 instead of ~0.52 CPU-s per GiB, the whole peer ~0.99
#: instead of ~1.02; bench/README.md, issue 20 round three). 1 MiB cost the
#: peer ~7 MiB RSS in issue 4.
READ_SIZE = 512 * 1024


class PieceClientProtocol(Protocol):
    """One connection to one source for one task."""

    log = Logger()

    def __init__(self, pool, source, task_id):
        self.pool = pool
        self.source = source
        self.task_id = task_id
        self.connecting = None  # the endpoint's connect Deferred, until connected
        self.requests = RequestQueue(source, task_id, pool.peer_id, pool.max_pipeline,
                                     pool.token_for(task_id))
        self._decoder = codec.FrameDecoder(max_piece=pool.max_piece)
        self._timed = None       # the PieceRequest whose piece timer runs
        self._timer = None       # ... and that timer
        self._first_byte = None  # ... and its first-byte timer
        self._idle_call = None
        self._resume_call = None
        self._paused = False
        self._lowat = None       # the socket's ReceiveLowWater, where it has one
        self._sock = None        # the socket L{_read} reads, on plain TCP
        self._gone = []

    @property
    def closed(self):
        """True once the connection failed its requests and accepts no more."""
        return self.requests.closed

    # -- API used by the pool -------------------------------------------------

    def fetch(self, index, length, chunks=False, hashed=False):
        req = PieceRequest(index, length, chunks, hashed)
        d = req.waiter = defer.Deferred(lambda d: self._cancelled(req))
        self._cancel_idle()
        self._apply(self.requests.submit(req))
        return d

    def close(self, reason="pool closed"):
        """Drop the connection; the Deferred fires once it is gone."""
        if self.closed and self.connecting is None and self.transport is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._gone.append(d)
        self._shutdown(reason)
        return d

    # -- connection events --------------------------------------------------

    def connectionMade(self):
        self.connecting = None
        if self.closed:
            self.transport.abortConnection()
            return
        self._lowat = tune_receiver(self.transport, READ_SIZE)
        sock = plain_socket(self.transport, self)
        buffers = getattr(self.pool, "recv_buffers", None)
        if sock is not None and buffers is not None:
            self._sock = sock
            self.requests.buffers = buffers
            self.transport.doRead = self._read
        self.transport.write(self.requests.hello())

    def connect_failed(self, failure):
        self.connecting = None
        self._apply(self.requests.connection_lost(
            f"connect failed: {failure.getErrorMessage()}"))
        self._gone_now()

    def connectionLost(self, reason=None):
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        if reason is None or reason.check(ConnectionDone):
            why = "connection closed by the source"
        else:
            why = f"connection lost: {reason.getErrorMessage()}"
        self._apply(self.requests.connection_lost(why))
        self._gone_now()

    def dataReceived(self, data):
        requests = self.requests
        if requests.closed:
            return
        self._consume(len(data))
        decoder = self._decoder
        try:
            for event in decoder.feed(data):
                if type(event) is codec.PieceData:
                    actions = requests.body(event)
                    if actions is None:
                        continue
                else:
                    actions = requests.receive(event)
                self._apply(actions)
                if requests.closed:
                    return
            lowat = self._lowat
            if lowat is not None:
                n = min(decoder.body_left, READ_SIZE) or 1
                if n != lowat.value:
                    lowat.set(n)
        except codec.ProtocolError as e:
            self.log.info("dropping piece connection to {source}: {error}",
                          source=self.source, error=e)
            self._shutdown(f"protocol error: {e}")

    def _read(self):
        """The transport's C{doRead} on plain TCP: a chunked body goes from the
        socket into its buffer; anything else is read no further than the frame
        in progress (or with the transport's read size inside a body not
        buffered) and goes through L{dataReceived} as before."""
        requests = self.requests
        sock = self._sock
        target = requests.body_target()
        try:
            if target is None:
                decoder = self._decoder
                data = sock.recv(self.transport.bufferSize if decoder.in_piece
                                 else decoder.frame_left())
                if not data:
                    return main.CONNECTION_DONE
                self.dataReceived(data)
                target = requests.body_target()
                if target is None or self._paused:
                    return None
                # A buffered body just began, and the source sends its bytes
                # right behind the header: read them now, not after another poll.
            n = sock.recv_into(target)
        except OSError as e:
            return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        self._consume(n)
        decoder = self._decoder
        actions = requests.body_filled(n, decoder.body_consumed(n))
        if actions is not None:
            self._apply(actions)
        lowat = self._lowat
        if lowat is not None and not requests.closed:
            n = min(decoder.body_left, READ_SIZE) or 1
            if n != lowat.value:
                lowat.set(n)
        return None

    def _consume(self, nbytes):
        """Charge C{nbytes} to the download limiter; pause reading while in debt."""
        limiter = self.pool.download_limiter
        if limiter is not None:
            delay = limiter.consume(nbytes)
            if delay > 0 and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
                self._resume_call = self.pool.clock.callLater(delay, self._resume)

    def _resume(self):
        self._resume_call = None
        self._paused = False
        if not self.closed:
            self.transport.resumeProducing()

    # -- carrying out the state machine's actions -----------------------------

    def _apply(self, actions):
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.transport.write(action.data)
            elif kind is Deliver:
                action.request.waiter.callback(action.piece)
            elif kind is Fail:
                action.request.waiter.errback(Failure(action.error))
            elif kind is Close:
                self._drop()
        if self.closed:
            self._stop_timers()
        else:
            self._arm_head()
            self._check_idle()

    def _shutdown(self, reason, code=None):
        """Fail everything outstanding with C{reason} and drop the connection."""
        self._apply(self.requests.close(reason, code))

    def _drop(self):
        self.pool._forget(self)
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    def _cancelled(self, req):
        """The caller cancelled C{req}'s Deferred (it then fails with CancelledError)."""
        self._apply(self.requests.cancel(req))

    def _gone_now(self):
        self.transport = None
        self.pool._forget(self)
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)

    # -- timers -----------------------------------------------------------------

    def _arm_head(self):
        """Run the piece and first-byte timers of the request the server works
        on now (one at a time)."""
        req = self.requests.head()
        if req is self._timed:
            return
        self._stop_piece_timer()
        if req is None:
            return
        pool = self.pool
        self._timed = req
        if pool.piece_timeout:
            self._timer = pool.clock.callLater(pool.piece_timeout, self._timed_out, req)
        if pool.first_byte_timeout:
            self._first_byte = pool.clock.callLater(
                pool.first_byte_timeout, self._first_byte_due, req)

    def _stop_piece_timer(self):
        for call in (self._timer, self._first_byte):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._timed = self._first_byte = None

    def _first_byte_due(self, req):
        self._first_byte = None
        timeout = self.pool.first_byte_timeout
        if self._paused:
            # Our own download limit holds the bytes back: not the source's fault.
            self._first_byte = self.pool.clock.callLater(timeout, self._first_byte_due, req)
            return
        self._apply(self.requests.no_first_byte(req, timeout))

    def _timed_out(self, req):
        self._timer = self._timed = None
        self._apply(self.requests.time_out(req, self.pool.piece_timeout))

    def _stop_timers(self):
        self._stop_piece_timer()
        self._cancel_idle()

    def _check_idle(self):
        if self.requests.outstanding or self._idle_call is not None:
            return
        timeout = self.pool.idle_timeout
        if timeout:
            self._idle_call = self.pool.clock.callLater(timeout, self._idle)

    def _cancel_idle(self):
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None

    def _idle(self):
        self._idle_call = None
        if not self.requests.outstanding:
            self._shutdown("idle")


def plain_socket(transport, protocol):
    """The socket under C{transport} when it is Twisted's own TCP transport
    delivering C{protocol} the bytes as read (so a reader may take them off
    the socket itself), else None: under TLS (a C{TLSMemoryBIOProtocol}, which
    forwards attribute lookups to the TCP transport below it but whose bytes
    must be decrypted first), in-memory test transports, or any wrapper other
    than the endpoints' own, which passes the bytes on unchanged."""
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if type(transport).doRead is not tcp.Connection.doRead:
        return None
    below = getattr(transport, "protocol", None)
    while below is not protocol:
        if type(below) is not _WrappingProtocol:
            return None
        below = below._wrappedProtocol
    return transport.socket

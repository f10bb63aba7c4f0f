"""The client side of one piece connection as a sans-IO state machine.

L{RequestQueue} owns the connection's handshake state and its queue of piece
requests, each in a named L{RequestState}. It is fed decoded codec events
(L{codec.HelloAck}, L{codec.Piece}, L{codec.Error}, L{codec.PieceData}) and
the caller's decisions (submit, cancel, time out, close), and answers with
actions: L{Send} bytes, L{Deliver} a piece, L{Fail} a request, L{Close} the
connection. It never touches a transport, a clock or a Deferred; the Twisted
glue in L{dragonfly.protocol.client} carries out what it returns. Every list
of actions holds its L{Send}s first, so callbacks run by the glue afterwards
can submit more without reordering the wire.
"""
from collections import deque
from dataclasses import dataclass
from enum import Enum

from dragonfly.digest import piece_hasher
from dragonfly.protocol import codec

#: Body slices shorter than this are copied together rather than kept one by one.
MIN_PART = 32 * 1024


class PieceFetchError(Exception):
    """Fetching piece C{index} from C{source} failed for C{reason}.

    C{code} is the server's error code (codec.NOT_FOUND, BUSY, ...) when the
    server answered with an Error, else None (network, timeout, protocol).
    """

    def __init__(self, source, index, reason, code=None):
        super().__init__(source, index, reason, code)
        self.source = source
        self.index = index
        self.reason = reason
        self.code = code

    def __str__(self):
        src = self.source
        where = f"{src.peer_id}@{src.host}:{src.port}" if hasattr(src, "peer_id") else str(src)
        return f"piece {self.index} from {where}: {self.reason}"


class ReceivedPiece:
    """A piece as received: its body in order as a list of bytes-like chunks.

    C{digest} is the hex piece digest (L{dragonfly.digest}) of the body, computed while it arrived.
    Pass C{chunks} to a L{dragonfly.storage.taskfile.TaskFile} write method as they
    are; C{tobytes()} joins them (one copy) for callers that need one object.
    """

    __slots__ = ("index", "chunks", "nbytes", "digest")

    def __init__(self, index, chunks, nbytes, digest):
        self.index = index
        self.chunks = chunks
        self.nbytes = nbytes
        self.digest = digest

    def __len__(self):
        return self.nbytes

    def tobytes(self):
        return b"".join(self.chunks)


class RequestState(Enum):
    """Where one piece request stands."""

    PENDING = "pending"        # waiting locally for a pipeline slot
    SENT = "sent"              # on the wire; the server owes an answer
    RECEIVING = "receiving"    # its body is arriving
    CANCELLED = "cancelled"    # caller gave up; Cancel sent, the server may still answer
    DISCARDING = "discarding"  # caller gave up; its answer will be read and dropped
    DONE = "done"              # answered, failed or withdrawn: nothing more happens


class ConnectionState(Enum):
    """Where the connection stands."""

    HANDSHAKING = "handshaking"  # Hello not yet acknowledged; requests wait
    READY = "ready"              # requests flow
    CLOSED = "closed"            # every request failed; nothing more is accepted


# Module-level names: the body path compares states per chunk.
_PENDING = RequestState.PENDING
_SENT = RequestState.SENT
_RECEIVING = RequestState.RECEIVING
_CANCELLED = RequestState.CANCELLED
_DISCARDING = RequestState.DISCARDING
_DONE = RequestState.DONE
#: States in which a request has nothing more owed to its caller.
_FINISHED = frozenset((_DONE, _CANCELLED, _DISCARDING))


@dataclass(frozen=True, slots=True)
class Send:
    """Write C{data} to the connection."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """C{request} succeeded with C{piece} (a L{ReceivedPiece} or bytes)."""

    request: object
    piece: object


@dataclass(frozen=True, slots=True)
class Fail:
    """C{request} failed with C{error} (a L{PieceFetchError})."""

    request: object
    error: PieceFetchError


@dataclass(frozen=True, slots=True)
class Close:
    """Drop the connection (every request on it has already failed)."""

    reason: str


class PieceRequest:
    """One piece asked for on one connection.

    C{waiter} belongs to the caller (the Twisted glue keeps the request's
    Deferred there); the state machine never reads it.
    """

    __slots__ = ("index", "length", "state", "chunks", "hasher", "waiter")

    def __init__(self, index, length, chunks=False, hashed=False):
        self.index = index
        self.length = length
        self.state = _PENDING
        self.chunks = chunks    # answer with a ReceivedPiece (else one bytes object)
        self.hasher = piece_hasher() if hashed else None
        self.waiter = None


class RequestQueue:
    """The requests of one connection to C{source} for C{task_id}.

    Requests are pipelined up to C{max_pipeline} on the wire (the server
    answers them in order); the rest wait in order. A request whose caller
    gave up is withdrawn if still local, cancelled with a Cancel if the
    server has not started on it, or has its answer read and dropped.
    C{token} is our admission token for the task, sent in the Hello.
    """

    def __init__(self, source, task_id, peer_id, max_pipeline, token=None):
        #: Where a chunked request's body goes when set (a
        #: L{dragonfly.protocol.recvbuf.RecvBuffers}; the glue sets it on plain
        #: TCP connections, whose reader fills L{body_target} itself).
        self.buffers = None
        self.source = source
        self.task_id = task_id
        self.peer_id = peer_id
        self.token = token
        self.max_pipeline = max_pipeline
        self.state = ConnectionState.HANDSHAKING
        #: C{state is CLOSED}, as a plain attribute: the glue reads it per chunk.
        self.closed = False
        self.version = None
        self.close_reason = None
        self._pending = deque()  # PieceRequest not yet sent
        self._sent = deque()     # PieceRequest sent, in the order answers come
        self._recv = None        # the PieceRequest whose body is arriving
        self._parts = []         # its body so far: slices of what the socket gave us
        self._small = bytearray()  # small slices, coalesced
        self._into = None        # ... or its buffer (a memoryview of its length)
        self._got = 0            # ... and the bytes in it so far

    # -- state ----------------------------------------------------------------

    @property
    def outstanding(self):
        """True while any request is queued or owed an answer."""
        return bool(self._pending or self._sent)

    def head(self):
        """The request the source is due to serve now (its piece timer runs),
        or None: the first sent one still wanted, else the first unsent one."""
        for req in self._sent:
            if req.state is _SENT or req.state is _RECEIVING:
                return req
        if not self._sent and self._pending:
            return self._pending[0]
        return None

    def hello(self):
        """The bytes opening the connection."""
        return codec.encode_hello(codec.Hello(codec.VERSION, self.task_id, self.peer_id,
                                              self.token))

    # -- the caller -----------------------------------------------------------

    def submit(self, req):
        """Queue C{req} (a new L{PieceRequest}); on a closed connection it fails."""
        if self.state is ConnectionState.CLOSED:
            req.state = _DONE
            return [Fail(req, self._error(req, self.close_reason or "connection closed"))]
        self._pending.append(req)
        return self._send_more([])

    def cancel(self, req):
        """The caller gave up on C{req} (its waiter is failed by the caller)."""
        state = req.state
        if state is _PENDING:
            req.state = _DONE
            try:
                self._pending.remove(req)
            except ValueError:
                pass
        elif state is _RECEIVING:
            req.state = _DISCARDING   # read the rest of its body and drop it
            self._parts = []
            self._small = bytearray()
            self._into = None
        elif state is _SENT:
            if self._owed_before(req):
                # Still queued at the server: it will drop it without an answer.
                req.state = _CANCELLED
                return [Send(codec.encode_cancel(codec.Cancel(req.index)))]
            # The server may be sending it already; a Cancel would make it
            # close the connection. Read its answer and drop it instead.
            req.state = _DISCARDING
        return []

    def time_out(self, req, seconds):
        """C{req}'s piece timer fired: it fails, and so does the connection
        (the source is stalled: everything queued behind it would be too)."""
        if req.state in _FINISHED:
            return []
        req.state = _DONE
        out = [Fail(req, self._error(req, f"timed out after {seconds:g}s"))]
        return out + self.close(f"piece {req.index} timed out after {seconds:g}s")

    def no_first_byte(self, req, seconds):
        """C{req}'s first-byte timer fired: unless the server has begun to answer
        it, it fails, and so does the connection (a source that accepts and
        never answers must not hold anything else either)."""
        if req.state is not _SENT and req.state is not _PENDING:
            return []
        req.state = _DONE
        why = f"no answer within {seconds:g}s (first-byte deadline)"
        return [Fail(req, self._error(req, why))] + self.close(f"piece {req.index}: {why}")

    def close(self, reason, code=None):
        """We drop the connection: everything outstanding fails with C{reason}."""
        return self._fail_all(reason, code) + [Close(reason)]

    def connection_lost(self, reason):
        """The connection is gone (or never came): everything outstanding
        fails, with the reason we closed it for if we did, else C{reason}."""
        return self._fail_all(self.close_reason or reason)

    # -- the server -----------------------------------------------------------

    def receive(self, msg):
        """A decoded control message from the server.

        @raise codec.ProtocolError: for anything the server may not send now.
        """
        kind = type(msg)
        if self.state is ConnectionState.HANDSHAKING:
            if kind is codec.HelloAck:
                if not codec.MIN_VERSION <= msg.version <= codec.VERSION:
                    raise codec.ProtocolError(f"server chose unsupported version {msg.version}")
                self.version = msg.version
                self.state = ConnectionState.READY
                return self._send_more([])
            if kind is codec.Error and msg.index is None:
                return self.close(f"handshake refused: {msg.name}: {msg.message}", msg.code)
            raise codec.ProtocolError(f"expected HelloAck, got {kind.__name__}")
        if kind is codec.Piece:
            return self._piece(msg)
        if kind is codec.Error:
            if msg.index is None:
                return self.close(f"{msg.name}: {msg.message}", msg.code)
            req = self._answer_for(msg.index)
            self._sent.popleft()
            out = []
            if req.state is _SENT:
                req.state = _DONE
                out.append(Fail(req, self._error(req, f"{msg.name}: {msg.message}", msg.code)))
            else:
                req.state = _DONE
            return self._send_more(out)
        raise codec.ProtocolError(f"unexpected {kind.__name__} from a server")

    def _piece(self, msg):
        req = self._answer_for(msg.index)
        if req.state is _SENT:
            if msg.length != req.length:
                req.state = _DONE
                out = [Fail(req, self._error(
                    req, f"server sent {msg.length} bytes, expected {req.length}"))]
                return out + self.close(f"piece {msg.index} length mismatch")
            req.state = _RECEIVING
            if req.chunks and self.buffers is not None and msg.length:
                self._into = self.buffers.take(msg.length)
                self._got = 0
        else:
            req.state = _DISCARDING
        self._recv = req
        return []

    def body_target(self):
        """The part of the current body's buffer still to fill (a writable
        memoryview), or None when no body is being received into a buffer."""
        into = self._into
        if into is None:
            return None
        return into[self._got:]

    def body_filled(self, n, last):
        """The reader put C{n} more body bytes into L{body_target}; C{last}
        when that ended the body. None until the last, then the actions."""
        req = self._recv
        got = self._got
        if req.hasher is not None:
            req.hasher.update(self._into[got:got + n])
        self._got = got + n
        if not last:
            return None
        return self._body_done(req)

    def body(self, event):
        """A slice of the current piece's body (a L{codec.PieceData}).

        Called per chunk received, so it does no more than keep the slice:
        it returns None until the last slice, then the actions.
        """
        # The body is kept as the slices the socket delivered (no copy, no
        # zero-filled buffer): a chunked request hands them over as they are
        # (with their digest, hashed here as they arrive: the hasher drops the
        # GIL for big buffers), a plain one joins them once. Small slices are
        # coalesced so a trickling sender cannot make the list huge.
        req = self._recv
        if req.state is _RECEIVING:
            data = event.data
            if req.hasher is not None:
                req.hasher.update(data)
            into = self._into
            if into is not None:
                # (bytes the decoder saw before the reader took over)
                got = self._got
                self._got = got + len(data)
                into[got:self._got] = data
            elif len(data) >= MIN_PART:
                if self._small:
                    self._parts.append(self._small)
                    self._small = bytearray()
                self._parts.append(data)
            else:
                small = self._small
                small += data
                if len(small) >= MIN_PART:
                    self._parts.append(small)
                    self._small = bytearray()
        if not event.last:
            return None
        return self._body_done(req)

    def _body_done(self, req):
        self._recv = None
        self._sent.popleft()
        if req.state is not _RECEIVING:
            req.state = _DONE
            return self._send_more([])
        if self._into is not None:
            self._parts = [self._into]
            self._into = None
        if self._small:
            self._parts.append(self._small)
            self._small = bytearray()
        parts, self._parts = self._parts, []
        if req.chunks:
            piece = ReceivedPiece(req.index, parts, req.length,
                                  req.hasher.hexdigest() if req.hasher is not None else None)
        else:
            piece = b"".join(parts)
        req.state = _DONE
        return self._send_more([Deliver(req, piece)])

    # -- internals ------------------------------------------------------------

    def _send_more(self, after):
        """Move waiting requests onto the wire; the Send comes before C{after}."""
        if self.state is not ConnectionState.READY:
            return after
        pending, sent, limit = self._pending, self._sent, self.max_pipeline
        out = []
        while pending and len(sent) < limit:
            req = pending.popleft()
            req.state = _SENT
            sent.append(req)
            out.append(codec.encode_request(codec.Request(req.index)))
        if not out:
            return after
        return [Send(b"".join(out))] + after

    def _answer_for(self, index):
        """The sent request that an answer for C{index} belongs to.

        Answers come in request order; a cancelled request may have been
        dropped by the server without an answer, so skip those.
        """
        sent = self._sent
        while sent:
            head = sent[0]
            if head.index == index:
                return head
            if head.state is not _CANCELLED:
                break
            sent.popleft()
        raise codec.ProtocolError(f"unexpected answer for piece {index}")

    def _owed_before(self, req):
        """True when the server owes an answer to a request sent before C{req}."""
        for other in self._sent:
            if other is req:
                return False
            if other.state is not _CANCELLED:
                return True
        return False

    def _error(self, req, reason, code=None):
        return PieceFetchError(self.source, req.index, reason, code)

    def _fail_all(self, reason, code=None):
        if self.close_reason is None:
            self.close_reason = reason
        self.state = ConnectionState.CLOSED
        self.closed = True
        reqs = list(self._sent) + list(self._pending)
        self._sent.clear()
        self._pending.clear()
        self._recv = None
        self._parts = []
        self._small = bytearray()
        self._into = None
        out = []
        for req in reqs:
            if req.state not in _FINISHED:
                req.state = _DONE
                out.append(Fail(req, self._error(req, reason, code)))
        return out

"""The piece protocol's wire format: records <-> bytes, with no I/O.

Every message travels in one frame::

    +----------------+--------+------------------------+
    | length: u32 BE | type u8| payload (length-1 B)   |
    +----------------+--------+------------------------+

C{length} counts the type byte and the payload. A L{Piece} frame is a header
only: exactly C{Piece.length} raw bytes of piece data follow it on the wire,
outside any frame. docs/protocol.md describes every byte.

L{encode} turns a message into bytes; L{FrameDecoder} is fed arbitrary slices
of a byte stream and yields messages and L{PieceData} chunks, raising
L{ProtocolError} on anything malformed, unknown or oversized.

Version 2 adds the admission token to the Hello (a u16 length and that many
ASCII bytes after the peer id; absent when the client has none); a version 1
Hello is still read (it carries no token, so an admission-checking server
refuses it).
"""
import re
import struct
from dataclasses import dataclass

from dragonfly.taskid import validate_task_id

#: The protocol version this code speaks best, and the oldest it still speaks.
VERSION = 2
MIN_VERSION = 1
#: The first version whose Hello may carry an admission token.
TOKEN_VERSION = 2

#: First four bytes of every Hello payload: rejects strangers (HTTP, TLS) at once.
MAGIC = b"DFLY"

#: Largest control frame (type byte + payload) accepted by default.
MAX_FRAME = 64 * 1024
#: Largest piece body accepted by default.
MAX_PIECE = 64 * 1024 * 1024
#: Largest piece index; 0xFFFFFFFF is reserved for "no piece" in Error.
MAX_INDEX = 0xFFFFFFFE
#: The index of an Error about the whole connection rather than one piece.
NO_INDEX = 0xFFFFFFFF
#: Error messages longer than this (in UTF-8 bytes) are truncated by encode().
MAX_ERROR_MESSAGE = 1024
#: Longest admission token a Hello may carry (bytes).
MAX_TOKEN = 1024
_TOKEN_RE = re.compile(r"\A[A-Za-z0-9._-]+\Z")

# Message types.
T_HELLO = 1
T_HELLO_ACK = 2
T_REQUEST = 3
T_CANCEL = 4
T_PIECE = 5
T_ERROR = 6

# Error codes.
NOT_FOUND = 1        # task or piece not held
BUSY = 2             # too many concurrent uploads: try another source or later
BAD_REQUEST = 3      # malformed or unsupported request (e.g. protocol version)
SHUTTING_DOWN = 4    # the node is stopping
INTERNAL = 5         # the node failed to read its own data
FORBIDDEN = 6        # no valid admission token for this task and peer

ERROR_NAMES = {
    NOT_FOUND: "NOT_FOUND",
    BUSY: "BUSY",
    BAD_REQUEST: "BAD_REQUEST",
    SHUTTING_DOWN: "SHUTTING_DOWN",
    INTERNAL: "INTERNAL",
    FORBIDDEN: "FORBIDDEN",
}

_HEADER = struct.Struct("!IB")
HEADER_SIZE = _HEADER.size  # 5
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HELLO_FIXED = struct.Struct("!4sH")
_PIECE = struct.Struct("!II")
_ERROR_FIXED = struct.Struct("!IH")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame sequence: drop it."""


def _check_index(index):
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_INDEX:
        raise ValueError(f"piece index out of range: {index!r}")


def _check_u16(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer 0-65535, not {value!r}")


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> server, first frame: the client's best version, the task it
    wants pieces of, who it is, and its admission token (None: none; needs
    version 2 or later)."""

    version: int
    task_id: str
    peer_id: str
    token: str | None = None

    def __post_init__(self):
        _check_u16("version", self.version)
        validate_task_id(self.task_id)
        validate_task_id(self.peer_id)
        if self.token is not None:
            _check_token(self.token, self.version)


def _check_token(token, version):
    if version < TOKEN_VERSION:
        raise ValueError(f"a version {version} Hello carries no token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN \
            or not _TOKEN_RE.match(token):
        raise ValueError("malformed admission token")


@dataclass(frozen=True, slots=True)
class HelloAck:
    """Server -> client: the handshake succeeded; C{version} is the one in use."""

    version: int

    def __post_init__(self):
        _check_u16("version", self.version)


@dataclass(frozen=True, slots=True)
class Request:
    """Client -> server: send piece C{index} (queued, served in order)."""

    index: int

    def __post_init__(self):
        _check_index(self.index)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Client -> server: forget (or abort) the request for piece C{index}."""

    index: int

    def __post_init__(self):
        _check_index(self.index)


@dataclass(frozen=True, slots=True)
class Piece:
    """Server -> client: exactly C{length} raw bytes of piece C{index} follow."""

    index: int
    length: int

    def __post_init__(self):
        _check_index(self.index)
        if not isinstance(self.length, int) or not 0 <= self.length <= 0xFFFFFFFF:
            raise ValueError(f"piece length out of range: {self.length!r}")


@dataclass(frozen=True, slots=True)
class Error:
    """Server -> client: request C{index} failed (C{index} None: the whole
    connection failed and the server closes it)."""

    index: int | None
    code: int
    message: str = ""

    def __post_init__(self):
        if self.index is not None:
            _check_index(self.index)
        _check_u16("error code", self.code)
        if not isinstance(self.message, str):
            raise ValueError("error message must be a string")

    @property
    def name(self):
        return ERROR_NAMES.get(self.code, f"ERROR_{self.code}")


@dataclass(frozen=True, slots=True)
class PieceData:
    """A slice of a piece's body as it arrives; C{last} on the final one.

    C{data} is a memoryview into the decoder's input: copy it before keeping it.
    """

    index: int
    data: memoryview
    last: bool


# -- encoding ---------------------------------------------------------------

def _frame(mtype, payload):
    return _HEADER.pack(len(payload) + 1, mtype) + payload


def _encode_id(value):
    raw = value.encode("ascii")
    return bytes((len(raw),)) + raw


def encode_hello(msg):
    token = b""
    if msg.token is not None:
        raw = msg.token.encode("ascii")
        token = _U16.pack(len(raw)) + raw
    return _frame(T_HELLO, _HELLO_FIXED.pack(MAGIC, msg.version)
                  + _encode_id(msg.task_id) + _encode_id(msg.peer_id) + token)


def encode_hello_ack(msg):
    return _frame(T_HELLO_ACK, _U16.pack(msg.version))


def encode_request(msg):
    return _HEADER.pack(5, T_REQUEST) + _U32.pack(msg.index)


def encode_cancel(msg):
    return _HEADER.pack(5, T_CANCEL) + _U32.pack(msg.index)


def encode_piece(msg):
    return _HEADER.pack(9, T_PIECE) + _PIECE.pack(msg.index, msg.length)


def encode_error(msg):
    text = msg.message.encode("utf-8")
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    index = NO_INDEX if msg.index is None else msg.index
    return _frame(T_ERROR, _ERROR_FIXED.pack(index, msg.code) + text)


_ENCODERS = {
    Hello: encode_hello,
    HelloAck: encode_hello_ack,
    Request: encode_request,
    Cancel: encode_cancel,
    Piece: encode_piece,
    Error: encode_error,
}


def encode(msg):
    """The frame carrying C{msg} (for a L{Piece}, its header only)."""
    try:
        encoder = _ENCODERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a piece protocol message: {msg!r}") from None
    return encoder(msg)


# -- decoding ---------------------------------------------------------------

def _decode_id(payload, pos, what):
    if pos >= len(payload):
        raise ProtocolError(f"Hello truncated before the {what}")
    n = payload[pos]
    pos += 1
    raw = bytes(payload[pos:pos + n])
    if len(raw) != n:
        raise ProtocolError(f"Hello truncated inside the {what}")
    try:
        value = validate_task_id(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"malformed {what} in Hello") from None
    return value, pos + n


def _decode_hello(payload):
    if len(payload) < _HELLO_FIXED.size:
        raise ProtocolError("Hello too short")
    magic, version = _HELLO_FIXED.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a dragonfly piece protocol peer")
    task_id, pos = _decode_id(payload, _HELLO_FIXED.size, "task id")
    peer_id, pos = _decode_id(payload, pos, "peer id")
    token = None
    if pos != len(payload) and version >= TOKEN_VERSION:
        token, pos = _decode_token(payload, pos, version)
    if pos != len(payload):
        raise ProtocolError("trailing bytes after Hello")
    return Hello(version, task_id, peer_id, token)


def _decode_token(payload, pos, version):
    if len(payload) - pos < _U16.size:
        raise ProtocolError("Hello truncated inside the token length")
    n = _U16.unpack_from(payload, pos)[0]
    pos += _U16.size
    raw = bytes(payload[pos:pos + n])
    if len(raw) != n:
        raise ProtocolError("Hello truncated inside the token")
    try:
        token = raw.decode("ascii")
        _check_token(token, version)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed admission token in Hello") from None
    return token, pos + n


def _fixed(size, what):
    def check(payload):
        if len(payload) != size:
            raise ProtocolError(f"{what} payload must be {size} bytes, got {len(payload)}")
    return check


_check_ack = _fixed(2, "HelloAck")
_check_u32 = _fixed(4, "Request/Cancel")
_check_piece = _fixed(8, "Piece")


def _index(raw):
    if raw > MAX_INDEX:
        raise ProtocolError("piece index 0xFFFFFFFF is reserved")
    return raw


def _decode_hello_ack(payload):
    _check_ack(payload)
    return HelloAck(_U16.unpack_from(payload)[0])


def _decode_request(payload):
    _check_u32(payload)
    return Request(_index(_U32.unpack_from(payload)[0]))


def _decode_cancel(payload):
    _check_u32(payload)
    return Cancel(_index(_U32.unpack_from(payload)[0]))


def _decode_piece(payload):
    _check_piece(payload)
    index, length = _PIECE.unpack_from(payload)
    return Piece(_index(index), length)


def _decode_error(payload):
    if len(payload) < _ERROR_FIXED.size:
        raise ProtocolError("Error too short")
    index, code = _ERROR_FIXED.unpack_from(payload)
    try:
        message = bytes(payload[_ERROR_FIXED.size:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("Error message is not UTF-8") from None
    return Error(None if index == NO_INDEX else index, code, message)


_DECODERS = {
    T_HELLO: _decode_hello,
    T_HELLO_ACK: _decode_hello_ack,
    T_REQUEST: _decode_request,
    T_CANCEL: _decode_cancel,
    T_PIECE: _decode_piece,
    T_ERROR: _decode_error,
}


def decode_frame(frame):
    """Decode one complete frame (header included) into a message; strict."""
    frame = memoryview(frame)
    if len(frame) < HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    length, mtype = _HEADER.unpack_from(frame)
    if length + 4 != len(frame):
        raise ProtocolError("frame length does not match its header")
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise ProtocolError(f"unknown message type {mtype}")
    return decoder(frame[HEADER_SIZE:])


class FrameDecoder:
    """Incremental decoder: C{feed} any slices of the stream, in order.

    C{feed(data)} is a generator of messages and L{PieceData} chunks; iterate
    it to the end (or discard the decoder). Bytes buffered between calls are
    bounded by one control frame: piece bodies pass through as memoryview
    slices of the input without being copied. The first malformed, unknown
    or oversized frame raises L{ProtocolError}, and so does every later call.
    """

    def __init__(self, max_frame=MAX_FRAME, max_piece=MAX_PIECE):
        self.max_frame = max_frame
        self.max_piece = max_piece
        self._buf = bytearray()
        self._need = HEADER_SIZE  # bytes _buf must hold before parsing resumes
        self._body_index = None
        self._body_left = 0
        self._failed = None

    @property
    def in_piece(self):
        """True while the decoder is inside a piece body."""
        return self._body_left > 0

    @property
    def body_left(self):
        """Bytes of the current piece body still to come (0 outside a body)."""
        return self._body_left

    @property
    def buffered(self):
        """Bytes of an incomplete frame held until more data arrives."""
        return len(self._buf)

    def frame_left(self):
        """Outside a body: bytes that end the frame in progress as far as its
        header tells (a whole Piece header when nothing is buffered), so a
        reader that asks for no more never takes bytes of a body after it."""
        if self._buf:
            return max(self._need - len(self._buf), 1)
        return HEADER_SIZE + _PIECE.size

    def body_consumed(self, n):
        """The caller took C{n} bytes of the current body off the wire itself
        (not through L{feed}); True when that ended the body."""
        left = self._body_left
        if not 0 < n <= left or self._buf:
            raise ValueError(f"{n} body bytes consumed with {left} owed")
        self._body_left = left - n
        return left == n

    def _fail(self, reason):
        self._failed = reason
        self._buf = bytearray()
        raise ProtocolError(reason)

    def feed(self, data):
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if self._buf:
            # Accumulate an incomplete frame without re-copying it per call.
            self._buf += data
            if len(self._buf) < self._need:
                return
            data = bytes(self._buf)
            self._buf = bytearray()
        view = memoryview(data)
        end = len(view)
        pos = 0
        header = _HEADER
        max_frame = self.max_frame
        while pos < end:
            left = self._body_left
            if left:
                n = end - pos
                if n > left:
                    n = left
                self._body_left = left - n
                chunk = view[pos:pos + n]
                pos += n
                yield PieceData(self._body_index, chunk, left == n)
                continue
            if end - pos < HEADER_SIZE:
                self._need = HEADER_SIZE
                break
            length, mtype = header.unpack_from(view, pos)
            if length < 1:
                self._fail("empty frame")
            if length > max_frame:
                self._fail(f"frame of {length} bytes exceeds the {max_frame} byte limit")
            decoder = _DECODERS.get(mtype)
            if decoder is None:
                self._fail(f"unknown message type {mtype}")
            stop = pos + 4 + length
            if stop > end:
                self._need = stop - pos
                break
            try:
                msg = decoder(view[pos + HEADER_SIZE:stop])
            except ProtocolError as e:
                self._fail(str(e))
            except ValueError as e:
                self._fail(f"invalid field: {e}")
            pos = stop
            if mtype == T_PIECE:
                if msg.length > self.max_piece:
                    self._fail(f"piece of {msg.length} bytes exceeds the {self.max_piece} byte limit")
                self._body_index = msg.index
                self._body_left = msg.length
                yield msg
                if msg.length == 0:
                    yield PieceData(msg.index, memoryview(b""), True)
            else:
                yield msg
        if pos < end:
            # An incomplete frame: at most max_frame + 4 bytes.
            self._buf = bytearray(view[pos:])

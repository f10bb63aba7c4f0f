"""Tests for dragonfly.protocol.codec: the piece protocol's wire format."""
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.protocol import codec
from dragonfly.protocol.codec import (
    Cancel, Error, FrameDecoder, Hello, HelloAck, Piece, PieceData, ProtocolError, Request,
    decode_frame, encode,
)

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-"
ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ID_CHARS[:62]),
    st.text(alphabet=ID_CHARS, max_size=127),
)
indexes = st.integers(min_value=0, max_value=codec.MAX_INDEX)
u16 = st.integers(min_value=0, max_value=0xFFFF)
# No example database in the checkout; no per-example deadline on a noisy box.
quick = settings(deadline=None, database=None)
messages = st.one_of(
    st.builds(Hello, u16, ids, ids),
    st.builds(HelloAck, u16),
    st.builds(Request, indexes),
    st.builds(Cancel, indexes),
    st.builds(Piece, indexes, st.integers(min_value=0, max_value=codec.MAX_PIECE)),
    st.builds(Error, st.one_of(st.none(), indexes), u16, st.text(max_size=200)),
)


def feed_all(decoder, data):
    return list(decoder.feed(data))


def split_events(events):
    """Messages, with each piece's body joined and checked for a single `last`."""
    out = []
    body = None
    for ev in events:
        if isinstance(ev, PieceData):
            body[1].append(bytes(ev.data))
            if ev.last:
                out.append((body[0], b"".join(body[1])))
                body = None
        else:
            assert body is None, "message inside a piece body"
            if isinstance(ev, Piece):
                body = (ev, [])
            else:
                out.append(ev)
    assert body is None, "piece body never finished"
    return out


class EncodeTests(SynchronousTestCase):
    def test_request_bytes(self):
        """When a Request is encoded, it is length 5, type 3, then the index as u32 BE."""
        self.assertEqual(encode(Request(7)), b"\x00\x00\x00\x05\x03\x00\x00\x00\x07")

    def test_hello_bytes(self):
        """When a Hello is encoded, its payload is magic, version and two length-prefixed ids."""
        frame = encode(Hello(1, "t1", "p-1"))
        payload = b"DFLY\x00\x01" + b"\x02t1" + b"\x03p-1"
        self.assertEqual(frame, struct.pack("!IB", len(payload) + 1, 1) + payload)

    def test_piece_is_header_only(self):
        """When a Piece is encoded, only its 13-byte header is produced."""
        self.assertEqual(encode(Piece(1, 4096)),
                         b"\x00\x00\x00\x09\x05" + b"\x00\x00\x00\x01" + b"\x00\x00\x10\x00")

    def test_connection_error_index(self):
        """When an Error has no index, 0xFFFFFFFF goes on the wire and decodes back to None."""
        frame = encode(Error(None, codec.SHUTTING_DOWN, "bye"))
        self.assertEqual(frame[5:9], b"\xff\xff\xff\xff")
        self.assertEqual(decode_frame(frame), Error(None, codec.SHUTTING_DOWN, "bye"))

    def test_long_error_message_truncated(self):
        """When an Error message is too long, it is cut at a UTF-8 boundary."""
        frame = encode(Error(1, codec.BUSY, "\u00e9" * 2000))
        msg = decode_frame(frame)
        self.assertLessEqual(len(msg.message.encode()), codec.MAX_ERROR_MESSAGE)
        self.assertEqual(set(msg.message), {"\u00e9"})

    def test_invalid_messages_rejected(self):
        """When a message has out-of-range fields, constructing it raises ValueError."""
        self.assertRaises(ValueError, Request, -1)
        self.assertRaises(ValueError, Request, codec.NO_INDEX)
        self.assertRaises(ValueError, Cancel, True)
        self.assertRaises(ValueError, Hello, 1, "../etc/passwd", "p")
        self.assertRaises(ValueError, Hello, 1, "t", "")
        self.assertRaises(ValueError, Hello, 70000, "t", "p")
        self.assertRaises(ValueError, Piece, 0, -1)
        self.assertRaises(ValueError, Error, 0, -1, "")
        self.assertRaises(TypeError, encode, "not a message")

    @quick
    @given(messages)
    def test_round_trip(self, msg):
        """When any valid message is encoded, decoding it gives it back."""
        frame = encode(msg)
        self.assertEqual(decode_frame(frame), msg)
        events = feed_all(FrameDecoder(), frame)
        self.assertEqual(events[0], msg)


class FrameDecoderTests(SynchronousTestCase):
    def test_byte_by_byte(self):
        """When a stream arrives one byte at a time, the same messages come out."""
        stream = (encode(Hello(1, "task", "peer")) + encode(Request(3))
                  + encode(Piece(3, 5)) + b"hello" + encode(Cancel(4)))
        dec = FrameDecoder()
        events = []
        for i in range(len(stream)):
            events.extend(dec.feed(stream[i:i + 1]))
        self.assertEqual(split_events(events), [
            Hello(1, "task", "peer"), Request(3), (Piece(3, 5), b"hello"), Cancel(4)])
        self.assertEqual(dec.buffered, 0)
        self.assertFalse(dec.in_piece)

    def test_body_passes_through(self):
        """When a piece body arrives, it is yielded as slices of the input, the last one marked."""
        dec = FrameDecoder()
        events = feed_all(dec, encode(Piece(9, 10)) + b"01234")
        self.assertEqual(events[0], Piece(9, 10))
        self.assertEqual((events[1].index, bytes(events[1].data), events[1].last), (9, b"01234", False))
        self.assertTrue(dec.in_piece)
        events = feed_all(dec, b"56789" + encode(Request(1)))
        self.assertEqual((bytes(events[0].data), events[0].last), (b"56789", True))
        self.assertEqual(events[1], Request(1))

    def test_empty_piece(self):
        """When a piece of length 0 arrives, one empty last chunk follows its header."""
        events = feed_all(FrameDecoder(), encode(Piece(2, 0)) + encode(Request(5)))
        self.assertEqual(split_events(events), [(Piece(2, 0), b""), Request(5)])

    def test_partial_frame_buffered(self):
        """When a frame is incomplete, nothing is yielded and only it is buffered."""
        dec = FrameDecoder()
        frame = encode(Hello(1, "t", "p"))
        self.assertEqual(feed_all(dec, frame[:-1]), [])
        self.assertEqual(dec.buffered, len(frame) - 1)
        self.assertEqual(feed_all(dec, frame[-1:]), [Hello(1, "t", "p")])
        self.assertEqual(dec.buffered, 0)

    def test_oversized_frame(self):
        """When a frame header announces more than max_frame, ProtocolError is raised at once."""
        dec = FrameDecoder(max_frame=64 * 1024)
        with self.assertRaises(ProtocolError):
            feed_all(dec, struct.pack("!IB", 64 * 1024 + 1, codec.T_ERROR))

    def test_max_frame_accepted(self):
        """When a frame is exactly max_frame long, it is accepted."""
        dec = FrameDecoder(max_frame=64 * 1024)
        payload = struct.pack("!IH", 1, 2) + b"x" * (64 * 1024 - 7)
        frame = struct.pack("!IB", 64 * 1024, codec.T_ERROR) + payload
        self.assertEqual(feed_all(dec, frame), [Error(1, 2, "x" * (64 * 1024 - 7))])

    def test_oversized_piece(self):
        """When a Piece header announces more than max_piece, ProtocolError is raised."""
        dec = FrameDecoder(max_piece=1024)
        with self.assertRaises(ProtocolError):
            feed_all(dec, encode(Piece(0, 1025)))
        self.assertEqual(split_events(feed_all(FrameDecoder(max_piece=1024),
                                               encode(Piece(0, 1024)) + b"x" * 1024)),
                         [(Piece(0, 1024), b"x" * 1024)])

    def test_default_limits(self):
        """When nothing is said, the limits are 64 KiB frames and 64 MiB pieces."""
        dec = FrameDecoder()
        self.assertEqual((dec.max_frame, dec.max_piece), (64 * 1024, 64 * 1024 * 1024))
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), encode(Piece(0, 64 * 1024 * 1024 + 1)))

    def test_unknown_type(self):
        """When a frame has an unknown type, ProtocolError is raised as soon as its header is in."""
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), struct.pack("!IB", 10, 99))

    def test_empty_frame(self):
        """When a frame's length is 0 (no room for the type), ProtocolError is raised."""
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), b"\x00\x00\x00\x00\x03")

    def test_wrong_fixed_sizes(self):
        """When a fixed-size message is too short or too long, ProtocolError is raised."""
        for mtype, payload in [(codec.T_REQUEST, b"\x00\x00\x01"),
                               (codec.T_REQUEST, b"\x00\x00\x00\x01\x00"),
                               (codec.T_CANCEL, b""),
                               (codec.T_PIECE, b"\x00" * 7),
                               (codec.T_HELLO_ACK, b"\x00"),
                               (codec.T_ERROR, b"\x00" * 5)]:
            with self.assertRaises(ProtocolError, msg=(mtype, payload)):
                feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, mtype) + payload)

    def test_truncated_hello(self):
        """When a Hello's ids are cut short or followed by junk, ProtocolError is raised."""
        good = encode(Hello(1, "task", "peer"))[5:]
        for payload in (good[:-1], good[:6], good[:8], good + b"x"):
            with self.assertRaises(ProtocolError, msg=payload):
                feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, codec.T_HELLO) + payload)

    def test_bad_magic(self):
        """When a Hello lacks the magic (say, an HTTP client), ProtocolError is raised."""
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        payload = b"XXXX\x00\x01\x01t\x01p"
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, codec.T_HELLO) + payload)

    def test_bad_ids(self):
        """When a Hello carries an id with path characters or non-ASCII, ProtocolError is raised."""
        for task_id in (b"../x", b"a/b", b"\xff", b""):
            payload = b"DFLY\x00\x01" + bytes((len(task_id),)) + task_id + b"\x01p"
            with self.assertRaises(ProtocolError, msg=task_id):
                feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, codec.T_HELLO) + payload)

    def test_reserved_index(self):
        """When a Request or Piece uses the reserved index 0xFFFFFFFF, ProtocolError is raised."""
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), b"\x00\x00\x00\x05\x03\xff\xff\xff\xff")
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), b"\x00\x00\x00\x09\x05\xff\xff\xff\xff\x00\x00\x00\x00")

    def test_error_not_utf8(self):
        """When an Error message is not UTF-8, ProtocolError is raised."""
        payload = struct.pack("!IH", 1, 1) + b"\xff\xfe"
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, codec.T_ERROR) + payload)

    def test_unknown_error_code_accepted(self):
        """When an Error carries a code this version does not know, it still decodes."""
        self.assertEqual(feed_all(FrameDecoder(), encode(Error(1, 77, "new"))), [Error(1, 77, "new")])
        self.assertEqual(Error(1, 77).name, "ERROR_77")
        self.assertEqual(Error(1, codec.BUSY).name, "BUSY")

    def test_failed_decoder_stays_failed(self):
        """When a decoder has raised, every later feed raises too, even with good data."""
        dec = FrameDecoder()
        with self.assertRaises(ProtocolError):
            feed_all(dec, struct.pack("!IB", 5, 200))
        with self.assertRaises(ProtocolError):
            feed_all(dec, encode(Request(1)))

    def test_good_frames_before_garbage(self):
        """When garbage follows good frames in one chunk, the good ones are yielded first."""
        dec = FrameDecoder()
        got = []
        with self.assertRaises(ProtocolError):
            for ev in dec.feed(encode(Request(1)) + encode(Request(2)) + b"\x00\x00\x00\x02\xee\x00"):
                got.append(ev)
        self.assertEqual(got, [Request(1), Request(2)])

    def test_slow_large_frame_buffer_bounded(self):
        """When a big frame trickles in, the buffer holds only that frame's bytes."""
        dec = FrameDecoder()
        payload = struct.pack("!IH", 1, 1) + b"x" * 60000
        frame = struct.pack("!IB", len(payload) + 1, codec.T_ERROR) + payload
        body, last = frame[:-1], frame[-1:]
        for i in range(0, len(body), 7):
            self.assertEqual(feed_all(dec, body[i:i + 7]), [])
            self.assertLessEqual(dec.buffered, len(frame))
        self.assertEqual(dec.buffered, len(body))
        self.assertEqual(feed_all(dec, last), [Error(1, 1, "x" * 60000)])
        self.assertEqual(dec.buffered, 0)

    @settings(quick, max_examples=300)
    @given(st.lists(messages, min_size=1, max_size=8), st.data())
    def test_any_split_round_trip(self, msgs, data):
        """When a stream of messages (and bodies) is cut anywhere, decoding gives them all back."""
        stream = b""
        expected = []
        for msg in msgs:
            stream += encode(msg)
            if isinstance(msg, Piece):
                if msg.length > 300:
                    msg = Piece(msg.index, msg.length % 300)
                    stream = stream[:-13] + encode(msg)
                body = bytes(i % 251 for i in range(msg.length))
                stream += body
                expected.append((msg, body))
            else:
                expected.append(msg)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        dec = FrameDecoder()
        events = []
        prev = 0
        for cut in cuts + [len(stream)]:
            events.extend(dec.feed(stream[prev:cut]))
            prev = cut
        self.assertEqual(split_events(events), expected)

    @settings(quick, max_examples=500)
    @given(st.binary(max_size=300))
    def test_garbage_never_crashes(self, junk):
        """When arbitrary bytes arrive, the decoder yields messages or raises ProtocolError, nothing else."""
        dec = FrameDecoder(max_frame=1024, max_piece=1024)
        try:
            for ev in dec.feed(junk):
                self.assertIsInstance(ev, (Hello, HelloAck, Request, Cancel, Piece, Error, PieceData))
        except ProtocolError:
            pass
        self.assertLessEqual(dec.buffered, 1024 + 4)


TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=codec.MAX_TOKEN)


class HelloTokenTests(SynchronousTestCase):
    """The admission token of a version 2 Hello."""

    @quick
    @given(st.integers(min_value=codec.TOKEN_VERSION, max_value=0xFFFF), ids, ids,
           st.one_of(st.none(), tokens))
    def test_round_trip(self, version, task_id, peer_id, token):
        """When a Hello with or without a token is encoded, it decodes to itself."""
        msg = Hello(version, task_id, peer_id, token)
        self.assertEqual(decode_frame(encode(msg)), msg)
        self.assertEqual(feed_all(FrameDecoder(), encode(msg)), [msg])

    def test_without_token_is_the_version_1_layout(self):
        """When a Hello has no token, its bytes are those of a version 1 Hello
        but for the version: an older server reads them."""
        self.assertEqual(encode(Hello(2, "t", "p"))[11:], encode(Hello(1, "t", "p"))[11:])

    def test_layout(self):
        """The token follows the peer id as a u16 length and its ASCII bytes."""
        frame = encode(Hello(2, "t", "p", "ab.c"))
        self.assertEqual(frame[5:], b"DFLY\x00\x02\x01t\x01p\x00\x04ab.c")

    def test_version_1_carries_no_token(self):
        """A version 1 Hello cannot be built with a token, and one that has
        bytes after its peer id is malformed."""
        self.assertRaises(ValueError, Hello, 1, "t", "p", "tok")
        payload = b"DFLY\x00\x01\x01t\x01p\x00\x03tok"
        with self.assertRaises(ProtocolError):
            feed_all(FrameDecoder(), struct.pack("!IB", len(payload) + 1, codec.T_HELLO) + payload)

    def test_malformed_tokens(self):
        """When a Hello's token is empty, oversized, truncated, followed by junk,
        not ASCII or has characters outside base64url and '.', ProtocolError is raised."""
        head = b"DFLY\x00\x02\x01t\x01p"
        big = b"a" * (codec.MAX_TOKEN + 1)
        for tail in (b"\x00", b"\x00\x00", b"\x00\x05abc", b"\x00\x02abc",
                     struct.pack("!H", len(big)) + big, b"\x00\x02\xff\xfe",
                     b"\x00\x03a b", b"\x00\x03a/b", b"\x00\x03a=b", b"\x00\x01\n"):
            payload = head + tail
            with self.assertRaises(ProtocolError, msg=tail):
                feed_all(FrameDecoder(max_frame=4096),
                         struct.pack("!IB", len(payload) + 1, codec.T_HELLO) + payload)

    def test_bad_tokens_not_built(self):
        """A Hello is not built with a token that could not be decoded."""
        for bad in ("", "a b", "a" * (codec.MAX_TOKEN + 1), "é", b"abc", 5):
            self.assertRaises(ValueError, Hello, 2, "t", "p", bad)

    def test_forbidden_code(self):
        """FORBIDDEN has a name."""
        self.assertEqual(Error(None, codec.FORBIDDEN).name, "FORBIDDEN")

"""Tests of dragonfly.httpio: the Range parser, the JSON writers and describe()
that every HTTP surface shares."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error as neterr
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from dragonfly.httpio import (
    RangeNotSatisfiable, abort, content_range, describe, error_body, json_body, parse_range,
    parse_ranges,
    unregister, write_json)

quick = settings(deadline=None, database=None)
lengths = st.integers(min_value=0, max_value=1 << 40)
positions = st.integers(min_value=0, max_value=1 << 41)


class RangeTests(SynchronousTestCase):
    def test_parse_range(self):
        """Single byte ranges are understood; others are ignored or unsatisfiable."""
        self.assertEqual(parse_range(None, 10), None)
        self.assertEqual(parse_range(b"bytes=0-4", 10), (0, 4))
        self.assertEqual(parse_range(b"bytes=3-", 10), (3, 9))
        self.assertEqual(parse_range(b"bytes=5-100", 10), (5, 9))
        self.assertEqual(parse_range(b"bytes=-3", 10), (7, 9))
        self.assertEqual(parse_range(b"bytes=-30", 10), (0, 9))
        self.assertEqual(parse_range(b"bytes=0-1,3-4", 10), None)
        self.assertEqual(parse_range(b"items=0-1", 10), None)
        self.assertEqual(parse_range(b"bytes=5-2", 10), None)
        self.assertEqual(parse_range(b"bytes=a-b", 10), None)
        self.assertRaises(ValueError, parse_range, b"bytes=10-", 10)
        self.assertRaises(ValueError, parse_range, b"bytes=-0", 10)

    def test_str_and_bytes(self):
        """A header given as text means what the same header as bytes means."""
        self.assertEqual(parse_range("bytes=100-199", 1000), (100, 199))
        self.assertEqual(parse_range(" bytes=-5 ", 10), (5, 9))
        self.assertEqual(parse_range("bytes=1-2,4-5", 10), None)
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=99999-", 10)

    def test_several_ranges(self):
        """Several ranges: the whole body when any overlaps it (or one part is
        malformed); 416 when none does."""
        self.assertEqual(parse_range(b"bytes=0-1, 3-4", 10), None)
        self.assertEqual(parse_range(b"bytes=20-30,-2", 10), None)
        self.assertEqual(parse_range(b"bytes=20-30,x-y", 10), None)
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=10-,20-30", 10)
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=-0,15-", 10)
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=0-1,2-3", 0)

    def test_empty_body(self):
        """No range of an empty body is satisfiable; without a Range it is whole."""
        self.assertEqual(parse_range(None, 0), None)
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=0-", 0)
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=-1", 0)

    @quick
    @given(st.one_of(st.binary(max_size=40), st.text(max_size=40)), lengths)
    def test_any_header(self, value, length):
        """For any header, the answer is the whole body, a window inside the body,
        or RangeNotSatisfiable; never another error."""
        try:
            window = parse_range(value, length)
        except RangeNotSatisfiable:
            return
        if window is not None:
            first, last = window
            self.assertTrue(0 <= first <= last < length, (value, length, window))

    @quick
    @given(positions, positions, lengths)
    def test_first_last(self, a, b, length):
        """bytes=a-b is [a, min(b, length - 1)] when a <= b and a is in the body;
        past the end it is unsatisfiable; reversed it is ignored."""
        value = b"bytes=%d-%d" % (a, b)
        if b < a:
            self.assertIsNone(parse_range(value, length))
        elif a >= length:
            self.assertRaises(RangeNotSatisfiable, parse_range, value, length)
        else:
            self.assertEqual(parse_range(value, length), (a, min(b, length - 1)))

    @quick
    @given(positions, lengths)
    def test_open_and_suffix(self, n, length):
        """bytes=n- runs to the end; bytes=-n is the last n bytes (all if fewer)."""
        if n < length:
            self.assertEqual(parse_range(b"bytes=%d-" % n, length), (n, length - 1))
        else:
            self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=%d-" % n, length)
        if n > 0 and length > 0:
            self.assertEqual(parse_range(b"bytes=-%d" % n, length),
                             (max(0, length - n), length - 1))
        else:
            self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=-%d" % n, length)

    def test_content_range(self):
        """Content-Range names the window and the length; for a 416, only the length."""
        self.assertEqual(content_range((5, 104), 1200), b"bytes 5-104/1200")
        self.assertEqual(content_range(None, 1200), b"bytes */1200")


class JSONTests(SynchronousTestCase):
    def test_json_body(self):
        """json_body sets the status and JSON headers and returns one line of JSON."""
        request = DummyRequest([b""])
        body = json_body(request, 202, {"a": [1, 2]})
        self.assertEqual(request.responseCode, 202)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(body, b'{"a": [1, 2]}\n')

    def test_compact(self):
        """With compact=True, no blanks follow the separators."""
        self.assertEqual(json_body(DummyRequest([b""]), 200, {"a": [1, 2]}, compact=True),
                         b'{"a":[1,2]}\n')

    def test_error_body(self):
        """error_body is the house shape: {"error": message} plus any extra fields."""
        request = DummyRequest([b""])
        body = error_body(request, 307, "moved", owner="sn-2:8002")
        self.assertEqual(request.responseCode, 307)
        self.assertEqual(json.loads(body), {"error": "moved", "owner": "sn-2:8002"})
        self.assertEqual(error_body(DummyRequest([b""]), 404, "gone", compact=True),
                         b'{"error":"gone"}\n')

    def test_write_json(self):
        """write_json writes the body with its Content-Length and finishes the request."""
        request = DummyRequest([b""])
        write_json(request, 503, {"status": "error"})
        self.assertEqual(request.responseCode, 503)
        data = b"".join(request.written)
        self.assertEqual(json.loads(data), {"status": "error"})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"),
                         [b"%d" % len(data)])
        self.assertEqual(request.finished, 1)


class _Transport:
    def __init__(self, abortable):
        self.calls = []
        if abortable:
            self.abortConnection = lambda: self.calls.append("abort")

    def loseConnection(self):
        self.calls.append("lose")


class _Channel:
    def __init__(self, transport):
        self.transport = transport


class RequestPlumbingTests(SynchronousTestCase):
    def test_abort(self):
        """abort drops the connection (abortConnection when there is one), and does
        nothing once the client is gone."""
        request = DummyRequest([b""])
        request.channel = _Channel(_Transport(abortable=True))
        abort(request)
        self.assertEqual(request.channel.transport.calls, ["abort"])
        request.channel = _Channel(_Transport(abortable=False))
        abort(request)
        self.assertEqual(request.channel.transport.calls, ["lose"])
        request.channel = None
        abort(request)

    def test_unregister_after_client_left(self):
        """unregister forgets the producer also when the channel is gone."""
        request = DummyRequest([b""])
        request.channel = None
        request.producer = object()
        unregister(request)
        self.assertIsNone(request.producer)


class DescribeTests(SynchronousTestCase):
    def test_describe(self):
        """describe gives one line: the type and text, or a plain phrase for the
        common network failures, every reason of a multi-reason error."""
        self.assertEqual(describe(ValueError("bad")), "ValueError: bad")
        self.assertEqual(describe(Failure(KeyError())), "KeyError")
        self.assertEqual(describe(CancelledError()), "timed out")
        self.assertEqual(describe(neterr.ConnectionRefusedError()), "connection refused")
        self.assertEqual(describe(neterr.DNSLookupError("x")), "cannot resolve the host name")
        self.assertEqual(describe(neterr.TCPTimedOutError()), "connection timed out")

        class Many(Exception):
            reasons = [Failure(ValueError("a")), "plain text"]
        self.assertEqual(describe(Many()), "ValueError: a; plain text")


class ParseRangesTests(SynchronousTestCase):
    """Every range of a header, for a multipart answer (or None: the whole body)."""

    def test_ascending_apart(self):
        """Ranges apart in ascending order are kept as asked (suffix resolved)."""
        self.assertEqual(parse_ranges("bytes=0-9,100-199,-5", 1000),
                         [(0, 9), (100, 199), (995, 999)])

    def test_single(self):
        self.assertEqual(parse_ranges("bytes=10-", 100), [(10, 99)])

    def test_coalesced(self):
        """Overlapping and adjacent ranges become one, whatever their order."""
        self.assertEqual(parse_ranges("bytes=5-20,0-9,21-30", 100), [(0, 30)])

    def test_out_of_order(self):
        """Ranges apart, out of order: the whole body."""
        self.assertIsNone(parse_ranges("bytes=50-59,0-9", 100))

    def test_unsatisfiable_left_out(self):
        """A range past the end is left out; all of them: 416."""
        self.assertEqual(parse_ranges("bytes=0-9,500-600", 100), [(0, 9)])
        self.assertRaises(RangeNotSatisfiable, parse_ranges, "bytes=500-600,700-", 100)

    def test_too_many_or_malformed(self):
        """More parts than allowed, a malformed part, another unit: the whole body."""
        self.assertIsNone(parse_ranges("bytes=0-1,3-4,6-7", 100, max_parts=2))
        self.assertIsNone(parse_ranges("bytes=0-1,x-4", 100))
        self.assertIsNone(parse_ranges("items=0-1", 100))
        self.assertIsNone(parse_ranges(None, 100))

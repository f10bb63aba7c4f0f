"""Tests of Range requests through the mirror (dragonfly.dfdaemon.blobs): a
range is streamed from the pieces covering it as soon as they are held, with
no wait for the rest of the blob; several ranges, If-Range and 416."""
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed

from dragonfly.dfdaemon.blobs import BlobSink
from dragonfly.httpio import MAX_PARTS
from dragonfly.test.mirrorfakes import BLOB, DIGEST, MIRROR, MirrorTestMixin

PATH = f"/v2/library/app/blobs/{DIGEST}"


def parse_multipart(body, boundary, length=len(BLOB)):
    """[(first, last, bytes)] of a multipart/byteranges body, read strictly:
    each part's length from its Content-Range, every delimiter where it must be."""
    parts, pos = [], 0
    delimiter = b"--" + boundary
    while True:
        lead = b"" if pos == 0 else b"\r\n"
        assert body.startswith(lead + delimiter, pos), body[pos:pos + 80]
        pos += len(lead + delimiter)
        if body[pos:pos + 2] == b"--":
            assert body[pos + 2:] == b"\r\n", body[pos:]
            return parts
        assert body[pos:pos + 2] == b"\r\n"
        end = body.index(b"\r\n\r\n", pos)
        headers = dict(line.split(b": ", 1) for line in body[pos + 2:end].split(b"\r\n"))
        pos = end + 4
        unit, _, spec = headers[b"Content-Range"].partition(b" ")
        assert unit == b"bytes" and headers[b"Content-Type"] == b"application/octet-stream"
        span, _, total = spec.partition(b"/")
        assert int(total) == length
        first, last = (int(x) for x in span.split(b"-"))
        parts.append((first, last, body[pos:pos + last - first + 1]))
        pos += last - first + 1


class _Collect(Protocol):
    def __init__(self):
        self.got = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.got.append(data)

    def connectionLost(self, reason):
        self.done.callback(reason.value)


class _Request:
    channel = None
    producer = None

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


class RangeTests(MirrorTestMixin, SynchronousTestCase):
    def ranged(self, value, **headers):
        hdrs = {b"range": [value]}
        hdrs.update({k.encode().replace(b"_", b"-"): [v] for k, v in headers.items()})
        return self.get(PATH, headers=hdrs)

    def test_range_near_the_end_needs_only_its_pieces(self):
        """When a client asks for a range at 90% of the blob and only the
        pieces covering it arrived, it gets the whole range at once: the
        stream starts at the range (its cursor) and stops at its end."""
        self.peer.available = 0          # nothing held ...
        self.peer.release_window(1000, 1200)   # ... but the covering pieces
        first, last = 1080, 1143
        response = self.get(PATH, headers={b"range": [b"bytes=%d-%d" % (first, last)]},
                            unbuffered=True)
        self.assertEqual(response.code, 206)
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes %d-%d/%d" % (first, last, len(BLOB))])
        body = _Collect()
        response.deliverBody(body)
        self.pump()
        self.assertEqual(b"".join(body.got), BLOB[first:last + 1])
        self.assertIsInstance(self.successResultOf(body.done), ResponseDone)
        [stream] = self.peer.streams
        self.assertEqual((stream.start, stream.end), (first, last + 1))

    def test_range_waits_for_its_pieces_only(self):
        """When the covering pieces are not held yet, the range waits for them,
        not for the bytes before it."""
        self.peer.available = 0
        d = self.client.request("GET", MIRROR + PATH, headers={b"range": [b"bytes=-100"]},
                                unbuffered=True)
        self.pump()
        self.assertNoResult(d)   # no byte yet (the headers go with the first)
        self.peer.release_window(len(BLOB) - 150, len(BLOB))
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 206)
        body = _Collect()
        response.deliverBody(body)
        self.pump()
        self.assertEqual(b"".join(body.got), BLOB[-100:])
        self.assertIsInstance(self.successResultOf(body.done), ResponseDone)

    def test_range_is_not_hashed_as_a_whole(self):
        """A range is not checked against the whole blob's digest (its pieces
        were checked against theirs), and never drops the task."""
        self.peer.serve[DIGEST] = BLOB[:-1] + b"!"
        response = self.ranged(b"bytes=0-99")
        self.assertEqual(self.body(response), BLOB[:100])
        self.assertEqual(self.peer.dropped, [])

    def test_whole_blob_range_is_still_verified(self):
        """A Range covering the whole blob is a full GET: hashed, and a
        mismatch aborts it and drops the task."""
        self.peer.serve[DIGEST] = BLOB[:-1] + b"!"
        response = self.get(PATH, headers={b"range": [b"bytes=0-"]}, unbuffered=True)
        self.assertEqual(response.code, 206)
        body = _Collect()
        response.deliverBody(body)
        self.pump()
        self.assertIsInstance(self.successResultOf(body.done), ResponseFailed)
        self.assertEqual(len(self.peer.dropped), 1)

    def test_several_ranges_multipart(self):
        """Several ranges, ascending and apart: 206 multipart/byteranges, each
        part with its own Content-Range and bytes, the boundaries right, the
        Content-Length the body's (read back by a strict parser)."""
        response = self.ranged(b"bytes=0-9,100-199,%d-" % (len(BLOB) - 5))
        self.assertEqual(response.code, 206)
        self.assertIsNone(response.headers.getRawHeaders(b"content-range"))
        ctype, = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(ctype.startswith(b"multipart/byteranges; boundary="))
        body = self.body(response)
        self.assertEqual(response.length, len(body))   # the Content-Length sent
        parts = parse_multipart(body, ctype.partition(b"boundary=")[2])
        self.assertEqual(parts, [(0, 9, BLOB[0:10]), (100, 199, BLOB[100:200]),
                                 (len(BLOB) - 5, len(BLOB) - 1, BLOB[-5:])])

    def test_overlapping_ranges_coalesced(self):
        """Overlapping or adjacent ranges are coalesced: one range, one plain 206."""
        response = self.ranged(b"bytes=0-9,5-20,21-30")
        self.assertEqual(response.code, 206)
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes 0-30/%d" % len(BLOB)])
        self.assertEqual(self.body(response), BLOB[:31])

    def test_ranges_out_of_order_get_the_whole_body(self):
        """Ranges apart but out of order: 200 with the whole (verified) blob,
        as RFC 9110 allows (the parts would have to come in that order)."""
        response = self.ranged(b"bytes=100-199,0-9")
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders(b"content-range"))
        self.assertEqual(self.body(response), BLOB)

    def test_too_many_ranges_get_the_whole_body(self):
        """More ranges than MAX_PARTS: the whole body."""
        spec = b",".join(b"%d-%d" % (i * 20, i * 20 + 9) for i in range(MAX_PARTS + 1))
        response = self.ranged(b"bytes=" + spec)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)

    def test_range_named_in_the_download(self):
        """A range request names its bytes in the download (so a supernode
        without the blob asks the registry for them first); a full GET does not."""
        self.ranged(b"bytes=1000-1099")
        self.assertEqual(self.peer.downloads[-1]["want"], (1000, 1099))
        self.ranged(b"bytes=-51")
        self.assertEqual(self.peer.downloads[-1]["want"], (len(BLOB) - 51, len(BLOB) - 1))
        self.get(PATH)
        self.assertIsNone(self.peer.downloads[-1]["want"])

    def test_several_ranges_past_the_end(self):
        """Several ranges none of which overlaps the blob: 416."""
        response = self.ranged(b"bytes=%d-,%d-%d" % (len(BLOB), len(BLOB) + 5, len(BLOB) + 9))
        self.assertEqual(response.code, 416)
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes */%d" % len(BLOB)])

    def test_range_past_the_end(self):
        response = self.ranged(b"bytes=%d-%d" % (len(BLOB) + 1, len(BLOB) + 10))
        self.assertEqual(response.code, 416)
        self.assertEqual(self.peer.streams, [])

    def test_if_range_matching(self):
        """If-Range with the blob's ETag: the range is served."""
        response = self.ranged(b"bytes=10-19", if_range=b'"%s"' % DIGEST.encode())
        self.assertEqual(response.code, 206)
        self.assertEqual(self.body(response), BLOB[10:20])

    def test_if_range_mismatch(self):
        """If-Range with another ETag, a weak one or a date: the whole blob, 200."""
        for validator in [b'"sha256:00"', b'W/"%s"' % DIGEST.encode(),
                          b"Sat, 05 Dec 2026 12:00:00 GMT"]:
            response = self.ranged(b"bytes=10-19", if_range=validator)
            self.assertEqual(response.code, 200, validator)
            self.assertEqual(self.body(response), BLOB)

    def test_if_range_with_several_ranges(self):
        """If-Range applies to a multi-range request too: our ETag -> the
        multipart answer; another validator -> the whole blob, and the download
        then names no range (nothing is wanted first)."""
        etag = b'"%s"' % DIGEST.encode()
        response = self.ranged(b"bytes=0-9,100-109", if_range=etag)
        self.assertEqual(response.code, 206)
        ctype, = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(parse_multipart(self.body(response), ctype.partition(b"boundary=")[2]),
                         [(0, 9, BLOB[0:10]), (100, 109, BLOB[100:110])])
        self.assertEqual(self.peer.downloads[-1]["want"], (0, 109))
        response = self.ranged(b"bytes=0-9,100-109", if_range=b'"sha256:00"')
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        self.assertIsNone(self.peer.downloads[-1]["want"])


class WindowSinkTests(SynchronousTestCase):
    def test_window_only(self):
        """A sink fed only the window writes it all at once (nothing held back)
        and is complete when the window's last byte came."""
        request = _Request()
        sink = BlobSink(request, DIGEST, len(BLOB), first=7, last=20, whole=False)
        self.assertEqual(sink.offset, 7)
        sink.write(BLOB[7:15])
        self.assertFalse(self.successResultOf(sink.check()))
        sink.write(BLOB[15:21])
        self.assertEqual(b"".join(request.written), BLOB[7:21])
        self.assertTrue(self.successResultOf(sink.check()))

    def test_window_overflow(self):
        """More bytes than the window: closed, never complete."""
        sink = BlobSink(_Request(), DIGEST, len(BLOB), first=7, last=20, whole=False)
        sink.write(BLOB[7:22])
        self.assertTrue(sink.overflow)
        self.assertFalse(self.successResultOf(sink.check()))

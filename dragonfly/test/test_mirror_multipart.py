"""Tests for dragonfly.dfdaemon.multipart: a multipart/byteranges body cut from a stream."""
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon.multipart import Parts
from dragonfly.test.test_mirror_ranges import parse_multipart

BLOB = os.urandom(1000)


class PartsTests(SynchronousTestCase):

    def stream(self, parts, chunk):
        out, sent = [], 0
        for offset in range(parts.first, parts.last + 1, chunk):
            data = BLOB[offset:min(offset + chunk, parts.last + 1)]
            pieces, n = parts.cut(offset, data)
            out.extend(pieces)
            sent += n
        return b"".join(out), sent

    def test_any_chunking(self):
        """Whatever the chunk sizes (a part split across chunks, several parts
        in one chunk), the body parses back to the windows' bytes and is
        exactly Content-Length long; only window bytes count as sent."""
        windows = [(0, 0), (10, 99), (100 + 50, 700), (999, 999)]
        for chunk in (1, 7, 64, 1000):
            parts = Parts(windows, len(BLOB), boundary=b"b0und")
            body, sent = self.stream(parts, chunk)
            self.assertEqual(len(body), parts.content_length)
            self.assertEqual(sent, sum(b - a + 1 for a, b in windows))
            self.assertEqual(parse_multipart(body, b"b0und", len(BLOB)),
                             [(a, b, BLOB[a:b + 1]) for a, b in windows])

    def test_boundary_random(self):
        """Each answer has its own boundary, named in its Content-Type."""
        a, b = Parts([(0, 1), (5, 6)], 10), Parts([(0, 1), (5, 6)], 10)
        self.assertNotEqual(a.boundary, b.boundary)
        self.assertEqual(a.content_type, b"multipart/byteranges; boundary=" + a.boundary)

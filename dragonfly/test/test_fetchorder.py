"""Tests for dragonfly.supernode.fetchorder: which pieces a cold range asks the origin for."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.httpio import RangeNotSatisfiable, parse_range
from dragonfly.supernode.fetchorder import FetchOrder, covering_pieces, span_end

PIECE = 100


class CoveringPiecesTests(SynchronousTestCase):
    """The pieces that hold a range's bytes."""

    def cover(self, header, length):
        return covering_pieces(parse_range(header, length), PIECE, length)

    def test_first_piece(self):
        """A range inside the first piece is covered by piece 0 alone."""
        self.assertEqual(self.cover("bytes=0-0", 1000), (0, 0))
        self.assertEqual(self.cover("bytes=0-99", 1000), (0, 0))

    def test_last_piece(self):
        """A range at the end of a file whose last piece is short is covered
        by that last piece; an open range from there too."""
        self.assertEqual(self.cover("bytes=1000-1049", 1050), (10, 10))
        self.assertEqual(self.cover("bytes=1049-", 1050), (10, 10))

    def test_across_a_boundary(self):
        """A range crossing one piece boundary needs both pieces; a longer one
        every piece it touches."""
        self.assertEqual(self.cover("bytes=99-100", 1000), (0, 1))
        self.assertEqual(self.cover("bytes=150-420", 1000), (1, 4))

    def test_suffix_range(self):
        """A suffix range (an eStargz footer read) is resolved against the
        length first: the last 51 bytes of 1050 are in pieces 9 and 10."""
        self.assertEqual(self.cover("bytes=-51", 1050), (9, 10))
        self.assertEqual(self.cover("bytes=-50", 1050), (10, 10))
        self.assertEqual(self.cover("bytes=-5000", 1050), (0, 10))

    def test_clipped_to_the_end(self):
        """A range running past the end ends at the last piece."""
        self.assertEqual(self.cover("bytes=950-5000", 1000), (9, 9))

    def test_empty_blob(self):
        """An empty file has no piece to cover anything (and every range of it
        is unsatisfiable)."""
        self.assertIsNone(covering_pieces((0, 0), PIECE, 0))
        self.assertIsNone(covering_pieces(None, PIECE, 0))
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=0-0", 0)

    def test_span_end(self):
        """A span's last byte is its last piece's, or the file's last byte."""
        self.assertEqual(span_end(2, 3, PIECE, None), 399)
        self.assertEqual(span_end(9, 10, PIECE, 1050), 1049)


class FetchOrderTests(SynchronousTestCase):
    """The order of the origin requests of a file a range started."""

    def drain(self, order, held):
        spans = []
        while True:
            span = order.next_span(held.__contains__)
            if span is None:
                return spans
            spans.append(span)
            held.update(range(span[0], span[1] + 1))

    def test_range_first_then_the_rest_once(self):
        """The hurried pieces come first, then the rest in bounded spans in
        file order, skipping what is held: every piece exactly once."""
        order = FetchOrder(10, 3)
        order.hurry(6, 7)
        held = set()
        spans = self.drain(order, held)
        self.assertEqual(spans, [(6, 7), (0, 2), (3, 5), (8, 9)])
        pieces = [i for a, b in spans for i in range(a, b + 1)]
        self.assertEqual(sorted(pieces), list(range(10)))

    def test_hurry_meanwhile(self):
        """A range wanted while the rest is fetched goes before the next span."""
        order = FetchOrder(20, 4)
        held = set()
        self.assertEqual(order.next_span(held.__contains__), (0, 3))
        held.update(range(4))
        order.hurry(15, 16)
        self.assertEqual(order.next_span(held.__contains__), (15, 16))
        held.update((15, 16))
        self.assertEqual(order.next_span(held.__contains__), (4, 7))

    def test_hurried_held_already(self):
        """A hurried range already held costs no request."""
        order = FetchOrder(4, 4)
        order.hurry(1, 2)
        self.assertEqual(order.next_span({1, 2}.__contains__), (0, 0))

    def test_hurried_with_a_hole(self):
        """Only the missing run of a hurried range is asked for, one run at a time."""
        order = FetchOrder(10, 10)
        order.hurry(2, 6)
        self.assertEqual(order.next_span({2, 3, 5}.__contains__), (4, 4))
        self.assertEqual(order.next_span({2, 3, 4, 5}.__contains__), (6, 6))

    def test_out_of_bounds_hurry(self):
        """A hurried range past the last piece is clipped or ignored."""
        order = FetchOrder(3, 3)
        order.hurry(5, 9)
        order.hurry(2, 9)
        self.assertEqual(order.next_span(set().__contains__), (2, 2))

    def test_all_held(self):
        """Nothing left: no span."""
        self.assertIsNone(FetchOrder(3, 2).next_span(lambda i: True))
        self.assertIsNone(FetchOrder(0, 2).next_span(lambda i: False))

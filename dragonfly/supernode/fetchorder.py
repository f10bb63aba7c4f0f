"""In which order a CDN job asks its origin for a file that a range request started.

A lazy-pulling client (through the mirror) wants a few ranges of a blob long
before the rest. When the supernode does not hold the blob yet, its job asks
the origin first for the pieces that cover the range (a ``Range`` request on
the blob), then for the rest in bounded spans, in file order, each span a
``Range`` request of its own, so that a range wanted meanwhile
(L{FetchOrder.hurry}) goes before the next span. No piece is asked for
twice: a span covers only pieces not held, and one span is fetched at a time,
so the origin sends every byte of the file once.

Pure: no I/O, no clock; C{has(index)} is the store's "is this piece held".
"""
from collections import deque

__all__ = ["covering_pieces", "FetchOrder", "SPAN_BYTES", "MAX_HURRIED"]

#: Bytes asked of the origin per request for the rest of the file: small
#: enough that a range wanted meanwhile waits little, large enough that the
#: requests cost little (one per 16 MiB).
SPAN_BYTES = 16 << 20

#: Ranges waiting to be fetched first, at most (older ones are dropped).
MAX_HURRIED = 64


def covering_pieces(window, piece_size, length):
    """The pieces (first, last), inclusive, that hold the bytes of C{window}.

    C{window} is an inclusive byte range (first, last) as L{parse_range}
    gives it (a suffix range already resolved against C{length}). None when
    the file is empty or the window holds no byte of it.
    """
    if window is None or length <= 0:
        return None
    first, last = window
    last = min(last, length - 1)
    if first < 0 or first > last:
        return None
    return first // piece_size, last // piece_size


def span_end(first_piece, last_piece, piece_size, length):
    """The last byte (inclusive) of pieces first_piece..last_piece of a
    C{length}-byte file (None when the length is not known yet)."""
    end = (last_piece + 1) * piece_size - 1
    return end if length is None else min(end, length - 1)


class FetchOrder:
    """Which pieces of a C{piece_count}-piece file to ask the origin for next.

    @param span_pieces: pieces per request for the rest of the file.
    """

    def __init__(self, piece_count, span_pieces):
        self.piece_count = piece_count
        self.span_pieces = max(1, span_pieces)
        self._hurried = deque()
        self._low = 0          # no piece below it is missing

    def hurry(self, first, last):
        """Pieces C{first}..C{last} are wanted now: they go before the rest."""
        first, last = max(0, first), min(last, self.piece_count - 1)
        if first > last or (first, last) in self._hurried:
            return
        if len(self._hurried) >= MAX_HURRIED:
            self._hurried.popleft()
        self._hurried.append((first, last))

    def next_span(self, has):
        """(first, last) pieces for the next request, or None when all are held.

        The oldest hurried range's first run of missing pieces; else the
        lowest missing piece and those after it, up to C{span_pieces} and
        stopping before a held one.
        """
        while self._hurried:
            first, last = self._hurried[0]
            run = self._missing_run(has, first, last)
            if run is not None:
                return run
            self._hurried.popleft()
        while self._low < self.piece_count and has(self._low):
            self._low += 1
        if self._low >= self.piece_count:
            return None
        return self._missing_run(has, self._low,
                                 min(self._low + self.span_pieces, self.piece_count) - 1)

    @staticmethod
    def _missing_run(has, first, last):
        """The first run of missing pieces within first..last, or None."""
        i = first
        while i <= last and has(i):
            i += 1
        if i > last:
            return None
        j = i
        while j < last and not has(j + 1):
            j += 1
        return i, j

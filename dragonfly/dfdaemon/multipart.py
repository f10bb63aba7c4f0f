"""A multipart/byteranges body (RFC 9110 14.6): several ranges of a blob in one answer.

L{Parts} knows the parts' delimiters and headers up front (so the answer has
a Content-Length) and cuts the blob's bytes, as they stream in order from
the first window's start to the last one's end, into what goes on the wire:
each part's header before its first byte, the closing delimiter after the
last part's last byte, nothing of the gaps between windows.
"""
import secrets

__all__ = ["Parts"]


class Parts:
    """The parts of a multipart/byteranges answer for C{windows} of a
    C{length}-byte body.

    @param windows: (first, last) inclusive windows, ascending, apart.
    """

    def __init__(self, windows, length, content_type=b"application/octet-stream",
                 boundary=None):
        self.windows = list(windows)
        self.boundary = boundary or secrets.token_hex(16).encode("ascii")
        self._heads = [
            (b"" if i == 0 else b"\r\n") + b"--" + self.boundary + b"\r\n"
            + b"Content-Type: " + content_type + b"\r\n"
            + b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, length)
            for i, (first, last) in enumerate(self.windows)]
        self._tail = b"\r\n--" + self.boundary + b"--\r\n"

    @property
    def content_type(self):
        return b"multipart/byteranges; boundary=" + self.boundary

    @property
    def content_length(self):
        return (sum(len(h) for h in self._heads) + len(self._tail)
                + sum(last - first + 1 for first, last in self.windows))

    @property
    def first(self):
        return self.windows[0][0]

    @property
    def last(self):
        return self.windows[-1][1]

    def cut(self, offset, data):
        """What to send for C{data}, the body's bytes from C{offset} on:
        a list of byte strings, and how many of them are body bytes."""
        out, sent = [], 0
        end = offset + len(data)
        view = memoryview(data)
        for i, (first, last) in enumerate(self.windows):
            lo, hi = max(first, offset), min(last + 1, end)
            if hi <= lo:
                continue
            if lo == first:
                out.append(self._heads[i])
            out.append(bytes(view[lo - offset:hi - offset]))
            sent += hi - lo
            if hi == last + 1 and i == len(self.windows) - 1:
                out.append(self._tail)
        return out, sent

"""A blob's content digest, computed off the reactor while the blob is sent.

L{BlobHasher} is fed the blob in order -- file ranges (pieces already in the
store) and bytes (pieces passed through it) -- and hashes them in an
L{dragonfly.interfaces.IRunner} (a thread: hashlib drops the GIL on large
buffers), one job at a time, everything fed since the last job in the next
one. The mirror sends the same bytes to its client meanwhile and asks
L{BlobHasher.hexdigest} before its final bytes. Memory: one read buffer per
job, plus the passed-through pieces fed and not hashed yet (the caller holds
those anyway).
"""
import hashlib
import os

from twisted.internet.defer import Deferred

__all__ = ["BlobHasher", "READ_SIZE"]

#: Bytes read from the file per hash update.
READ_SIZE = 1024 * 1024


def _hash_parts(h, parts):
    """Update C{h} with C{parts} in order: bytes, or (fd, offset, length) of a file."""
    buf = None
    for part in parts:
        if not isinstance(part, tuple):
            h.update(part)
            continue
        fd, offset, left = part
        if buf is None:
            buf = bytearray(READ_SIZE)
            view = memoryview(buf)
        while left:
            n = os.preadv(fd, [view[:min(left, READ_SIZE)]], offset)
            if n <= 0:
                raise OSError(f"blob file ended {left} bytes early")
            h.update(view[:n])
            offset += n
            left -= n


class BlobHasher:
    """The digest (algorithm C{algo}, e.g. "sha256") of everything fed, hashed in C{runner}.

    C{feed_file} and C{feed_bytes} queue the blob's next bytes; C{hexdigest()}
    returns a Deferred firing with the hex digest once every byte fed so far
    is hashed (or failing with the error a read hit). The caller keeps the
    file descriptors it feeds open until then.
    """

    def __init__(self, runner, algo):
        self._runner = runner
        self._h = hashlib.new(algo)
        self._queued = []
        self._running = False
        self._error = None
        self._waiters = []
        self.nbytes = 0          # bytes fed

    def feed_file(self, fd, offset, length):
        if length:
            self._queued.append((fd, offset, length))
            self.nbytes += length
            self._next()

    def feed_bytes(self, data):
        if len(data):
            self._queued.append(data)
            self.nbytes += len(data)
            self._next()

    def hexdigest(self):
        d = Deferred()
        self._waiters.append(d)
        self._settle()
        return d

    def _next(self):
        if self._running or self._error is not None or not self._queued:
            return
        parts, self._queued = self._queued, []
        self._running = True
        d = self._runner.run(_hash_parts, self._h, parts)
        d.addCallbacks(self._done, self._failed)

    def _done(self, _):
        self._running = False
        self._next()
        self._settle()

    def _failed(self, failure):
        self._running = False
        self._error = failure
        self._queued = []
        self._settle()

    def _settle(self):
        if self._running or (self._queued and self._error is None):
            return
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if self._error is not None:
                d.errback(self._error)
            else:
                d.callback(self._h.hexdigest())

"""Piece-sized receive buffers, reused across pieces once nothing holds them.

On a plain TCP piece connection the client reads a piece's body with
C{socket.recv_into} straight into one buffer from here (L{RecvBuffers.take}),
and hands the piece on as a single memoryview of it (issue 20, round five:
no bytes object per read, one contiguous view per piece). The view travels to
the runner thread that hashes and writes it, and possibly further (a piece
passed through a full store is joined into bytes there first, so nothing keeps
the view after the write).

A buffer is reused only when nothing but this pool refers to it: every
memoryview of a bytearray holds a reference to it (all views sliced or cast
from one share one), so while the request being received, a
L{dragonfly.protocol.clientstate.ReceivedPiece}, a caller or a runner thread
still holds a view of the piece, the buffer's reference count is above the
pool's own and L{take} passes it over. The count is read on the reactor
thread, the only place a new reference is made (by L{take} itself); other
threads only drop theirs, so a stale read errs on the side of "busy". This
relies on CPython's reference counting (C{sys.getrefcount}), which this
project runs on; no explicit release is needed on any path (written,
digest mismatch, cancelled while the runner still reads, connection lost).

Memory stays bounded: at most C{count} buffers and C{max_bytes} are kept;
past that a fresh buffer is made and freed with its last view, exactly as
the bytes objects it replaces were. L{clear} drops the free ones (the pool
calls it when its last connection goes).
"""
import sys

__all__ = ["RecvBuffers", "BUFFERS", "BUFFER_BYTES"]

#: Buffers kept for reuse: the peer fetches up to 4 pieces at once
#: (L{dragonfly.peer.session}'s slots), plus one being received per
#: connection while the others are written.
BUFFERS = 6
#: Bytes kept for reuse at most (6 pieces of 4 MiB fit).
BUFFER_BYTES = 32 * 1024 * 1024

#: sys.getrefcount() of a buffer only this pool holds: the list slot and the
#: call's own argument.
_UNSHARED = 2


class RecvBuffers:
    """A small pool of bytearrays for piece bodies."""

    def __init__(self, count=BUFFERS, max_bytes=BUFFER_BYTES):
        self.count = count
        self.max_bytes = max_bytes
        self._bufs = []
        self.made = 0      # buffers allocated (pooled or not), for tests and metrics
        self.reused = 0    # takes served by a pooled buffer

    def take(self, nbytes):
        """A writable memoryview of C{nbytes} bytes (its contents undefined),
        never one that anyone else still sees."""
        bufs = self._bufs
        spare = None
        for i in range(len(bufs)):
            if sys.getrefcount(bufs[i]) != _UNSHARED:
                continue
            if len(bufs[i]) >= nbytes:
                self.reused += 1
                return memoryview(bufs[i])[:nbytes]
            spare = i
        buf = bytearray(nbytes)
        self.made += 1
        held = self.held_bytes()
        if spare is not None:
            if held - len(bufs[spare]) + nbytes <= self.max_bytes:
                bufs[spare] = buf    # a free one too small for this size: replace it
        elif len(bufs) < self.count and held + nbytes <= self.max_bytes:
            bufs.append(buf)
        return memoryview(buf)

    def held_bytes(self):
        """Bytes of the buffers kept for reuse (free or in use)."""
        return sum(len(b) for b in self._bufs)

    def clear(self):
        """Forget the buffers; those still in use go with their last view."""
        self._bufs = []

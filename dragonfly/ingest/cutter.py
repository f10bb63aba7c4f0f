"""Cut a byte stream (an origin body) into a task's pieces, with a bounded write window.

L{PieceCutter} is the consumer an C{OriginResponse} delivers its body to; its
C{write} returns a Deferred while the window of piece writes is full, which
pauses the origin connection: that is the pipeline's back-pressure.
"""
from twisted.internet.defer import Deferred

from zope.interface import implementer

from dragonfly.ingest.events import IngestEvents
from dragonfly.interfaces import IBodySink
from dragonfly.storage.buffer import PieceBuffer

__all__ = ["PieceCutter"]


@implementer(IBodySink)
class PieceCutter:
    """Consumer for C{OriginResponse.deliver}: bytes -> whole pieces of C{tf}.

    Chunks are kept as they arrive (no join, no copy); a complete piece goes
    to L{store_piece}. At most C{max_writes} pieces are being stored at once;
    while at that limit C{write} returns a Deferred, so the origin connection
    pauses: memory is bounded by about C{max_writes + 1} pieces. A body that
    is a range of the file ends before piece C{stop}. The first
    storing error is kept and raised by the next C{write} and by L{finish}.

    Complete pieces go to C{writer.cut(index, chunks, size)} (a
    L{dragonfly.ingest.writer.StoreWriter}); every chunk is counted with
    C{events.received} and the errors come from C{events} (an
    L{IngestEvents}). Subclasses may override the hooks instead.
    """

    def __init__(self, tf, start, max_writes=2, writer=None, events=None, stop=None):
        self._tf = tf
        self._writer = writer
        self._events = events if events is not None else IngestEvents()
        if tf.piece_count and start % tf.piece_size:
            raise self.misaligned(start)
        self.index = start // tf.piece_size if tf.piece_count else 0
        #: the body ends where this piece starts (a range of the file)
        self.stop = tf.piece_count if stop is None else stop
        self._piece = PieceBuffer(hashed=False)   # hashed in the runner, with the write
        self._max_writes = max(1, max_writes)
        self._writes = set()
        self._room = None       # Deferred given to the origin while at the limit
        self._error = None

    # -- hooks (delegating to the writer and the events) --------------------------

    def store_piece(self, index, chunks, size):
        """Store a complete piece: a Deferred (counted in the window) or None."""
        return self._writer.cut(index, chunks, size)

    def overflow(self):
        """The exception for bytes past the task's length."""
        return self._events.overflow(self._tf)

    def short(self, got):
        """The exception for a body that ended at byte C{got}, before the end."""
        return self._events.short(self._tf, got)

    def misaligned(self, start):
        return self._events.misaligned(start)

    # -- the consumer ------------------------------------------------------------

    def write(self, data):
        self._events.received(len(data))
        return self._feed(memoryview(data))

    def _feed(self, view):
        if self._error is not None:
            raise self._error
        tf = self._tf
        while view.nbytes:
            if self.index >= self.stop:
                raise self.overflow()
            size = tf.piece_range(self.index)[1]
            need = size - self._piece.nbytes
            self._piece.add(view[:need])
            view = view[need:]
            if self._piece.nbytes == size:
                chunks, _ = self._piece.take()
                index, self.index = self.index, self.index + 1
                self._track(self.store_piece(index, chunks, size))
                if view.nbytes and len(self._writes) >= self._max_writes:
                    # The rest of a large chunk waits for a write to finish.
                    rest = view
                    return self._wait_room().addCallback(lambda _: self._feed(rest))
        if self._error is not None:
            raise self._error
        if len(self._writes) >= self._max_writes:
            return self._wait_room()
        return None

    def _wait_room(self):
        self._room = Deferred()
        return self._room

    def _track(self, d):
        if d is None:
            return
        self._writes.add(d)

        def failed(f):
            if self._error is None:
                self._error = f.value
            return None

        def settled(_):
            self._writes.discard(d)
            room, self._room = self._room, None
            if room is not None:
                if self._error is not None:
                    room.errback(self._error)
                else:
                    room.callback(None)
        d.addErrback(failed)
        d.addBoth(settled)

    async def drain(self):
        """Wait for the piece writes in flight (their errors are kept, not raised)."""
        while self._writes:
            await next(iter(self._writes))

    async def finish(self):
        """The body ended: wait for the writes; every piece must be complete."""
        await self.drain()
        if self._error is not None:
            raise self._error
        if self._piece.nbytes or self.index != self.stop:
            raise self.short(self.index * self._tf.piece_size + self._piece.nbytes)

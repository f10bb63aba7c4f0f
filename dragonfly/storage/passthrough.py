"""PassThrough: the pieces of a task its store could not hold, kept in memory until streamed.

When a piece cannot be written (the disk is full and nothing more can be
evicted) and the store allows it (the peer's store does, the supernode's does
not), L{dragonfly.storage.taskfile.TaskFile} keeps the verified piece here
instead of failing the download: the task becomes I{uncached}. Such a piece
is I{delivered} (the download need not fetch it again) but not I{held}: it is
never served to other peers, never reported to a supernode, and it is
dropped once a stream has written it to its client (L{consumed}). At most
C{limit} bytes wait here: while it is full, a piece's write waits (and so
does what feeds it: a fetch slot, the origin body) unless a stream needs it
before those in memory, and the swarm session starts no other fetch; both are
woken through C{drained} when a stream frees some.
"""

from twisted.internet.defer import Deferred, succeed

from dragonfly.digest import piece_digest
from dragonfly.storage.errors import DigestMismatch

__all__ = ["PassThrough", "PassThroughPieces", "join_and_digest"]

#: Bytes of not-yet-streamed pieces one uncached task may keep in memory.
DEFAULT_LIMIT = 64 * 1024 * 1024


def join_and_digest(views):
    """(bytes, hex piece digest) of C{views}; for the runner."""
    data = b"".join(views)
    return data, piece_digest(data)


class PassThrough:
    """The in-memory pieces of one uncached task."""

    def __init__(self, limit=DEFAULT_LIMIT):
        self.limit = limit
        self.pieces = {}        # index -> bytes, not streamed yet
        self.passed = set()     # every index delivered this way
        self.passed_bytes = 0
        self.nbytes = 0
        self.drained = []       # callables: memory was freed

    def put(self, index, data):
        if index not in self.pieces:
            self.pieces[index] = data
            self.nbytes += len(data)

    def delivered(self, index, size):
        """Piece C{index} (C{size} bytes) was passed through (streamed yet or not)."""
        if index not in self.passed:
            self.passed.add(index)
            self.passed_bytes += size

    def read(self, index, start, length):
        """C{length} bytes at C{start} within in-memory piece C{index}, or None."""
        data = self.pieces.get(index)
        if data is None:
            return None
        return data[start:start + length]

    def consumed(self, index):
        """A stream wrote piece C{index} to its client: free it."""
        data = self.pieces.pop(index, None)
        if data is None:
            return
        self.nbytes -= len(data)
        for cb in list(self.drained):
            cb()

    def full(self):
        return self.nbytes >= self.limit


class PassThroughPieces:
    """What L{dragonfly.storage.taskfile.TaskFile} adds for pass-through.

    Expects C{self._pass} (None, or a L{PassThrough} once a piece went past the
    store), C{self._drain_waiters} (a list), C{has()}, C{_held_count},
    C{_held_bytes}, C{_pins}, C{_removed}, C{piece_count}, C{_store} and C{log}.
    """

    @property
    def uncached(self):
        """True once pieces of this task went past the store (the cache was full)."""
        return self._pass is not None

    def delivered(self, index):
        """Piece C{index} is held, or was passed through (need not be fetched again)."""
        return self.has(index) or (self._pass is not None and index in self._pass.passed)

    @property
    def delivered_bytes(self):
        """Bytes held or passed through."""
        return self._held_bytes + (self._pass.passed_bytes if self._pass is not None else 0)

    @property
    def is_delivered(self):
        """Every piece is held or was passed through."""
        passed = len(self._pass.passed) if self._pass is not None else 0
        return self._held_count + passed >= self.piece_count

    def readable(self, index):
        """Piece C{index} can be read now: held, or passed through and not streamed yet."""
        return self.has(index) or (self._pass is not None and index in self._pass.pieces)

    def consumed(self, index):
        """A stream wrote piece C{index} to its client: a passed-through copy is freed."""
        if self._pass is not None:
            self._pass.consumed(index)
            self._maybe_release()

    def _maybe_release(self):
        """Passed through, streamed, unused: the store may take its space back."""
        if (self._pass is not None and not self._pass.pieces and not self._pins
                and self.is_delivered):
            self._store.abandoned(self)

    def pass_full(self):
        """True while passed-through pieces wait in memory up to the limit."""
        return self._pass is not None and self._pass.full()

    def pass_wants(self, index):
        """May piece C{index} be fetched now? Always, unless passed-through
        memory is full: then only a piece before all those waiting there (the
        one a stream waits for, so that they can drain)."""
        p = self._pass
        return p is None or not p.full() or not p.pieces or index < min(p.pieces)

    def on_drained(self, cb):
        """Call C{cb()} whenever a stream frees passed-through memory; returns a remover."""
        waiters = self._drain_waiters
        waiters.append(cb)
        return lambda: cb in waiters and waiters.remove(cb)

    def _pass_piece(self, index, views, expected):
        """The store cannot hold piece C{index}: keep it in memory for the
        streams (verified against C{expected} when given). Fires with its digest."""
        def got(result):
            data, digest = result
            if expected is not None and digest != expected:
                raise DigestMismatch(expected, digest)
            if self._pass is None:
                self._pass = PassThrough(self._store.pass_limit)
                self._pass.drained = self._drain_waiters
                self.log.warn("no room for {task_id} in the cache: passing it through "
                              "without keeping it", task_id=self.task_id)
            return self._admit(index, data, digest)
        return self._store.runner.run(join_and_digest, views).addCallback(got)

    def _admit(self, index, data, digest):
        """Keep piece C{index} in memory once L{pass_wants} it (a Deferred
        firing with C{digest} then): the write waits, and so does whatever
        feeds it (a fetch slot, the origin body), while memory is full."""
        def ready():
            return self.pass_wants(index) or self._removed

        if ready():
            self._pass.put(index, data)
            return succeed(digest)

        def retry():
            if not d.called and ready():
                forget()
                self._pass.put(index, data)
                d.callback(digest)
        d = Deferred(lambda _: forget())
        forget = self.on_drained(retry)
        return d

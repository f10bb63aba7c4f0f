"""A whole file's content digest, computed as its pieces land.

A task named by a content digest (an OCI blob) must match it before it is
complete. Re-reading the whole file after the body ended costs a second pass
over every byte (issue 20 measured ~15% of a cold mirror pull); instead,
L{ContentHash} hashes each piece's chunks, in file order, right after the
piece was written, in the runner (never on the reactor), one step at a time.
A piece that lands out of order (a range fetched ahead of the rest) is not
kept in memory: when the hashed prefix reaches it, it is read back from the
data file in bounded reads; L{ContentHash.digest} reads back whatever the
stream did not bring in order. A write that failed, or a hashing error,
makes the hash unusable (C{digest} returns None): the caller then hashes the
whole file as before.
"""
import hashlib
import os
from collections import deque

from twisted.internet.defer import Deferred, succeed

__all__ = ["ContentHash", "READ_BACK"]

#: Bytes per read when a piece is read back from the data file.
READ_BACK = 1 << 20


def _update(h, chunks):
    for c in chunks:
        h.update(c)


def _update_from_file(h, path, offset, size):
    fd = os.open(path, os.O_RDONLY)
    try:
        while size > 0:
            data = os.pread(fd, min(READ_BACK, size), offset)
            if not data:
                raise OSError(f"{path} is short at byte {offset}")
            h.update(data)
            offset += len(data)
            size -= len(data)
    finally:
        os.close(fd)


class ContentHash:
    """The content digest of C{tf} (``algo:hex``), hashed piece by piece in order.

    @param tf: the L{dragonfly.storage.taskfile.TaskFile} being filled.
    @param runner: IRunner; every hashing step runs there, one at a time.
    @ivar hashed: pieces 0..hashed-1 are in the hash (or queued for it).
    """

    def __init__(self, tf, runner, algo="sha256"):
        self.tf = tf
        self._runner = runner
        self._algo = algo
        self._h = hashlib.new(algo)
        self.hashed = 0
        self.broken = False
        self.read_back = 0          # bytes read back from the file (out of order)
        self._tail = succeed(None)  # the last queued step; never fails
        self._inline = deque()      # one Deferred per inline piece out, in order

    def follow(self, index, written, chunks):
        """Piece C{index} is being written (C{written}: its Deferred); hash
        C{chunks} after it landed, if it continues the hashed prefix (held
        pieces between are read back first). Returns the Deferred the caller
        should wait on: C{written}'s result, once the piece is also hashed."""
        if self.broken or index < self.hashed:
            return written
        tf = self.tf
        gap = self.hashed
        while gap < index and tf.has(gap):
            gap += 1
        if gap < index:
            return written          # a hole before it: read back later
        for held in range(self.hashed, index):
            self._queue(self._read_back, held)
        self.hashed = index + 1
        prev, done = self._tail, Deferred()
        self._tail = done

        async def step():
            try:
                result = await written
            except BaseException:
                self.broken = True
                done.callback(None)
                raise
            await prev
            await self._hash(_update, self._h, chunks)
            done.callback(None)
            return result
        return Deferred.fromCoroutine(step())

    def inline(self, index):
        """The hash object to feed piece C{index}'s bytes to where they are
        written (a writer's thread, L{dragonfly.ingest.splice}), when it is the
        next piece in order and no step is queued (inline pieces out before it
        are fine: the writer feeds them in order); None otherwise (the piece
        is then read back later, like any out of order). After a non-None
        answer the caller must call L{inline_done} for each inline piece, in
        order, before anything else here."""
        if self.broken or index != self.hashed or not (self._tail.called or self._inline):
            return None
        self.hashed = index + 1
        self._tail = Deferred()
        self._inline.append(self._tail)
        return self._h

    def inline_done(self, landed):
        """The oldest piece given by L{inline} was hashed and written
        (C{landed}), or not: then the hash may hold part of it and cannot be
        trusted."""
        if not landed:
            self.broken = True
        done = self._inline.popleft()
        if not self._inline:
            self._tail = succeed(None)
        done.callback(None)

    def _queue(self, fn, *args):
        prev, done = self._tail, Deferred()
        self._tail = done

        async def step():
            await prev
            await fn(*args)
            done.callback(None)
        Deferred.fromCoroutine(step())

    async def _read_back(self, index):
        offset, size = self.tf.piece_range(index)
        self.read_back += size
        await self._hash(_update_from_file, self._h, self.tf.path, offset, size)

    async def _hash(self, fn, *args):
        if self.broken:
            return
        try:
            await self._runner.run(fn, *args)
        except Exception:
            self.broken = True

    async def digest(self):
        """``algo:hex`` of the whole file (every piece must be held), or None
        when this hash cannot be trusted (then hash the file afresh)."""
        for index in range(self.hashed, self.tf.piece_count):
            self._queue(self._read_back, index)
        self.hashed = self.tf.piece_count
        await self._tail
        if self.broken:
            return None
        return f"{self._algo}:{self._h.hexdigest()}"

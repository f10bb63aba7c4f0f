"""Finished pieces -> the store: the last step of the ingest pipeline.

L{StoreWriter} writes a piece cut from a body (hashed and written in one
runner call by C{TaskFile.write_new_piece}) or read back from a spool (with
its digest already computed), and tells the L{IngestEvents}. A piece the
store already holds is never rewritten: with C{recheck_held} it is hashed in
the runner and must match the copy held (else C{events.changed}), otherwise
it is skipped. With a L{dragonfly.ingest.contenthash.ContentHash}, each piece
cut from a body is also added to the whole file's hash once it landed.
"""
from dragonfly.digest import piece_hasher

__all__ = ["StoreWriter", "digest_of"]


def digest_of(chunks):
    """The hex piece digest of C{chunks} (bytes-like, in order); runs in the runner."""
    h = piece_hasher()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


class StoreWriter:
    """Writes pieces of C{tf} through C{runner}; reports to C{events}."""

    def __init__(self, tf, runner, events, recheck_held=False, content=None):
        self.tf = tf
        self._runner = runner
        self._events = events
        self._recheck = recheck_held
        self._content = content

    def cut(self, index, chunks, size):
        """Store a piece cut from a body: a Deferred, or None when skipped."""
        tf = self.tf
        if tf.delivered(index):   # held, or passed through (the cache was full)
            if self._recheck:
                d = self._runner.run(digest_of, chunks).addCallback(self._compare, index)
                return self._follow(index, d, chunks)
            self._events.skipped(index, size)
            return None
        d = tf.write_new_piece(index, chunks).addCallback(self._stored, index, size)
        return self._follow(index, d, chunks)

    def _follow(self, index, written, chunks):
        if self._content is None:
            return written
        return self._content.follow(index, written, chunks)

    def spooled(self, index, data, digest):
        """Store a piece read back from a spool with its digest: a Deferred."""
        return self.tf.write_trusted_piece(index, data, digest).addCallback(
            lambda _: self._stored(digest, index, len(data)))

    def _compare(self, digest, index):
        if digest != self.tf.digest(index):
            raise self._events.changed(index)
        self._events.skipped(index, self.tf.piece_range(index)[1])

    def _stored(self, digest, index, size):
        self._events.stored(self.tf, index, size, digest)
        return digest

"""PieceBuffer: one piece's bytes gathered as they arrive, without joining them.

Receivers (the piece client, the origin cutter) collect a piece here and hand
its chunks to a TaskFile write method as they are.
"""
from dragonfly.digest import piece_hasher


class PieceBuffer:
    """One piece's bytes as they arrive: chunks kept as given (small ones
    coalesced), the piece digest updated per chunk unless C{hashed=False} (then hash
    them in the runner: L{TaskFile.write_new_piece}). C{take()} hands over
    C{(chunks, digest)} for a TaskFile write method without joining them.

    Chunks are kept by reference: give it immutable buffers (bytes, or
    memoryviews of bytes), never a buffer that will be reused.
    """

    MIN_PART = 32 * 1024

    __slots__ = ("chunks", "nbytes", "_small", "_hash", "_hashed")

    def __init__(self, hashed=True):
        self.chunks = []
        self.nbytes = 0
        self._small = None
        self._hashed = hashed
        self._hash = piece_hasher() if hashed else None

    def add(self, data):
        n = len(data)
        if not n:
            return
        if self._hash is not None:
            self._hash.update(data)
        self.nbytes += n
        if n >= self.MIN_PART:
            if self._small is not None:
                self.chunks.append(self._small)
                self._small = None
            self.chunks.append(data)
        elif self._small is None:
            self._small = bytearray(data)
        else:
            self._small += data
            if len(self._small) >= self.MIN_PART:
                self.chunks.append(self._small)
                self._small = None

    def take(self):
        """C{(chunks, hex digest)} (digest None when made with hashed=False);
        the buffer starts afresh."""
        if self._small is not None:
            self.chunks.append(self._small)
        chunks = self.chunks
        digest = self._hash.hexdigest() if self._hash is not None else None
        self.chunks = []
        self.nbytes = 0
        self._small = None
        self._hash = piece_hasher() if self._hashed else None
        return chunks, digest

"""The piece sizes of a file, as a constant-size sequence (the scheduler's
L{dragonfly.supernode.swarmstate.Task} and the CDN's jobs use it)."""

__all__ = ["PieceSizes"]


class PieceSizes:
    """The piece sizes of a file of C{length} bytes cut every C{piece_size}
    bytes, as a read-only sequence of constant size (no per-piece list)."""

    __slots__ = ("length", "piece_size", "n")

    def __init__(self, length, piece_size):
        if length < 0 or piece_size <= 0:
            raise ValueError("bad length or piece size")
        self.length = length
        self.piece_size = piece_size
        self.n = -(-length // piece_size)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.piece_size if i < self.n - 1 else self.length - i * self.piece_size

    def __eq__(self, other):
        if isinstance(other, PieceSizes):
            return self.length == other.length and (
                self.piece_size == other.piece_size or self.n <= 1 and other.n <= 1)
        try:
            return len(other) == self.n and all(a == b for a, b in zip(self, other))
        except TypeError:
            return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"PieceSizes({self.length}, {self.piece_size})"

"""What a user of the ingest pipeline hears from it, and how its errors read.

L{IngestEvents} is the strategy object the pipeline reports to: every body
chunk received, every piece stored or found already held; and the factories
of the exceptions it raises when a body does not fit its task. The defaults
count nothing and raise L{IngestError}; each role subclasses it with its own
metrics and error types.
"""

__all__ = ["IngestError", "IngestEvents"]


class IngestError(ValueError):
    """A body that does not fit its task (default error of L{IngestEvents})."""


class IngestEvents:
    """No-op hooks and plain errors; override what your role needs."""

    def received(self, nbytes):
        """C{nbytes} of body arrived (every chunk, before it is cut or spooled)."""

    def stored(self, tf, index, size, digest):
        """Piece C{index} of C{tf} (C{size} bytes, hex C{digest}) is new in the store."""

    def skipped(self, index, size):
        """Piece C{index} came again but is already held (kept, not rewritten)."""

    def misaligned(self, start):
        """The exception for a body that starts off a piece boundary."""
        return IngestError(f"body starts at {start}, not on a piece boundary")

    def overflow(self, tf):
        """The exception for bytes past the task's length."""
        return IngestError(f"body is longer than the task's {tf.length} bytes")

    def short(self, tf, got):
        """The exception for a body that ended at byte C{got} of the task."""
        return IngestError(f"body ended at byte {got} of {tf.length}")

    def changed(self, index):
        """The exception for a held piece that hashes differently when re-read."""
        return IngestError(f"piece {index} differs from the copy held")

    def too_large(self, limit):
        """The exception for a spooled body that grew past C{limit} bytes."""
        return IngestError(f"body grew past {limit} bytes")

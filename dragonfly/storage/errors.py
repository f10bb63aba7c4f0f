"""What the piece store raises: one exception per way a store operation fails.

Callers catch these by class (the peer tells a bad piece from a lost task by
them); nothing here knows how the store is laid out or does any I/O.
"""


class StoreError(Exception):
    """A piece store operation could not be done."""


class StoreFull(StoreError):
    """No room for a piece or task: the disk is full (or eviction could not help)."""


class TaskRemoved(StoreError):
    """The task was removed (GC, replacement or remove()) from the store."""


class PieceNotHeld(StoreError):
    """A read touched a piece the store does not hold (yet)."""


class DigestMismatch(ValueError):
    """write_verified_piece(): the data does not hash to the digest given."""

    def __init__(self, expected, got):
        super().__init__(f"digest {got[:12]}... is not {expected[:12]}...")
        self.expected = expected
        self.got = got


class CorruptEntry(StoreError):
    """An entry found on disk is not a usable task (it is dropped at load)."""


class BadMeta(CorruptEntry):
    """A meta.json body does not parse or does not validate."""


class UnknownMetaVersion(BadMeta):
    """A meta.json of a version this store does not read (older or newer)."""

"""A body of unknown length, kept in a temporary file until it can be cut.

An origin that sends no Content-Length gives us no task length, so no pieces
to place the bytes in. L{Spool} is the consumer for such a body: chunks are
gathered up to C{FLUSH} bytes and written at the end of an anonymous
temporary file in one runner call (C{write} returns that call's Deferred, so
the origin connection pauses while the disk catches up). Once the body ended,
L{Spool.cut_into} reads it back piece by piece (read and hash in one runner
call) and hands each to a L{StoreWriter}. Memory stays at about C{FLUSH}
bytes plus one piece, whatever the size of the body; no file is left behind.
"""
import os
import tempfile

from twisted.internet.defer import succeed

from zope.interface import implementer

from dragonfly.ingest.events import IngestError, IngestEvents
from dragonfly.interfaces import IBodySink
from dragonfly.ingest.writer import digest_of

__all__ = ["Spool", "FLUSH"]

#: Bytes gathered before one write to the spool file.
FLUSH = 1 << 20


def _open(directory):
    os.makedirs(directory, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory, prefix=".spool-")


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _read_and_hash(f, offset, length):
    f.seek(offset)
    data = f.read(length)   # buffered: reads until length or end of file
    if len(data) != length:
        raise IngestError(f"spool file is short at byte {offset + len(data)}")
    return data, digest_of([data])


@implementer(IBodySink)
class Spool:
    """Consumer for C{OriginResponse.deliver}: a body into a temporary file.

    Make one with L{Spool.open}. C{max_bytes} (0: no limit) caps the body:
    past it, C{write} raises C{events.too_large(max_bytes)}.
    """

    def __init__(self, f, runner, events=None, max_bytes=0):
        self._f = f
        self._runner = runner
        self._events = events if events is not None else IngestEvents()
        self._max = max_bytes
        self._buf = []
        self._buflen = 0
        self._written = 0
        self.length = 0

    @classmethod
    def open(cls, runner, directory, events=None, max_bytes=0):
        """A Deferred L{Spool} over a new temporary file in C{directory}."""
        d = runner.run(_open, directory or tempfile.gettempdir())
        return d.addCallback(cls, runner, events, max_bytes)

    def write(self, data):
        self._events.received(len(data))
        self.length += len(data)
        if self._max and self.length > self._max:
            raise self._events.too_large(self._max)
        self._buf.append(data)
        self._buflen += len(data)
        if self._buflen >= FLUSH:
            return self.flush()
        return None

    def flush(self):
        """Write what is gathered; a Deferred firing once it is on disk."""
        data = b"".join(self._buf)
        self._buf = []
        self._buflen = 0
        if not data:
            return succeed(None)
        offset, self._written = self._written, self._written + len(data)
        return self._runner.run(_pwrite_all, self._f.fileno(), data, offset)

    async def cut_into(self, writer):
        """Flush, then store every piece of C{writer.tf} from the spooled bytes."""
        await self.flush()
        tf = writer.tf
        for index in range(tf.piece_count):
            offset, size = tf.piece_range(index)
            data, digest = await self._runner.run(_read_and_hash, self._f, offset, size)
            await writer.spooled(index, data, digest)
            del data

    def close(self):
        """Close (and so delete) the file; a Deferred."""
        return self._runner.run(self._f.close)

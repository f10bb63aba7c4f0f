"""Back-to-source: a task fetched from its origin and cut into pieces in the store.

When no supernode can serve a task (or the caller asked for
C{pattern="source"}), L{BackSource.fetch} gets the file from its origin (an
L{dragonfly.interfaces.IOrigin}), resuming after the pieces already held.
A body with a length streams straight into the store (L{StoreWriter}: a
bounded window of piece writes, the origin connection paused at the limit);
a body without one is spooled to a temporary file first (L{Spooler}), then
cut into pieces. Every piece is hashed when it is written; the download's
L{dragonfly.peer.joining.Download} hears of each one.
"""
import os
import tempfile

from twisted.logger import Logger

from dragonfly.digest import piece_digest
from dragonfly.peer.errors import DownloadError, describe
from dragonfly.storage.cutter import PieceCutter

__all__ = ["BackSource", "Spooler", "StoreWriter"]


class BackSource:
    """Fetches tasks from their origin into the store.

    @param deps: a L{dragonfly.peer.settings.NodeDeps} (clock, store, runner,
        metrics; its C{origin}, or an L{dragonfly.origin.OriginClient} over
        its C{http} made on first use).
    @param settings: a L{dragonfly.peer.settings.NodeSettings} (C{piece_size}
        of a task created here, C{spool_dir}).
    """

    log = Logger()

    def __init__(self, deps, settings):
        self._deps = deps
        self._settings = settings
        self._origin = deps.origin

    def _get_origin(self):
        if self._origin is None:
            from dragonfly.origin import OriginClient
            self._origin = OriginClient(self._deps.clock, self._deps.http,
                                        user_agent="dragonfly-peer")
        return self._origin

    async def fetch(self, dl, why):
        """Download C{dl} from its origin (C{why}: for the log): the complete task file."""
        from dragonfly.origin import OriginError

        store = self._deps.store
        origin = self._get_origin()
        tf = dl.tf
        if tf is None:
            tf = store.get(dl.task_id)
            if tf is not None and tf.is_complete:
                dl.set_task_file(tf)
                return tf
        offset = 0
        if tf is not None and tf.completed_bytes:
            missing = [i for i in range(tf.piece_count) if not tf.has(i)]
            if not missing:
                dl.set_task_file(tf)
                return tf
            offset = tf.piece_range(missing[0])[0]
        self.log.info("fetching {task} from its origin ({why})", task=dl.task_id, why=why)
        try:
            response = await origin.get(dl.url, dl.headers, offset=offset,
                                        etag=getattr(tf, "etag", None) if offset else None,
                                        last_modified=getattr(tf, "last_modified", None)
                                        if offset else None)
        except OriginError as e:
            raise DownloadError(e.message if e.status is not None else f"origin: {e.message}")
        except ValueError as e:
            raise DownloadError(f"bad request for the origin: {e}")
        if response.length is None:
            return await self._spool(dl, response)
        length = response.length
        check_size(length, self._settings.max_file_size, store, lambda: response.discard())
        if tf is None or tf.length != length:
            # Nothing usable held: start afresh. (Held pieces of a file of the
            # same length are kept; a 200 to our Range restarts the body at 0
            # and the writer skips the pieces already held.)
            tf = store.create(dl.task_id, dl.url, length,
                              tf.piece_size if tf is not None else self._settings.piece_size,
                              etag=response.etag, last_modified=response.last_modified)
        dl.set_task_file(tf)
        writer = StoreWriter(self._deps.metrics, dl, tf, response.offset)
        try:
            await response.deliver(writer)
            await writer.finish()
        except OriginError as e:
            raise DownloadError(f"origin: {e.message}")
        if not tf.is_complete:
            raise DownloadError(f"origin sent {length} bytes but pieces are missing")
        return tf

    async def _spool(self, dl, response):
        """Origin without a length: spool to a temp file, then cut into pieces."""
        store, runner = self._deps.store, self._deps.runner
        spool_dir = (self._settings.spool_dir or getattr(store, "root", None)
                     or tempfile.gettempdir())
        f = await runner.run(tempfile.TemporaryFile, dir=spool_dir, prefix=".spool-")
        try:
            spooler = Spooler(f, runner, self._deps.metrics, dl, self._settings.max_file_size)
            try:
                total = await response.deliver(spooler)
            except Exception as e:
                raise DownloadError(f"origin: {describe(e)}")
            tf = store.create(dl.task_id, dl.url, total, self._settings.piece_size,
                              etag=response.etag, last_modified=response.last_modified)
            dl.set_task_file(tf)
            for index in range(tf.piece_count):
                off, n = tf.piece_range(index)
                data = await runner.run(_pread, f, off, n)
                digest = await runner.run(piece_digest, data)
                await tf.write_trusted_piece(index, data, digest)
                dl.piece_arrived(index, 0, "origin")
            return tf
        finally:
            await runner.run(f.close)


def check_size(length, max_file_size, store, discard=None):
    """DownloadError (before anything is reserved) when C{length} is over
    C{max_file_size} or could never fit the store's quota."""
    if length > max_file_size:
        why = (f"origin file of {length} bytes is larger than --max-file-size "
               f"({max_file_size} bytes)")
    elif not store.fits(length):
        why = f"{length} bytes do not fit in the cache"
    else:
        return
    if discard is not None:
        discard()
    raise DownloadError(why)


def _pread(f, offset, length):
    return os.pread(f.fileno(), length, offset)


class Spooler:
    """Consumer writing an origin body to a temp file through the runner."""

    def __init__(self, f, runner, metrics, dl, limit=1 << 40):
        self._f = f
        self._runner = runner
        self._metrics = metrics
        self._dl = dl
        self._offset = 0
        self._limit = limit

    def write(self, data):
        off = self._offset
        self._offset += len(data)
        if self._offset > self._limit:
            raise DownloadError(f"origin file grew past --max-file-size ({self._limit} bytes)")
        self._metrics.download_bytes.labels(source="origin").inc(len(data))
        self._dl.sources["origin"] += len(data)
        return self._runner.run(os.pwrite, self._f.fileno(), data, off)


class StoreWriter(PieceCutter):
    """Consumer cutting an origin body (starting at a piece boundary) into pieces.

    L{PieceCutter} keeps the window of piece writes bounded (the origin
    connection pauses at the limit); each piece is hashed and written by
    C{write_new_piece} in the runner. Pieces the store already holds are
    skipped, not rewritten.
    """

    def __init__(self, metrics, dl, tf, offset, max_writes=2):
        self._metrics = metrics
        self._dl = dl
        PieceCutter.__init__(self, tf, offset, max_writes)

    def misaligned(self, start):
        return DownloadError(f"origin resumed at {start}, not a piece boundary")

    def overflow(self):
        return DownloadError("origin sent more bytes than the task's length")

    def short(self, got):
        missing = self._tf.piece_count - self.index
        return DownloadError(f"origin body ended {missing} piece(s) short")

    def store_piece(self, index, chunks, size):
        if self._tf.has(index):
            # Already verified and held (resumed download).
            self._metrics.download_bytes.labels(source="origin").inc(size)
            return None
        return self._tf.write_new_piece(index, chunks).addCallback(
            lambda _: self._dl.piece_arrived(index, size, "origin"))

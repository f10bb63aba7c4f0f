"""Back-to-source: a task fetched from its origin and cut into pieces in the store.

When no supernode can serve a task (or the caller asked for
C{pattern="source"}), L{BackSource.fetch} gets the file from its origin (an
L{dragonfly.interfaces.IOrigin}), resuming after the pieces already held, and
runs the body through the shared ingest pipeline (L{dragonfly.ingest}): a body
with a length, or the rest of a task held, streams straight into the store
(C{stream_into}: a bounded window of piece writes, the origin connection
paused at the limit); a whole body without one is spooled to a temporary file
first (C{spool_into}), then cut into pieces. The rest of a task held is asked
for with a Range only when the origin can check our version (L{_checkable});
a whole body (200) that is not provably the version of the pieces held
replaces them (L{_keeps_held}). L{OriginEvents} tells the
download of every piece stored (L{dragonfly.peer.joining.Download}), counts
origin bytes and words the pipeline's errors as L{DownloadError}s.
"""
import tempfile

from twisted.logger import Logger

from dragonfly.ingest.events import IngestEvents
from dragonfly.ingest.pipeline import spool_into, stream_into
from dragonfly.peer.errors import DownloadError, OriginNotAllowed, describe
from dragonfly.redact import redact_text

__all__ = ["BackSource", "OriginEvents", "SpoolEvents", "check_size"]


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


def _checkable(tf):
    """Can the origin tell whether it still has the version of C{tf}'s held
    pieces (C{If-Range}: a strong ETag, else Last-Modified)?

    Pieces held from an earlier download (maybe days old) are resumed with a
    Range only then: a 206 without C{If-Range} could be the rest of another
    version. Otherwise the whole file is asked for, and replaces them (see
    L{_keeps_held}). The pieces this very download took from its swarm just
    before falling back (and the pieces held from before that the swarm's
    digests confirmed) carry the validators of the supernode's copy (its
    registration answer: L{dragonfly.peer.session}), so they are resumed
    with C{If-Range} on that version: a file changed at the origin since
    answers 200, which replaces them. From an older supernode, or for an
    origin without validators, they come without any and are resumed with a
    plain Range, as they always were (see docs/design.md)."""
    etag = tf.etag
    return bool(etag and not etag.startswith("W/")) or bool(tf.last_modified)


def _keeps_held(tf, response):
    """May the pieces C{tf} holds stay, with C{response}'s body written around them?

    A 206 is the rest of the file we asked for (C{If-Range} kept it to our
    version when we knew one). A 200 is the whole file again, and it is the
    authority: its version may not be the one the held pieces came from (a
    file changed since an earlier, broken download, or since the swarm's
    copy was fetched). Only an equal strong ETag says it is the same bytes;
    without one (no validators, a weak or another ETag, Last-Modified alone,
    which cannot tell two versions of the same second apart) the task starts
    afresh from this body, which brings every byte anyway, so the file is
    one version, all of it, never held pieces of one with the rest of another.
    """
    if response.offset > 0 or not tf.completed_bytes:
        return True
    etag = tf.etag
    return bool(etag) and not etag.startswith("W/") and response.etag == etag


class OriginEvents(IngestEvents):
    """How the ingest pipeline reports to a peer download (C{dl}) fed by its origin.

    A new piece is announced with its bytes (C{dl.piece_arrived}); a piece
    already held (resumed download) only counts its bytes in C{metrics}; a
    body that does not fit the task fails the download with a L{DownloadError}.
    """

    def __init__(self, metrics, dl):
        self._metrics = metrics
        self._dl = dl

    def stored(self, tf, index, size, digest):
        self._dl.piece_arrived(index, size, "origin")

    def skipped(self, index, size):
        self._metrics.download_bytes.labels(source="origin").inc(size)

    def misaligned(self, start):
        return DownloadError(f"origin resumed at {start}, not a piece boundary")

    def overflow(self, tf):
        return DownloadError("origin sent more bytes than the task's length")

    def short(self, tf, got):
        missing = tf.piece_count - got // tf.piece_size
        return DownloadError(f"origin body ended {missing} piece(s) short")

    def too_large(self, limit):
        return DownloadError(f"origin file grew past --max-file-size ({limit} bytes)")


class SpoolEvents(OriginEvents):
    """L{OriginEvents} for a spooled body: bytes are counted as they arrive.

    The task does not exist yet while the body is spooled, so every chunk is
    counted on receipt and the pieces cut from the spool later add no bytes.
    """

    def received(self, nbytes):
        self._metrics.download_bytes.labels(source="origin").inc(nbytes)
        self._dl.sources["origin"] += nbytes

    def stored(self, tf, index, size, digest):
        self._dl.piece_arrived(index, 0, "origin")


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

    def origin(self):
        """The L{dragonfly.interfaces.IOrigin} the peer asks its origins through."""
        return self._get_origin()

    def _get_origin(self):
        if self._origin is None:
            from dragonfly.origin import OriginClient
            self._origin = OriginClient(self._deps.clock, self._deps.http,
                                        user_agent="dragonfly-peer")
        return self._origin

    async def fetch(self, dl, why):
        """Download C{dl} from its origin (C{why}: for the log): the complete task file."""
        from dragonfly.origin import OriginError, OriginRefused

        store = self._deps.store
        origin = self._get_origin()
        tf = dl.tf
        if tf is None:
            tf = store.get(dl.task_id)
            if tf is not None and tf.uncached:
                tf = None   # an earlier pass-through: start afresh
            if tf is not None and tf.is_complete:
                dl.set_task_file(tf)
                return tf
        offset = 0
        if tf is not None and tf.completed_bytes:
            missing = [i for i in range(tf.piece_count) if not tf.delivered(i)]
            if not missing:
                dl.set_task_file(tf)
                return tf
            if (dl.tf is tf and not dl.unconfirmed) or _checkable(tf):
                offset = tf.piece_range(missing[0])[0]
        self.log.info("fetching {task} from its origin ({why})", task=dl.task_id,
                      why=redact_text(why))
        try:
            response = await origin.get(dl.url, dl.headers, offset=offset,
                                        etag=getattr(tf, "etag", None) if offset else None,
                                        last_modified=getattr(tf, "last_modified", None)
                                        if offset else None)
        except OriginRefused as e:
            raise OriginNotAllowed(e.message)
        except OriginError as e:
            raise DownloadError(e.message if e.status is not None else f"origin: {e.message}")
        except ValueError as e:
            raise DownloadError(f"bad request for the origin: {e}")
        response.pace_also(dl.pace)   # the callers' --limit, if any
        if response.length is None and response.offset == 0:
            return await self._spool(dl, response)
        # A 206 to our Range without the file's length ("bytes N-M/*") is the
        # rest of the file we hold part of: its length is ours. (Spooled, it
        # would become a file of its own: the tail alone, taken for the whole.)
        length = response.length if response.length is not None else tf.length
        check_size(length, self._settings.max_file_size, store, lambda: response.discard())
        if tf is None or tf.length != length or not _keeps_held(tf, response):
            # Nothing usable held: start afresh. (Held pieces of a file of the
            # same length are kept for a 206, or a 200 of the same version:
            # the writer then skips them.)
            tf = store.create(dl.task_id, dl.url, length,
                              tf.piece_size if tf is not None else self._settings.piece_size,
                              etag=response.etag, last_modified=response.last_modified)
            dl.unconfirmed.clear()
        dl.set_task_file(tf)
        try:
            await stream_into(response, tf, self._deps.runner,
                              OriginEvents(self._deps.metrics, dl))
        except OriginError as e:
            raise DownloadError(f"origin: {e.message}")
        if not tf.is_delivered:
            raise DownloadError(f"origin sent {length} bytes but pieces are missing")
        return tf

    async def _spool(self, dl, response):
        """Origin without a length: spool to a temp file, then cut into pieces."""
        from dragonfly.origin import OriginError

        store = self._deps.store
        spool_dir = (self._settings.spool_dir or getattr(store, "root", None)
                     or tempfile.gettempdir())

        def make_task(length):
            check_size(length, self._settings.max_file_size, store)
            tf = store.create(dl.task_id, dl.url, length, self._settings.piece_size,
                              etag=response.etag, last_modified=response.last_modified)
            dl.unconfirmed.clear()
            dl.set_task_file(tf)
            return tf

        try:
            return await spool_into(response, make_task, self._deps.runner, spool_dir,
                                    SpoolEvents(self._deps.metrics, dl),
                                    max_bytes=self._settings.max_file_size)
        except (OriginError, OSError) as e:
            raise DownloadError(f"origin: {describe(e)}")

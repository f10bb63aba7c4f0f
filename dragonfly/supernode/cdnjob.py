"""One CDN job's state, and how the ingest pipeline reports to it.

L{_Job} is one task being fetched (or revalidated) from its origin, with the
Deferreds its callers wait on (L{_Observers}); L{_JobEvents} is the
L{IngestEvents} strategy of its origin bodies. The errors the CDN raises live
here too, so the job's events can name them. The policy (which request
comes next, retries, publishing) is L{dragonfly.supernode.cdn}'s; the fetch
order of a job that starts from a range is L{dragonfly.supernode.fetchorder}'s.
"""
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from dragonfly.ingest.events import IngestEvents
from dragonfly.origin import OriginError
from dragonfly.supernode.swarmstate import PieceSizes
from dragonfly.taskid import digest_named

__all__ = ["CDNError", "NotReady", "CacheFull", "TooLarge", "TooManyTasks", "ContentChanged"]


class CDNError(Exception):
    """The CDN could not provide a task (not an origin verdict)."""


class NotReady(CDNError):
    """The supernode's piece port is not listening yet (no seed address)."""


class CacheFull(CDNError):
    """The file does not fit in the cache (--cache-size)."""


class TooLarge(CDNError):
    """The origin announced more than --max-file-size."""


class TooManyTasks(CDNError):
    """Too many tasks are being fetched, or held, to take a new one now."""


class ContentChanged(OriginError):
    """The origin's file changed while we were downloading it."""

    def __init__(self, message="origin content changed during the download"):
        OriginError.__init__(self, None, message)

    @property
    def retryable(self):
        return False


def _piece_sizes(tf):
    return PieceSizes(tf.length, tf.piece_size)


def _prefix_pieces(tf):
    """How many pieces from 0 on are held (we resume after them)."""
    n = 0
    while n < tf.piece_count and tf.has(n):
        n += 1
    return n


def _checkable(tf):
    """Can the origin tell whether it still has the version of C{tf}'s pieces
    (C{If-Range}: a strong ETag, else Last-Modified)? Without, a 206 could be
    the rest of another version."""
    etag = tf.etag
    return bool(etag and not etag.startswith("W/")) or bool(tf.last_modified)


def _same_entity(tf, resp):
    """Could C{resp} (a 200) be the same file as C{tf}?"""
    if resp.length is not None and resp.length != tf.length:
        return False
    if tf.etag and resp.etag and tf.etag != resp.etag:
        return False
    if tf.last_modified and resp.last_modified and tf.last_modified != resp.last_modified:
        return False
    return True


class _Observers:
    """A one-shot result many Deferreds can wait for (each cancellable alone)."""

    def __init__(self):
        self._waiting = []
        self._result = None
        self._fired = False

    @property
    def fired(self):
        return self._fired

    def when(self):
        if self._fired:
            r = self._result
            return fail(r) if isinstance(r, Failure) else succeed(r)
        d = Deferred(lambda d: self._waiting.remove(d) if d in self._waiting else None)
        self._waiting.append(d)
        return d

    def fire(self, result):
        if self._fired:
            return
        self._fired = True
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class _JobEvents(IngestEvents):
    """How the ingest pipeline reports to the CDN for one job.

    Every body byte is counted (origin_bytes); each new piece is announced to
    the scheduler; a body that does not fit the task, or a held piece that
    hashes differently when re-read, means the origin content changed.
    """

    def __init__(self, cdn, job):
        self._cdn = cdn
        self._job = job

    def received(self, nbytes):
        self._cdn._count_bytes(nbytes)

    def stored(self, tf, index, size, digest):
        self._cdn._piece_done(self._job, tf, index, digest)

    def overflow(self, tf):
        return ContentChanged(f"origin sent more than the {tf.length} bytes announced")

    def short(self, tf, got):
        return OriginError(None, f"origin body ended at byte {got} of {tf.length}")

    def changed(self, index):
        return ContentChanged(f"origin content changed: piece {index} differs from the copy held")

    def too_large(self, limit):
        if limit >= self._cdn.max_file_size:
            return TooLarge(f"file without Content-Length grew past --max-file-size ({limit} bytes)")
        return CacheFull(f"file without Content-Length grew past the cache size ({limit} bytes)")


class _Job:
    """One task being fetched (or revalidated) from its origin."""

    def __init__(self, task_id, url, headers):
        self.task_id = task_id
        self.url = url
        self.headers = dict(headers or {})
        self.state = "pending"          # pending | running | done | failed
        self.error = None               # Failure when failed
        self.tf = None
        self.ready = _Observers()       # length known (published to the scheduler)
        self.complete = _Observers()    # every piece in the store
        self.attempts = 0
        self.current = None             # the Deferred of the running body/request
        self.pinned = None
        self.counted = False
        self.finished = None
        self.digest = digest_named(task_id)   # the content must match it
        self.verified = False
        self.root = None      # pieces root of the copy that matched job.digest
        self.content = None   # its ContentHash, hashed as the body arrives
        self.want = None      # bytes (first, last) a caller wants first
        self.order = None     # its FetchOrder, once fetched in ranges

    def status(self):
        s = {"state": self.state, "url": self.url}
        tf = self.tf
        if tf is not None:
            s.update(length=tf.length, piece_count=tf.piece_count,
                     seeded=len(tf.completed()) if not tf.is_complete else tf.piece_count)
        if self.error is not None:
            e = self.error.value
            s["error"] = str(e)
            if isinstance(e, OriginError) and e.status is not None:
                s["origin_status"] = e.status
        return s

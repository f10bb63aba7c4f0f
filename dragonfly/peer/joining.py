"""Callers joining a download in flight: one L{Download} per task, shared by all.

Every C{download()} caller and every C{stream()} reader of a task attaches to
the same L{Download}: it holds their Deferreds and their progress/start
hooks and rate limits, pins the task file while it runs, wakes streams when
a piece lands, and hands the end (the task file or one L{DownloadError}) to
everyone. When the last caller and the last stream have left, the download
is cancelled. The parts that fetch (swarm session, back-to-source) only call
L{Download.set_task_file} and L{Download.piece_arrived}, and pace themselves
by L{Download.pace} (L{dragonfly.peer.pacing}).
"""
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.peer.errors import DownloadError, describe
from dragonfly.peer.pacing import DownloadPace
from dragonfly.peer.wakeup import Signal

__all__ = ["Download", "call_progress", "call_start"]

log = Logger()


def call_progress(cb, completed, length):
    """Call a caller's C{on_progress(completed, length)}; its errors are logged."""
    if cb is None:
        return
    try:
        cb(completed, length)
    except Exception:
        log.failure("progress callback failed")


def call_start(cb, tf):
    """Hand C{tf} to a caller's C{on_start}: a callable, or a Deferred to fire."""
    if cb is None:
        return
    if isinstance(cb, Deferred):
        cb.callback(tf)
        return
    try:
        cb(tf)
    except Exception:
        log.failure("start callback failed")


class Download:
    """One task being downloaded, shared by every caller asking for it.

    @ivar run: the Deferred of the download's coroutine (set by its starter);
        cancelled when no caller and no stream is left.
    @ivar readers: the stream producers reading this task (their C{cursor}
        is what the swarm session reports to the supernode).
    @ivar sources: bytes received by kind of source ("peer", "supernode", "origin").
    @ivar pace: the L{DownloadPace} the fetching parts wait on before taking
        more bytes: the fastest caller's limit, or none.
    """

    log = Logger()

    def __init__(self, task_id, url, headers, pattern, back_source, clock, metrics,
                 filters=(), tag="", digest=None):
        self.task_id = task_id
        # What the id is derived from: sent with each registration, so the
        # supernode derives the same id (dragonfly.taskid.derive_task_id).
        self.filters = tuple(filters)
        self.tag = tag
        self.digest = digest
        self.want = None         # bytes (first, last) its first caller needs first
        self.url = url
        self.headers = headers
        self.pattern = pattern
        self.back_source = back_source
        self.tf = None
        #: Pieces its task file held from an earlier download, not yet found
        #: to be the swarm's (same piece digest): never reported or trusted
        #: as held until then (L{dragonfly.peer.session}).
        self.unconfirmed = set()
        self.pinned = False
        self.progress_hooks = []  # on_progress callables
        self.ready = []          # on_start callables / Deferreds waiting for the TaskFile
        self.callers = []        # Deferreds handed to download() callers
        self.streams = 0         # active stream() users
        self.readers = set()     # their producers: the schedule cursor
        self.on_failure = []     # called with the Failure when the download fails
        self.run = None          # the Deferred of the coroutine
        self.sources = {"peer": 0, "supernode": 0, "origin": 0}
        self.pace = DownloadPace(clock)
        self._clock = clock
        self._metrics = metrics
        self._signal = None      # piece arrivals, created by the first wait_piece()
        self.started = clock.seconds()
        #: The supernode's attestation: the pieces root of its copy, which
        #: matched the task's content digest whole (None: none came).
        self.verified = None
        self._on_verified = []
        #: The supernode said it will attest the task once its running check
        #: passes (C{attests}): a stream may wait a while for the word.
        self.promised = False

    # -- callers ---------------------------------------------------------------

    def join(self, on_progress=None, on_start=None, limit=0):
        """A Deferred for one more caller, who wants the bytes at most at
        C{limit} bytes/s (0: no limit); cancelling it detaches that caller."""
        if on_progress is not None:
            self.progress_hooks.append(on_progress)
            if self.tf is not None:
                call_progress(on_progress, self.tf.completed_bytes, self.tf.length)
        if on_start is not None:
            if self.tf is not None:
                call_start(on_start, self.tf)
            else:
                self.ready.append(on_start)
        d = Deferred(lambda d: self._detach(d, on_progress, on_start))
        self.callers.append(d)
        self.pace.add(d, limit)
        return d

    def _detach(self, d, on_progress=None, on_start=None):
        if d in self.callers:
            self.callers.remove(d)
        self.pace.remove(d)
        if on_progress is not None and on_progress in self.progress_hooks:
            self.progress_hooks.remove(on_progress)
        if on_start is not None and on_start in self.ready:
            self.ready.remove(on_start)
        if self._unused():
            self.log.info("download of {task} abandoned by every caller", task=self.task_id)
            self.run.cancel()

    def task_file(self):
        """A Deferred firing with the task file once its length is known."""
        if self.tf is not None:
            return succeed(self.tf)
        d = Deferred()
        self.ready.append(d)
        return d

    def add_stream(self, producer):
        """A stream reads this task: it counts as a caller until C{producer.done} fires."""
        self.streams += 1
        self.readers.add(producer)
        self.on_failure.append(producer.download_failed)
        producer.done.addBoth(self._stream_ended, producer)

    def _stream_ended(self, result, producer):
        self.streams -= 1
        self.readers.discard(producer)
        if self._unused():
            self.run.cancel()
        return result

    def _unused(self):
        return (not self.callers and not self.streams and self.run is not None
                and not self.run.called)

    # -- what the fetching parts report -----------------------------------------

    def set_task_file(self, tf):
        """The task's file is known (its length too): pin it, start the waiters."""
        if self.tf is tf:
            return
        if self.pinned and self.tf is not None:
            self.tf.unpin()
        self.tf = tf
        tf.pin()
        self.pinned = True
        ready, self.ready = self.ready, []
        for cb in ready:
            call_start(cb, tf)
        self.progress()

    def progress(self):
        """Tell every caller's C{on_progress} how far the task file is."""
        tf = self.tf
        if tf is None:
            return
        done = getattr(tf, "delivered_bytes", tf.completed_bytes)   # passed through too
        for cb in list(self.progress_hooks):
            call_progress(cb, done, tf.length)

    def piece_arrived(self, index, nbytes, source):
        """Piece C{index} is stored: count its bytes, wake the streams, report progress."""
        self._metrics.download_bytes.labels(source=source).inc(nbytes)
        self.sources[source] += nbytes
        sig = self._signal
        if sig is not None:
            sig.fire()
        self.progress()

    def wait_piece(self):
        """A Deferred firing on the next piece arrival (or the download's end)."""
        if self._signal is None:
            self._signal = Signal(self._clock)
        return self._signal.wait()

    def attest(self, root):
        """A supernode attests that its copy of the task, with pieces root
        C{root}, matched the task's content digest (None: no attestation):
        tell whoever waits for it (L{on_verified})."""
        if root is None or self.verified is not None:
            return
        self.verified = root
        hooks, self._on_verified = self._on_verified, []
        for cb in hooks:
            cb(root)

    def promise(self, attests):
        """A supernode's answer said C{attests}: see L{promised}."""
        if attests:
            self.promised = True

    def awaits_attestation(self):
        """Does someone wait for an attestation that was promised and has not come?"""
        return self.promised and self.verified is None and bool(self._on_verified)

    def on_verified(self, cb):
        """Call C{cb(root)} when the attestation comes (now if it came); a
        callable that cancels the call."""
        if self.verified is not None:
            cb(self.verified)
            return lambda: None
        self._on_verified.append(cb)
        return lambda: cb in self._on_verified and self._on_verified.remove(cb)

    # -- the end -----------------------------------------------------------------

    def _observe_duration(self, result):
        self._metrics.task_seconds.labels(result=result).observe(
            max(0.0, self._clock.seconds() - self.started))

    def finish(self, result):
        """Hand the download's result (TaskFile or Failure) to every caller and stream."""
        if self.pinned and self.tf is not None:
            self.tf.unpin()
            self.pinned = False
        signal, self._signal = self._signal, None
        if isinstance(result, Failure):
            if result.check(CancelledError):
                result = Failure(DownloadError("download cancelled"))
            elif not result.check(DownloadError):
                self.log.failure("download of {task} crashed", result, task=self.task_id)
                result = Failure(DownloadError(f"internal error: {describe(result)}"))
            self._metrics.downloads.labels(result="failed").inc()
            self._observe_duration("failed")
            if signal is not None:
                signal.fail(result)
            for cb in self.on_failure:
                cb(result)
            for d in self.ready:
                if isinstance(d, Deferred):
                    d.errback(result)
            if self.tf is not None:
                self.tf.abandon()   # its partial gives its space back if short
        else:
            self._metrics.downloads.labels(result="ok").inc()
            if getattr(result, "uncached", False):
                self._metrics.uncached_downloads.inc()   # served without caching
            self._observe_duration("ok")
            if signal is not None:
                signal.fire()
        self.ready = []
        self._on_verified = []
        callers, self.callers = self.callers, []
        for d in callers:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None  # a failure is handled: it went to every caller

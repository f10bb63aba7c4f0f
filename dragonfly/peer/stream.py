"""A task streamed in order to a consumer while its pieces arrive.

L{OrderedPushProducer} is what L{dragonfly.peer.node.PeerNode.stream} hands
to a consumer (an HTTP request of the peer API or of the registry mirror):
a push producer that writes the task's bytes in order as soon as each piece
is in the store (or passed through it, when the cache is full), honouring the consumer's pause/resume. Its C{cursor} (the
piece it writes or waits for) steers the swarm session's schedule calls.

A consumer with a C{send_file} (not None) takes the pieces held in the
store as file ranges instead of bytes: C{send_file(task_file, offset,
length)} returns a Deferred firing once they are sent (the mirror's blob
sink writes them with sendfile); pieces passed through (not in the file)
still come as bytes through C{write}.
"""
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dragonfly.peer.errors import DownloadError, StreamStopped, describe

__all__ = ["OrderedPushProducer"]


@implementer(IPushProducer)
class OrderedPushProducer:
    """I{Push} producer writing a task's bytes [start, end) in order, waiting
    for missing pieces.

    Registered with C{registerProducer(self, True)}: it writes on its own,
    reading bounded chunks (C{chunk} bytes, never across a piece) through
    the store's runner, the next one while the current one is written (one
    chunk of read-ahead), and stops while the consumer has paused it
    (transport back-pressure) until C{resumeProducing}. A push producer
    rather than a pull one: twisted.web drives pull producers with a
    cooperator that would spin while we wait for a piece to arrive.

    @param wait_piece: C{wait_piece(task_id)} -> a Deferred firing on the
        task's next piece arrival, or None when no download of it runs.
    @ivar done: fires when the last byte was written; fails with
        L{DownloadError} (the download failed) or L{StreamStopped} (the
        consumer stopped us).
    """

    chunk = 1024 * 1024
    #: Most bytes of consecutive held pieces handed to C{send_file} at once.
    span = 64 * 1024 * 1024
    log = Logger()

    def __init__(self, wait_piece, tf, consumer, start, end):
        self._wait_piece = wait_piece
        self._tf = tf
        self._consumer = consumer
        self._offset = start
        self._end = end
        self._paused = False
        self._resumed = None
        self._stopped = False
        self._current = None
        self._ahead = None       # (offset, length, Deferred) of the read-ahead
        self._send_file = getattr(consumer, "send_file", None)
        self.done = Deferred(lambda d: self._abort(Failure(CancelledError()), unregister=True))

    @property
    def cursor(self):
        """The piece this stream writes (or waits for) now."""
        return self._offset // self._tf.piece_size

    def start(self):
        """Register with the consumer and start writing (or finish at once if empty)."""
        if self._offset >= self._end:
            self.done.callback(None)
            return
        self._consumer.registerProducer(self, True)
        if not self._stopped:
            Deferred.fromCoroutine(self._run()).addErrback(self._error)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.callback(None)

    def stopProducing(self):
        self._abort(Failure(StreamStopped("consumer stopped reading")), unregister=False)

    def download_failed(self, failure):
        self._abort(failure, unregister=True)

    def _abort(self, failure, unregister):
        if self._stopped:
            return
        self._stopped = True
        if self._current is not None:
            self._current.cancel()
        if self._ahead is not None:
            ahead, self._ahead = self._ahead[2], None
            ahead.addErrback(lambda f: None)
            ahead.cancel()
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.cancel()
        if unregister:
            try:
                self._consumer.unregisterProducer()
            except Exception:
                pass
        if not self.done.called:
            self.done.errback(failure)

    async def _wait(self, d):
        self._current = d
        try:
            return await d
        finally:
            self._current = None

    async def _run(self):
        tf = self._tf
        while self._offset < self._end:
            if self._stopped:
                return
            if self._paused:
                self._resumed = Deferred()
                await self._wait(self._resumed)
                continue
            index = self._offset // tf.piece_size
            if not tf.readable(index):
                w = self._wait_piece(tf.task_id)
                if w is None:
                    if tf.readable(index):
                        continue
                    raise DownloadError(f"piece {index} of task {tf.task_id} is not held "
                                        "and no download is running")
                await self._wait(w)
                continue
            if self._send_file is not None and tf.has(index):
                await self._file_span(index)
                continue
            n = self._chunk_at(self._offset)
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[:2] == (self._offset, n):
                read = ahead[2]
            else:
                if ahead is not None:
                    ahead[2].addErrback(lambda f: None)  # not needed after all
                read = tf.read_range(self._offset, n)
            data = await self._wait(read)
            if self._stopped:
                return
            if len(data) != n:
                raise DownloadError(f"short read from the store at {self._offset}")
            self._offset += n
            self._read_ahead()
            self._consumer.write(data)
            if self._offset == sum(tf.piece_range(index)):
                tf.consumed(index)   # a passed-through piece (cache full) is freed
        if not self._stopped:
            self._stopped = True
            self._consumer.unregisterProducer()
            if not self.done.called:
                self.done.callback(None)

    async def _file_span(self, index):
        """Hand the consumer the held pieces from the cursor on, as one file range."""
        tf = self._tf
        start = self._offset
        limit = min(self._end, start + self.span)
        end = start
        while end < limit and tf.has(index):
            end = min(sum(tf.piece_range(index)), limit)
            index += 1
        await self._wait(self._send_file(tf, start, end - start))
        if not self._stopped:
            self._offset = end

    def _chunk_at(self, offset):
        p_off, p_len = self._tf.piece_range(offset // self._tf.piece_size)
        return min(self.chunk, p_off + p_len - offset, self._end - offset)

    def _read_ahead(self):
        """Start reading the next chunk now if its piece is held already."""
        offset = self._offset
        index = offset // self._tf.piece_size
        if offset >= self._end or not self._tf.readable(index):
            return
        if self._send_file is not None and self._tf.has(index):
            return   # sent from the file, not read
        n = self._chunk_at(offset)
        self._ahead = (offset, n, self._tf.read_range(offset, n))

    def _error(self, f):
        if self._stopped:
            return None
        if not f.check(DownloadError):
            self.log.failure("streaming {task} failed", f, task=self._tf.task_id)
            f = Failure(DownloadError(f"streaming failed: {describe(f)}"))
        self._abort(f, unregister=True)
        return None

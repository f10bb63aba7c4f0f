"""An HTTP response body fed to a consumer with back-pressure: the pipeline's intake.

L{BodyReceiver} is the protocol a response's C{deliverBody} drives. Each
chunk goes to C{consumer.write(data)}; while the Deferred that returns (or a
rate limiter's wait) is pending, the transport is paused and later chunks
queue in order, so memory stays bounded by what the consumer holds plus one
socket read. It also checks the announced length, fails a body idle for too
long, and drops the connection when the consumer fails or the caller cancels.
A body without a length ends only where its connection was closed cleanly:
Twisted's HTTP client says C{PotentialDataLoss} for a reset too, so the
receiver asks the connection's witness (L{dragonfly.connwitness}) how it
ended, and a reset or any other loss is a broken body, not the end.
It knows nothing of what the body is for; L{dragonfly.origin} wraps it.
"""
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from dragonfly.connwitness import connection_end
from dragonfly.runtime.idle import IdleTimer

__all__ = ["BodyError", "BodyReceiver", "READ_SIZE"]

#: Bytes asked of an origin's socket per read (see BodyReceiver.connectionMade):
#: measured 10% less supernode CPU than 64 KiB on a 1 GiB cold fetch.
READ_SIZE = 256 * 1024


class BodyError(Exception):
    """A body that broke (default error of L{BodyReceiver})."""


def _broken(message, reason=None):
    return BodyError(f"{message}: {reason.getErrorMessage()}" if reason is not None else message)


class BodyReceiver(Protocol):
    """Feeds a response body to a consumer, pausing the transport while it is busy.

    @param consumer: has C{write(data) -> Deferred|None}.
    @param expected: the body's length, or None when unknown.
    @param clock: IReactorTime (idle timeout).
    @param limiter: a L{dragonfly.runtime.ratelimit.TokenBucket} or None.
    @param idle_timeout: seconds without a byte (while not paused) that fail
        the body, or None.
    @param on_bytes: called with each chunk's size (metrics).
    @param broken: C{broken(message, reason=None) -> Exception}, the error for
        a body that broke (C{reason}: the Failure of a lost connection).
    @ivar done: fires with the byte count once the body ended cleanly; fails
        with the consumer's error or C{broken(...)}. Cancelling it drops the
        connection.
    """

    def __init__(self, consumer, expected, clock, limiter=None, idle_timeout=None,
                 on_bytes=None, broken=None):
        self._consumer = consumer
        self._broken = broken if broken is not None else _broken
        self._expected = expected
        self._clock = clock
        self._limiter = limiter
        self._idle_timeout = idle_timeout
        self._on_bytes = on_bytes
        self._queue = deque()
        self._busy = False
        self._pumping = False
        self._paused = False
        self._lost = None
        self._failed = False
        self._idle = IdleTimer(clock, self._idled)
        self._end = None      # the connection's ConnectionEnd, when witnessed
        self.received = 0
        self.done = Deferred(self._cancel)

    # Transport side -----------------------------------------------------

    def connectionMade(self):
        # Bigger reads from a plain TCP origin: every read runs the whole
        # HTTP client parser stack once (Twisted reads 64 KiB by default).
        # The body's transport is a proxy whose _producer is the TCP
        # connection; anything else (TLS, a test transport) is left as it is.
        tcp = getattr(self.transport, "_producer", None)
        if isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = max(tcp.bufferSize, READ_SIZE)
        # Taken now, while the proxy still leads to the connection (the body
        # cannot have ended before: the client pauses the connection from the
        # headers until the body is delivered).
        self._end = connection_end(self.transport)
        self._arm_idle()

    def dataReceived(self, data):
        if self._failed:
            return
        self.received += len(data)
        if self._on_bytes is not None:
            try:
                self._on_bytes(len(data))
            except Exception:
                Logger().failure("on_bytes callback failed")
        if self._expected is not None and self.received > self._expected:
            self._fail(self._broken(f"origin sent more than the {self._expected} bytes announced"))
            return
        self._queue.append(data)
        self._pump()
        if not self._busy:
            self._arm_idle()

    def connectionLost(self, reason=None):
        self._disarm_idle()
        self._lost = reason if reason is not None else Failure(ResponseDone())
        if not self._busy:
            self._pump()

    # Consumer side ------------------------------------------------------

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and not self._busy and not self._failed:
                data = self._queue.popleft()
                waits = []
                try:
                    r = self._consumer.write(data)
                except Exception:
                    self._fail(Failure())
                    return
                if isinstance(r, Deferred):
                    waits.append(r)
                if self._limiter is not None:
                    waits.append(self._limiter.wait(len(data)))
                if waits:
                    self._busy = True
                    self._wait(waits)
            if not self._busy and not self._queue and self._lost is not None and not self._failed:
                self._finish()
        finally:
            self._pumping = False

    def _wait(self, waits):
        remaining = [len(waits)]

        def ok(_):
            remaining[0] -= 1
            if remaining[0] == 0 and not self._failed:
                self._busy = False
                self._resume()
                self._pump()
                if not self._busy and self._lost is None:
                    self._arm_idle()

        def bad(f):
            self._fail(f)

        for d in waits:
            d.addCallbacks(ok, bad)
        if self._busy and not self._failed:
            self._disarm_idle()
            self._pause()

    def _pause(self):
        if not self._paused and self._lost is None and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()

    def _resume(self):
        if self._paused:
            self._paused = False
            if self._lost is None and self.transport is not None:
                self.transport.resumeProducing()

    def _finish(self):
        reason = self._lost
        if reason.check(PotentialDataLoss) and self._expected is None and self._end is not None \
                and not self._end.clean:
            # No length: the body ends with the connection, but this one
            # was reset (or given up), not closed: the body is cut short.
            why = self._end.reason
            self._fail(self._broken(
                f"connection lost after {self.received} bytes of a body without a length"
                + ("" if why is not None else " (not closed by the origin)"), why), abort=False)
            return
        if reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and self._expected is None):
            if self._expected is not None and self.received != self._expected:
                self._fail(self._broken(
                    f"body ended after {self.received} of {self._expected} bytes"), abort=False)
                return
            self._failed = True  # no further events
            self.done.callback(self.received)
        else:
            self._fail(self._broken(
                f"connection lost after {self.received} bytes", reason), abort=False)

    def _fail(self, why, abort=True):
        if self._failed:
            return
        self._failed = True
        self._queue.clear()
        self._disarm_idle()
        if abort and self._lost is None and self.transport is not None:
            self.transport.stopProducing()
        if self.done.called:
            return
        if not isinstance(why, Failure):
            why = Failure(why)
        self.done.errback(why)

    def _cancel(self, d):
        # Deferred cancellation: stop reading, drop the connection.
        self._failed = True
        self._queue.clear()
        self._disarm_idle()
        if self._lost is None and self.transport is not None:
            self.transport.stopProducing()

    # Idle timeout ---------------------------------------------------------

    def _arm_idle(self):
        if not self._idle_timeout or self._failed:
            return
        if self._idle.running:
            self._idle.touch()   # every chunk: an attribute store, not a reschedule
        else:
            self._idle.start(self._idle_timeout)

    def _disarm_idle(self):
        self._idle.stop()

    def _idled(self):
        self._fail(self._broken(f"origin sent nothing for {self._idle_timeout:g}s"))

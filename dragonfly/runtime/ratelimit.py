"""Token bucket rate limiting on an injected clock."""
from twisted.internet.defer import Deferred, succeed


class TokenBucket:
    """Allows C{rate} bytes per second on average, bursts up to C{burst}.

    C{rate} 0 means unlimited. Debt is allowed: a large take makes later
    takers wait, so a whole piece can be granted at once.
    """

    def __init__(self, clock, rate, burst=None):
        self._clock = clock
        self.rate = int(rate)
        self.burst = int(burst if burst is not None else max(self.rate // 4, 64 * 1024))
        self._tokens = float(self.burst)
        self._stamp = clock.seconds()

    def _refill(self):
        now = self._clock.seconds()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def consume(self, n):
        """Take C{n} tokens; return seconds the caller should wait before using them."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    def wait(self, n):
        """A Deferred that fires when C{n} bytes may be sent/received."""
        delay = self.consume(n)
        if delay <= 0:
            return succeed(None)
        d = Deferred(lambda d: call.cancel())
        call = self._clock.callLater(delay, d.callback, None)
        return d

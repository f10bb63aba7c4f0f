"""Token bucket rate limiting on an injected clock; L{all_of} paces by several."""
from twisted.internet.defer import Deferred, gatherResults, succeed


class TokenBucket:
    """Allows C{rate} bytes per second on average, bursts up to C{burst}.

    C{rate} 0 means unlimited. Debt is allowed: a large take makes later
    takers wait, so a whole piece can be granted at once. A bucket starts
    full, or with C{initial} tokens (0: no more than C{rate} bytes per
    second from the first byte on, the burst only absorbing timer lateness).
    """

    def __init__(self, clock, rate, burst=None, initial=None):
        self._clock = clock
        self.rate = int(rate)
        self.burst = int(burst if burst is not None else max(self.rate // 4, 64 * 1024))
        self._tokens = float(self.burst if initial is None else min(initial, self.burst))
        self._stamp = clock.seconds()

    def _refill(self):
        now = self._clock.seconds()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def set_rate(self, rate):
        """From now on allow C{rate} bytes per second (the time until now is
        credited at the old rate)."""
        if self.rate > 0:
            self._refill()
        else:
            self._stamp = self._clock.seconds()
        self.rate = int(rate)

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


class _AllOf:
    def __init__(self, limiters):
        self._limiters = limiters

    def wait(self, n):
        return gatherResults([lim.wait(n) for lim in self._limiters]).addCallback(lambda _: None)


def all_of(*limiters):
    """One limiter (an object with C{wait(n)}) that waits for every one of
    C{limiters} that is not None; None when there is none."""
    present = [lim for lim in limiters if lim is not None]
    if len(present) < 2:
        return present[0] if present else None
    return _AllOf(present)

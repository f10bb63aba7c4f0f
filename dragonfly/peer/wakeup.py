"""Wake-ups on the injected clock: the one primitive the peer's waits are built on.

A L{Signal} is a set of waiting Deferreds fired together: a swarm session
waits on one for "a fetch ended" (or a timeout), streams wait on one for "a
piece of this task arrived". No global reactor; the clock is injected.
"""
from twisted.internet.defer import Deferred

__all__ = ["Signal"]


class Signal:
    """Wakes every waiter on C{fire()}; C{wait(timeout)} also wakes after C{timeout}."""

    def __init__(self, clock):
        self._clock = clock
        self._waiters = []

    def wait(self, timeout=None):
        """A Deferred firing with the value of the next C{fire()} (False on timeout).

        Cancelling it just drops this waiter."""
        d = Deferred(lambda d: self._drop(d))
        self._waiters.append(d)
        if timeout is not None:
            call = self._clock.callLater(max(0.0, timeout), self._timeout, d)
            d.addBoth(self._cancel_call, call)
        return d

    def _cancel_call(self, result, call):
        if call.active():
            call.cancel()
        return result

    def _drop(self, d):
        if d in self._waiters:
            self._waiters.remove(d)

    def _timeout(self, d):
        if d in self._waiters:
            self._waiters.remove(d)
            d.callback(False)

    def fire(self, value=True):
        """Wake every current waiter with C{value}."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(value)

    def fail(self, failure):
        """Fail every current waiter with C{failure}."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

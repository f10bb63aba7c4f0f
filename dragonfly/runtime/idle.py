"""An inactivity timer for connections: touched on every chunk, cheaply."""


class IdleTimer:
    """A cheap inactivity timer: C{touch()} is an attribute store, not a reschedule.

    C{start(timeout)} arms it (0 or None: never fires), C{touch()} records
    activity, C{stop()} disarms it; C{on_timeout()} is called once
    C{timeout} seconds pass without a touch. C{running} tells whether it is armed.
    """

    def __init__(self, clock, on_timeout):
        self._clock = clock
        self._on_timeout = on_timeout
        self._call = None
        self._timeout = None
        self.last = clock.seconds()

    @property
    def running(self):
        return self._call is not None

    def touch(self):
        self.last = self._clock.seconds()

    def start(self, timeout):
        self.stop()
        self._timeout = timeout
        self.last = self._clock.seconds()
        if timeout:
            self._call = self._clock.callLater(timeout, self._check)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self):
        self._call = None
        left = self.last + self._timeout - self._clock.seconds()
        if left > 0:
            self._call = self._clock.callLater(left, self._check)
        else:
            self._on_timeout()

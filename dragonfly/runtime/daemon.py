"""Pieces every dragonfly daemon is built from: timers that survive a failing
body (L{safe_timer}) and a listener that exposes its bound port
(L{ListeningService}); L{dragonfly.runtime.nodeservice} assembles them."""
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger


def safe_timer(interval, f, clock, name, log):
    """A TimerService calling C{f} whose failures are logged, never fatal."""

    def body():
        try:
            d = f()
        except Exception:
            log.failure("timer {name} failed", name=name)
            return None
        if isinstance(d, Deferred):
            d.addErrback(lambda fl: log.failure("timer {name} failed", fl, name=name))
        return d

    s = TimerService(interval, body)
    s.clock = clock
    s.setName(name)
    return s


class ListeningService(service.Service):
    """Listens on an endpoint; remembers the port; stops listening on stop.

    Unlike StreamServerEndpointService, the bound port is public
    (L{whenListening}), which an ephemeral C{tcp:0} listener needs.
    """

    log = Logger()

    def __init__(self, endpoint, factory, name):
        self.endpoint = endpoint
        self.factory = factory
        self.setName(name)
        self.port = None
        self._waiting = []
        self._listening = None

    def startService(self):
        service.Service.startService(self)
        d = self.endpoint.listen(self.factory)
        self._listening = d

        def bound(port):
            self.port = port
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.callback(port)
            return port

        def failed(f):
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.errback(f)
            self.log.failure("cannot listen for {name}", f, name=self.name)
            return None

        d.addCallbacks(bound, failed)

    def whenListening(self):
        """A Deferred firing with the IListeningPort once bound."""
        if self.port is not None:
            return succeed(self.port)
        d = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        if self._listening is not None and not self._listening.called:
            self._listening.cancel()
        return None


"""Pieces every dragonfly daemon is built from: timers that survive a failing
body (L{safe_timer}), endpoints that remember the string they were configured
with (L{server_endpoint}), a listener that exposes its bound port or why it
could not bind (L{ListeningService}), and the start error a daemon exits with
when it cannot listen (L{CannotListen}); L{dragonfly.runtime.nodeservice}
assembles them."""
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["CannotListen", "DescribedEndpoint", "ListeningService", "describe_endpoint",
           "listen_failure_reason", "safe_timer", "server_endpoint", "unix_socket_endpoint"]


class CannotListen(SystemExit, Exception):
    """A daemon could not listen on one of its endpoints; it must not run.

    Raised from C{startService}, so twistd never starts its reactor. Both
    bases are deliberate: as an C{Exception}, twistd's start-up code catches
    it, so a daemonised twistd's parent process reports it through its status
    pipe and exits 1 (SysV C{service start} says "failed"); as a
    C{SystemExit}, nothing else prints a traceback for it and Python's
    top level prints its one line on stderr and exits 1 (C{twistd -n}, so
    systemd's C{Restart=on-failure} fires).
    """

    def __init__(self, endpoint, reason):
        message = f"cannot listen on {endpoint}: {reason}"
        SystemExit.__init__(self, message)
        self.endpoint = endpoint
        self.reason = reason

    def __str__(self):
        return self.code


def listen_failure_reason(error):
    """The operating system's words for why a listen failed, e.g.
    C{Address already in use}; else the error's own text."""
    cause = getattr(error, "socketError", None)
    for e in (cause, error):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return str(cause if cause is not None else error) or type(error).__name__


@implementer(IStreamServerEndpoint)
class DescribedEndpoint:
    """A server endpoint that remembers its configured string (C{str()})."""

    def __init__(self, endpoint, description):
        self.endpoint = endpoint
        self.description = description

    def listen(self, factory):
        return self.endpoint.listen(factory)

    def __str__(self):
        return self.description


def server_endpoint(reactor, description):
    """C{serverFromString}, keeping C{description} for error messages."""
    return DescribedEndpoint(serverFromString(reactor, description), description)


def unix_socket_endpoint(reactor, path, mode=0o600):
    """A unix socket at C{path} with permissions C{mode} (owner only by default).

    Twisted sets the mode after C{bind} and before C{listen}, so nobody can
    connect before it applies. A C{PATH.lock} next to it (C{wantPID}) lets a
    restart replace the socket a crashed process left, and never a live one's.
    """
    return DescribedEndpoint(UNIXServerEndpoint(reactor, path, mode=mode, wantPID=True),
                             f"unix:{path}")


def describe_endpoint(endpoint):
    """How to name C{endpoint} to a user: its configured string when it has
    one, C{tcp:PORT[:interface=HOST]} for a plain TCP endpoint, else its type."""
    description = getattr(endpoint, "description", None)
    if description:
        return description
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int):
        interface = getattr(endpoint, "_interface", "")
        return f"tcp:{port}" + (f":interface={interface}" if interface else "")
    return type(endpoint).__name__


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
    (L{whenListening}), which an ephemeral C{tcp:0} listener needs, and so is
    a failure to bind: L{whenListening} fails with it (before or after), and
    the caller says it in one line (L{CannotListen}); nothing is logged here.
    """

    def __init__(self, endpoint, factory, name):
        self.endpoint = endpoint
        self.factory = factory
        self.setName(name)
        self.port = None
        self.failure = None
        self._waiting = []
        self._listening = None

    @property
    def description(self):
        """The endpoint as the user configured it (L{describe_endpoint})."""
        return describe_endpoint(self.endpoint)

    def startService(self):
        service.Service.startService(self)
        d = maybeDeferred(self.endpoint.listen, self.factory)
        self._listening = d

        def bound(port):
            self.port = port
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.callback(port)
            return port

        def failed(f):
            self.failure = f
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.errback(f)
            return None

        d.addCallbacks(bound, failed)

    def whenListening(self):
        """A Deferred firing with the IListeningPort once bound, or failing
        with the reason the endpoint could not listen."""
        if self.port is not None:
            return succeed(self.port)
        if self.failure is not None:
            return fail(self.failure)
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


"""How a role's twistd run ends: exit status 0 after a clean SIGTERM shutdown,
1 after a shutdown that failed.

Twisted's SIGTERM handler records the signal (the reactor's C{sigTerm}) and
twistd, once the reactor has shut down (and removed its pid file), re-raises
it on itself: a clean stop would end with "killed by SIGTERM". Under twistd
only, L{twistd_service} installs a SIGTERM handler (again over the reactor's
own once it has installed it) that logs the same line and stops the reactor
without recording the signal; SIGINT stays as Twisted has it. After
the shutdown, a service whose stop failed (C{stop_failed}, see
L{dragonfly.runtime.nodeservice.NodeService}, or still running) makes the
process exit 1 once twistd is done.

Each role's tap C{makeService} goes through L{twistd_service}: twistd's
ServiceMaker calls it without a reactor, a test always passes one and so
touches no signal of its own process.
"""
import atexit
import os
import signal
import sys
import threading

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

__all__ = ["ExitStatus", "twistd_service"]


def twistd_service(make, options, reactor=None):
    """C{make(options, reactor)}, a role's service. Without C{reactor} (twistd's
    ServiceMaker calls the tap's C{makeService(options)}; a test always passes
    one) it runs on the global reactor with its L{ExitStatus} arranged."""
    if reactor is not None:
        return make(options, reactor)
    from twisted.internet import reactor
    svc = make(options, reactor)
    ExitStatus(reactor, svc, signal, atexit.register).arrange()
    return svc


class ExitStatus:
    """SIGTERM -> a clean stop (exit 0); a failed stop of C{service} -> exit 1.

    @param signals: the C{signal} module (a fake in tests).
    @param at_exit: C{atexit.register} (a fake in tests).
    """

    log = Logger()

    def __init__(self, reactor, service, signals=signal, at_exit=atexit.register):
        self.reactor = reactor
        self.service = service
        self.signals = signals
        self.at_exit = at_exit
        self.installed = False

    def arrange(self):
        """Install the SIGTERM handler when the service starts, and again over
        the reactor's own as the reactor starts; check the stop once the
        reactor has shut down.

        When the service starts: twistd starts it (it binds its ports and
        writes its port file) before the reactor runs, and in the process
        that will run it (after daemonising: the launching parent keeps
        SIGTERM's default action); a SIGTERM then stops the reactor as soon as
        it runs. Again in the reactor's "during startup" phase, right after it
        installed its own handlers there (earlier triggers of a phase run
        first), before anything else runs.
        """
        _InstallOnStart(self).setServiceParent(self.service)
        self.reactor.addSystemEventTrigger("during", "startup", self.install)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.check_stop)

    def install(self):
        """Replace the default SIGTERM action or the reactor's own handler (and
        nothing else: not off the main thread, nor an embedding program's)."""
        if threading.current_thread() is not threading.main_thread():
            return
        current = self.signals.getsignal(self.signals.SIGTERM)
        if current != self.signals.SIG_DFL and current != getattr(self.reactor, "sigTerm", None):
            return
        self.signals.signal(self.signals.SIGTERM, self.sigterm)
        self.installed = True

    def sigterm(self, signum, frame):
        self.log.info("Received SIGTERM, shutting down.")
        self.reactor.callFromThread(self._stop)

    def _stop(self):
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass     # another SIGTERM while shutting down

    def check_stop(self):
        """After the shutdown: exit 1 at the end when the service's stop failed."""
        if getattr(self.service, "stop_failed", False) or self.service.running:
            self.log.error("the shutdown failed: exiting with status 1")
            self.at_exit(exit_now, 1)


class _InstallOnStart(service.Service):
    """A child of the role's service: installs the handler as it starts."""

    name = "exit-status"

    def __init__(self, status):
        self.status = status

    def startService(self):
        service.Service.startService(self)
        self.status.install()


def exit_now(code):
    """Flush stdout and stderr, then end the process with status C{code}."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)

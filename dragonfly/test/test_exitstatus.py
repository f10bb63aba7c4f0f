"""Tests for dragonfly.runtime.exitstatus: exit 0 after a clean SIGTERM
shutdown, 1 after a failed one, and only under twistd (the plugin's
ServiceMakers), never in a process that builds a role with its tap."""
import signal
import threading
from importlib import import_module

from twisted.application.service import MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.runtime.exitstatus import ExitStatus, exit_now

ROLES = ("supernode", "peer", "dfdaemon")


class FakeSignals:
    """The C{signal} module's getsignal/signal over a dict."""

    SIGTERM = signal.SIGTERM
    SIG_DFL = signal.SIG_DFL

    def __init__(self, handlers):
        self.handlers = dict(handlers)

    def getsignal(self, number):
        return self.handlers.get(number)

    def signal(self, number, handler):
        old, self.handlers[number] = self.handlers.get(number), handler
        return old


class FakeReactor(MemoryReactorClock):
    """A memory reactor with C{sigTerm}, C{callFromThread} and a stop that
    refuses a second call, as the real one does."""

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.from_thread = []
        self.stops = 0
        self.sigTerm_calls = []

    def sigTerm(self, number, frame=None):
        self.sigTerm_calls.append(number)

    def callFromThread(self, f, *args, **kwargs):
        self.from_thread.append((f, args, kwargs))

    def stop(self):
        if self.stops:
            raise ReactorNotRunning()
        self.stops += 1


class _Service(MultiService):
    stop_failed = False


class ExitStatusTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = FakeReactor()
        self.signals = FakeSignals({signal.SIGTERM: self.reactor.sigTerm})
        self.at_exit = []
        self.service = _Service()
        self.status = ExitStatus(self.reactor, self.service, self.signals,
                                 lambda *a: self.at_exit.append(a))

    def shutdown(self):
        """The after-shutdown triggers, as the reactor runs them."""
        for f, args, kwargs in self.reactor.triggers["after"]["shutdown"]:
            f(*args, **kwargs)

    def test_arrange_installs_on_start_and_over_the_reactors(self):
        """Arranging touches no signal; the handler is installed as the service
        starts (before the reactor runs: SIGTERM's default action), and again
        in the reactor's start-up, over the handler the reactor installed then."""
        self.signals.handlers[signal.SIGTERM] = signal.SIG_DFL
        self.status.arrange()
        self.assertEqual(self.signals.handlers[signal.SIGTERM], signal.SIG_DFL)
        self.service.startService()
        self.assertEqual(self.signals.handlers[signal.SIGTERM], self.status.sigterm)
        self.signals.signal(signal.SIGTERM, self.reactor.sigTerm)    # the reactor starts
        for f, args, kwargs in self.reactor.triggers["during"]["startup"]:
            f(*args, **kwargs)
        self.assertEqual(self.signals.handlers[signal.SIGTERM], self.status.sigterm)

    def test_sigterm_stops_without_the_signal(self):
        """SIGTERM logs Twisted's line and stops the reactor from the reactor
        thread; the reactor's own handler (which records the signal for
        twistd to re-raise) is not called. A second SIGTERM is harmless."""
        self.status.install()
        handler = self.signals.handlers[signal.SIGTERM]
        with capturedLogs() as events:
            handler(signal.SIGTERM, None)
        self.assertEqual([e["log_format"] for e in events], ["Received SIGTERM, shutting down."])
        handler(signal.SIGTERM, None)
        for f, args, kwargs in self.reactor.from_thread:
            f(*args, **kwargs)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.reactor.sigTerm_calls, [])

    def test_only_replaces_the_reactors_handler(self):
        """A SIGTERM handler that is not the reactor's (a reactor run without
        signal handlers, an embedding program's) is left alone."""
        def mine(number, frame):
            pass
        self.signals.handlers[signal.SIGTERM] = mine
        self.status.install()
        self.assertIs(self.signals.handlers[signal.SIGTERM], mine)
        self.assertFalse(self.status.installed)

    def test_not_off_the_main_thread(self):
        """Off the main thread nothing is installed."""
        t = threading.Thread(target=self.status.install)
        t.start()
        t.join()
        self.assertEqual(self.signals.handlers[signal.SIGTERM], self.reactor.sigTerm)
        self.assertFalse(self.status.installed)

    def test_clean_stop_exits_zero(self):
        """After a shutdown whose stop succeeded, no exit status is forced."""
        self.status.arrange()
        self.service.startService()
        self.service.stopService()
        self.shutdown()
        self.assertEqual(self.at_exit, [])

    def test_failed_stop_exits_one(self):
        """After a shutdown whose stop failed, the process exits 1 at its end
        (once twistd has removed its pid file and logged its last line)."""
        self.status.arrange()
        self.service.startService()
        self.service.stopService()
        self.service.stop_failed = True
        with capturedLogs() as events:
            self.shutdown()
        self.assertEqual(self.at_exit, [(exit_now, 1)])
        self.assertIn("the shutdown failed", events[0]["log_format"])

    def test_service_still_running_exits_one(self):
        """A service whose stop raised before it stopped: exit 1."""
        self.status.arrange()
        self.service.startService()
        self.shutdown()
        self.assertEqual(self.at_exit, [(exit_now, 1)])


class TwistdOnlyTests(SynchronousTestCase):
    """twistd's ServiceMaker calls a tap's makeService without a reactor: the
    exit status is arranged; a test passes its reactor: this process's signals
    are left alone."""

    def options(self, role):
        opts = ServerOptions()
        opts.parseOptions(["-n", role, "--data-dir", self.mktemp()])
        return opts.subOptions

    def statuses(self, reactor):
        return [t[0].__self__ for t in reactor.triggers.get("during", {}).get("startup", [])
                if isinstance(getattr(t[0], "__self__", None), ExitStatus)]

    def test_tap_leaves_signals_alone(self):
        """makeService given a reactor arranges nothing: running the reactor's
        start-up hooks leaves this process's SIGTERM handler as it was."""
        before = signal.getsignal(signal.SIGTERM)
        for role in ROLES:
            reactor = MemoryReactorClock()
            import_module(f"dragonfly.{role}.tap").makeService(self.options(role), reactor)
            self.assertEqual(self.statuses(reactor), [], role)
            reactor.run()
            self.assertIs(signal.getsignal(signal.SIGTERM), before, role)

    def test_twistd_arranges_it(self):
        """Each role's plugin, as twistd calls it (C{makeService(options)}),
        builds the role's service on the global reactor with its
        L{ExitStatus} arranged there."""
        import twisted.internet
        from twisted.plugins import dragonfly_plugins

        from dragonfly.runtime import exitstatus
        for role in ROLES:
            fake = FakeSignals({signal.SIGTERM: signal.SIG_DFL})
            self.patch(exitstatus, "signal", fake)    # this process's own are not touched
            reactor = MemoryReactorClock()
            self.patch(twisted.internet, "reactor", reactor)
            svc = getattr(dragonfly_plugins, role).makeService(self.options(role))
            [status] = self.statuses(reactor)
            self.assertIs(status.service, svc)
            self.assertIs(status.reactor, reactor)
            self.assertIs(status.signals, fake)
            self.assertEqual(fake.handlers[signal.SIGTERM], signal.SIG_DFL)
            svc.getServiceNamed("exit-status").startService()
            self.assertEqual(fake.handlers[signal.SIGTERM], status.sigterm)
            self.assertIs(svc.reactor, reactor)
            self.assertIn(status.check_stop,
                          [t[0] for t in reactor.triggers["after"]["shutdown"]])

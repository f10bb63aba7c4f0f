"""L{dragonfly.logsetup}: the JSON line format, the observers, and where
twistd's options say the log goes."""
import io
import json
import os
import signal
from importlib import import_module

from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.logger._legacy import publishToNewObserver
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.log import textFromEventDict
from twisted.python.logfile import LogFile
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from dragonfly import logsetup
from dragonfly.peer.service import PeerConfig

KEYS = {"time", "level", "logger", "message"}


class Unserialisable:
    def __repr__(self):
        return "<Unserialisable>"


def emit(observer, level=LogLevel.info, fmt="piece {index} from {peer}", namespace="dragonfly.x",
         **fields):
    """Log one event through a real Logger to C{observer}."""
    Logger(namespace=namespace, observer=observer).emit(level, fmt, **fields)


def lines_of(stream):
    text = stream.getvalue()
    assert text.endswith("\n"), text
    return [json.loads(line) for line in text.splitlines()]


class JSONLineTests(SynchronousTestCase):

    def setUp(self):
        self.out = io.StringIO()
        self.observer = logsetup.make_observer("json", self.out, level="debug")

    def test_flat_object_per_line(self):
        """An event is one line: a flat JSON object with time, level, logger,
        the formatted message and the event's own fields; no record separator
        and none of Twisted's internals."""
        emit(self.observer, index=3, peer="10.0.0.1:65000")
        text = self.out.getvalue()
        self.assertEqual(text.count("\n"), 1)
        self.assertNotIn("\x1e", text)
        [rec] = lines_of(self.out)
        self.assertEqual(rec["level"], "info")
        self.assertEqual(rec["logger"], "dragonfly.x")
        self.assertEqual(rec["message"], "piece 3 from 10.0.0.1:65000")
        self.assertEqual((rec["index"], rec["peer"]), (3, "10.0.0.1:65000"))
        self.assertEqual(set(rec), KEYS | {"index", "peer"})
        self.assertFalse([k for k in rec if k.startswith("log_")])

    def test_time_is_rfc3339_utc(self):
        """C{time} is the event's time in RFC 3339 with its time zone (UTC)."""
        line = logsetup.format_json_line({"log_time": 86400 * 365 + 0.25,
                                          "log_level": LogLevel.warn, "log_format": "x"})
        self.assertEqual(json.loads(line)["time"], "1971-01-01T00:00:00.250Z")

    def test_levels(self):
        """Each level is named as Twisted names it."""
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error,
                      LogLevel.critical):
            emit(self.observer, level=level, fmt="x")
        self.assertEqual([r["level"] for r in lines_of(self.out)],
                         ["debug", "info", "warn", "error", "critical"])

    def test_level_filter(self):
        """The observer drops events below its level (info by default)."""
        out = io.StringIO()
        observer = logsetup.make_observer("json", out)
        emit(observer, level=LogLevel.debug, fmt="hidden")
        emit(observer, level=LogLevel.info, fmt="shown")
        self.assertEqual([r["message"] for r in lines_of(out)], ["shown"])

    def test_failure(self):
        """A logged failure's traceback is C{traceback}, still on one line."""
        try:
            1 / 0
        except ZeroDivisionError:
            f = Failure()
        Logger(namespace="n", observer=self.observer).failure("download {name} failed", f,
                                                               name="a.bin")
        [rec] = lines_of(self.out)
        self.assertEqual((rec["level"], rec["message"], rec["name"]),
                         ("critical", "download a.bin failed", "a.bin"))
        self.assertIn("ZeroDivisionError", rec["traceback"])
        self.assertIn("Traceback", rec["traceback"])
        self.assertEqual(self.out.getvalue().count("\n"), 1)

    def test_non_serialisable_values(self):
        """Values JSON cannot carry (objects, bytes, NaN, a list holding bytes) are
        their repr; JSON values stay as they are."""
        emit(self.observer, fmt="{obj}", obj=Unserialisable(), raw=b"\x00\n", nan=float("nan"),
             mixed=[1, b"x"], ok={"a": [1, 2.5, None, True]})
        [rec] = lines_of(self.out)
        self.assertEqual(rec["obj"], "<Unserialisable>")
        self.assertEqual(rec["message"], "<Unserialisable>")
        self.assertEqual(rec["raw"], repr(b"\x00\n"))
        self.assertEqual(rec["nan"], "nan")
        self.assertEqual(rec["mixed"], repr([1, b"x"]))
        self.assertEqual(rec["ok"], {"a": [1, 2.5, None, True]})

    def test_multiline_message(self):
        """A message with newlines stays on one line (escaped)."""
        emit(self.observer, fmt="one\ntwo")
        [rec] = lines_of(self.out)
        self.assertEqual(rec["message"], "one\ntwo")
        self.assertEqual(self.out.getvalue().count("\n"), 1)

    def test_legacy_event(self):
        """An event from twisted.python.log (as Twisted itself still logs) has
        its text as the message and none of the legacy keys."""
        event = {"message": ("Server", "Shut Down."), "isError": 0, "system": "-",
                 "time": 5.0, "format": None}
        publishToNewObserver(self.observer, event, textFromEventDict)
        [rec] = lines_of(self.out)
        self.assertEqual(rec["message"], "Server Shut Down.")
        self.assertEqual(set(rec), KEYS)
        self.assertEqual(rec["time"], "1970-01-01T00:00:05.000Z")

    def test_field_named_like_a_key(self):
        """An event field named like one of ours does not replace ours."""
        emit(self.observer, fmt="hello", level=LogLevel.warn, message="m", logger="l")
        [rec] = lines_of(self.out)
        self.assertEqual((rec["message"], rec["logger"], rec["level"]),
                         ("hello", "dragonfly.x", "warn"))

    def test_text_unchanged(self):
        """The text format is Twisted's own text lines."""
        out = io.StringIO()
        emit(logsetup.make_observer("text", out), fmt="piece {index}", index=1)
        self.assertRegex(out.getvalue(), r"^\S+ \[dragonfly\.x#info\] piece 1\n$")

    def test_unknown_format(self):
        self.assertRaises(ValueError, logsetup.make_observer, "xml")

    def test_message_is_formatEvent(self):
        """The message is Twisted's own formatting (bad formats included)."""
        event = {"log_format": "{missing}", "log_level": LogLevel.info, "log_time": 0}
        rec = json.loads(logsetup.format_json_line(event))
        self.assertEqual(rec["message"], formatEvent(event))


def twistd_options(*argv):
    """Parse C{twistd ARGV peer}; return the peer's options (child of twistd's)."""
    opts = ServerOptions()
    opts.parseOptions(list(argv) + ["peer", "--supernodes", "127.0.0.1:8002"])
    return opts.subOptions


class LogFileChoiceTests(SynchronousTestCase):

    def test_without_twistd(self):
        """Options not under twistd (tests, direct use) log to stdout."""
        self.assertEqual(logsetup.twistd_log_file(object()), "-")

    def test_choices(self):
        """Like twistd: a named file; stdout with -n and no file or C{-};
        twistd.log for a daemon without one; None with --syslog."""
        self.assertEqual(logsetup.twistd_log_file(twistd_options("--logfile", "/x/f.log")),
                         "/x/f.log")
        self.assertEqual(logsetup.twistd_log_file(twistd_options("-n", "--logfile", "/x/f")),
                         "/x/f")
        self.assertEqual(logsetup.twistd_log_file(twistd_options("-n")), "-")
        self.assertEqual(logsetup.twistd_log_file(twistd_options("-n", "--logfile", "-")), "-")
        self.assertEqual(logsetup.twistd_log_file(twistd_options()), "twistd.log")
        self.assertIsNone(logsetup.twistd_log_file(twistd_options("--syslog")))

    def test_daemon_to_stdout(self):
        """A daemon cannot log JSON to stdout: a usage error, as twistd's own
        for text (which twistd keeps reporting itself)."""
        opts = ServerOptions()
        self.assertRaises(usage.UsageError, opts.parseOptions,
                          ["--logfile", "-", "peer", "--log-format", "json"])
        ServerOptions().parseOptions(["--logfile", "-", "peer"])

    def test_role_config_carries_it(self):
        """The role's config says where its JSON log goes."""
        opts = ServerOptions()
        opts.parseOptions(["-n", "--logfile", "/x/f", "peer", "--log-format", "json"])
        self.assertEqual(opts.subOptions.config.log_file, "/x/f")


class ObserverForTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = MemoryReactor()
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def test_text_has_none(self):
        """Text format: no observer of ours, twistd keeps its own."""
        self.assertIsNone(logsetup.json_observer_for(self.reactor, PeerConfig()))

    def test_syslog_has_none(self):
        """With --syslog, twistd keeps its own observer."""
        c = PeerConfig(log_format="json", log_file=None)
        self.assertIsNone(logsetup.json_observer_for(self.reactor, c))

    def test_writes_to_the_file(self):
        """JSON lines go to the named file, which SIGUSR1 rotates."""
        path = os.path.abspath(self.mktemp())
        observer = logsetup.json_observer_for(
            self.reactor, PeerConfig(log_format="json", log_file=path))
        emit(observer, index=1, peer="p")
        with open(path) as f:
            [line] = f.read().splitlines()
        self.assertEqual(json.loads(line)["message"], "piece 1 from p")
        handler = signal.getsignal(signal.SIGUSR1)
        self.assertTrue(callable(handler))
        calls = []
        self.reactor.callFromThread = lambda f, *a: calls.append(f)
        handler(signal.SIGUSR1, None)
        self.assertEqual(len(calls), 1)
        self.assertIsInstance(calls[0].__self__, LogFile)
        calls[0].__self__.close()

    def test_stdout(self):
        """C{"-"} is stdout."""
        import sys
        self.assertIs(logsetup.open_log_file("-", self.reactor), sys.stdout)


class RoleServiceTests(ObserverForTests):
    """Through each role's twistd options and makeService, as twistd runs them."""

    def check_role(self, role, *args):
        from twisted.application.service import Application
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import ILogObserver

        path = os.path.abspath(self.mktemp())
        opts = ServerOptions()
        opts.parseOptions(["-n", "--logfile", path, role, "--log-format", "json",
                           "--data-dir", self.mktemp()] + list(args))
        tap = import_module(f"dragonfly.{role}.tap")
        svc = tap.makeService(opts.subOptions, MemoryReactorClock())
        app = Application(role)
        svc.setServiceParent(app)
        observer = app.getComponent(ILogObserver)
        self.assertIs(observer, svc.log_observer)
        emit(observer, fmt="hello from {role}", role=role)
        with open(path) as f:
            [rec] = [json.loads(line) for line in f]
        self.assertEqual((rec["message"], rec["role"]), (f"hello from {role}", role))

    def test_supernode(self):
        self.check_role("supernode")

    def test_peer(self):
        self.check_role("peer", "--supernodes", "127.0.0.1:8002")

    def test_dfdaemon(self):
        self.check_role("dfdaemon", "--supernodes", "127.0.0.1:8002")

"""Log output chosen at start-up by --log-format: Twisted's text lines, or one
flat JSON object per line for a log shipper; and where it goes, the file
twistd's own options (--logfile, --nodaemon, --syslog) name.

A JSON line has C{time} (RFC 3339, UTC), C{level}, C{logger} (the event's
namespace), C{message} (the formatted text), C{traceback} for a failure, and
the event's own fields: as they are when JSON can carry them, else their
repr. Twisted's internals (C{log_*} and the legacy C{log.msg} keys) stay out.
"""
import json
import signal
import sys
from datetime import datetime, timezone

from twisted.logger import (
    FileLogObserver, FilteringLogObserver, LogLevel, LogLevelFilterPredicate, formatEvent,
    textFileLogObserver)
from twisted.python import usage
from twisted.python.logfile import LogFile
from twisted.python.reflect import safe_repr

__all__ = ["format_json_line", "json_observer_for", "make_observer", "open_log_file",
           "twistd_log_file"]

# Our own keys, and the keys twisted.python.log adds to a legacy event.
_RESERVED = frozenset({"time", "level", "logger", "message", "traceback",
                       "format", "isError", "failure", "why", "system"})


def make_observer(fmt="text", stream=None, level="info"):
    """An observer writing C{fmt} ("text" or "json") lines to C{stream}
    (stdout by default), dropping events below C{level}."""
    stream = stream or sys.stdout
    if fmt == "json":
        obs = FileLogObserver(stream, format_json_line)
    elif fmt == "text":
        obs = textFileLogObserver(stream)
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    pred = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(obs, [pred])


def format_json_line(event):
    """C{event} as one line of JSON (with its newline)."""
    record = {
        "time": _rfc3339(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", "info"),
        "logger": event.get("log_namespace") or event.get("log_system") or "-",
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = safe_repr(failure)
    for key, value in event.items():
        if isinstance(key, str) and not key.startswith("log_") and key not in _RESERVED:
            record[key] = _json_value(value)
    return json.dumps(record, allow_nan=False) + "\n"


def _rfc3339(t):
    if t is None:
        return None
    stamp = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _json_value(value):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return safe_repr(value)
    return value


def twistd_log_file(options):
    """Where twistd would write its log, from the twistd options above the role's
    C{options}: C{"-"} for stdout (also without twistd, as in tests), a file
    name, or None when twistd logs to syslog (twistd keeps its own observer)."""
    parent = getattr(options, "parent", None)
    if parent is None or "logfile" not in parent:
        return "-"
    if parent.get("syslog"):
        return None
    name = parent.get("logfile") or ""
    daemon = not (parent.get("nodaemon") or parent.get("debug"))
    if name == "-" and daemon:
        raise usage.UsageError("Daemons cannot log to stdout (--logfile -)")
    if not name:
        return "twistd.log" if daemon else "-"
    return name


def open_log_file(name, reactor):
    """The stream for L{twistd_log_file}'s C{name}: stdout for C{"-"}, else a
    L{LogFile} that SIGUSR1 rotates (as twistd's own), unless a handler is set."""
    if name == "-":
        return sys.stdout
    log_file = LogFile.fromFullPath(name)
    if not signal.getsignal(signal.SIGUSR1):
        signal.signal(signal.SIGUSR1,
                      lambda sig, frame: reactor.callFromThread(log_file.rotate))
    return log_file


def json_observer_for(reactor, config):
    """The JSON observer a role offers twistd for C{config} (its C{log_format}
    and C{log_file}), or None: text format, or syslog."""
    if config.log_format != "json" or config.log_file is None:
        return None
    return make_observer("json", open_log_file(config.log_file, reactor))

"""Text or JSON log output, chosen at start-up by --log-format."""
import sys

from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, jsonFileLogObserver,
    textFileLogObserver)


def make_observer(fmt="text", stream=None, level="info"):
    stream = stream or sys.stdout
    if fmt == "json":
        obs = jsonFileLogObserver(stream)
    elif fmt == "text":
        obs = textFileLogObserver(stream)
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    pred = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(obs, [pred])

"""dfget: a wget-like client that downloads through the dragonfly P2P network.

    dfget [options] URL            (or Dragonfly 1.x style: dfget -u URL -o FILE)

It asks the local peer daemon (C{--daemon}, default http://127.0.0.1:65002)
when its C{/healthz} answers within about a second
(L{dragonfly.dfget.viadaemon}, standard library only, no reactor); otherwise
it runs an embedded peer for the length of the download
(L{dragonfly.dfget.embedded}, Twisted): pieces in a temporary directory next
to the output file, a piece server on an ephemeral port so other peers can
fetch from it while it runs.

This module imports no Twisted: a download through the daemon never loads
it, which saves most of a short run's time (see bench/README.md).

The output appears only complete and verified: it is written under
C{FILE.dfget-tmp-<random>} in the output directory, checked against
C{--digest}, then renamed. Through a daemon, that temporary file is a reflink
or a hard link to the daemon's copy where the filesystem and the file's owner
and mode allow it (see L{files.place}), else a copy. A failure prints one
line, C{dfget: error: ...}, on stderr, exits non-zero and leaves nothing
under FILE.
"""
import contextlib
import os
import sys
import time

from dragonfly.dfget import compat, files
from dragonfly.dfget.options import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
                                     DfgetError, OptionsError, ShowText, error_line, parse)
from dragonfly.redact import redact_text
from dragonfly.runtime.signals import Interrupted, TimedOut, raising_signals

__all__ = ["main", "run"]


def run():
    """Console entry point."""
    status = main(sys.argv[1:])
    if "twisted" not in sys.modules:
        quick_exit(status)
    sys.exit(status)


def quick_exit(status, streams=None):
    """End the process with C{status} at once, C{streams} (stdout and stderr)
    flushed first: no interpreter finalization, which tears down every
    module one by one (~10 ms idle, 30 ms on a loaded machine; a warm 1 GiB
    dfget through the daemon takes ~1 s: bench/README.md, issue 20 round
    six). Only where nothing of ours is left to finish: L{run} calls it when
    Twisted was never imported (the daemon path: the standard library, no
    threads, no atexit hooks, the output renamed into place or removed
    already); the embedded peer's reactor ends the usual way."""
    for stream in (sys.stdout, sys.stderr) if streams is None else streams:
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0 if status is None else status if isinstance(status, int) else 1)


def main(argv, stdout=None, stderr=None, isatty=None, signals=True, embedded=None):
    """Run dfget with C{argv} (no program name); return the exit status.

    C{signals}: turn SIGTERM and --timeout (SIGALRM) into exceptions while the
    daemon path runs (main thread only). C{embedded(opts, out, timeout)} runs
    the embedded peer when no daemon answers; by default in this process's
    reactor, which exits the process.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        opts = parse(argv)
    except ShowText as t:
        with contextlib.suppress(BrokenPipeError):  # --help | head
            stdout.write(t.text)
            stdout.flush()
        return EXIT_OK
    except OptionsError as e:
        stderr.write(error_line(e))
        stderr.write("Try 'dfget --help' for more information.\n")
        return EXIT_USAGE
    if isatty is None:
        try:
            isatty = stderr.isatty()
        except (AttributeError, ValueError):
            isatty = False
    isatty = isatty or opts["showbar"]   # -b/--showbar: a bar even into a file
    warning = compat.warning_line(opts)
    if warning:
        stderr.write(warning)
    log = _logger(stderr) if opts["verbose"] else (lambda msg: None)
    timeout = opts["timeout_s"]
    started = time.monotonic()
    try:
        with raising_signals(timeout if signals else None):
            if opts["recursive"]:
                return _recursive(opts, stdout, stderr, isatty, log)
            out = files.output_path(opts)
            files.check_output(out)
            if _via_daemon(opts, out, stdout, stderr, isatty, log):
                return EXIT_OK
    except DfgetError as e:
        return _fail(stderr, e, e.code)
    except TimedOut:
        return _fail(stderr, f"timed out after {timeout:g} seconds")
    except (KeyboardInterrupt, Interrupted):
        return _fail(stderr, "interrupted", EXIT_INTERRUPTED)
    except Exception as e:
        if opts["verbose"]:
            import traceback   # (only here: it costs dfget's start-up ~10 ms)
            traceback.print_exc(file=stderr)
        text = str(e)
        return _fail(stderr, f"{type(e).__name__}: {text}" if text else type(e).__name__)
    left = None
    if timeout:
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            return _fail(stderr, f"timed out after {timeout:g} seconds")
    if embedded is None:
        from dragonfly.dfget import embedded as module

        embedded = module.run
    return embedded(opts, out, left)


def _via_daemon(opts, out, stdout, stderr, isatty, log):
    """Download through the daemon if one answers; False if none does."""
    if opts["daemon_url"] is None and opts["daemon_socket"] is None:
        log("--daemon none: using an embedded peer")
        return False
    from dragonfly.dfget.viadaemon import DaemonClient, download

    client = DaemonClient(opts["daemon_url"], socket_path=opts["daemon_socket"])
    if not client.alive():
        log(f"no peer daemon answered at {client.url}; using an embedded peer")
        return False
    log(f"using the peer daemon at {client.url}")
    download(opts, out, client, stdout, stderr, isatty, log)
    return True


def _recursive(opts, stdout, stderr, isatty, log):
    """--recursive: every file of the listing through the daemon, one task each."""
    from dragonfly.dfget import recursive
    from dragonfly.dfget.viadaemon import DaemonClient, download

    if opts["daemon_url"] is None and opts["daemon_socket"] is None:
        raise DfgetError("--recursive needs the peer daemon (not --daemon none)")
    client = DaemonClient(opts["daemon_url"], socket_path=opts["daemon_socket"])
    if not client.alive():
        raise DfgetError(f"--recursive needs the peer daemon; none answered at {client.url}")

    def one(file_opts, out):
        download(file_opts, out, client, stdout, stderr, isatty, log)
    count = recursive.run(opts, one, stderr, log)
    log(f"{count} files downloaded")
    return EXIT_OK


def _fail(stderr, reason, code=EXIT_FAILED):
    with contextlib.suppress(Exception):
        stderr.write(error_line(reason))
        stderr.flush()
    return code


def _logger(stderr):
    def log(msg):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        stderr.write(f"{stamp} [dfget] {redact_text(msg)}\n")
        stderr.flush()
    return log

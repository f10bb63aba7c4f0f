"""Signals as exceptions for a blocking run on the main thread (dfget's daemon path).

L{raising_signals} turns SIGTERM into L{Interrupted} and, after a timeout,
SIGALRM into L{TimedOut}; both are BaseExceptions, so no C{except Exception}
on the way swallows them. Standard library only: dfget's daemon path uses it
and must not load Twisted.
"""
import contextlib
import signal

__all__ = ["Interrupted", "TimedOut", "raising_signals"]


class Interrupted(BaseException):
    """SIGTERM (SIGINT is KeyboardInterrupt)."""


class TimedOut(BaseException):
    """The timeout ran out (SIGALRM)."""


@contextlib.contextmanager
def raising_signals(timeout):
    """SIGTERM -> L{Interrupted} and, after C{timeout} seconds, SIGALRM -> L{TimedOut}.

    C{timeout} None: touch no signals (not the main thread, or a test); 0: no
    timer. The previous handlers are back on exit, and a signal arriving while
    leaving no longer raises.
    """
    if timeout is None:
        yield
        return

    over = []

    def interrupted(signum, frame):
        if not over:
            raise Interrupted()

    def timed_out(signum, frame):
        if not over:
            raise TimedOut()
    old_term = signal.signal(signal.SIGTERM, interrupted)
    old_alarm = signal.signal(signal.SIGALRM, timed_out)
    if timeout:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        over.append(True)  # a signal from here on must not undo a finished run
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)

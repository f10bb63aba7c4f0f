"""What goes wrong in a peer download, and how it is said in one line.

L{DownloadError} and L{StreamStopped} are the peer's public errors (the API,
the mirror and dfget catch them). L{SupernodeUnavailable} and
L{NotRegistered} never leave the peer package: the first sends a download
back to its origin, the second makes a swarm session register again.
L{describe} turns any exception or Failure into a short reason for logs and
error messages.
"""
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.python.failure import Failure

__all__ = ["DownloadError", "StreamStopped", "SupernodeUnavailable", "NotRegistered",
           "describe"]


class DownloadError(Exception):
    """A download failed; C{str()} is a one-line reason fit for a user."""


class StreamStopped(Exception):
    """The consumer of L{dragonfly.peer.node.PeerNode.stream} stopped reading."""


class SupernodeUnavailable(Exception):
    """No supernode could (or would any longer) schedule this task: go to the origin."""


class NotRegistered(Exception):
    """The supernode forgot us (404 on schedule): register again."""


def describe(exc):
    """A short reason for C{exc} (an exception or a Failure)."""
    if isinstance(exc, Failure):
        exc = exc.value
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(describe(r) for r in reasons)
    if isinstance(exc, (DeferredTimeoutError, CancelledError)):
        return "timed out"
    from twisted.internet import error as neterr
    if isinstance(exc, neterr.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, neterr.DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(exc, (neterr.TimeoutError, neterr.TCPTimedOutError)):
        return "connection timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

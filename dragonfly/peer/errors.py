"""What goes wrong in a peer download, and how it is said in one line.

L{DownloadError} and L{StreamStopped} are the peer's public errors (the API,
the mirror and dfget catch them). L{SupernodeUnavailable} and
L{NotRegistered} never leave the peer package: the first sends a download
back to its origin, the second makes a swarm session register again.
L{describe} (L{dragonfly.httpio.describe}, re-exported) turns any exception or
Failure into a short reason for logs and error messages.
"""
from dragonfly.httpio import describe

__all__ = ["DownloadError", "StreamStopped", "SupernodeUnavailable", "SourceFailed",
           "NotRegistered", "describe"]


class DownloadError(Exception):
    """A download failed; C{str()} is a one-line reason fit for a user."""


class StreamStopped(Exception):
    """The consumer of L{dragonfly.peer.node.PeerNode.stream} stopped reading."""


class SupernodeUnavailable(Exception):
    """No supernode could (or would any longer) schedule this task: go to the origin."""


class SourceFailed(SupernodeUnavailable):
    """The supernode gave up fetching the task from its origin (a 502 on
    schedule): asking it again will not help, so go to the origin at once."""


class NotRegistered(Exception):
    """The supernode forgot us (404 on schedule): register again."""

"""What goes wrong in a peer download, and how it is said in one line.

L{DownloadError} and L{StreamStopped} are the peer's public errors (the API,
the mirror and dfget catch them). What a supernode's answer means for a
download (go to the origin, register again, a final verdict) is said by the
exceptions of L{dragonfly.control.client}.
L{describe} (L{dragonfly.httpio.describe}, re-exported) turns any exception or
Failure into a short reason for logs and error messages.
"""
from dragonfly.httpio import describe

__all__ = ["DownloadError", "OriginNotAllowed", "StalePieces", "StreamStopped", "describe"]


class DownloadError(Exception):
    """A download failed; C{str()} is a one-line reason fit for a user."""


class OriginNotAllowed(DownloadError):
    """The egress policy (ours or the supernode's) forbids the origin; C{str()}
    starts with C{origin not allowed: }. The local API answers it with 403."""


class StalePieces(DownloadError):
    """Pieces held from an earlier download are not the swarm's version of
    the task (another piece digest): the task's copy is dropped."""


class StreamStopped(Exception):
    """The consumer of L{dragonfly.peer.node.PeerNode.stream} stopped reading."""


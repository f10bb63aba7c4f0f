"""Kernel pacing of piece uploads under an upload limit: L{UplinkPacer}.

With C{--upload-limit R} a node's piece uploads share R bytes/s. Paced in
user space (a token bucket: a chunk at line rate, then a wait) they leave in
bursts, and TCP's own probing adds to them: on a link with a deep queue (a
shaped port, a home uplink) the node's uplink queue fills, and whatever else
leaves through it waits behind the pieces, the ACKs of the node's own
downloads first of all: the supernode's origin fetch and a peer's piece
fetches slow down with every millisecond their ACKs wait. Measured on the
swarm bench (100 Mbit ports, 100 ms queues): the supernode's uplink queue
held 127 KB on average (up to 750 KB) while it uploaded, and its origin fetch
ran at 10.7-11.0 MB/s against curl's 11.9 MB/s alone.

Where the kernel can pace a socket (Linux, C{SO_MAX_PACING_RATE}, any
congestion control) each socket with an upload running is capped at R /
uploads running, worked out again as each upload starts and ends: the
packets leave evenly spaced at R in all, the queue of the uplink stays short
when R is a little under the link's rate, and uploads keep C{os.sendfile}.
A socket the pacer cannot reach (no socket under the transport, another
OS, C{setsockopt} refused) is paced by the token bucket as before.

A cap per socket cannot lend an upload's unused share to the others: when
one receiver takes less than its share, the uplink carries less than R until
the next upload starts or ends. The token bucket's limit is a ceiling too;
neither ever sends more than R.
"""
import platform
import socket
import struct
import sys

__all__ = ["UplinkPacer", "pacing_option", "socket_of"]

_MAX = 0xFFFFFFFF      # the kernel reads a u32 here; ~0 means "no cap"


def pacing_option():
    """The C{SO_MAX_PACING_RATE} option number here, or None when unknown."""
    known = getattr(socket, "SO_MAX_PACING_RATE", None)
    if known is not None:
        return known
    if sys.platform.startswith("linux") and not platform.machine().startswith(("alpha", "parisc", "sparc")):
        return 47       # asm-generic/socket.h
    return None


def socket_of(transport):
    """The TCP socket under C{transport} (through a TLS wrapper), or None."""
    for _ in range(3):
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is None:
            return None
        try:
            handle = get_handle()
        except Exception:
            return None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None


class UplinkPacer:
    """Caps the sockets of the running uploads at C{rate} / their number.

    @param rate: bytes/s all uploads share (the node's upload limit, > 0).
    @param option: the socket option (L{pacing_option}); None: never paces.
    """

    def __init__(self, rate, option=None):
        self.rate = int(rate)
        self.option = pacing_option() if option is None else option
        self._socks = {}     # key -> socket, the uploads running and paced

    def add(self, key, transport):
        """An upload keyed C{key} starts on C{transport}: True when the kernel
        paces it (every running upload's cap then worked out again), False
        when the caller must pace it itself."""
        if self.option is None:
            return False
        sock = socket_of(transport)
        if sock is None or not self._cap(sock, self.rate // (len(self._socks) + 1)):
            return False
        self._socks[key] = sock
        self._balance()
        return True

    def remove(self, key):
        """The upload keyed C{key} ended: the others share its part."""
        if self._socks.pop(key, None) is not None and self._socks:
            self._balance()

    def running(self):
        return len(self._socks)

    def _balance(self):
        share = max(1, self.rate // len(self._socks))
        for sock in self._socks.values():
            self._cap(sock, share)

    def _cap(self, sock, rate):
        try:
            sock.setsockopt(socket.SOL_SOCKET, self.option, struct.pack("I", min(rate, _MAX - 1)))
        except (OSError, ValueError):
            return False
        return True

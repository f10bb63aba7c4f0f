"""Process and socket tuning for the data path: the glibc allocator thresholds
(L{tune_allocator}, once per process), the per-connection socket settings of a
bulk receiver (L{tune_receiver}: no Nagle, a bigger read size, and
L{prioritise}), a socket's receive low-water mark that follows how much of
a body is still owed (L{ReceiveLowWater}), and the priority of the
connections a node opens (L{prioritise}, L{DownloadEndpoint}). Every call
degrades to a no-op where the platform or the transport does not support it."""
import ctypes
import platform
import socket

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

_allocator_tuned = False


def tune_allocator():
    """Make glibc keep multi-MiB piece buffers on its heap (once per process).

    By default glibc serves each piece-sized allocation with a fresh mmap and
    returns it on free, so every piece received costs a page fault per 4 KiB
    (measured: about half the client's CPU at 500 MB/s). Raising the mmap and
    trim thresholds lets freed piece buffers be reused. Harmless elsewhere.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 128 * 1024 * 1024)


#: SO_PRIORITY of the connections a node opens and of the supernode's API:
#: TC_PRIO_INTERACTIVE, the first band of Linux's pfifo_fast (and of
#: prio-style qdiscs mapping it).
HIGH_PRIORITY = 6


def _socket_of(transport):
    """The socket under C{transport} (through TLS wrappers), or None."""
    for _ in range(4):
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def prioritise(transport):
    """Give C{transport}'s connection the host's higher priority (SO_PRIORITY
    L{HIGH_PRIORITY}): every connection a node opens (a piece fetch, an
    origin fetch, a call to the supernode: what comes back is what it
    downloads) and the supernode's API (L{dragonfly.httpsite.ControlChannel}:
    small answers a peer's next fetch waits for).

    A node uploads and downloads at once, and both leave through one uplink:
    our uploads' data, and the ACKs and requests of our downloads. Where
    that uplink queues in a single FIFO, an upload burst holds our ACKs
    (measured in the shaped swarm: the origin's sender, short of ACKs,
    ran at 10.3-11.2 MB/s against 11.9 alone, 1.5-3.5 s more for a
    256 MiB fetch). With the priority the host's own qdisc sends them first where
    it has priority bands (Linux's pfifo_fast, the default where no other
    is configured; flow-queueing qdiscs such as fq_codel separate them
    anyway). Only accepted connections carry our uploads, so they keep the
    default: the bulk data never jumps the queue. Local to this host (no
    DSCP on the wire); the values 0-6 need no privilege. Sharing the band,
    the prioritised traffic is FIFO among itself: a node's downloads are
    ACKs and requests, small next to its uploads.
    """
    sock = _socket_of(transport)
    if sock is None or not hasattr(socket, "SO_PRIORITY"):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, HIGH_PRIORITY)
    except OSError:
        pass   # (not a socket that takes it, or not this platform's)


@implementer(IStreamClientEndpoint)
class DownloadEndpoint:
    """C{endpoint}, whose connections get L{prioritise}."""

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def __repr__(self):
        return f"<DownloadEndpoint {self._endpoint!r}>"

    def connect(self, protocol_factory):
        def marked(protocol):
            prioritise(getattr(protocol, "transport", None))
            return protocol
        return self._endpoint.connect(protocol_factory).addCallback(marked)


def tune_receiver(transport, read_size):
    """Set up a freshly connected bulk-receiving C{transport}: TCP_NODELAY
    (our small requests go out at once) and C{read_size} bytes per read.

    @return: a L{ReceiveLowWater} for its socket, or None where the
        transport has no socket or the platform no SO_RCVLOWAT.
    """
    prioritise(transport)
    nodelay = getattr(transport, "setTcpNoDelay", None)
    if nodelay is not None:
        try:
            nodelay(True)
        except OSError:
            pass
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = read_size
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket) and hasattr(socket, "SO_RCVLOWAT"):
        return ReceiveLowWater(handle)
    return None


class ReceiveLowWater:
    """A socket's SO_RCVLOWAT, set only when it changes.

    Inside a body the receiver owes itself C{n} more bytes: with the low-water
    mark at C{min(n, read size)} the kernel wakes it only once that much is
    here (Linux grows the receive buffer to fit), so each read, and each trip
    through the reactor and the decoder, moves a full read instead of whatever
    loopback delivered (~64 KiB). Outside a body: 1 (any byte).

    C{value} is the mark now set; callers compare against it before calling
    L{set} so an unchanged mark costs no call.
    """

    __slots__ = ("_sock", "value")

    def __init__(self, sock):
        self._sock = sock
        self.value = 1

    def set(self, nbytes):
        if nbytes == self.value or self._sock is None:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            self._sock = None   # not supported here: leave it
            return
        self.value = nbytes

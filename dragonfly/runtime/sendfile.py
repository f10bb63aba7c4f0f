"""Byte ranges of a file written straight to a TCP socket with os.sendfile.

Twisted has no sendfile. L{FileSender} writes ranges of an open file to the
socket under a plain TCP transport with C{os.sendfile} (the kernel copies
page-cache pages to the socket; no Python buffer holds the bytes), after the
transport's own buffered bytes (an HTTP response's headers, say) have gone
out, and waits for the socket to be writable again on C{EAGAIN}. It watches
writability through its own duplicate of the socket's descriptor, registered
with the reactor as an C{IWriteDescriptor} (the reactor keys descriptors by
number, and the transport owns the original's reads and writes).

With C{copy=True} it reads each range through one reused buffer
(C{COPY_CHUNK}, C{preadv}) and writes it with C{write} instead: for a client
on the same host. Over loopback the receiver copies each byte out of the
socket itself, and bytes sendfile queued are page-cache pages it must read
from memory (curl's system time per GiB about doubles: 0.22-0.27 s against
0.11-0.15 s); bytes this process just copied into a small buffer are
still in the CPU's caches, and the cold read moves to this side, in
parallel with the client (bench/README.md, issue 20, branch cached). Same
bytes, same offsets: only who copies them changes.

L{socket_of} says whether a transport allows it: a TLS transport, a
transport of another kind (HTTP/2 streams, test transports) or a platform
without sendfile gets None, and the caller keeps its buffered path.
"""
import ipaddress
import os
import socket

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ISSLTransport, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FileSender", "buffered", "socket_of", "on_this_host", "BATCH"]

#: Bytes handed to os.sendfile per reactor turn before yielding to others.
BATCH = 4 * 1024 * 1024

#: The copy path's buffer: small enough to stay in the CPU's cache between
#: the read and the write (4 MiB sent ~10% slower in the same minutes).
COPY_CHUNK = 256 * 1024


def buffered(transport):
    """Bytes C{transport} holds and has not written to its socket yet, or
    None when it cannot tell (not one of Twisted's socket transports)."""
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None


def socket_of(transport):
    """The socket under C{transport} when os.sendfile may write to it
    directly (a plain TCP transport of a socket reactor), else None."""
    if not hasattr(os, "sendfile") or ISSLTransport.providedBy(transport):
        return None
    if getattr(transport, "TLS", False):     # a TCP transport that started TLS
        return None
    if buffered(transport) is None or not hasattr(transport, "getHandle"):
        return None
    try:
        sock = transport.getHandle()
        if not isinstance(sock, socket.socket) or sock.fileno() < 0:
            return None
    except Exception:
        return None
    return sock


def on_this_host(transport):
    """Whether the peer of C{transport} is on this host: a loopback address,
    or the very address it connected to (our own). False when unknown."""
    try:
        peer, host = transport.getPeer().host, transport.getHost().host
        if peer == host:
            return True
        address = ipaddress.ip_address(peer.partition("%")[0])
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback
    except (AttributeError, ValueError):
        return False


@implementer(IWriteDescriptor)
class FileSender:
    """Sends ranges of files to the socket under a plain TCP C{transport}, one at a time.

    C{send(fd, offset, length)} returns a Deferred firing once every byte is
    in the socket's send buffer; it fails with L{ConnectionLost} when the
    transport disconnects, with the C{OSError} of a failed sendfile, and
    with C{CancelledError} when cancelled or C{stop()}ped. Bytes written
    to the transport itself before a C{send} go out first. C{on_sent(n)} is
    called after each batch of C{n} bytes. Call C{stop()} when done: it
    closes the duplicate descriptor (which keeps the socket open while it
    exists). C{copy}: read and write through a buffer instead of sendfile
    (a client on this host; see the module docstring).
    """

    def __init__(self, reactor, transport, sock, on_sent=None, copy=False):
        self._reactor = reactor
        self._transport = transport
        self._fd = os.dup(sock.fileno())
        os.set_inheritable(self._fd, False)
        self._on_sent = on_sent or (lambda n: None)
        self._job = None          # [file fd, offset, bytes left, Deferred]
        self._watching = False
        # The copy path: the file's bytes from the job's offset, read but not
        # written yet, are _view[_pos:_end].
        self._view = memoryview(bytearray(COPY_CHUNK)) if copy else None
        self._pos = self._end = 0

    # IWriteDescriptor
    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "FileSender"

    def doWrite(self):
        self._pump()
        return None

    def connectionLost(self, reason):
        """The reactor dropped us (it is shutting down, or the descriptor broke)."""
        self._watching = False
        self._fail(reason)

    # the API
    def send(self, fd, offset, length):
        """Write C{length} bytes of file C{fd} from C{offset} to the socket."""
        if self._fd < 0:
            raise RuntimeError("FileSender used after stop()")
        if self._job is not None:
            raise RuntimeError("FileSender.send while a send is in progress")
        d = Deferred(lambda d: self._cancel(d))
        if length <= 0:
            d.callback(None)
            return d
        self._job = [fd, offset, length, d]
        self._pos = self._end = 0
        self._pump()
        return d

    def stop(self):
        """Stop watching the socket and close our descriptor; a send in
        progress fails with CancelledError."""
        if self._fd < 0:
            return
        self._unwatch()
        self._fail(Failure(CancelledError("sender stopped")))
        fd, self._fd = self._fd, -1
        os.close(fd)

    # internals
    def _cancel(self, d):
        if self._job is not None and self._job[3] is d:
            self._job = None
            self._pos = self._end = 0
            self._unwatch()

    def _fail(self, failure):
        self._pos = self._end = 0
        job, self._job = self._job, None
        if job is not None and not job[3].called:
            job[3].errback(failure)

    def _pump(self):
        job = self._job
        if job is None:
            self._unwatch()
            return
        transport = self._transport
        if not transport.connected or transport.disconnecting:
            self._unwatch()
            self._fail(Failure(ConnectionLost("the client connection is gone")))
            return
        if buffered(transport):
            # The transport's own bytes go first; it writes them when the
            # socket is writable, and we look again then.
            self._watch()
            return
        try:
            sent = self._sendfile(job) if self._view is None else self._copy(job)
        except OSError as e:
            self._unwatch()
            self._fail(Failure(e))
            return
        if sent:
            self._on_sent(sent)
        if job[2]:
            self._watch()
        else:
            self._job = None
            self._pos = self._end = 0
            self._unwatch()
            job[3].callback(None)

    def _sendfile(self, job):
        fd, offset, left = job[0], job[1], job[2]
        sent = 0
        try:
            while left and sent < BATCH:
                try:
                    n = os.sendfile(self._fd, fd, offset, min(left, BATCH - sent))
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                if n == 0:
                    raise OSError(f"file ended {left} bytes early")
                offset += n
                left -= n
                sent += n
        finally:
            job[1], job[2] = offset, left
        return sent

    def _copy(self, job):
        """Like L{_sendfile}, through the buffer: read the next chunk once the
        last one is written, write what the socket takes."""
        fd, offset, left = job[0], job[1], job[2]
        view, sent = self._view, 0
        try:
            while left and sent < BATCH:
                if self._pos == self._end:
                    n = os.preadv(fd, [view[:min(left, len(view))]], offset)
                    if n == 0:
                        raise OSError(f"file ended {left} bytes early")
                    self._pos, self._end = 0, n
                try:
                    n = os.write(self._fd, view[self._pos:self._end])
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                self._pos += n
                offset += n
                left -= n
                sent += n
        finally:
            job[1], job[2] = offset, left
        return sent

    def _watch(self):
        if not self._watching and self._fd >= 0:
            self._watching = True
            self._reactor.addWriter(self)

    def _unwatch(self):
        if self._watching:
            self._watching = False
            self._reactor.removeWriter(self)

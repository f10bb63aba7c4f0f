"""The piece server: serves the pieces a node holds to other peers.

One connection is bound to one task by its Hello. Requests are queued and
answered strictly in order, one piece at a time, each streamed from the
task's data file by a pull producer (bounded chunks; os.sendfile on plain TCP
when no upload limit applies) so memory never grows with piece size and the
transport's back-pressure is honoured.
"""
import os
from collections import deque

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.runtime.idle import IdleTimer
from dragonfly.protocol import codec

CHUNK_SIZE = 256 * 1024
#: Bytes handed to os.sendfile per resumeProducing before yielding to the reactor.
SENDFILE_BUDGET = 2 * 1024 * 1024
#: A client may have at most this many requests queued on one connection.
MAX_QUEUE = 64


def _sendfile_socket(transport):
    """The socket under C{transport} when os.sendfile may write to it directly."""
    if not hasattr(os, "sendfile") or ISSLTransport.providedBy(transport):
        return None
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or not hasattr(transport, "startWriting"):
        return None
    try:
        sock = get_handle()
        sock.fileno()
    except Exception:
        return None
    return sock


@implementer(IPullProducer)
class _PieceUpload:
    """Streams one piece: its header, then exactly C{length} bytes of the file.

    A pull producer: the transport calls C{resumeProducing} whenever it has
    sent everything it was given, and each call hands over one bounded chunk.
    With sendfile, the kernel copies file pages straight to the socket; the
    transport's own buffer is empty whenever we are called back (except the
    first call, which therefore uses the ordinary write path), and
    C{transport.startWriting()} asks for a callback once the socket can take
    more.
    """

    def __init__(self, proto, task, index, fd, offset, length):
        self.proto = proto
        self.task = task
        self.index = index
        self.length = length
        self.done = False
        self._fd = fd
        self._pos = offset
        self._left = length
        factory = self._factory = proto.factory
        self._limiter = factory.upload_limiter
        self._clock = factory.clock
        self._on_upload = factory.on_upload
        self._chunk = factory.chunk_size
        if self._limiter is not None and self._limiter.rate > 0:
            # Keep each limiter wait short so one slow piece does not stall
            # the connection's inactivity timer or hog the shared bucket.
            self._chunk = max(16 * 1024, min(self._chunk, self._limiter.rate // 8))
            self._sock = None
        else:
            self._limiter = None
            self._sock = _sendfile_socket(proto.transport) if factory.use_sendfile else None
        self._delayed = None
        self._first = True

    def start(self):
        transport = self.proto.transport
        transport.write(codec.encode_piece(codec.Piece(self.index, self.length)))
        if self._left == 0:
            self._finish()
            return
        transport.registerProducer(self, False)

    # IPullProducer
    def resumeProducing(self):
        if self.done or self._delayed is not None:
            return
        self.proto._timer.touch()
        try:
            if self._sock is not None and not self._first:
                self._send_file()
            else:
                # The first call comes from registerProducer, while the
                # header may still sit in the transport's buffer: only the
                # ordinary write path keeps the bytes in order.
                self._first = False
                self._send_chunk()
        except OSError as e:
            self.proto.log.warn(
                "aborting piece {index} to {peer}: {error}",
                index=self.index, peer=self.proto.peer_id, error=e)
            self.abort()

    def stopProducing(self):
        """The connection went away: give back what we hold."""
        self._cleanup()

    def _send_chunk(self):
        n = min(self._chunk, self._left)
        data = os.pread(self._fd, n, self._pos)
        if len(data) != n:
            raise OSError(f"data file ended {self._left - len(data)} bytes early")
        self._pos += n
        self._left -= n
        delay = self._limiter.consume(n) if self._limiter is not None else 0
        if delay > 0:
            self._delayed = self._clock.callLater(delay, self._write_delayed, data)
        else:
            self._write(data)

    def _write_delayed(self, data):
        self._delayed = None
        if not self.done:
            self.proto._timer.touch()
            self._write(data)

    def _write(self, data):
        self.proto.transport.write(data)
        self._on_upload(len(data))
        if self._left == 0:
            self._finish()

    def _send_file(self):
        fileno = self._sock.fileno()
        budget = SENDFILE_BUDGET
        sent = 0
        try:
            while self._left and sent < budget:
                try:
                    n = os.sendfile(fileno, self._fd, self._pos, min(self._left, budget - sent))
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                if n == 0:
                    raise OSError(f"data file ended {self._left} bytes early")
                self._pos += n
                self._left -= n
                sent += n
        finally:
            if sent:
                self._on_upload(sent)
        if self._left:
            # Our callback comes from the transport's doWrite once the socket
            # is writable: its buffer is empty, so it calls resumeProducing.
            self.proto.transport.startWriting()
        else:
            self._finish()

    def _cleanup(self):
        """Release the file, the upload slot and the pin, once."""
        if self.done:
            return False
        self.done = True
        if self._delayed is not None:
            if self._delayed.active():
                self._delayed.cancel()
            self._delayed = None
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._factory.active_uploads -= 1
        self.task.unpin()
        return True

    def _finish(self):
        if self._cleanup():
            if getattr(self.proto.transport, "producer", None) is self:
                self.proto.transport.unregisterProducer()
            self.proto._upload_finished(self)

    def abort(self):
        """Stop mid-piece: the framing cannot recover, so the connection goes."""
        if self._cleanup():
            transport = self.proto.transport
            if getattr(transport, "producer", None) is self:
                transport.unregisterProducer()
            self.proto._abort_connection()


class PieceServerProtocol(Protocol):
    """One client connection: handshake, then a queue of piece requests."""

    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.task_id = None
        self.peer_id = None
        self.version = None
        self._decoder = codec.FrameDecoder(max_frame=factory.max_frame, max_piece=0)
        self._queue = deque()
        self._current = None
        self._closing = False
        self._draining = False
        self._timer = IdleTimer(factory.clock, self._timed_out)
        self.lost = defer.Deferred()

    # -- connection events --------------------------------------------------

    def connectionMade(self):
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            try:
                nodelay(True)
            except OSError:
                pass
        self._timer.start(self.factory.handshake_timeout)

    def connectionLost(self, reason):
        self._closing = True
        self._timer.stop()
        self._queue.clear()
        if self._current is not None:
            self._current.stopProducing()
            self._current = None
        self.factory._connection_lost(self)
        self.lost.callback(None)

    def dataReceived(self, data):
        if self._closing:
            return
        self._timer.touch()
        try:
            for msg in self._decoder.feed(data):
                self._dispatch(msg)
                if self._closing:
                    return
        except codec.ProtocolError as e:
            self.log.info("dropping piece connection from {addr}: {error}",
                          addr=self._addr(), error=e)
            self._abort_connection()

    def _addr(self):
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    # -- messages -------------------------------------------------------------

    def _dispatch(self, msg):
        kind = type(msg)
        if self.task_id is None:
            if kind is not codec.Hello:
                raise codec.ProtocolError(f"expected Hello, got {kind.__name__}")
            self._hello(msg)
        elif kind is codec.Request:
            if len(self._queue) >= self.factory.max_queue:
                raise codec.ProtocolError(
                    f"more than {self.factory.max_queue} requests queued")
            self._queue.append(msg.index)
            if self._current is None:
                self._serve_next()
        elif kind is codec.Cancel:
            self._cancel(msg.index)
        else:
            raise codec.ProtocolError(f"unexpected {kind.__name__} from a client")

    def _hello(self, msg):
        factory = self.factory
        if msg.version < codec.MIN_VERSION:
            return self._refuse(codec.BAD_REQUEST, f"unsupported protocol version {msg.version}")
        if factory.shutting_down:
            return self._refuse(codec.SHUTTING_DOWN, "node is shutting down")
        if factory.store.get(msg.task_id) is None:
            return self._refuse(codec.NOT_FOUND, "task not held")
        self.task_id = msg.task_id
        self.peer_id = msg.peer_id
        self.version = min(msg.version, codec.VERSION)
        self.transport.write(codec.encode_hello_ack(codec.HelloAck(self.version)))
        self._timer.start(factory.idle_timeout)

    def _refuse(self, code, message):
        self.transport.write(codec.encode_error(codec.Error(None, code, message)))
        self._close()

    def _cancel(self, index):
        current = self._current
        if current is not None and current.index == index:
            # The header promised `length` bytes: stopping means closing.
            self._current = None
            current.abort()
            return
        try:
            self._queue.remove(index)
        except ValueError:
            pass  # already answered: the client will discard it

    # -- serving ------------------------------------------------------------

    def _serve_next(self):
        factory = self.factory
        while self._current is None and self._queue and not self._closing:
            index = self._queue.popleft()
            if self._draining:
                self._send_error(index, codec.SHUTTING_DOWN, "node is shutting down")
                continue
            task = factory.store.get(self.task_id)
            if task is None:
                self._send_error(index, codec.NOT_FOUND, "task no longer held")
                continue
            if index >= task.piece_count or not task.has(index):
                self._send_error(index, codec.NOT_FOUND, "piece not held")
                continue
            if factory.max_uploads and factory.active_uploads >= factory.max_uploads:
                self._send_error(index, codec.BUSY, "too many uploads")
                continue
            offset, length = task.piece_range(index)
            try:
                fd = os.open(task.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                self.log.error("cannot open {path} for task {task}: {error}",
                               path=task.path, task=self.task_id, error=e)
                self._send_error(index, codec.INTERNAL, "cannot read piece")
                continue
            task.pin()
            factory.active_uploads += 1
            upload = self._current = _PieceUpload(self, task, index, fd, offset, length)
            upload.start()
        if self._current is None:
            if self._draining and not self._closing:
                self._close()
            else:
                self._timer.touch()

    def _upload_finished(self, upload):
        if self._current is upload:
            self._current = None
            self._timer.touch()
            self._serve_next()

    def _send_error(self, index, code, message):
        self.transport.write(codec.encode_error(codec.Error(index, code, message)))

    # -- closing --------------------------------------------------------------

    def _close(self):
        """Close after what is already written has been sent."""
        self._closing = True
        self._timer.stop()
        self.transport.loseConnection()

    def _abort_connection(self):
        self._closing = True
        self._timer.stop()
        if self._current is not None:
            current, self._current = self._current, None
            current.abort()
        self.transport.abortConnection()

    def _timed_out(self):
        if self.task_id is None:
            self.log.info("no Hello from {addr} in time", addr=self._addr())
        else:
            self.log.info("piece connection from {peer} idle or stalled, closing", peer=self.peer_id)
        if self._current is not None:
            self._abort_connection()
        else:
            self._close()

    def drain(self):
        """Finish the piece being sent, answer the rest SHUTTING_DOWN, close."""
        if self._closing:
            return
        self._draining = True
        if self.task_id is None:
            self._refuse(codec.SHUTTING_DOWN, "node is shutting down")
        elif self._current is None:
            self._serve_next()


class PieceServerFactory(Factory):
    """Builds piece server connections for one store.

    @param store: a PieceStore: C{get(task_id)} -> TaskFile (C{has},
        C{piece_range}, C{piece_count}, C{path}, C{pin}, C{unpin}) or None.
    @param clock: IReactorTime for timeouts and the upload limiter's waits.
    @param upload_limiter: optional TokenBucket shared by all uploads.
    @param max_uploads: pieces streamed at once over all connections; past
        it a request is answered BUSY. 0 = unlimited.
    @param on_upload: called with the number of piece bytes handed to the
        network, as they go (metrics).
    """

    protocol = PieceServerProtocol
    noisy = False
    log = Logger()

    def __init__(self, store, clock, upload_limiter=None, max_uploads=8,
                 on_upload=lambda nbytes: None, idle_timeout=120.0,
                 handshake_timeout=30.0, max_connections=1024,
                 chunk_size=CHUNK_SIZE, use_sendfile=True,
                 max_frame=codec.MAX_FRAME, max_queue=MAX_QUEUE):
        self.store = store
        self.clock = clock
        self.upload_limiter = upload_limiter
        self.max_uploads = max_uploads
        self.on_upload = on_upload
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.chunk_size = chunk_size
        self.use_sendfile = use_sendfile
        self.max_frame = max_frame
        self.max_queue = max_queue
        self.active_uploads = 0
        self.shutting_down = False
        self.connections = set()

    def buildProtocol(self, addr):
        if self.max_connections and len(self.connections) >= self.max_connections:
            self.log.warn("refusing piece connection from {addr}: {n} open",
                          addr=addr, n=len(self.connections))
            return None
        proto = self.protocol(self)
        self.connections.add(proto)
        return proto

    def _connection_lost(self, proto):
        self.connections.discard(proto)

    def close(self, grace=5.0):
        """Stop serving: new handshakes and queued requests are answered
        SHUTTING_DOWN, pieces already streaming get C{grace} seconds to
        finish, then every connection is dropped.

        @return: a Deferred that fires once every connection is gone.
        """
        self.shutting_down = True
        protos = list(self.connections)
        waits = [p.lost for p in protos]
        for p in protos:
            p.drain()
        if not waits:
            return defer.succeed(None)
        done = defer.DeferredList(waits)
        call = self.clock.callLater(grace, self._abort_all)
        done.addBoth(lambda _: call.cancel() if call.active() else None)
        return done.addCallback(lambda _: None)

    def _abort_all(self):
        for p in list(self.connections):
            p._abort_connection()

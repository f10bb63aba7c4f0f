"""The piece server: serves the pieces a node holds to other peers.

One connection is bound to one task by its Hello. Requests are queued and
answered strictly in order, one piece at a time: each is admitted or answered
with an Error (not held, busy, shutting down), then streamed by a
L{dragonfly.protocol.upload.PieceUpload}. The factory holds the limits shared
by every connection and drains them all on close. What the server reads
pieces through is L{dragonfly.interfaces.IServedStore}. A Hello is accepted
only with an admission token that the factory's L{dragonfly.interfaces.IAdmission}
verifies for its task and peer (once per connection; FORBIDDEN otherwise,
before anything about the task is told).

Limits against hostile clients (any host that reaches the port):
  - a handshake deadline that data cannot extend: the Hello must arrive
    within C{handshake_timeout} of the connection, however its bytes trickle
    in; after it, only complete messages count as activity;
  - C{max_connections} over all addresses and C{max_per_address} from one
    source address;
  - a stall check on a periodic tick (not per chunk): an upload that moved
    fewer than C{min_upload_rate} bytes/s over a whole C{stall_interval}
    (while not waiting for the upload limiter) loses its slot and its
    connection, so clients that never read cannot keep others BUSY;
  - when every upload slot is taken, a request waits up to C{slot_wait}
    seconds for one (BUSY after that), and a freed slot goes to the waiting
    connection whose source address holds the fewest uploads: one address
    cannot starve the others.
"""
import os
from collections import deque

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from dragonfly.protocol import codec
from dragonfly.protocol.upload import CHUNK_SIZE, PieceUpload
from dragonfly.protocol.uplink import UplinkPacer
from dragonfly.runtime.idle import IdleTimer

#: A client may have at most this many requests queued on one connection.
MAX_QUEUE = 64
#: Open piece connections from one source address (hosts behind one NAT share it).
MAX_PER_ADDRESS = 64
#: Seconds a request may wait for an upload slot before it is answered BUSY.
#: Under the clients' first-byte deadline (3 s), so a busy server is told
#: apart from a tarpit: BUSY only rests a source a moment at the scheduler,
#: a missed deadline counts against it.
SLOT_WAIT = 2.0
#: Seconds between stall checks, and the slowest acceptable reader (bytes/s):
#: a reader that takes less than 16 KiB/s over a whole interval loses its slot.
STALL_INTERVAL = 5.0
MIN_UPLOAD_RATE = 16 * 1024


def _count_down(counts, key):
    """One less C{key} in C{counts} (a dict of positive counts)."""
    n = counts.get(key, 1) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class PieceServerProtocol(Protocol):
    """One client connection: handshake, then a queue of piece requests."""

    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.source_host = None
        self.kernel_paced = False   # the running upload's socket paced by the kernel
        self.task_id = None
        self.peer_id = None
        self.version = None
        self._decoder = codec.FrameDecoder(max_frame=factory.max_frame, max_piece=0)
        self._queue = deque()
        self._current = None
        self._closing = False
        self._draining = False
        self.timer = IdleTimer(factory.clock, self._timed_out)
        self.lost = defer.Deferred()

    # -- connection events --------------------------------------------------

    def connectionMade(self):
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            try:
                nodelay(True)
            except OSError:
                pass
        self.timer.start(self.factory.handshake_timeout)

    def connectionLost(self, reason):
        self._closing = True
        self.timer.stop()
        self._queue.clear()
        if self._current is not None:
            self._current.stopProducing()
            self._current = None
        self.factory._connection_lost(self)
        if self.peer_id is not None and not self.factory.shutting_down:
            self.factory.on_lost(self.task_id, self.peer_id)
        self.lost.callback(None)

    def dataReceived(self, data):
        if self._closing:
            return
        try:
            for msg in self._decoder.feed(data):
                self._dispatch(msg)
                if self._closing:
                    return
        except codec.ProtocolError as e:
            self.log.info("dropping piece connection from {addr}: {error}",
                          addr=self._addr(), error=e)
            self.abort_connection()

    def _addr(self):
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    # -- messages -------------------------------------------------------------

    def _dispatch(self, msg):
        kind = type(msg)
        if self.task_id is None:
            # The handshake deadline stands: data before the Hello never
            # extends it. After the Hello, a complete message is activity.
            if kind is not codec.Hello:
                raise codec.ProtocolError(f"expected Hello, got {kind.__name__}")
            self._hello(msg)
            return
        self.timer.touch()
        if kind is codec.Request:
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
        if not factory.admission.verify(msg.token, msg.task_id, msg.peer_id):
            self.log.info("refusing {peer} at {addr}: not admitted to task {task}",
                          peer=msg.peer_id, addr=self._addr(), task=msg.task_id)
            return self._refuse(codec.FORBIDDEN, "not admitted to this task")
        if factory.store.get(msg.task_id) is None:
            return self._refuse(codec.NOT_FOUND, "task not held")
        self.task_id = msg.task_id
        self.peer_id = msg.peer_id
        self.version = min(msg.version, codec.VERSION)
        self.transport.write(codec.encode_hello_ack(codec.HelloAck(self.version)))
        self.timer.start(factory.idle_timeout)

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

    def _refusal(self, task, index):
        """C{(code, message)} when piece C{index} of C{task} (None: no longer
        held) may not be served now, else None: the serving policy."""
        factory = self.factory
        if self._draining:
            return codec.SHUTTING_DOWN, "node is shutting down"
        if task is None:
            return codec.NOT_FOUND, "task no longer held"
        if index >= task.piece_count or not task.has(index):
            return codec.NOT_FOUND, "piece not held"
        if factory.max_uploads and factory.active_uploads >= factory.max_uploads:
            return codec.BUSY, "too many uploads"
        return None

    def _serve_next(self):
        factory = self.factory
        while self._current is None and self._queue and not self._closing:
            index = self._queue.popleft()
            task = None if self._draining else factory.store.get(self.task_id)
            refusal = self._refusal(task, index)
            if refusal is not None:
                if refusal[0] == codec.BUSY and factory.park(self):
                    self._queue.appendleft(index)   # served when a slot frees
                    return
                self._send_error(index, *refusal)
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
            factory.upload_started(self)
            upload = self._current = PieceUpload(self, task, index, fd, offset, length)
            upload.start()
        if self._current is None:
            if self._draining and not self._closing:
                self._close()
            else:
                self.timer.touch()

    def upload_finished(self, upload):
        """C{upload} sent its last byte: serve the next request."""
        if self._current is upload:
            self._current = None
            self.timer.touch()
            self._serve_next()

    def _send_error(self, index, code, message):
        self.transport.write(codec.encode_error(codec.Error(index, code, message)))

    # -- closing --------------------------------------------------------------

    def _close(self):
        """Close after what is already written has been sent."""
        self._closing = True
        self.timer.stop()
        self.transport.loseConnection()

    def abort_connection(self):
        """Drop the connection now (mid-piece framing cannot recover)."""
        self._closing = True
        self.timer.stop()
        if self._current is not None:
            current, self._current = self._current, None
            current.abort()
        self.transport.abortConnection()

    def slot_free(self):
        """The factory gives this (parked) connection a free upload slot."""
        if not self._closing and self._current is None:
            self._serve_next()

    def slot_wait_over(self):
        """Parked too long: answer the waiting request BUSY, go on with the rest."""
        if self._closing or self._current is not None or not self._queue:
            return
        self._send_error(self._queue.popleft(), codec.BUSY, "too many uploads")
        self._serve_next()

    def check_stall(self, min_bytes):
        """The stall tick: drop this connection if its upload is stalled."""
        upload = self._current
        if upload is not None and upload.stalled(min_bytes):
            self.log.info("piece {index} to {peer} at {addr} stalled (reader too slow); "
                          "dropping the connection", index=upload.index, peer=self.peer_id,
                          addr=self._addr())
            self.abort_connection()

    def _timed_out(self):
        if self.task_id is None:
            self.log.info("no Hello from {addr} in time", addr=self._addr())
        else:
            self.log.info("piece connection from {peer} idle or stalled, closing", peer=self.peer_id)
        if self._current is not None:
            self.abort_connection()
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

    @param store: an L{IServedStore}: C{get(task_id)} -> L{IServedTask} or None.
    @param admission: an L{IAdmission}: who may be served which task (required).
    @param clock: IReactorTime for timeouts and the upload limiter's waits.
    @param upload_limiter: optional TokenBucket shared by all uploads.
    @param kernel_pacing: with an upload limit, have the kernel pace each
        upload's socket at the limit shared by the uploads running
        (L{dragonfly.protocol.uplink}), the token bucket only where it cannot.
    @param max_uploads: pieces streamed at once over all connections; past
        it a request is answered BUSY. 0 = unlimited.
    @param on_upload: called with the number of piece bytes handed to the
        network, as they go (metrics).
    @param max_connections: open connections over all addresses (0: no cap).
    @param max_per_address: open connections from one source address (0: no cap).
    @param stall_interval: seconds between stall checks of the uploads (0: none).
    @param min_upload_rate: bytes/s below which an upload is stalled (with an
        upload limiter, at most half the limiter's rate shared by the uploads).
    @param slot_wait: seconds a request may wait for an upload slot before
        BUSY (0: BUSY at once).
    @param on_lost: called with C{(task_id, peer_id)} when an admitted
        client's connection ends, unless the server is shutting down (the
        supernode checks whether that peer died).
    """

    protocol = PieceServerProtocol
    noisy = False
    log = Logger()

    def __init__(self, store, clock, upload_limiter=None, max_uploads=8,
                 on_upload=lambda nbytes: None, idle_timeout=120.0,
                 handshake_timeout=30.0, max_connections=1024,
                 chunk_size=CHUNK_SIZE, use_sendfile=True,
                 max_frame=codec.MAX_FRAME, max_queue=MAX_QUEUE,
                 max_per_address=MAX_PER_ADDRESS, stall_interval=STALL_INTERVAL,
                 min_upload_rate=MIN_UPLOAD_RATE, slot_wait=SLOT_WAIT, kernel_pacing=True, *,
                 admission, on_lost=lambda task_id, peer_id: None):
        self.store = store
        self.on_lost = on_lost
        self.admission = admission
        self.clock = clock
        self.upload_limiter = upload_limiter
        rate = getattr(upload_limiter, "rate", 0)
        self.pacer = UplinkPacer(rate) if kernel_pacing and rate > 0 else None
        self.max_uploads = max_uploads
        self.on_upload = on_upload
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.chunk_size = chunk_size
        self.use_sendfile = use_sendfile
        self.max_frame = max_frame
        self.max_queue = max_queue
        self.max_per_address = max_per_address
        self.stall_interval = stall_interval
        self.min_upload_rate = min_upload_rate
        self.slot_wait = slot_wait
        self.active_uploads = 0
        self.shutting_down = False
        self.connections = set()
        self._per_address = {}
        self._uploads_by_address = {}
        self._waiting = {}      # parked protocol -> deadline, oldest first
        self._stall_call = None
        self._wait_call = None  # the next slot-wait deadline check

    def buildProtocol(self, addr):
        if self.max_connections and len(self.connections) >= self.max_connections:
            self.log.warn("refusing piece connection from {addr}: {n} open",
                          addr=addr, n=len(self.connections))
            return None
        host = getattr(addr, "host", None)
        n = self._per_address.get(host, 0)
        if self.max_per_address and n >= self.max_per_address:
            self.log.warn("refusing piece connection from {host}: {n} open from that address",
                          host=host, n=n)
            return None
        proto = self.protocol(self)
        proto.source_host = host
        self._per_address[host] = n + 1
        self.connections.add(proto)
        return proto

    def _connection_lost(self, proto):
        self._waiting.pop(proto, None)
        if proto in self.connections:
            self.connections.discard(proto)
            _count_down(self._per_address, proto.source_host)

    # -- upload slots -------------------------------------------------------------

    def upload_started(self, proto):
        """C{proto} took an upload slot."""
        self.active_uploads += 1
        proto.kernel_paced = self.pacer is not None and self.pacer.add(proto, proto.transport)
        host = proto.source_host
        self._uploads_by_address[host] = self._uploads_by_address.get(host, 0) + 1
        self.watch_uploads()

    def upload_ended(self, proto):
        """C{proto} gave its upload slot back: a waiting connection gets it."""
        self.active_uploads -= 1
        if self.pacer is not None:
            self.pacer.remove(proto)
        _count_down(self._uploads_by_address, proto.source_host)
        if self._waiting and not self.shutting_down:
            by_address = self._uploads_by_address
            nxt = min(self._waiting, key=lambda p: by_address.get(p.source_host, 0))
            del self._waiting[nxt]
            nxt.slot_free()
        if not self.active_uploads:
            self.uploads_idle()

    def park(self, proto):
        """C{proto}'s next request waits for a slot: True if it may (slot_wait)."""
        if not self.slot_wait or not self.stall_interval or self.shutting_down:
            return False
        self._waiting.setdefault(proto, self.clock.seconds() + self.slot_wait)
        self.watch_uploads()
        if self._wait_call is None:
            self._wait_call = self.clock.callLater(self.slot_wait, self._wait_tick)
        return True

    def _wait_tick(self):
        """A slot-wait deadline is due: answer BUSY to whoever waited that long
        (on time, not at the next stall tick: under the clients' first-byte
        deadline)."""
        self._wait_call = None
        try:
            self._expire_waiting()
        except Exception:
            self.log.failure("expiring slot waits")
        if self._waiting and not self.shutting_down:
            delay = max(0.01, min(self._waiting.values()) - self.clock.seconds())
            self._wait_call = self.clock.callLater(delay, self._wait_tick)

    def _expire_waiting(self):
        now = self.clock.seconds()
        for proto, deadline in list(self._waiting.items()):
            if deadline <= now and self._waiting.get(proto) == deadline:
                del self._waiting[proto]
                proto.slot_wait_over()

    # -- stalled uploads ----------------------------------------------------------

    def watch_uploads(self):
        """An upload started: make sure the stall tick runs while any does."""
        if self._stall_call is None and self.stall_interval:
            self._stall_call = self.clock.callLater(self.stall_interval, self._stall_tick)

    def _stall_min_bytes(self):
        rate = self.min_upload_rate
        limiter = self.upload_limiter
        if limiter is not None and getattr(limiter, "rate", 0) > 0:
            rate = min(rate, limiter.rate / (2 * max(1, self.active_uploads)))
        return rate * self.stall_interval

    def _stall_tick(self):
        self._stall_call = None
        try:
            min_bytes = self._stall_min_bytes()
            for p in list(self.connections):
                p.check_stall(min_bytes)
            self._expire_waiting()
        except Exception:
            self.log.failure("checking uploads for stalls")
        if self.active_uploads > 0 or self._waiting:
            self.watch_uploads()

    def uploads_idle(self):
        """The last upload ended: no stall tick until the next one starts."""
        if not self._waiting:
            self._stop_stall_tick()

    def _stop_stall_tick(self):
        if self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None

    def close(self, grace=5.0):
        """Stop serving: new handshakes and queued requests are answered
        SHUTTING_DOWN, pieces already streaming get C{grace} seconds to
        finish, then every connection is dropped.

        @return: a Deferred that fires once every connection is gone.
        """
        self.shutting_down = True
        protos = list(self.connections)
        self._waiting.clear()
        self._stop_stall_tick()
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None
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
            p.abort_connection()

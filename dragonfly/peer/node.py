"""The peer's download engine: join a task's swarm, fetch verified pieces, serve them.

A L{PeerNode} downloads a task (one file) like this:

 1. If the store already holds the whole task, it is returned at once.
 2. Register with a supernode (C{POST /api/v1/tasks}); a 307 C{{"owner"}}
    sends us to the supernode owning the task; an unreachable or failing
    supernode makes us try the next one in the list.
 3. Loop on C{POST /api/v1/tasks/<id>/schedule}: each call reports the pieces
    we got (C{have}) and the sources that failed us (C{failed}) and asks for
    C{want} more assignments (free fetch slots plus a small queue); the
    supernode long-polls when it has nothing yet.
 4. Fetch assigned pieces concurrently, each from its assigned source, through
    the L{dragonfly.protocol.client.PieceClientPool}. A piece's digest (L{dragonfly.digest}) is
    checked *before* it is written; a mismatch is never written and is
    reported as a failure of that source, so the scheduler reassigns it.
 5. When every piece is held the download is finished; the piece server keeps
    serving the task from the store.

When no supernode answers, or scheduling keeps failing, the file is fetched
from its origin directly and streamed into the store ("back-to-source"),
unless the caller forbade it. A supernode verdict about the URL itself (the
origin answered 4xx) is final: the origin is not asked again.
"""
import json
import os
import re
import tempfile

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dragonfly.digest import ALGORITHM as DIGEST_ALGORITHM
from dragonfly.digest import piece_digest
from dragonfly.httpio import describe as _describe
from dragonfly.interfaces import Assignment, IDownloader, PeerInfo
from dragonfly.storage.cutter import PieceCutter
from dragonfly.storage.errors import DigestMismatch
from dragonfly.taskid import task_id_for_url, validate_task_id

__all__ = ["PeerNode", "DownloadError", "StreamStopped", "DEFAULT_PIECE_SIZE"]

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
#: Piece bytes one download may hold in memory (being received or waiting for
#: the disk): the fetches in flight are capped at max_buffered // piece size
#: (4 with 4 MiB pieces). Measured on a 4 GiB download: peer peak RSS 81 MiB
#: (96 MiB with 32 MiB), and no throughput change on loopback.
DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024
_JSON_CAP = 1024 * 1024
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


class DownloadError(Exception):
    """A download failed; C{str()} is a one-line reason fit for a user."""


class StreamStopped(Exception):
    """The consumer of L{PeerNode.stream} stopped reading."""


class _SupernodeUnavailable(Exception):
    """No supernode could (or would any longer) schedule this task: go to the origin."""


class _NotRegistered(Exception):
    """The supernode forgot us (404 on schedule): register again."""


def _hostport_url(addr, path):
    host, port = addr
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


class _Signal:
    """Wakes every waiter on C{fire()}; C{wait(timeout)} also wakes after C{timeout}."""

    def __init__(self, clock):
        self._clock = clock
        self._waiters = []

    def wait(self, timeout=None):
        d = Deferred(lambda d: self._drop(d))
        self._waiters.append(d)
        if timeout is not None:
            call = self._clock.callLater(max(0.0, timeout), self._timeout, d)
            d.addBoth(self._cancel_call, call)
        return d

    def _cancel_call(self, result, call):
        if call.active():
            call.cancel()
        return result

    def _drop(self, d):
        if d in self._waiters:
            self._waiters.remove(d)

    def _timeout(self, d):
        if d in self._waiters:
            self._waiters.remove(d)
            d.callback(False)

    def fire(self, value=True):
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(value)

    def fail(self, failure):
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)


def _sleep(clock, seconds):
    d = Deferred(lambda d: call.cancel())
    call = clock.callLater(seconds, d.callback, None)
    return d


class _Download:
    """One task being downloaded, shared by every caller asking for it."""

    def __init__(self, task_id, url, headers, pattern, back_source):
        self.task_id = task_id
        self.url = url
        self.headers = headers
        self.pattern = pattern
        self.back_source = back_source
        self.tf = None
        self.pinned = False
        self.progress = []       # on_progress callables
        self.ready = []          # on_start callables / Deferreds waiting for the TaskFile
        self.callers = []        # Deferreds handed to download() callers
        self.streams = 0         # active stream() users
        self.readers = set()     # their _OrderedProducers: the schedule cursor
        self.on_failure = []     # called with the Failure when the download fails
        self.run = None          # the Deferred of the coroutine
        self.result = None
        self.sources = {"peer": 0, "supernode": 0, "origin": 0}


@implementer(IDownloader)
class PeerNode:
    """Downloads tasks through the swarm (or from their origin) into a piece store.

    @param reactor: IReactorTime (clock for timeouts and polling).
    @param store: a L{dragonfly.storage.store.PieceStore}.
    @param supernodes: [(host, port), ...] tried in order.
    @param http_client: a treq-like HTTPClient for the supernode API (and the
        origin, when C{origin} is None).
    @param piece_pool: an L{IPieceSource} (C{fetch(source, task_id, index, length)}).
    @param peer_info: this node's L{PeerInfo}; the attribute may be replaced
        (the service sets it once the piece port is bound).
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param runner: an L{IRunner} for hashing.
    @param concurrency: pieces fetched at once.
    @param queue_depth: assignments asked for beyond the free fetch slots,
        kept until a slot frees (0: none; each holds a slot of its source).
    @param max_buffered: piece bytes a download may hold in memory; caps the
        fetches in flight at C{max_buffered // piece size} (0 = no cap).
    @param origin: an L{IOrigin} for back-to-source; by default an
        L{dragonfly.origin.OriginClient} over C{http_client}.
    """

    log = Logger()

    def __init__(self, reactor, store, supernodes, http_client, piece_pool, peer_info,
                 metrics, runner, concurrency=8, origin=None, *, queue_depth=0,
                 piece_size=DEFAULT_PIECE_SIZE, schedule_wait=20.0, busy_wait=2.0,
                 min_poll_interval=0.5, api_timeout=15.0, register_timeout=120.0,
                 stall_timeout=120.0, piece_timeout=120.0, schedule_retries=3,
                 max_piece_failures=8, max_registrations=4, spool_dir=None,
                 max_buffered=DEFAULT_MAX_BUFFERED):
        self._clock = reactor
        self._store = store
        self.supernodes = list(supernodes)
        self._http = http_client
        self._pool = piece_pool
        self.peer_info = peer_info
        self._metrics = metrics
        self._runner = runner
        self.concurrency = max(1, int(concurrency))
        self.max_buffered = max(0, int(max_buffered))
        self._origin = origin
        self.queue_depth = queue_depth
        self.piece_size = piece_size
        self.schedule_wait = schedule_wait
        self.busy_wait = busy_wait
        self.min_poll_interval = min_poll_interval
        self.api_timeout = api_timeout
        self.register_timeout = register_timeout
        self.stall_timeout = stall_timeout
        self.piece_timeout = piece_timeout
        self.schedule_retries = schedule_retries
        self.max_piece_failures = max_piece_failures
        self.max_registrations = max_registrations
        self.spool_dir = spool_dir
        self._downloads = {}
        self._piece_signals = {}
        self._joined = {}          # task_id -> supernode (host, port) we are a member at
        self._preferred = 0        # index of the supernode that answered last
        self._stopping = False

    # ------------------------------------------------------------------ public

    def download(self, url, headers=None, task_id=None, pattern="p2p", back_source=True,
                 on_progress=None, on_start=None):
        """Fetch C{url} into the store; a Deferred firing with its TaskFile.

        @param on_progress: called with C{(completed_bytes, length)} as pieces land.
        @param on_start: called with the TaskFile once its length is known
            (before any piece arrives; use it with L{stream}).
        Fails with L{DownloadError}. Cancelling the Deferred detaches this
        caller; the download stops when no caller or stream is left.
        """
        try:
            if pattern not in ("p2p", "source"):
                raise DownloadError(f"unknown pattern {pattern!r} (p2p or source)")
            if not isinstance(url, str) or not re.match(r"\Ahttps?://[^/\s]", url, re.I):
                raise DownloadError(f"not an http(s) URL: {url!r}")
            headers = dict(headers or {})
            for k, v in headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise DownloadError("headers must map strings to strings")
            if task_id is None:
                task_id = task_id_for_url(url)
            try:
                validate_task_id(task_id)
            except ValueError as e:
                raise DownloadError(str(e))
            if self._stopping:
                raise DownloadError("peer is shutting down")
        except DownloadError as e:
            return _failed(e)

        dl = self._downloads.get(task_id)
        if dl is None:
            tf = self._store.get(task_id)
            if tf is not None and tf.is_complete:
                tf.touch()
                self._call_progress(on_progress, tf.length, tf.length)
                self._call_start(on_start, tf)
                return succeed(tf)
            dl = _Download(task_id, url, headers, pattern, back_source)
            self._downloads[task_id] = dl
            self._add_caller_hooks(dl, on_progress, on_start)
            d = self._attach(dl, on_progress, on_start)
            dl.run = Deferred.fromCoroutine(self._run(dl))
            dl.run.addBoth(self._finished, dl)
            return d
        self._add_caller_hooks(dl, on_progress, on_start)
        return self._attach(dl, on_progress, on_start)

    def active(self):
        """Task ids being downloaded now."""
        return list(self._downloads)

    def wait_task_file(self, task_id):
        """A Deferred TaskFile once its length is known (held or downloading)."""
        dl = self._downloads.get(task_id)
        if dl is not None:
            if dl.tf is not None:
                return succeed(dl.tf)
            d = Deferred()
            dl.ready.append(d)
            return d
        tf = self._store.get(task_id)
        if tf is not None and tf.is_complete:
            return succeed(tf)
        return _failed(DownloadError(f"task {task_id} is not held and not being downloaded"))

    def stream(self, task_file, consumer, start=0, end=None):
        """Write the task's bytes [start, end) to C{consumer} in order, as pieces arrive.

        Registers a push producer with C{consumer} (bounded chunks read through
        the runner; honours pauseProducing), unregisters it at the end. Returns a Deferred firing when the last byte was written, failing
        with L{DownloadError} when the download fails before, or
        L{StreamStopped} when the consumer stopped us. It does not call
        C{finish()} on the consumer.
        """
        length = task_file.length
        end = length if end is None else min(end, length)
        if not 0 <= start <= end:
            return _failed(DownloadError(f"bad byte range {start}-{end} of {length}"))
        producer = _OrderedProducer(self, task_file, consumer, start, end)
        dl = self._downloads.get(task_file.task_id)
        if dl is not None:
            dl.streams += 1
            dl.readers.add(producer)
            dl.on_failure.append(producer.download_failed)
            producer.done.addBoth(self._stream_ended, dl, producer)
        producer.start()
        return producer.done

    def leave(self, task_id):
        """Tell the supernode we no longer serve C{task_id} (best effort)."""
        sn = self._joined.pop(task_id, None)
        if sn is None:
            return succeed(None)
        return self._leave(sn, task_id)

    async def heartbeat(self):
        """Tell each supernode which of its tasks we still hold and serve.

        Finished tasks stay in the swarm (we keep serving their pieces); a
        supernode drops peers it has not heard from, so the node calls this
        periodically. Tasks a supernode no longer knows us for are forgotten
        (we register again on the next download of them).
        """
        by_sn = {}
        for task_id, sn in self._joined.items():
            if task_id not in self._downloads and self._store.get(task_id) is not None:
                by_sn.setdefault(sn, []).append(task_id)
        for sn, tasks in by_sn.items():
            try:
                code, obj = await self._call(sn, "/api/v1/heartbeat", {
                    "peer_id": self.peer_info.peer_id, "tasks": tasks}, self.api_timeout)
            except Exception as e:
                self.log.info("heartbeat to {sn} failed: {why}",
                              sn=f"{sn[0]}:{sn[1]}", why=_describe(e))
                continue
            if code != 200:
                self.log.info("heartbeat to {sn} answered {code}", sn=f"{sn[0]}:{sn[1]}", code=code)
                continue
            for task_id in obj.get("unknown") or ():
                if self._joined.get(task_id) == sn:
                    del self._joined[task_id]

    def forget_missing(self):
        """Leave the swarms of tasks the store no longer holds (after GC)."""
        ds = []
        for task_id in list(self._joined):
            if task_id not in self._downloads and self._store.get(task_id) is None:
                ds.append(self.leave(task_id))
        return ds

    def shutdown(self):
        """Stop downloads and leave every swarm; a Deferred that fires when done."""
        from twisted.internet.defer import DeferredList

        self._stopping = True
        for dl in list(self._downloads.values()):
            if dl.run is not None and not dl.run.called:
                dl.run.cancel()
        ds = [self.leave(t) for t in list(self._joined)]
        return DeferredList(ds, consumeErrors=True).addCallback(lambda _: None)

    # --------------------------------------------------------------- callers

    def _add_caller_hooks(self, dl, on_progress, on_start):
        if on_progress is not None:
            dl.progress.append(on_progress)
            if dl.tf is not None:
                self._call_progress(on_progress, dl.tf.completed_bytes, dl.tf.length)
        if on_start is not None:
            if dl.tf is not None:
                self._call_start(on_start, dl.tf)
            else:
                dl.ready.append(on_start)

    def _attach(self, dl, on_progress=None, on_start=None):
        d = Deferred(lambda d: self._detach(dl, d, on_progress, on_start))
        dl.callers.append(d)
        return d

    def _detach(self, dl, d, on_progress=None, on_start=None):
        if d in dl.callers:
            dl.callers.remove(d)
        if on_progress is not None and on_progress in dl.progress:
            dl.progress.remove(on_progress)
        if on_start is not None and on_start in dl.ready:
            dl.ready.remove(on_start)
        if not dl.callers and not dl.streams and dl.run is not None and not dl.run.called:
            self.log.info("download of {task} abandoned by every caller", task=dl.task_id)
            dl.run.cancel()

    def _stream_ended(self, result, dl, producer):
        dl.streams -= 1
        dl.readers.discard(producer)
        if not dl.callers and not dl.streams and dl.run is not None and not dl.run.called:
            dl.run.cancel()
        return result

    def _finished(self, result, dl):
        self._downloads.pop(dl.task_id, None)
        if dl.pinned and dl.tf is not None:
            dl.tf.unpin()
            dl.pinned = False
        signal = self._piece_signals.pop(dl.task_id, None)
        if isinstance(result, Failure):
            if result.check(CancelledError):
                result = Failure(DownloadError("download cancelled"))
            elif not result.check(DownloadError):
                self.log.failure("download of {task} crashed", result, task=dl.task_id)
                result = Failure(DownloadError(f"internal error: {_describe(result)}"))
            self._metrics.downloads.labels(result="failed").inc()
            if signal is not None:
                signal.fail(result)
            for cb in dl.on_failure:
                cb(result)
            for d in dl.ready:
                if isinstance(d, Deferred):
                    d.errback(result)
        else:
            self._metrics.downloads.labels(result="ok").inc()
            if signal is not None:
                signal.fire()
        dl.ready = []
        callers, dl.callers = dl.callers, []
        for d in callers:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None  # a failure is handled: it went to every caller

    def _call_progress(self, cb, completed, length):
        if cb is None:
            return
        try:
            cb(completed, length)
        except Exception:
            self.log.failure("progress callback failed")

    def _call_start(self, cb, tf):
        if cb is None:
            return
        if isinstance(cb, Deferred):
            cb.callback(tf)
            return
        try:
            cb(tf)
        except Exception:
            self.log.failure("start callback failed")

    def _set_tf(self, dl, tf):
        if dl.tf is tf:
            return
        if dl.pinned and dl.tf is not None:
            dl.tf.unpin()
        dl.tf = tf
        tf.pin()
        dl.pinned = True
        ready, dl.ready = dl.ready, []
        for cb in ready:
            self._call_start(cb, tf)
        self._progress(dl)

    def _progress(self, dl):
        tf = dl.tf
        if tf is None:
            return
        for cb in list(dl.progress):
            self._call_progress(cb, tf.completed_bytes, tf.length)

    def _piece_arrived(self, dl, index, nbytes, source):
        self._metrics.download_bytes.labels(source=source).inc(nbytes)
        dl.sources[source] += nbytes
        sig = self._piece_signals.get(dl.task_id)
        if sig is not None:
            sig.fire()
        self._progress(dl)

    def _wait_piece(self, task_id):
        """A Deferred firing on the next piece of C{task_id} (or its download's end)."""
        if task_id not in self._downloads:
            return None
        sig = self._piece_signals.get(task_id)
        if sig is None:
            sig = self._piece_signals[task_id] = _Signal(self._clock)
        return sig.wait()

    # ---------------------------------------------------------------- the run

    async def _run(self, dl):
        if dl.pattern == "source":
            tf = await self._back_source(dl, "pattern=source")
        else:
            try:
                tf = await self._p2p(dl)
            except _SupernodeUnavailable as e:
                if not dl.back_source:
                    raise DownloadError(f"no supernode could serve the task ({e}) "
                                        "and back-to-source is disabled")
                self.log.warn("back to source for {task}: {why}", task=dl.task_id, why=str(e))
                tf = await self._back_source(dl, str(e))
        tf.touch()
        self.log.info("task {task} complete: {length} bytes (peer {p}, supernode {s}, origin {o})",
                      task=dl.task_id, length=tf.length, p=dl.sources["peer"],
                      s=dl.sources["supernode"], o=dl.sources["origin"])
        return tf

    # ------------------------------------------------------- supernode calls

    async def _call(self, addr, path, body, timeout):
        """POST JSON to a supernode: (status, object). Raises on transport trouble."""
        d = Deferred.fromCoroutine(self._call_inner(addr, path, body))
        d.addTimeout(timeout, self._clock)
        return await d

    async def _call_inner(self, addr, path, body):
        response = await self._http.post(
            _hostport_url(addr, path), json=body, allow_redirects=False, unbuffered=True,
            reactor=self._clock)
        from dragonfly.origin import collect_capped
        raw = await collect_capped(response, _JSON_CAP, "supernode answer")
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            obj = {"error": f"unparseable answer ({len(raw)} bytes)"}
        return response.code, obj

    async def _register(self, dl):
        """Register at a supernode: (addr, info). Raises DownloadError / _SupernodeUnavailable."""
        if not self.supernodes:
            raise _SupernodeUnavailable("no supernodes configured")
        body = {"task_id": dl.task_id, "url": dl.url, "headers": dl.headers,
                "peer": self.peer_info.to_json()}
        errors = []
        n = len(self.supernodes)
        order = [self.supernodes[(self._preferred + i) % n] for i in range(n)]
        for first in order:
            addr = first
            seen = set()
            while True:
                seen.add(addr)
                try:
                    code, obj = await self._call(addr, "/api/v1/tasks", body, self.register_timeout)
                except CancelledError:
                    raise
                except Exception as e:
                    errors.append(f"{addr[0]}:{addr[1]}: {_describe(e)}")
                    break
                if code == 200:
                    try:
                        info = self._parse_registration(obj)
                    except ValueError as e:
                        errors.append(f"{addr[0]}:{addr[1]}: bad registration answer: {e}")
                        break
                    if first in self.supernodes:
                        self._preferred = self.supernodes.index(first)
                    return addr, info
                if code == 307:
                    owner = obj.get("owner")
                    try:
                        from dragonfly.config import parse_hostport
                        nxt = parse_hostport(str(owner))
                    except Exception:
                        errors.append(f"{addr[0]}:{addr[1]}: redirect without a usable owner")
                        break
                    if nxt in seen or len(seen) > 4:
                        errors.append(f"{addr[0]}:{addr[1]}: redirect loop to {owner}")
                        break
                    self.log.debug("task {task} owned by {owner}", task=dl.task_id, owner=owner)
                    addr = nxt
                    continue
                error = str(obj.get("error") or f"HTTP {code}")
                status = obj.get("origin_status")
                if code == 502 and isinstance(status, int) and 400 <= status < 500 \
                        and status not in (408, 429):
                    raise DownloadError(f"origin answered {status}")
                if 400 <= code < 500 and code not in (404, 408, 429):
                    raise DownloadError(f"supernode refused the task: {error}")
                errors.append(f"{addr[0]}:{addr[1]}: {error}")
                break
        raise _SupernodeUnavailable("; ".join(errors) or "no supernode answered")

    @staticmethod
    def _parse_registration(obj):
        length, piece_size, count = obj.get("length"), obj.get("piece_size"), obj.get("piece_count")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError("length")
        if not isinstance(piece_size, int) or isinstance(piece_size, bool) or piece_size <= 0:
            raise ValueError("piece_size")
        expected = -(-length // piece_size)
        if count is not None and count != expected:
            raise ValueError("piece_count")
        algorithm = obj.get("piece_digest", "sha256")   # older supernodes: sha256
        if algorithm != DIGEST_ALGORITHM:
            raise ValueError(f"the supernode digests pieces with {algorithm!r}, this peer "
                             f"checks {DIGEST_ALGORITHM!r} (run the same dragonfly version)")
        seed = PeerInfo.from_json(obj.get("seed"))
        return {"length": length, "piece_size": piece_size, "piece_count": expected,
                "seed": seed}

    def _leave(self, addr, task_id):
        d = Deferred.fromCoroutine(self._call(
            addr, f"/api/v1/tasks/{task_id}/leave", {"peer_id": self.peer_info.peer_id},
            self.api_timeout))

        def failed(f):
            self.log.debug("leave {task} at {sn} failed: {why}", task=task_id,
                           sn=f"{addr[0]}:{addr[1]}", why=_describe(f))
        d.addCallbacks(lambda _: None, failed)
        return d

    # ------------------------------------------------------------- P2P path

    def _prepare(self, dl, info, url):
        tf = self._store.get(dl.task_id)
        if tf is None or tf.length != info["length"] or tf.piece_size != info["piece_size"]:
            if tf is not None:
                self.log.info("task {task} changed shape; starting it afresh", task=dl.task_id)
            tf = self._store.create(dl.task_id, url, info["length"], info["piece_size"])
        self._set_tf(dl, tf)
        return tf

    async def _p2p(self, dl):
        stale = self._joined.pop(dl.task_id, None)
        if stale is not None:
            # We finished this task once and the store has lost it since (GC,
            # a file edited through a hard link): the supernode still counts
            # us as holding its pieces until we leave.
            await self._leave(stale, dl.task_id)
        addr, info = await self._register(dl)
        tf = self._prepare(dl, info, dl.url)
        session = _Session(self, dl, tf, addr, info["seed"])
        self._joined[dl.task_id] = addr
        try:
            await session.run()
        except BaseException:
            # We failed or were stopped: stop being listed as a source.
            sn = self._joined.pop(dl.task_id, None)
            if sn is not None:
                self._leave(sn, dl.task_id)
            raise
        return tf

    # --------------------------------------------------------- back to source

    def _get_origin(self):
        if self._origin is None:
            from dragonfly.origin import OriginClient
            self._origin = OriginClient(self._clock, self._http, user_agent="dragonfly-peer")
        return self._origin

    async def _back_source(self, dl, why):
        from dragonfly.origin import OriginError

        origin = self._get_origin()
        tf = dl.tf
        if tf is None:
            tf = self._store.get(dl.task_id)
            if tf is not None and tf.is_complete:
                self._set_tf(dl, tf)
                return tf
        offset = 0
        if tf is not None and tf.completed_bytes:
            missing = [i for i in range(tf.piece_count) if not tf.has(i)]
            if not missing:
                self._set_tf(dl, tf)
                return tf
            offset = tf.piece_range(missing[0])[0]
        self.log.info("fetching {task} from its origin ({why})", task=dl.task_id, why=why)
        try:
            response = await origin.get(dl.url, dl.headers, offset=offset,
                                        etag=getattr(tf, "etag", None) if offset else None,
                                        last_modified=getattr(tf, "last_modified", None)
                                        if offset else None)
        except OriginError as e:
            raise DownloadError(e.message if e.status is not None else f"origin: {e.message}")
        except ValueError as e:
            raise DownloadError(f"bad request for the origin: {e}")
        if response.length is None:
            return await self._spool(dl, response)
        length = response.length
        if tf is None or tf.length != length:
            # Nothing usable held: start afresh. (Held pieces of a file of the
            # same length are kept; a 200 to our Range restarts the body at 0
            # and the writer skips the pieces already held.)
            tf = self._store.create(dl.task_id, dl.url, length,
                                    tf.piece_size if tf is not None else self.piece_size,
                                    etag=response.etag, last_modified=response.last_modified)
        self._set_tf(dl, tf)
        writer = _StoreWriter(self, dl, tf, response.offset)
        try:
            await response.deliver(writer)
            await writer.finish()
        except OriginError as e:
            raise DownloadError(f"origin: {e.message}")
        if not tf.is_complete:
            raise DownloadError(f"origin sent {length} bytes but pieces are missing")
        return tf

    async def _spool(self, dl, response):
        """Origin without a length: spool to a temp file, then cut into pieces."""
        spool_dir = self.spool_dir or getattr(self._store, "root", None) or tempfile.gettempdir()
        f = await self._runner.run(tempfile.TemporaryFile, dir=spool_dir, prefix=".spool-")
        try:
            spooler = _Spooler(f, self._runner, self, dl)
            try:
                total = await response.deliver(spooler)
            except Exception as e:
                raise DownloadError(f"origin: {_describe(e)}")
            tf = self._store.create(dl.task_id, dl.url, total, self.piece_size,
                                    etag=response.etag, last_modified=response.last_modified)
            self._set_tf(dl, tf)
            for index in range(tf.piece_count):
                off, n = tf.piece_range(index)
                data = await self._runner.run(_pread, f, off, n)
                digest = await self._runner.run(piece_digest, data)
                await tf.write_trusted_piece(index, data, digest)
                self._piece_arrived(dl, index, 0, "origin")
            return tf
        finally:
            await self._runner.run(f.close)


def _pread(f, offset, length):
    return os.pread(f.fileno(), length, offset)


def _failed(exc):
    from twisted.internet.defer import fail
    return fail(exc)


class _Spooler:
    """Consumer writing an origin body to a temp file through the runner."""

    def __init__(self, f, runner, node, dl):
        self._f = f
        self._runner = runner
        self._node = node
        self._dl = dl
        self._offset = 0

    def write(self, data):
        off = self._offset
        self._offset += len(data)
        self._node._metrics.download_bytes.labels(source="origin").inc(len(data))
        self._dl.sources["origin"] += len(data)
        return self._runner.run(os.pwrite, self._f.fileno(), data, off)


class _StoreWriter(PieceCutter):
    """Consumer cutting an origin body (starting at a piece boundary) into pieces.

    L{PieceCutter} keeps the window of piece writes bounded (the origin
    connection pauses at the limit); each piece is hashed and written by
    C{write_new_piece} in the runner. Pieces the store already holds are
    skipped, not rewritten.
    """

    def __init__(self, node, dl, tf, offset, max_writes=2):
        self._node = node
        self._dl = dl
        PieceCutter.__init__(self, tf, offset, max_writes)

    def misaligned(self, start):
        return DownloadError(f"origin resumed at {start}, not a piece boundary")

    def overflow(self):
        return DownloadError("origin sent more bytes than the task's length")

    def short(self, got):
        missing = self._tf.piece_count - self.index
        return DownloadError(f"origin body ended {missing} piece(s) short")

    def store_piece(self, index, chunks, size):
        if self._tf.has(index):
            # Already verified and held (resumed download).
            self._node._metrics.download_bytes.labels(source="origin").inc(size)
            return None
        return self._tf.write_new_piece(index, chunks).addCallback(
            lambda _: self._node._piece_arrived(self._dl, index, size, "origin"))


# ---------------------------------------------------------------------------
# The swarm session: registration done, schedule and fetch until complete.

#: Pieces a busy session gathers before a report-only call (see _Session._report_now).
REPORT_BATCH = 2


class _Session:
    log = Logger()

    def __init__(self, node, dl, tf, addr, seed):
        self.node = node
        self.dl = dl
        self.tf = tf
        self.addr = addr
        self.seed_id = seed.peer_id
        self.clock = node._clock
        self.in_flight = {}          # index -> (Assignment, Deferred)
        self.queue = []              # Assignments not started yet
        self.have = list(tf.completed())
        self.failed = []             # (index, source peer id)
        self.failures = {}           # index -> count
        self.fatal = None
        self.event = _Signal(self.clock)
        self.last_progress = self.clock.seconds()
        self.registrations = 1
        self.errors = 0
        self.polling = False         # a long-poll is outstanding
        self.reporting = None        # the Deferred of a report-only call in flight
        # Fetches at once: --concurrency, but never more piece bytes in memory
        # than max_buffered (each fetch holds at most about one piece).
        self.slots = node.concurrency
        if node.max_buffered:
            self.slots = max(1, min(self.slots, node.max_buffered // max(1, tf.piece_size)))

    def _complete(self):
        return self.tf.is_complete

    async def run(self):
        try:
            await self._loop()
        finally:
            if self.reporting is not None:
                self.reporting.cancel()
            for a, d in list(self.in_flight.values()):
                d.cancel()
            self.in_flight.clear()
            self.queue.clear()
        # Tell the supernode what we hold now (best effort): it makes us a source.
        if self.have or self.failed:
            try:
                await self._schedule(0, 0)
            except Exception as e:
                self.log.debug("final report for {task} failed: {why}",
                               task=self.dl.task_id, why=_describe(e))

    async def _loop(self):
        node = self.node
        while True:
            if self.fatal is not None:
                raise self.fatal
            if self._complete():
                return
            self._start_fetches()
            want = max(0, self.slots + node.queue_depth - len(self.in_flight) - len(self.queue))
            # Never ask for more than is left unassigned: with everything in
            # flight, a long-poll would only delay our reports and our end.
            unassigned = (self.tf.piece_count - len(self.tf.completed())
                          - len(self.in_flight) - len(self.queue))
            want = min(want, max(0, unassigned))
            nothing_to_say = want == 0 and not self.have and not self.failed
            if nothing_to_say or (want < REPORT_BATCH and self._may_gather()):
                await self.event.wait(node.stall_timeout)
                self._check_stall()
                continue
            if want == 0:
                wait = 0
            elif self.in_flight or self.queue:
                wait = node.busy_wait
            else:
                wait = node.schedule_wait
            started = self.clock.seconds()
            try:
                self.polling = wait > 0
                try:
                    answer = await self._schedule(want, wait)
                finally:
                    self.polling = False
            except _NotRegistered:
                await self._reregister("the supernode forgot this peer")
                continue
            except (DownloadError, CancelledError):
                raise
            except Exception as e:
                self.errors += 1
                self.log.warn("schedule for {task} at {sn} failed ({n}): {why}",
                              task=self.dl.task_id, sn=f"{self.addr[0]}:{self.addr[1]}",
                              n=self.errors, why=_describe(e))
                if self.errors >= node.schedule_retries:
                    await self._reregister(f"scheduling failed: {_describe(e)}")
                else:
                    await self.event.wait(min(8.0, 0.5 * 2 ** self.errors))
                continue
            self.errors = 0
            added = self._accept(answer)
            if self.fatal is not None:
                raise self.fatal
            if self._complete():
                return
            if added:
                self.last_progress = self.clock.seconds()
                continue
            self._check_stall()
            # Nothing new for us: don't hammer a supernode that answered at once.
            elapsed = self.clock.seconds() - started
            if elapsed < node.min_poll_interval:
                await self.event.wait(node.min_poll_interval - elapsed)

    def _check_stall(self):
        if self.in_flight:
            return
        idle = self.clock.seconds() - self.last_progress
        if idle >= self.node.stall_timeout:
            raise _SupernodeUnavailable(f"no piece arrived for {idle:.0f}s")

    async def _reregister(self, why):
        node = self.node
        if self.registrations >= node.max_registrations:
            raise _SupernodeUnavailable(why)
        self.registrations += 1
        self.log.info("registering {task} again: {why}", task=self.dl.task_id, why=why)
        addr, info = await node._register(self.dl)
        if info["length"] != self.tf.length or info["piece_size"] != self.tf.piece_size:
            raise _SupernodeUnavailable("the task changed while we downloaded it")
        self.addr = addr
        node._joined[self.dl.task_id] = addr
        self.seed_id = info["seed"].peer_id
        self.errors = 0
        # Everything we hold is news to a (possibly different) supernode.
        self.have = list(self.tf.completed())
        self.queue.clear()

    async def _schedule(self, want, wait):
        node = self.node
        have, self.have = self.have, []
        failed, self.failed = self.failed, []
        body = {"peer_id": node.peer_info.peer_id, "have": have,
                "failed": [{"index": i, "source": s} for i, s in failed],
                "want": want, "wait": wait}
        if self.dl.readers:
            # Someone streams this task in order: the lowest piece a stream
            # waits for; the supernode hands out the next pieces from there first.
            body["cursor"] = min(r.cursor for r in self.dl.readers)
        try:
            code, obj = await node._call(
                self.addr, f"/api/v1/tasks/{self.dl.task_id}/schedule", body,
                wait + node.api_timeout)
        except BaseException:
            # Not delivered (as far as we know): send again next time.
            self.have = have + self.have
            self.failed = failed + self.failed
            raise
        if code == 404:
            raise _NotRegistered()
        if code != 200:
            self.have = have + self.have
            self.failed = failed + self.failed
            raise _SupernodeUnavailable(f"HTTP {code}: {obj.get('error', '')}") \
                if code >= 500 else DownloadError(
                    f"supernode refused to schedule: {obj.get('error') or code}")
        return obj

    def _accept(self, answer):
        tf = self.tf
        raw = answer.get("assignments")
        if not isinstance(raw, list):
            raw = []
        added = 0
        taken = set(self.in_flight) | {a.index for a in self.queue}
        for item in raw:
            try:
                a = _parse_assignment(item, tf)
            except (ValueError, TypeError, KeyError) as e:
                self.log.warn("ignoring a bad assignment for {task}: {why}",
                              task=self.dl.task_id, why=str(e))
                continue
            if tf.has(a.index):
                self.have.append(a.index)
                continue
            if a.index in taken:
                continue
            taken.add(a.index)
            self.queue.append(a)
            added += 1
        self._start_fetches()
        return added

    def _start_fetches(self):
        while self.queue and len(self.in_flight) < self.slots:
            a = self.queue.pop(0)
            if self.tf.has(a.index) or a.index in self.in_flight:
                continue
            d = Deferred.fromCoroutine(self._fetch(a))
            d.addErrback(lambda f: f.trap(CancelledError) and None)
            if not d.called:
                self.in_flight[a.index] = (a, d)

    async def _fetch(self, a):
        node = self.node
        tf = self.tf
        reason = None
        try:
            pool = node._pool
            fetch_piece = getattr(pool, "fetch_piece", None)
            if fetch_piece is not None:
                # The body as the chunks received (no join, no copy); hashed
                # and written in one runner call, which writes nothing unless
                # the digest matches.
                d = fetch_piece(a.source, self.dl.task_id, a.index, a.size, hashed=False)
            else:
                d = pool.fetch(a.source, self.dl.task_id, a.index, a.size)
            d.addTimeout(node.piece_timeout, self.clock)
            try:
                got = await d
            except DeferredTimeoutError:
                reason = "timeout"
                raise
            if fetch_piece is not None:
                data, size = got.chunks, got.nbytes
            else:
                data, size = got, len(got)
            if size != a.size:
                reason = "short"
                raise ValueError(f"got {size} bytes, want {a.size}")
            try:
                if fetch_piece is not None:
                    await tf.write_verified_piece(a.index, data, a.digest)
                else:
                    digest = await node._runner.run(piece_digest, data)
                    if digest != a.digest:
                        raise DigestMismatch(a.digest, digest)
                    await tf.write_trusted_piece(a.index, data, digest)
            except DigestMismatch:
                reason = "digest"
                raise
            except Exception as e:
                self.fatal = DownloadError(f"cannot store piece {a.index}: {_describe(e)}")
                return
            del data, got
            source = "supernode" if a.source.peer_id == self.seed_id else "peer"
            self.have.append(a.index)
            self.last_progress = self.clock.seconds()
            self.registrations = 1
            node._piece_arrived(self.dl, a.index, size, source)
        except CancelledError:
            raise
        except Exception as e:
            self._failed(a, reason or "fetch", _describe(e))
        finally:
            self.in_flight.pop(a.index, None)
            self.event.fire()
            self._report_now()

    def _report_now(self):
        """While our long-poll is out, report news in a separate call at once.

        The supernode may be waiting for exactly this report (a source freed,
        a piece we now hold) before it can answer the long-poll.
        """
        if not self.polling or self.reporting is not None or not (self.have or self.failed):
            return
        if self._may_gather():
            return
        d = self.reporting = Deferred.fromCoroutine(self._schedule(0, 0))

        def done(result):
            self.reporting = None
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    return None
                self.log.debug("report for {task} failed: {why}",
                               task=self.dl.task_id, why=_describe(result))
                return None
            self._report_now()
            return None
        d.addBoth(done)

    def _may_gather(self):
        """True when the news so far (one piece landed) can wait for the next.

        Reporting each piece alone costs two round trips per piece while a
        long-poll is out (the report frees one source slot, then the poll
        answers with one assignment) and one otherwise. Pairs halve that.
        Failures, two pieces, or a pipeline about to run dry: report now.
        """
        return (not self.failed and len(self.have) < REPORT_BATCH
                and len(self.in_flight) + len(self.queue) > 1)

    def _failed(self, a, reason, why):
        node = self.node
        node._metrics.piece_failures.labels(reason=reason).inc()
        self.log.warn("piece {index} of {task} from {source} failed: {why}",
                      index=a.index, task=self.dl.task_id, source=a.source.peer_id, why=why)
        self.failed.append((a.index, a.source.peer_id))
        n = self.failures[a.index] = self.failures.get(a.index, 0) + 1
        if n >= node.max_piece_failures:
            self.fatal = _SupernodeUnavailable(
                f"piece {a.index} failed from {n} sources (last: {why})")


def _parse_assignment(item, tf):
    if not isinstance(item, dict):
        raise ValueError("not an object")
    index, size, digest = item["index"], item["size"], item["digest"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < tf.piece_count:
        raise ValueError(f"piece index {index!r} out of range")
    if size != tf.piece_range(index)[1]:
        raise ValueError(f"piece {index} size {size!r} is not {tf.piece_range(index)[1]}")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ValueError(f"piece {index} digest is not 64 hex digits")
    return Assignment(index, size, digest, PeerInfo.from_json(item["source"]))


# ---------------------------------------------------------------------------
# Streaming a task in order to a consumer.

@implementer(IPushProducer)
class _OrderedProducer:
    """Push producer writing a task's bytes in order, waiting for missing pieces.

    Reads bounded chunks through the runner, the next one while the current
    one is written (one chunk of read-ahead), and stops while the consumer has
    paused it (transport back-pressure). A push
    producer rather than a pull one: twisted.web drives pull producers with a
    cooperator that would spin while we wait for a piece to arrive.
    """

    chunk = 1024 * 1024
    log = Logger()

    def __init__(self, node, tf, consumer, start, end):
        self._node = node
        self._tf = tf
        self._consumer = consumer
        self._offset = start
        self._end = end
        self._paused = False
        self._resumed = None
        self._stopped = False
        self._current = None
        self._ahead = None       # (offset, length, Deferred) of the read-ahead
        self.done = Deferred(lambda d: self._abort(Failure(CancelledError()), unregister=True))

    @property
    def cursor(self):
        """The piece this stream writes (or waits for) now."""
        return self._offset // self._tf.piece_size

    def start(self):
        if self._offset >= self._end:
            self.done.callback(None)
            return
        self._consumer.registerProducer(self, True)
        if not self._stopped:
            Deferred.fromCoroutine(self._run()).addErrback(self._error)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.callback(None)

    def stopProducing(self):
        self._abort(Failure(StreamStopped("consumer stopped reading")), unregister=False)

    def download_failed(self, failure):
        self._abort(failure, unregister=True)

    def _abort(self, failure, unregister):
        if self._stopped:
            return
        self._stopped = True
        if self._current is not None:
            self._current.cancel()
        if self._ahead is not None:
            ahead, self._ahead = self._ahead[2], None
            ahead.addErrback(lambda f: None)
            ahead.cancel()
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.cancel()
        if unregister:
            try:
                self._consumer.unregisterProducer()
            except Exception:
                pass
        if not self.done.called:
            self.done.errback(failure)

    async def _wait(self, d):
        self._current = d
        try:
            return await d
        finally:
            self._current = None

    async def _run(self):
        tf = self._tf
        while self._offset < self._end:
            if self._stopped:
                return
            if self._paused:
                self._resumed = Deferred()
                await self._wait(self._resumed)
                continue
            index = self._offset // tf.piece_size
            if not tf.has(index):
                w = self._node._wait_piece(tf.task_id)
                if w is None:
                    if tf.has(index):
                        continue
                    raise DownloadError(f"piece {index} of task {tf.task_id} is not held "
                                        "and no download is running")
                await self._wait(w)
                continue
            n = self._chunk_at(self._offset)
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[:2] == (self._offset, n):
                read = ahead[2]
            else:
                if ahead is not None:
                    ahead[2].addErrback(lambda f: None)  # not needed after all
                read = tf.read_range(self._offset, n)
            data = await self._wait(read)
            if self._stopped:
                return
            if len(data) != n:
                raise DownloadError(f"short read from the store at {self._offset}")
            self._offset += n
            self._read_ahead()
            self._consumer.write(data)
        if not self._stopped:
            self._stopped = True
            self._consumer.unregisterProducer()
            if not self.done.called:
                self.done.callback(None)

    def _chunk_at(self, offset):
        p_off, p_len = self._tf.piece_range(offset // self._tf.piece_size)
        return min(self.chunk, p_off + p_len - offset, self._end - offset)

    def _read_ahead(self):
        """Start reading the next chunk now if its piece is held already."""
        offset = self._offset
        if offset >= self._end or not self._tf.has(offset // self._tf.piece_size):
            return
        n = self._chunk_at(offset)
        self._ahead = (offset, n, self._tf.read_range(offset, n))

    def _error(self, f):
        if self._stopped:
            return None
        if not f.check(DownloadError):
            self.log.failure("streaming {task} failed", f, task=self._tf.task_id)
            f = Failure(DownloadError(f"streaming failed: {_describe(f)}"))
        self._abort(f, unregister=True)
        return None

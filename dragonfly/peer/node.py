"""The peer's download engine, as one facade: L{PeerNode}.

A L{PeerNode} downloads a task (one file) like this:

 1. If the store already holds the whole task, it is returned at once
    (after the origin accepted the caller's own request, when the task is
    private: L{dragonfly.privacy}; the same for a caller joining a download
    whose request was private).
 2. Otherwise one L{dragonfly.peer.joining.Download} is shared by every
    caller and stream of the task; the node runs it once.
 3. The swarm path (L{dragonfly.peer.session}): register with a supernode
    (L{dragonfly.control.client}: owner redirects, fail-over), then
    schedule and fetch verified pieces through the piece pool until the task
    is complete; the piece server keeps serving it from the store.
 4. When no supernode answers, or scheduling keeps failing, the file is
    fetched from its origin directly and streamed into the store
    (L{dragonfly.peer.backsource}), unless the caller forbade it. A
    supernode verdict about the URL itself (the origin answered 4xx) is
    final: the origin is not asked again.

Streams (L{dragonfly.peer.stream}) write a task's bytes in order while its
pieces arrive. Errors live in L{dragonfly.peer.errors}; the node's tunables
and collaborators in L{dragonfly.peer.settings}.
"""
import re

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.control.client import SupernodeClient, SupernodeUnavailable
from dragonfly.interfaces import IDownloader
from dragonfly.origin import OriginRefused
from dragonfly.peer.backsource import BackSource
from dragonfly.peer.errors import DownloadError, OriginNotAllowed, StreamStopped
from dragonfly.peer.joining import Download, call_progress, call_start
from dragonfly.peer.session import join_swarm
from dragonfly.peer.settings import DEFAULT_PIECE_SIZE, NodeDeps, NodeSettings
from dragonfly.peer.stream import OrderedPushProducer
from dragonfly.privacy import FetchedBy, check_caller, omits_checked
from dragonfly.redact import has_userinfo, redact_text, redact_url, userinfo_error
from dragonfly.taskid import derive_task_id, validate_task_id

__all__ = ["PeerNode", "NodeDeps", "NodeSettings", "DownloadError", "StreamStopped",
           "DEFAULT_PIECE_SIZE"]


def _task_id(url, task_id, filters, tag, digest):
    """The id of the download of C{url} (L{derive_task_id}), checked against
    the C{task_id} a caller named; L{DownloadError} when they differ."""
    try:
        derived = derive_task_id(url, filters, tag, digest)
        if task_id is not None:
            validate_task_id(task_id)
    except ValueError as e:
        raise DownloadError(str(e))
    if task_id is not None and task_id != derived:
        raise DownloadError(f"task_id mismatch: {task_id} is not the id of {url} ({derived})")
    return derived


@implementer(IDownloader)
class PeerNode:
    """Downloads tasks through the swarm (or from their origin) into a piece store.

    @param deps: the collaborators, a L{NodeDeps}.
    @param supernodes: [(host, port), ...] tried in order.
    @param peer_info: this node's L{dragonfly.interfaces.PeerInfo}; the
        attribute may be replaced (the service sets it once the piece port
        is bound).
    @param settings: the tunables, a L{NodeSettings} (defaults if None).
    """

    log = Logger()

    def __init__(self, deps, supernodes, peer_info, settings=None):
        self.deps = deps
        self.settings = settings if settings is not None else NodeSettings()
        self._store = deps.store
        self.peer_info = peer_info
        self._supernodes = SupernodeClient(
            deps.clock, deps.http, supernodes, api_timeout=self.settings.api_timeout,
            register_timeout=self.settings.register_timeout, admission=deps.admission,
            scheme=self.settings.supernode_scheme)
        self._back_source = BackSource(deps, self.settings)
        self._downloads = {}
        self._fetched_by = FetchedBy()
        self._stopping = False

    # ------------------------------------------------------------------ public

    def download(self, url, headers=None, task_id=None, pattern="p2p", back_source=True,
                 on_progress=None, on_start=None, limit=0, filters=(), tag="", digest=None,
                 want=None, _admitted=False):
        """Fetch C{url} into the store; a Deferred firing with its TaskFile.

        The task id is derived from C{url}, C{filters}, C{tag} and C{digest}
        (a content digest names the task; L{derive_task_id}); a C{task_id}
        given must be that id.

        @param on_progress: called with C{(completed_bytes, length)} as pieces land.
        @param on_start: called with the TaskFile once its length is known
            (before any piece arrives; use it with L{stream}).
        @param limit: bytes/s this caller wants the download fetched at, at
            most (0: no limit); shared with other callers of the same task
            as L{dragonfly.peer.pacing} says.
        @param want: the bytes (first, last), inclusive, this caller needs
            first (a range request): a new download asks the supernode for
            them first, so a supernode without the file fetches them first.
        Fails with L{DownloadError}. Cancelling the Deferred detaches this
        caller; the download stops when no caller or stream is left. A caller
        of a private task someone else's request fetched (or is fetching) is
        first checked with the origin (L{dragonfly.privacy}).
        """
        try:
            if pattern not in ("p2p", "cdn", "source"):
                raise DownloadError(f"unknown pattern {pattern!r} (p2p, cdn or source)")
            if not isinstance(url, str) or not re.match(r"\Ahttps?://[^/\s]", url, re.I):
                raise DownloadError(f"not an http(s) URL: {redact_url(url)!r}")
            if has_userinfo(url):
                raise DownloadError(userinfo_error(url))
            headers = dict(headers or {})
            for k, v in headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise DownloadError("headers must map strings to strings")
            task_id = _task_id(url, task_id, filters, tag, digest)
            if self._stopping:
                raise DownloadError("peer is shutting down")
        except DownloadError as e:
            return fail(e)

        dl = self._downloads.get(task_id)
        if not _admitted and self._must_check(task_id, dl):
            kw = dict(headers=headers, task_id=task_id, pattern=pattern, back_source=back_source,
                      on_progress=on_progress, on_start=on_start, limit=limit, filters=filters,
                      tag=tag, digest=digest, want=want)
            return Deferred.fromCoroutine(self._checked(url, dl, kw))
        if dl is None:
            tf = self._store.get(task_id)
            if tf is not None and tf.is_complete:
                tf.touch()
                call_progress(on_progress, tf.length, tf.length)
                call_start(on_start, tf)
                return succeed(tf)
            dl = Download(task_id, url, headers, pattern, back_source,
                          self.deps.clock, self.deps.metrics, filters, tag, digest)
            dl.want = want
            self._fetched_by.record(task_id, omits_checked(url, headers, filters))
            self._downloads[task_id] = dl
            d = dl.join(on_progress, on_start, limit)
            dl.run = Deferred.fromCoroutine(self._run(dl))
            dl.run.addBoth(self._finished, dl)
            return d
        return dl.join(on_progress, on_start, limit)

    def _must_check(self, task_id, dl):
        """Must this caller of C{task_id} be checked with the origin first? Yes
        when it would join a download whose request was private, or get a held
        task not known to be public (L{FetchedBy})."""
        if dl is not None:
            return omits_checked(dl.url, dl.headers, dl.filters)
        tf = self._store.get(task_id)
        return tf is not None and tf.is_complete and self._fetched_by.needs_check(task_id)

    async def _checked(self, url, dl, kw):
        """Probe the origin with the caller's own request; download once admitted."""
        task_id = kw["task_id"]
        tf = await dl.task_file() if dl is not None else self._store.get(task_id)
        try:
            verdict = await check_caller(self._back_source.origin(), url, kw["headers"], tf,
                                         self._fetched_by)
        except OriginRefused as e:
            raise OriginNotAllowed(e.message)
        if not verdict.admitted:
            self.log.info("caller of {task} refused: {why}", task=task_id, why=verdict.reason)
            raise DownloadError(verdict.reason)
        return await self.download(url, _admitted=True, **kw)

    def is_private(self, task_id):
        """Would a caller of C{task_id} who did not fetch it be checked first?"""
        dl = self._downloads.get(task_id)
        if dl is not None:
            return omits_checked(dl.url, dl.headers, dl.filters)
        return self._fetched_by.needs_check(task_id)

    def active(self):
        """Task ids being downloaded now."""
        return list(self._downloads)

    def wait_task_file(self, task_id):
        """A Deferred TaskFile once its length is known (held or downloading)."""
        dl = self._downloads.get(task_id)
        if dl is not None:
            return dl.task_file()
        tf = self._store.get(task_id)
        if tf is not None and tf.is_complete:
            return succeed(tf)
        return fail(DownloadError(f"task {task_id} is not held and not being downloaded"))

    def stream(self, task_file, consumer, start=0, end=None):
        """Write the task's bytes [start, end) to C{consumer} in order, as pieces arrive.

        Registers a push producer (L{OrderedPushProducer}) with C{consumer}
        (bounded chunks read through the runner; honours pauseProducing),
        unregisters it at the end. Returns a Deferred firing when the last
        byte was written, failing with L{DownloadError} when the download
        fails before, or L{StreamStopped} when the consumer stopped us. It
        does not call C{finish()} on the consumer.
        """
        length = task_file.length
        end = length if end is None else min(end, length)
        if not 0 <= start <= end:
            return fail(DownloadError(f"bad byte range {start}-{end} of {length}"))
        producer = OrderedPushProducer(self._wait_piece, task_file, consumer, start, end)
        dl = self._downloads.get(task_file.task_id)
        if dl is not None:
            dl.add_stream(producer)
        producer.start()
        return producer.done

    def on_verified(self, task_id, callback):
        """Call C{callback(root)} once a supernode attests that C{task_id}'s
        content matched its digest whole (at once if one did already), while
        this peer downloads it: C{root} is the pieces root of the copy that
        matched (L{dragonfly.digest.pieces_root}). A callable that cancels
        the call; nothing is ever called for a task not being downloaded."""
        dl = self._downloads.get(task_id)
        if dl is None:
            return lambda: None
        return dl.on_verified(callback)

    def attests(self, task_id):
        """Did the supernode promise to attest C{task_id} (being downloaded
        here) once its running check of the whole content passes?"""
        dl = self._downloads.get(task_id)
        return dl is not None and dl.promised

    def leave(self, task_id):
        """Tell the supernode we no longer serve C{task_id} (best effort)."""
        return self._supernodes.leave(task_id, self.peer_info.peer_id)

    def upload_cut(self, task_id, receiver_id):
        """Our piece server's upload of C{task_id} to C{receiver_id} ended
        mid-piece: tell the supernode of that swarm, which checks whether
        the receiver died (its fetches hold our upload slots there until
        then). Best effort; nothing when we are no member of the swarm."""
        self.log.debug("upload of {task} to {peer} cut; telling the supernode", task=task_id,
                      peer=receiver_id)
        self._supernodes.report_cut(task_id, self.peer_info.peer_id, receiver_id)

    async def heartbeat(self):
        """Tell each supernode which of its tasks we still hold and serve.

        Finished tasks stay in the swarm (we keep serving their pieces); a
        supernode drops peers it has not heard from, so the node calls this
        periodically. Tasks a supernode no longer knows us for are forgotten
        (we register again on the next download of them).
        """
        await self._supernodes.heartbeat(self.peer_info.peer_id, self._serving)

    def _serving(self, task_id):
        return task_id not in self._downloads and self._store.get(task_id) is not None

    def drop_corrupt(self, task_id, reason):
        """A holder found our complete copy of C{task_id} wrong (a content digest
        or a piece digest failed): drop it from the store, leave its swarm and
        report it to the supernode, which re-verifies its own copy. The next
        download fetches it again. A Deferred that never fails."""
        self.log.warn("task {task} is corrupt ({why}): dropping it", task=task_id, why=reason)
        addr = self._supernodes.members.get(task_id)
        if task_id not in self._downloads:
            self._store.remove(task_id)
        d = self.leave(task_id)
        d.addCallback(lambda _: self._supernodes.report_corrupt(
            task_id, self.peer_info.peer_id, reason, addr))
        return d

    def forget_missing(self):
        """Leave the swarms of tasks the store no longer holds (after GC)."""
        ds = []
        for task_id in list(self._supernodes.members):
            if task_id not in self._downloads and self._store.get(task_id) is None:
                ds.append(self.leave(task_id))
        return ds

    def shutdown(self):
        """Stop downloads and leave every swarm; a Deferred that fires once
        every leave call (the stopped downloads' too) is answered, or after
        C{settings.leave_timeout} seconds: only then may the HTTP pool close."""
        self._stopping = True
        for dl in list(self._downloads.values()):
            if dl.run is not None and not dl.run.called:
                dl.run.cancel()     # a stopped download leaves its swarm
        for t in list(self._supernodes.members):
            self.leave(t)
        return self._supernodes.leaves_done(self.settings.leave_timeout)

    # ---------------------------------------------------------------- the run

    async def _run(self, dl):
        if dl.pattern == "source":
            tf = await self._back_source.fetch(dl, "pattern=source")
        else:
            try:
                tf = await join_swarm(dl, self.deps, self.settings, self._supernodes,
                                      lambda: self.peer_info)
            except SupernodeUnavailable as e:
                if not dl.back_source:
                    raise DownloadError(f"no supernode could serve the task ({e}) "
                                        "and back-to-source is disabled")
                self.log.warn("back to source for {task}: {why}", task=dl.task_id,
                              why=redact_text(str(e)))
                tf = await self._back_source.fetch(dl, str(e))
        tf.touch()
        self.log.info("task {task} complete: {length} bytes (peer {p}, supernode {s}, origin {o})",
                      task=dl.task_id, length=tf.length, p=dl.sources["peer"],
                      s=dl.sources["supernode"], o=dl.sources["origin"])
        return tf

    def _finished(self, result, dl):
        self._downloads.pop(dl.task_id, None)
        return dl.finish(result)

    def _wait_piece(self, task_id):
        """A Deferred firing on the next piece of C{task_id} (or its download's end);
        None when no download of it runs."""
        dl = self._downloads.get(task_id)
        if dl is None:
            return None
        return dl.wait_piece()

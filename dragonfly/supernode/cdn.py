"""The supernode's CDN seed: fetch each file from its origin once, cut it into pieces.

One L{_Job} per task in flight. Whatever the number of concurrent
L{CDN.ensure} callers, a task has at most one job and so one origin download.
The job streams the origin body through the ingest pipeline
(L{dragonfly.ingest.pipeline}: at most two piece writes in flight, the origin
connection paused at that limit, so memory stays at about three pieces per
task while the network and the disk both keep busy) and tells the scheduler
about each piece as soon as it is on disk (L{_JobEvents}), so peers start on
the first pieces while the rest still arrives. This module holds only the
policy: jobs, revalidation, resumption, retries, content-changed detection, publishing.

Life of a job (see docs/design.md, "CDN"):

  1. the store already holds the task complete: revalidate once per process
     with If-None-Match / If-Modified-Since. 304 -> reuse; 200 -> the file
     changed: replace it with this very response;
  2. the store holds some pieces (a previous run, or a failed job): resume with
     ``Range: bytes=<first missing piece>-`` (+ If-Range; pieces of an earlier
     job without a validator for it: the whole file instead). A 200 restarts from
     byte 0: pieces already held are re-hashed and must match, else the origin
     changed under us and the task fails (L{ContentChanged});
  3. otherwise a plain GET. Without Content-Length the body is spooled to a
     temporary file first; the task is published once it is complete.

A broken or stalled body is resumed from the first missing piece with bounded
retries and exponential backoff on the injected clock; 4xx answers are final.
A failed job leaves its pieces in the store (unless the disk is short) and the
next ensure() starts a new job (which resumes).
A task named by a content digest is complete only once its whole content
matched (hashed as the body arrives, L{dragonfly.ingest.contenthash}); its
pieces are served as they land, each checked against the piece digest of our
own fetch. A task reported corrupt: see L{dragonfly.supernode.recheck}.
"""
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.digest import pieces_root
from dragonfly.ingest.contenthash import ContentHash
from dragonfly.ingest.pipeline import spool_into, stream_into
from dragonfly.origin import BodyBroken, OriginError
from dragonfly.redact import redact_text, redact_url
from dragonfly.storage.errors import StoreFull
from dragonfly.supernode.cdnjob import (
    CacheFull, CDNError, ContentChanged, NotReady, TooLarge, TooManyTasks, _Job, _JobEvents,
    _checkable, _piece_sizes, _prefix_pieces, _same_entity)
from dragonfly.supernode.fetchorder import SPAN_BYTES, FetchOrder, covering_pieces, span_end
from dragonfly.supernode.recheck import ContentMismatch, Rechecker, check_content

__all__ = ["CDN", "CDNError", "ContentChanged", "ContentMismatch", "CacheFull", "NotReady",
           "TooLarge", "TooManyTasks"]

#: Origin fetches at once, and tasks held, before a new task is refused (429).
MAX_FETCHES = 256
MAX_TASKS = 100_000


class CDN:
    """Seeds tasks from origins into the store and tells the scheduler.

    @param reactor: IReactorTime (retry backoff).
    @param store: a L{dragonfly.storage.store.PieceStore}.
    @param origin: an L{dragonfly.origin.OriginClient} (IOrigin).
    @param scheduler: has C{add_task(task_id, piece_sizes, seed)} and
        C{seed_has(task_id, index, digest)}.
    @param piece_size: bytes per piece of new tasks.
    @param metrics: L{dragonfly.metrics.SupernodeMetrics} (or None).
    @param runner: IRunner for spool-file work.
    @param seed: our own L{PeerInfo}; may be set later (when the piece port is
        bound) with L{set_seed}. ensure() fails with L{NotReady} until then.
    @param max_body_retries: a body that breaks off again without bringing a
        new byte is retried this often, then the job fails (the origin's fault).
    """

    log = Logger()

    def __init__(self, reactor, store, origin, scheduler, piece_size, metrics, runner,
                 seed=None, max_retries=5, retry_delay=1.0, max_retry_delay=30.0,
                 spool_dir=None, max_spool=0, max_body_retries=1, max_file_size=1 << 40,
                 max_fetches=MAX_FETCHES, max_tasks=MAX_TASKS):
        self._reactor = reactor
        self.store = store
        self.origin = origin
        self.scheduler = scheduler
        self.piece_size = int(piece_size)
        self.metrics = metrics
        self.runner = runner
        self.seed = seed
        self.max_retries = max_retries
        self.max_body_retries = max_body_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.spool_dir = spool_dir
        self.max_file_size = max_file_size
        self.max_fetches = max_fetches
        self.max_tasks = max_tasks
        self._fetching = 0      # jobs running
        self.max_spool = min(max_spool, max_file_size) if max_spool else max_file_size
        self._jobs = {}
        self._published = {}   # task_id -> TaskFile object the scheduler knows
        self.rechecker = Rechecker(reactor, store, runner, self._job_running, self._drop_corrupt)
        self._stopping = False
        self.failure_ttl = 600.0

    def set_seed(self, seed):
        self.seed = seed

    # -- public ------------------------------------------------------------

    def ensure(self, task_id, url, headers=None, want=None):
        """A Deferred TaskFile, fired once its length is known (published).

        Fails with L{OriginError} (origin verdict or unreachable), L{CacheFull},
        L{NotReady}. Concurrent callers share one job; a later call after a
        failure starts a new one. C{want}: the bytes (first, last), inclusive,
        the caller needs first: a new job asks the origin for the pieces that
        cover them before the rest (L{dragonfly.supernode.fetchorder}), a
        running one that fetches in that order takes them next.
        """
        try:
            job = self._start(task_id, url, headers, want)
        except CDNError:
            return fail()
        if want is not None and job.order is not None and job.tf is not None:
            pieces = covering_pieces(want, job.tf.piece_size, job.tf.length)
            if pieces is not None:
                job.order.hurry(*pieces)
        return job.ready.when()

    def hurry(self, task_id, first, last=None):
        """Pieces C{first}..C{last} (default: C{first} and the next) of C{task_id}
        are wanted now (a peer streams from there): a running fetch in
        L{FetchOrder} takes them next; otherwise nothing changes."""
        job = self._jobs.get(task_id)
        if first is not None and job is not None and job.order is not None \
                and job.state == "running":
            job.order.hurry(first, first + 1 if last is None else last)

    def ensure_complete(self, task_id, url, headers=None):
        """Like ensure(), but fires only when every piece is in the store."""
        try:
            return self._start(task_id, url, headers).complete.when()
        except CDNError:
            return fail()

    def status(self, task_id):
        """{"state", "url", "length", ..., "error"?, "origin_status"?} or None."""
        job = self._jobs.get(task_id)
        if job is not None:
            return job.status()
        tf = self.store.get(task_id)
        if tf is None:
            return None
        return {"state": "cached" if tf.is_complete else "partial", "url": tf.url,
                "length": tf.length, "piece_count": tf.piece_count,
                "seeded": len(tf.completed())}

    def fetch_ended(self, task_id):
        """A Deferred firing (with None) when the running fetch of C{task_id}
        ends, either way; None when no fetch of it runs. Cancellable."""
        job = self._jobs.get(task_id)
        if job is None or job.state not in ("pending", "running"):
            return None
        return job.complete.when().addErrback(lambda f: None if not f.check(CancelledError) else f)
    def verified_root(self, task_id):
        """The attestation for C{task_id}: the pieces root of our copy when the
        task is named by a content digest and this very copy matched it whole
        (its job is done, the copy still held and published); None before the
        check passed (pieces are published as they land, the check comes
        after the last), after a mismatch, or once the copy is gone."""
        job = self._jobs.get(task_id)
        if job is None or job.state != "done" or job.root is None:
            return None
        tf = job.tf
        if tf is None or tf.removed or not tf.is_complete or self._published.get(task_id) is not tf:
            return None
        return job.root

    def attestation(self, task_id):
        """What the answers to a peer say of C{task_id}'s content check:
        C{verified} (L{verified_root}) and C{attests}, True while the task
        is named by a digest and its fetch, which checks the whole content
        before the job is done, runs: the attestation is to be expected."""
        root = self.verified_root(task_id)
        job = self._jobs.get(task_id)
        attests = root is None and job is not None and job.digest is not None \
            and job.state in ("pending", "running")
        return {"verified": root, "attests": attests}

    def task_ids(self):
        """The ids of the tasks with a job (running, done, or failed recently)."""
        return list(self._jobs)

    def failure(self, task_id):
        """The error of a failed job, or None."""
        job = self._jobs.get(task_id)
        if job is not None and job.state == "failed":
            return job.error.value
        return None

    def forget_missing(self):
        """Unpublish tasks whose files the store no longer holds (GC, removal).

        Their swarms are dropped from the scheduler (peers re-register and the
        next ensure() fetches the file again). Returns the task ids dropped.
        """
        dropped = []
        for task_id, tf in list(self._published.items()):
            job = self._jobs.get(task_id)
            if job is not None and job.state in ("pending", "running"):
                continue
            if self.store.get(task_id) is not tf or tf.removed:
                self._forget_in_scheduler(task_id)
                if job is not None and job.state == "done":
                    del self._jobs[task_id]
                dropped.append(task_id)
        # Failures stay visible (API, preheat) for a while, then are forgotten.
        now = self._reactor.seconds()
        self.rechecker.prune()
        for task_id, job in list(self._jobs.items()):
            if job.state == "failed" and now - job.finished >= self.failure_ttl:
                del self._jobs[task_id]
        return dropped

    def _job_running(self, task_id):
        return getattr(self._jobs.get(task_id), "state", None) in ("pending", "running")

    def _drop_corrupt(self, task_id, tf):
        """C{rechecker} found our copy corrupt: forget it (the next ensure() refetches)."""
        self._forget_in_scheduler(task_id)
        if self.store.get(task_id) is tf:
            self.store.remove(task_id)
        if not self._job_running(task_id):
            self._jobs.pop(task_id, None)

    def stop(self):
        """Service shutdown: drop origin connections, let jobs fail quietly."""
        self._stopping = True
        for job in list(self._jobs.values()):
            if job.current is not None and not job.current.called:
                job.current.cancel()

    # -- jobs -----------------------------------------------------------------

    def _can_start(self):
        return self.seed is not None and not self._stopping

    def _start(self, task_id, url, headers, want=None):
        if not self._can_start():
            raise NotReady("supernode is not ready (piece port not bound yet)")
        return self._job_for(task_id, url, headers, want)

    def _admit(self, task_id):
        """TooManyTasks unless a new job for C{task_id} may start now."""
        if self._fetching >= self.max_fetches:
            raise TooManyTasks(f"{self._fetching} origin fetches in progress; retry later")
        if self.store.count() >= self.max_tasks and self.store.get(task_id) is None:
            raise TooManyTasks(f"{self.max_tasks} tasks held; retry later")

    def _job_for(self, task_id, url, headers, want=None):
        job = self._jobs.get(task_id)
        if job is not None and job.state in ("pending", "running"):
            return job
        if job is not None and job.state == "done":
            tf = self.store.get(task_id)
            if tf is job.tf and tf is not None and tf.is_complete and not tf.removed:
                tf.touch()
                if self._published.get(task_id) is not tf:
                    self._publish(job, tf)
                return job
            # The store lost it (GC, removal): fetch again.
        self._admit(task_id)
        job = _Job(task_id, url, headers)
        job.want = want
        self._jobs[task_id] = job
        d = Deferred.fromCoroutine(self._run(job))
        d.addErrback(lambda f: self.log.failure("CDN job {task_id} crashed", f, task_id=task_id))
        return job

    async def _run(self, job):
        job.state = "running"
        failures = breaks = 0
        self._fetching += 1
        try:
            while True:
                before = job.tf.completed_bytes if job.tf is not None else -1
                try:
                    await self._attempt(job)
                    await self._check_content(job)
                    break
                except Exception as e:
                    if self._stopping:
                        raise CDNError("supernode is shutting down")
                    if not isinstance(e, OriginError) or not e.retryable:
                        raise
                    after = job.tf.completed_bytes if job.tf is not None else -1
                    failures = 0 if after > before else failures + 1
                    # A body that breaks off again with nothing new is the
                    # origin's fault: give up soon, so peers learn it in seconds.
                    broke = isinstance(e, BodyBroken) and after <= max(before, 0)
                    breaks = breaks + 1 if broke else 0
                    if failures > self.max_retries or job.attempts > self.max_retries * 20 \
                            or breaks > self.max_body_retries:
                        raise
                    delay = min(self.retry_delay * (2 ** max(failures - 1, 0)), self.max_retry_delay)
                    self.log.warn("origin fetch of {task_id} broke ({err}); retry {n} in {delay:g}s",
                                  task_id=job.task_id, err=redact_text(str(e)), n=failures,
                                  delay=delay)
                    job.current = deferLater(self._reactor, delay, lambda: None)
                    try:
                        await job.current
                    except CancelledError:
                        raise CDNError("supernode is shutting down")
        except Exception:
            self._failed(job, Failure())
        else:
            self._done(job)
        finally:
            self._fetching -= 1
            job.current = None
            if job.pinned is not None:
                job.pinned.unpin()
                if job.state == "failed":
                    job.pinned.abandon()   # its space back if the store is short
                job.pinned = None

    def _done(self, job):
        job.state = "done"
        tf = job.tf
        self.log.info("task {task_id} seeded: {length} bytes, {pieces} pieces",
                      task_id=job.task_id, length=tf.length, pieces=tf.piece_count)
        job.ready.fire(tf)
        job.complete.fire(tf)

    def _failed(self, job, f):
        job.state = "failed"
        job.finished = self._reactor.seconds()
        job.error = f
        self.log.warn("task {task_id} from {url} failed: {err}",
                      task_id=job.task_id, url=redact_url(job.url), err=redact_text(str(f.value)))
        if f.check(ContentChanged, ContentMismatch, StoreFull):
            # Do not keep (or serve) a mix of two versions, or a file it cannot hold.
            self.store.remove(job.task_id)
            self._forget_in_scheduler(job.task_id)
        if not job.ready.fired:
            job.ready.fire(f)
        job.complete.fire(f)

    def _forget_in_scheduler(self, task_id):
        self._published.pop(task_id, None)
        remove = getattr(self.scheduler, "remove_task", None)
        if remove is not None:
            try:
                remove(task_id)
            except Exception:
                self.log.failure("scheduler.remove_task({task_id})", task_id=task_id)

    def _pin(self, job, tf):
        if job.pinned is tf:
            return
        if job.pinned is not None:
            job.pinned.unpin()
        tf.pin()
        job.pinned = tf

    def _create(self, job, length, resp):
        if length > self.max_file_size:
            raise TooLarge(f"origin file of {length} bytes is larger than --max-file-size "
                           f"({self.max_file_size} bytes)")
        if not self.store.fits(length):
            # Refused without evicting anything for an unverified length.
            raise CacheFull(f"{length} bytes do not fit in the cache")
        if not self.store.fits_disk(length):
            # Not even with every task evicted: fail now, not after fetching most of it.
            raise CacheFull(f"{length} bytes do not fit on the cache's disk")
        tf = self.store.create(job.task_id, job.url, length, self.piece_size,
                               etag=resp.etag, last_modified=resp.last_modified)
        self._pin(job, tf)
        return tf

    def _publish(self, job, tf):
        """Tell the scheduler about the task and the pieces held; fire ready."""
        job.tf = tf
        if self._published.get(job.task_id) is not tf:
            self.scheduler.add_task(job.task_id, _piece_sizes(tf), self.seed)
            self._published[job.task_id] = tf
            for i in tf.completed():
                self._piece_done(job, tf, i, tf.digest(i))
        job.ready.fire(tf)

    def _piece_done(self, job, tf, index, digest):
        # Every piece is servable once stored: its digest comes from our own
        # origin fetch. The content digest gates only "complete" (job.complete).
        if self._published.get(job.task_id) is tf:
            self.scheduler.seed_has(job.task_id, index, digest)

    def _content_for(self, job, tf):
        """The job's L{ContentHash} of C{tf} (None for a task not named by a digest)."""
        if job.digest is None:
            return None
        if job.content is None or job.content.tf is not tf:
            job.content = ContentHash(tf, self.runner, job.digest.partition(":")[0])
        return job.content

    async def _check_content(self, job):
        """A task named by a content digest is complete only once it matched:
        hashed as the body arrived (what came out of order read back), else
        the whole file read again. L{ContentMismatch} otherwise."""
        if job.digest is not None and not job.verified:
            content = self._content_for(job, job.tf)
            got = await content.digest()
            if got is None:
                await check_content(self.runner, job.tf, job.digest)   # or ContentMismatch
            elif got != job.digest:
                raise ContentMismatch(f"content digest mismatch: expected {job.digest}, got {got}")
            job.verified = True
            # What peers are told once the job is done (verified_root): only
            # after the check passed, naming the very copy that passed it.
            job.root = pieces_root(job.tf.digest(i) for i in range(job.tf.piece_count))

    def _count_bytes(self, n):
        if self.metrics is not None:
            self.metrics.origin_bytes.inc(n)

    def _count_fetch(self, job):
        if self.metrics is not None and not job.counted:
            job.counted = True
            self.metrics.origin_fetches.inc()

    async def _request(self, job, offset=0, etag=None, last_modified=None, end=None):
        job.attempts += 1
        job.current = self.origin.get(job.url, job.headers, offset, etag, last_modified,
                                      **({} if end is None else {"end": end}))
        try:
            return await job.current
        finally:
            job.current = None

    async def _attempt(self, job):
        tf = job.tf
        if tf is None:
            tf = self.store.get(job.task_id)
            if tf is not None and tf.removed:
                tf = None
        if (job.want is not None or job.order is not None) and (tf is None or not tf.is_complete):
            if await self._in_order(job, tf):
                return
        if tf is not None and tf.is_complete:
            if self._published.get(job.task_id) is tf:
                # Fetched or revalidated earlier in this process.
                self._publish(job, tf)
                return
            resp = await self._request(job, 0, tf.etag, tf.last_modified)
            if resp.status == 304:
                self.log.info("task {task_id}: cached copy still valid (304)", task_id=job.task_id)
                if resp.etag and resp.etag != tf.etag or resp.last_modified and resp.last_modified != tf.last_modified:
                    tf.set_validators(resp.etag or tf.etag, resp.last_modified or tf.last_modified)
                tf.touch()
                self._publish(job, tf)
                return
            self.log.info("task {task_id}: origin has a new version; refetching", task_id=job.task_id)
            await self._stream(job, resp, None)
            return
        if tf is not None and tf.completed_bytes > 0:
            # Pieces of an earlier job: the rest by Range only if the origin
            # can check their version (If-Range); else the whole file again.
            start = _prefix_pieces(tf) * tf.piece_size if job.tf is tf or _checkable(tf) else 0
            validators = (tf.etag, tf.last_modified) if start else (None, None)
            resp = await self._request(job, start, *validators)
            if resp.status == 206 and resp.length in (None, tf.length):
                await self._stream(job, resp, tf)
                return
            if resp.status == 206:
                resp.discard()
                raise ContentChanged(f"origin length changed from {tf.length} to {resp.length}")
            if _same_entity(tf, resp):
                # No Range support (or If-Range said "changed" without new
                # validators): read from 0, re-verifying the pieces we hold.
                await self._stream(job, resp, tf)
                return
            if self._published.get(job.task_id) is tf:
                resp.discard()
                raise ContentChanged()
            await self._stream(job, resp, None)
            return
        resp = await self._request(job)
        if tf is not None and self._published.get(job.task_id) is tf:
            # Published but nothing written yet: only the same length will do.
            if resp.length is not None and resp.length != tf.length:
                resp.discard()
                raise ContentChanged(f"origin length changed from {tf.length} to {resp.length}")
            await self._stream(job, resp, tf)
            return
        await self._stream(job, resp, None)

    async def _stream(self, job, resp, tf):
        """Read C{resp}'s body into C{tf} (None: a new TaskFile from resp)."""
        self._count_fetch(job)
        if tf is None:
            if resp.length is None:
                await self._spool(job, resp)
                return
            tf = self._create(job, resp.length, resp)
        self._pin(job, tf)
        self._publish(job, tf)
        # On a broken body the pieces in flight land (or fail) before this
        # raises: a retry resumes from the first piece not held, none twice.
        await stream_into(resp, tf, self.runner, _JobEvents(self, job), recheck_held=True,
                          track=lambda d: setattr(job, "current", d),
                          content=self._content_for(job, tf), splice=True)
        if resp.etag != tf.etag and resp.etag or resp.last_modified != tf.last_modified and resp.last_modified:
            tf.set_validators(resp.etag or tf.etag, resp.last_modified or tf.last_modified)

    async def _in_order(self, job, tf):
        """Fetch in L{FetchOrder}: the wanted range's pieces first (a new task:
        its length comes with them), then the rest in bounded ranges. False
        when the origin cannot (no Range, a range past the end), or when the
        pieces held are an earlier job's and the origin cannot check their
        version (no If-Range): the plain path then takes the job."""
        if tf is not None and job.tf is not tf and tf.completed_bytes and not _checkable(tf):
            job.want = job.order = None
            return False
        if tf is None:
            ps = self.piece_size
            first, last = job.want[0] // ps, job.want[1] // ps
            try:
                resp = await self._request(job, first * ps, end=span_end(first, last, ps, None))
            except OriginError as e:
                if e.status != 416:
                    raise
                job.want = None
                return False
            if resp.status != 206 or resp.length is None:
                if resp.status == 206:
                    resp.discard()
                    job.want = None
                    return False
                await self._stream(job, resp, None)    # the whole file, from 0
                return True
            tf = self._create(job, resp.length, resp)
            job.order = FetchOrder(tf.piece_count, SPAN_BYTES // ps)
            job.order.hurry(first, last)
            await self._stream(job, resp, tf)
        elif job.order is None:
            job.order = FetchOrder(tf.piece_count, SPAN_BYTES // tf.piece_size)
            pieces = covering_pieces(job.want, tf.piece_size, tf.length)
            if pieces is not None:
                job.order.hurry(*pieces)
        await self._fill(job, tf)
        return True

    async def _fill(self, job, tf):
        """The pieces C{tf} lacks, one bounded range at a time, in C{job.order}."""
        self._pin(job, tf)
        self._publish(job, tf)
        while True:
            span = job.order.next_span(tf.has)
            if span is None:
                return
            end = span_end(span[0], span[1], tf.piece_size, tf.length)
            resp = await self._request(job, span[0] * tf.piece_size, tf.etag, tf.last_modified,
                                       end=end)
            if resp.status == 206 and resp.length in (None, tf.length):
                await self._stream(job, resp, tf)
                continue
            if resp.status == 200 and _same_entity(tf, resp):
                # Range ignored: the whole file from 0, the held pieces re-verified.
                await self._stream(job, resp, tf)
                return
            resp.discard()
            raise ContentChanged(f"origin's answer to a range ({resp.status}, length "
                                 f"{resp.length}) is not the file being fetched")

    async def _spool(self, job, resp):
        """Origin without Content-Length: download all, then publish."""
        tf = await spool_into(resp, lambda length: self._create(job, length, resp), self.runner,
                              self.spool_dir, _JobEvents(self, job),
                              self.max_spool, track=lambda d: setattr(job, "current", d))
        self._publish(job, tf)

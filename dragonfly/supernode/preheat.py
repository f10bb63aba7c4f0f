"""Preheat: make the supernode's CDN fetch a file (or an image's blobs) ahead of demand.

``POST /api/v1/preheat`` with one of

  - ``{"url": URL, "headers": {...}, "task_id"?, "filter"?: [...], "tag"?}``
    (a file; the task id is derived from the URL like dfget does);
  - ``{"type": "image", "url": "https://REG/v2/NAME/manifests/REF", "headers"}``
    or ``{"image": "REG[:PORT]/NAME[:TAG|@DIGEST]", "insecure"?: bool,
    "platform"?: "linux/amd64"}`` (an OCI/Docker image: its config and layer
    blobs, each a task named by its digest, as the dfdaemon names them)

answers 202 ``{"id", "state", ...}``; ``GET /api/v1/preheat/<id>`` gives
``{"state": "pending|running|done|failed", ...}``. A job simply runs
L{dragonfly.supernode.cdn.CDN.ensure_complete} to completion for each task.
Jobs live in memory (the newest C{max_jobs}).
"""
import json
import os
from collections import OrderedDict

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from dragonfly.control.preheat import (
    MANIFEST_URL_RE, PreheatRequest, PreheatStatus, parse_image_reference)
from dragonfly.origin import OriginError, OriginRefused
from dragonfly.redact import redact_text, redact_url
from dragonfly.supernode.registryauth import Collector, RegistryAuth
from dragonfly.taskid import is_oci_digest

__all__ = ["Preheater", "PreheatSpec", "PreheatJob", "parse_image_reference"]

MAX_MANIFEST = 4 << 20
MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")

#: What a preheat asks for: the request, parsed (see L{PreheatRequest}).
PreheatSpec = PreheatRequest


class PreheatJob:
    def __init__(self, job_id, spec, now):
        self.id = job_id
        self.spec = spec
        self.state = "pending"
        self.created = now
        self.finished = None
        self.error = None
        self.origin_status = None
        self.length = None
        self.tasks = OrderedDict()   # task_id -> {"task_id","url","state","length"?}

    def to_json(self):
        spec = self.spec
        return PreheatStatus(
            self.id, self.state, spec.kind, spec.url, self.created, spec.task_id, self.length,
            list(self.tasks.values()) if spec.kind == "image" else None, self.finished,
            self.error, self.origin_status).to_json()


class Preheater:
    """Runs preheat jobs against the CDN.

    @param clock: IReactorTime (job timestamps).
    @param cdn: has C{ensure_complete(task_id, url, headers)} and C{origin}.
    @param egress: an L{dragonfly.egressguard.EgressGuard} that L{check} asks
        before a job starts (the fetches are checked again at connect time).
    """

    log = Logger()

    def __init__(self, clock, cdn, max_jobs=1024, new_id=None, egress=None):
        self.clock = clock
        self.cdn = cdn
        self.egress = egress
        self.max_jobs = max_jobs
        self._new_id = new_id or (lambda: os.urandom(8).hex())
        self._jobs = OrderedDict()
        #: The API's L{dragonfly.supernode.privateaccess.PrivateAccess}, told
        #: of every task a preheat fetches (it serves no one unchecked).
        self.private_access = None

    def parse(self, body):
        """A L{PreheatSpec} from a request body, else L{MessageError}."""
        return PreheatRequest.parse(body)

    def check(self, spec, timeout=5.0):
        """A Deferred that fails with L{dragonfly.origin.OriginRefused} when the
        egress policy forbids the URL's host (so the API can answer 403 at once).
        Any other trouble (no such name, a slow resolver) is left to the job."""
        if self.egress is None:
            return succeed(None)
        d = self.egress.check_url(spec.url)
        d.addTimeout(timeout, self.clock)

        def other(f):
            if f.check(OriginRefused):
                return f
            return None
        return d.addErrback(other)

    def start(self, spec):
        job = PreheatJob(self._new_id(), spec, self.clock.seconds())
        self._jobs[job.id] = job
        self._trim()
        d = Deferred.fromCoroutine(self._run(job))
        d.addErrback(lambda f: self.log.failure("preheat job {id} crashed", f, id=job.id))
        return job

    def get(self, job_id):
        if not isinstance(job_id, str):
            return None
        return self._jobs.get(job_id)

    def jobs(self):
        return list(self._jobs.values())

    def _trim(self):
        while len(self._jobs) > self.max_jobs:
            for jid, j in self._jobs.items():
                if j.state in ("done", "failed"):
                    del self._jobs[jid]
                    break
            else:
                self._jobs.popitem(last=False)

    async def _run(self, job):
        job.state = "running"
        self.log.info("preheat {id}: {kind} {url}", id=job.id, kind=job.spec.kind,
                      url=redact_url(job.spec.url))
        try:
            if job.spec.kind == "file":
                self._fetching(job.spec.task_id)
                tf = await self.cdn.ensure_complete(job.spec.task_id, job.spec.url, job.spec.headers)
                job.length = tf.length
            else:
                await self._run_image(job)
        except Exception as e:
            job.state = "failed"
            job.error = str(e)
            if isinstance(e, OriginError) and e.status is not None:
                job.origin_status = e.status
            self.log.warn("preheat {id} failed: {err}", id=job.id, err=redact_text(str(e)))
        else:
            job.state = "done"
            self.log.info("preheat {id} done", id=job.id)
        job.finished = self.clock.seconds()

    async def _manifest(self, url, auth):
        resp = await auth.get(url, {"Accept": MANIFEST_ACCEPT})
        if resp.body_length is not None and resp.body_length > MAX_MANIFEST:
            resp.discard()
            raise OriginError(None, f"manifest larger than {MAX_MANIFEST} bytes")
        c = Collector(MAX_MANIFEST, "manifest")
        await resp.deliver(c)
        try:
            doc = json.loads(c.value())
        except ValueError as e:
            raise OriginError(None, f"manifest is not JSON: {e}")
        if not isinstance(doc, dict):
            raise OriginError(None, "manifest is not a JSON object")
        return doc

    async def _run_image(self, job):
        m = MANIFEST_URL_RE.match(job.spec.url)
        base, name = m.group(1), m.group(2)
        # A registry with token auth: the Bearer dance, for the manifests and blobs.
        auth = RegistryAuth(self.cdn.origin, base, name, job.spec.headers, self.egress,
                            self.clock)
        doc = await self._manifest(job.spec.url, auth)
        if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
            chosen = _platform_manifest(doc, job.spec.platform)
            if chosen is None:
                raise OriginError(None, f"image has no manifest for {job.spec.platform}")
            doc = await self._manifest(f"{base}/v2/{name}/manifests/{chosen}", auth)
        blobs = []
        config = doc.get("config")
        for entry in ([config] if isinstance(config, dict) else []) + list(doc.get("layers") or []):
            digest = entry.get("digest") if isinstance(entry, dict) else None
            if not is_oci_digest(digest):
                raise OriginError(None, f"manifest lists a bad blob digest {digest!r}")
            if digest not in job.tasks:
                job.tasks[digest] = {"task_id": digest, "url": f"{base}/v2/{name}/blobs/{digest}",
                                     "state": "running"}
                blobs.append(digest)
        if not blobs:
            raise OriginError(None, "manifest lists no blobs")
        failures = await self._blobs(job, blobs, auth.headers)
        refused = [d for d, e in failures.items() if getattr(e, "status", None) == 401]
        # A token that stopped working mid-preheat: one more exchange, those blobs again.
        if refused and await auth.answer(failures[refused[0]]):
            for digest in refused:
                job.tasks[digest].update(state="running")
                job.tasks[digest].pop("error", None)
                del failures[digest]
            failures.update(await self._blobs(job, refused, auth.headers))
        job.length = sum(t.get("length", 0) for t in job.tasks.values())
        if failures:
            raise next(iter(failures.values()))

    def _fetching(self, task_id):
        if self.private_access is not None:
            self.private_access.fetch_admits_no_one(task_id)

    async def _blobs(self, job, blobs, headers):
        """Fetch C{blobs} (digests) into the CDN with C{headers}: {digest: error}
        of those that failed. Each is the task a mirror pull of it names (its
        digest); fetched with credentials, it is private content (L{dragonfly.privacy}:
        a preheated task serves no one unchecked)."""
        def ok(tf, digest):
            job.tasks[digest].update(state="done", length=tf.length)

        def bad(f, digest):
            job.tasks[digest].update(state="failed", error=redact_text(str(f.value)))
            return f

        ds = []
        for digest in blobs:
            self._fetching(digest)
            d = self.cdn.ensure_complete(digest, job.tasks[digest]["url"], headers)
            d.addCallbacks(ok, bad, callbackArgs=(digest,), errbackArgs=(digest,))
            ds.append(d)
        results = await DeferredList(ds, consumeErrors=True)
        return {digest: r.value for digest, (success, r) in zip(blobs, results) if not success}


def _platform_manifest(doc, platform):
    """The digest of the index C{doc}'s manifest for C{platform} (os/arch[/variant]), or None."""
    want = platform.split("/")
    for entry in doc.get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        p = entry.get("platform") or {}
        if not isinstance(p, dict):
            continue
        have = [p.get("os"), p.get("architecture")] + ([p.get("variant")] if len(want) > 2 else [])
        if have == want and is_oci_digest(entry.get("digest")):
            return entry["digest"]
    return None

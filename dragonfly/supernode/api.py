"""The supernode's HTTP API (Klein), per docs/design.md "Supernode HTTP API".

Every answer is JSON; every error is C{{"error": "..."}} with a 4xx/5xx status
(never an HTML page or a traceback). Request bodies are JSON objects of at
most C{max_body} bytes: L{LimitedRequest} (the request factory of L{api_site},
both in L{dragonfly.supernode.apisite} with the checks every route shares)
stops storing a body as soon as it passes the cap, and the handlers refuse it
with 413 before parsing; under other sites (StubTreq in tests) the cap is
enforced on Content-Length and on the bytes read.
"""
import json

from klein import Klein
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError, TimeoutError, race
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from dragonfly.admission import AdmissionKeys, AdmissionSigner
from dragonfly.control.messages import (
    CorruptReport, ErrorAnswer, HeartbeatAnswer, HeartbeatRequest, LeaveAnswer, LeaveRequest,
    RegisterAnswer, RegisterRequest, ScheduleAnswer, ScheduleRequest, TaskInfo, UploadCut,
    sendable_validators)
from dragonfly.digest import ALGORITHM as DIGEST_ALGORITHM
from dragonfly.httpio import error_body, json_body
from dragonfly.interfaces import PeerInfo
from dragonfly.origin import OriginError, OriginRefused
from dragonfly.redact import redact_text, redact_url
from dragonfly.supernode.apisite import (
    MAX_BODY, ApiError, ApiSite, LimitedRequest, api_site, cancelled, check_identity, parse,
    task_id_of)
from dragonfly.supernode.privateaccess import PrivateAccess
from dragonfly.supernode.cdn import (
    CacheFull, CDNError, ContentMismatch, NotReady, TooLarge, TooManyTasks)
from dragonfly.supernode.dashboard import Dashboard, page as dashboard_page
from dragonfly.supernode.handover import HandOver
from dragonfly.supernode.peerkeys import PeerKeys, WrongSecret
from dragonfly.supernode.scheduler import TooManyPeers, UnknownPeer, UnknownTask
from dragonfly.storage.errors import StoreFull

__all__ = ["SupernodeAPI", "ApiError", "ApiSite", "LimitedRequest", "api_site"]

MAX_WAIT = 30.0


class SupernodeAPI:
    """Routes of the supernode API; state lives in the injected parts.

    @param clock: IReactorTime for long-poll timeouts.
    @param cdn: L{dragonfly.supernode.cdn.CDN}.
    @param scheduler: L{dragonfly.supernode.scheduler.Scheduler}.
    @param metrics: L{dragonfly.metrics.SupernodeMetrics}.
    @param cluster: L{dragonfly.supernode.cluster.Cluster} or None (single node).
    @param preheater: L{dragonfly.supernode.preheat.Preheater} or None.
    @param keys: L{dragonfly.supernode.peerkeys.PeerKeys} (a fresh one if None):
        schedule, heartbeat and leave need the secret a peer got at registration.
    @param trust_advertised: take a registering peer's advertised host as its
        address; by default its address is the request's source address (the
        advertised port stays the peer's).
    @param dashboard: L{dragonfly.supernode.dashboard.Dashboard} (default: one
        over the parts above).
    @param signer: the L{dragonfly.admission.AdmissionSigner} that admits
        registered peers to their task's piece ports (default: a fresh key);
        registration and schedule answers carry its tokens.
    @param admission: the L{dragonfly.admission.AdmissionKeys} of the cluster
        (default: the signer's key alone), handed to registering peers.
    @param handover: L{dragonfly.supernode.handover.HandOver} (default: one
        over the parts above): draining and moving peers when stopping.
    """

    app = Klein()
    log = Logger()

    def __init__(self, clock, cdn, scheduler, metrics, cluster=None, preheater=None,
                 max_body=MAX_BODY, max_wait=MAX_WAIT, keys=None, trust_advertised=False,
                 dashboard=None, signer=None, admission=None, handover=None):
        self.clock = clock
        self.signer = signer if signer is not None else AdmissionSigner.generate(clock)
        if admission is None:
            admission = AdmissionKeys(clock)
            admission.add_all(self.signer.keys())
        self.admission = admission
        self.cdn = cdn
        self.scheduler = scheduler
        self.metrics = metrics
        self.cluster = cluster
        self.preheater = preheater
        self.max_body = max_body
        self.max_wait = max_wait
        self.keys = keys if keys is not None else PeerKeys(clock)
        self.trust_advertised = trust_advertised
        self.dashboard = dashboard or Dashboard(clock, cdn, scheduler, metrics, cluster)
        self.handover = handover or HandOver(clock, scheduler, cdn, cluster)
        self.private_access = PrivateAccess(cdn)

    def resource(self):
        return self.app.resource()

    # -- plumbing ------------------------------------------------------------

    def read_json(self, request):
        """The request's JSON object body, capped at max_body before parsing."""
        if getattr(request, "body_too_large", False):
            raise ApiError(413, f"request body larger than {self.max_body} bytes")
        cl = request.getHeader(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise ApiError(400, "bad Content-Length")
            if n > self.max_body:
                raise ApiError(413, f"request body larger than {self.max_body} bytes")
        content = request.content
        if content is None:
            raw = b""
        else:
            content.seek(0)
            raw = content.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise ApiError(413, f"request body larger than {self.max_body} bytes")
        if not raw.strip():
            raise ApiError(400, "request body must be a JSON object")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, f"malformed JSON: {e}")
        except RecursionError:
            raise ApiError(400, "malformed JSON: nested too deeply")
        if not isinstance(obj, dict):
            raise ApiError(400, "request body must be a JSON object")
        return obj

    def _count(self, endpoint):
        if self.metrics is not None:
            self.metrics.api_requests.labels(endpoint=endpoint).inc()

    def _redirect_if_not_owner(self, request, task_id, redirected, path):
        if self.handover.draining and not self.scheduler.has_task(task_id):
            owner = self.handover.next_owner(task_id)   # stopping: no new tasks
        elif self.cluster is None or redirected:
            return
        else:
            owner = self.cluster.owner(task_id)
        if owner is None:
            return
        answer = ErrorAnswer.owner_redirect(task_id, owner)
        raise ApiError(307, answer.error,
                       headers={b"location": f"http://{owner}{path}".encode("ascii", "replace")},
                       owner=answer.owner)

    # -- error mapping -------------------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request, failure):
        e = failure.value
        for k, v in e.headers.items():
            request.setHeader(k, v)
        return error_body(request, e.status, e.message, compact=True, **e.extra)

    @app.handle_errors(OriginError)
    def _origin_error(self, request, failure):
        e = failure.value
        if isinstance(e, OriginRefused):
            return json_body(request, 403, {"error": redact_text(e.message)}, compact=True)
        body = {"error": redact_text(e.message)}
        if e.status is not None:
            body["origin_status"] = e.status
        return json_body(request, 502, body, compact=True)

    @app.handle_errors(NotReady)
    def _not_ready(self, request, failure):
        request.setHeader(b"retry-after", b"1")
        return error_body(request, 503, str(failure.value), compact=True)

    @app.handle_errors(CacheFull)
    def _cache_full(self, request, failure):
        return error_body(request, 507, str(failure.value), compact=True)

    @app.handle_errors(TooManyPeers, TooManyTasks)
    def _too_many(self, request, failure):
        request.setHeader(b"retry-after", b"5")
        return error_body(request, 429, str(failure.value), compact=True)

    @app.handle_errors(TooLarge)
    def _too_large(self, request, failure):
        return error_body(request, 413, str(failure.value), compact=True)

    @app.handle_errors(WrongSecret)
    def _wrong_secret(self, request, failure):
        self.log.debug("refused a call for peer {peer}: wrong or missing secret",
                       peer=failure.value.peer_id)
        return error_body(request, 403, str(failure.value), compact=True)

    @app.handle_errors(UnknownTask, UnknownPeer)
    def _unknown(self, request, failure):
        return error_body(request, 404, str(failure.value), compact=True)

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return error_body(request, 404, "no such endpoint", compact=True)

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request, failure):
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return error_body(request, 405, "method not allowed", compact=True)

    @app.handle_errors(HTTPException)
    def _http_exception(self, request, failure):
        e = failure.value
        new_url = getattr(e, "new_url", None)   # werkzeug RequestRedirect (slashes)
        if new_url:
            request.setHeader(b"location", new_url.encode("utf-8", "replace"))
        return error_body(request, e.code or 400, e.description or e.name, compact=True)

    @app.handle_errors(ContentMismatch)
    def _content_mismatch(self, request, failure):
        # A verdict on the task (its URL does not serve that content): final.
        return error_body(request, 409, str(failure.value), compact=True)

    @app.handle_errors(CDNError)
    def _cdn_error(self, request, failure):
        return error_body(request, 503, str(failure.value), compact=True)

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self.log.failure("API request {method} {uri} failed", failure,
                         method=request.method, uri=redact_url(request.uri))
        return error_body(request, 500, "internal error", compact=True)

    # -- tasks -----------------------------------------------------------------

    @app.route("/api/v1/tasks", methods=["POST"])
    async def register(self, request):
        """Register a peer for a task; start (or reuse) the CDN fetch."""
        self._count("register")
        req = parse(RegisterRequest, self.read_json(request))
        task_id, peer = req.task_id, req.peer
        self._redirect_if_not_owner(request, task_id, req.redirected, "/api/v1/tasks")
        check = self.private_access.needs_check(req)
        tf = await self.cdn.ensure(task_id, req.url, req.headers, want=req.want)
        if check:   # private content: the origin must accept this caller too
            await self.private_access.admit(req, tf)
        if not self.scheduler.has_task(task_id):
            self._raise_cdn_failure(task_id)   # it failed since (a digest mismatch)
        seed = self.cdn.seed
        secret = token = None
        if peer is not None:
            if peer.peer_id == seed.peer_id:
                raise ApiError(400, "peer_id is the supernode's own")
            check_identity(request, peer.peer_id)
            secret = self.keys.register(peer.peer_id, req.secret)
            self.scheduler.join(task_id, self._bind_address(request, peer))
            token = self.signer.issue(task_id, peer.peer_id)
        return json_body(request, 200, RegisterAnswer(
            task_id, tf.length, tf.piece_size, tf.piece_count, seed, DIGEST_ALGORITHM, secret,
            token, self.admission.keys(), **self.cdn.attestation(task_id),
            **self._version_of(tf)).to_json(), compact=True)

    @staticmethod
    def _version_of(tf):
        """The origin's validators of C{tf}'s content, for a peer's If-Range
        should it fall back to the origin mid-download (RegisterAnswer)."""
        return sendable_validators(getattr(tf, "etag", None), getattr(tf, "last_modified", None))

    def _bind_address(self, request, peer):
        """C{peer} at the request's source address (unless advertised ones are trusted)."""
        if self.trust_advertised:
            return peer
        host = getattr(request.getClientAddress(), "host", None)
        if not host:
            return peer
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:"):]
        return PeerInfo(peer.peer_id, host, peer.port)

    @app.route("/api/v1/tasks/<task_id>/schedule", methods=["POST"])
    async def schedule(self, request, task_id):
        """Batched reports plus a request for up to C{want} assignments (long-poll)."""
        self._count("schedule")
        task_id = task_id_of(task_id)
        req = parse(ScheduleRequest, self.read_json(request))
        peer_id, want, cursor = req.peer_id, req.want, req.cursor
        wait = min(float(req.wait), self.max_wait)
        # A streaming peer holds every piece below its cursor and wants the
        # next ones soonest; absent (or null) = no preference.
        if not self.scheduler.has_task(task_id):
            self._raise_cdn_failure(task_id)
            raise ApiError(404, f"unknown task {task_id!r} (register first)")
        if self.keys.check(peer_id, req.secret) is None:
            raise UnknownPeer(peer_id)
        if cursor is not None and cursor > self.scheduler.piece_count(task_id):
            raise ApiError(400, "cursor is beyond the last piece")
        try:
            self.scheduler.report(task_id, peer_id, list(req.have), [tuple(f) for f in req.failed],
                                  fetched=list(req.fetched))
        except ValueError as e:
            raise ApiError(400, str(e))
        deadline = self.clock.seconds() + wait
        self.cdn.hurry(task_id, cursor)   # a cold range: the origin sends its pieces next
        while True:
            if not self.scheduler.has_task(task_id):
                self._raise_cdn_failure(task_id)   # it failed while we waited
            if self.handover.moving:
                raise ApiError(503, "supernode stopping", moved=True,
                               owner=self.handover.next_owner(task_id))
            assignments = self.scheduler.assign(task_id, peer_id, want, cursor=cursor,
                                                seed_only=req.seed_only, queue=req.queue)
            done = self.scheduler.is_done(task_id, peer_id)
            remaining = deadline - self.clock.seconds()
            if assignments or done or want == 0 or remaining <= 0:
                break
            self._raise_cdn_failure(task_id)
            if not await self._wait_change(request, task_id, remaining, peer_id):
                continue  # timed out: one last assign() above, then answer
        if self.metrics is not None:
            for a in assignments:
                kind = "supernode" if a.source.peer_id == self.cdn.seed.peer_id else "peer"
                self.metrics.assignments.labels(source=kind).inc()
        return json_body(request, 200, ScheduleAnswer(  # verified: once the check passed
            tuple(assignments), done, token=self.signer.issue(task_id, peer_id),
            **self.cdn.attestation(task_id)).to_json(), compact=True)

    def _raise_cdn_failure(self, task_id):
        e = self.cdn.failure(task_id)
        if e is None:
            return
        if isinstance(e, OriginRefused):
            raise ApiError(403, e.message)
        if isinstance(e, ContentMismatch):
            raise ApiError(409, str(e))
        if isinstance(e, (CacheFull, StoreFull)):   # fails every waiting peer at once
            raise ApiError(507, f"the supernode's cache is full: {e}")
        body = {}
        if isinstance(e, OriginError) and e.status is not None:
            body["origin_status"] = e.status
        raise ApiError(502, f"the supernode could not fetch the file: {e}", **body)

    async def _wait_change(self, request, task_id, timeout, peer_id=None):
        """Wait for a change of C{task_id}, C{timeout} seconds at most.

        Returns False on timeout. When the client goes away the wait is cancelled
        at once (the scheduler forgets the waiter; C{peer_id} is C{scheduler.abandoned}).
        """
        d = self.scheduler.changed(task_id, peer_id)
        ended = getattr(self.cdn, "fetch_ended", lambda task_id: None)(task_id)
        # A failing CDN fetch ends the wait too (its 502), and so does a
        # stopping supernode moving its peers (503 "moved").
        ends = [e for e in (ended, self.handover.draining and self.handover.moved()) if e]
        if ends:
            d = race([d] + ends).addCallback(lambda _: None).addErrback(cancelled)
        d.addTimeout(timeout, self.clock)

        def gone(f):
            if not d.called:
                d.cancel()
                self.scheduler.abandoned(task_id, peer_id)   # frees its upload slots

        finished = request.notifyFinish()
        finished.addErrback(gone)
        try:
            await d
        except TimeoutError:
            return False
        except CancelledError:
            raise
        return True

    @app.route("/api/v1/tasks/<task_id>/leave", methods=["POST"])
    def leave(self, request, task_id):
        """A peer is done with the task (idempotent)."""
        self._count("leave")
        task_id = task_id_of(task_id)
        req = parse(LeaveRequest, self.read_json(request))
        if self.keys.check(req.peer_id, req.secret):
            self.scheduler.leave(task_id, req.peer_id)
        return json_body(request, 200, LeaveAnswer().to_json(), compact=True)

    @app.route("/api/v1/tasks/<task_id>/cut", methods=["POST"])
    def cut(self, request, task_id):
        """A peer's upload to a receiver ended mid-piece: check whether the
        receiver died (L{dragonfly.supernode.liveness.LivenessCheck.cut}),
        which frees the upload slots its fetches hold once its port refuses."""
        self._count("cut")
        task_id = task_id_of(task_id)
        req = parse(UploadCut, self.read_json(request))
        liveness = getattr(self.scheduler, "liveness", None)
        if self.keys.check(req.peer_id, req.secret) is not None and liveness is not None:
            liveness.cut(task_id, req.peer_id, req.receiver)
        return json_body(request, 202, LeaveAnswer().to_json(), compact=True)

    @app.route("/api/v1/tasks/<task_id>/corrupt", methods=["POST"])
    def corrupt(self, request, task_id):
        """A holder found the complete task's content wrong: re-verify our copy
        (in the background; it is dropped and fetched again when wrong)."""
        self._count("corrupt")
        task_id = task_id_of(task_id)
        req = parse(CorruptReport, self.read_json(request))
        self.log.info("peer {peer} reports task {task} corrupt: {why}", peer=req.peer_id,
                      task=task_id, why=req.reason)
        self.cdn.rechecker.recheck(task_id, req.reason).addErrback(
            lambda f: self.log.failure("re-verifying {task}", f, task=task_id))
        return json_body(request, 202, LeaveAnswer().to_json(), compact=True)

    @app.route("/api/v1/heartbeat", methods=["POST"])
    def heartbeat(self, request):
        """A peer still serves these tasks: ``{"peer_id", "tasks": [ids]}`` ->
        ``{"unknown": [ids]}`` (tasks it is no longer a member of here)."""
        self._count("heartbeat")
        req = parse(HeartbeatRequest, self.read_json(request))
        if self.keys.check(req.peer_id, req.secret) is None:
            unknown = tuple(req.tasks)      # registered nowhere here (or long ago)
        else:
            unknown = tuple(t for t in req.tasks if not self.scheduler.touch(t, req.peer_id))
        return json_body(request, 200, HeartbeatAnswer(unknown, self.admission.keys()).to_json(),
                         compact=True)

    @app.route("/api/v1/tasks/<task_id>", methods=["GET"])
    def task_info(self, request, task_id):
        self._count("task")
        task_id = task_id_of(task_id)
        status = self.cdn.status(task_id)
        tf = self.cdn.store.get(task_id)
        stats = self.scheduler.task_stats(task_id) if self.scheduler.has_task(task_id) else None
        if status is None and tf is None and stats is None:
            raise ApiError(404, f"unknown task {task_id!r}")
        out = {"task_id": task_id, "url": None, "length": None, "piece_size": None,
               "piece_count": None, "seeded": 0, "peers": 0, "state": "unknown"}
        if status is not None:
            out.update({k: v for k, v in status.items() if k in (
                "url", "length", "piece_count", "seeded", "state", "error", "origin_status")})
        if tf is not None:
            out.update(url=tf.url, length=tf.length, piece_size=tf.piece_size,
                       piece_count=tf.piece_count, seeded=len(tf.completed()))
        if stats is not None:
            out.update(peers=stats["peers"], done_peers=stats["done"], seeded=stats["seeded"])
        return json_body(request, 200, TaskInfo(**out).to_json(), compact=True)

    # -- preheat -----------------------------------------------------------------

    @app.route("/api/v1/preheat", methods=["POST"])
    async def preheat(self, request):
        self._count("preheat")
        if self.preheater is None:
            raise ApiError(404, "preheat is not enabled")
        spec = parse(self.preheater, self.read_json(request))
        if spec.task_id is not None:
            self._redirect_if_not_owner(request, spec.task_id, spec.redirected, "/api/v1/preheat")
        await self.preheater.check(spec)
        job = self.preheater.start(spec)
        return json_body(request, 202, job.to_json(), compact=True)

    @app.route("/api/v1/preheat/<job_id>", methods=["GET"])
    def preheat_status(self, request, job_id):
        self._count("preheat_status")
        if self.preheater is None:
            raise ApiError(404, "preheat is not enabled")
        job = self.preheater.get(job_id)
        if job is None:
            raise ApiError(404, "no such preheat job")
        return json_body(request, 200, job.to_json(), compact=True)

    # -- dashboard ---------------------------------------------------------------

    @app.route("/ui", methods=["GET"])
    def ui(self, request):
        """The live dashboard: one page that polls the two routes below."""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"content-security-policy", b"default-src 'none'; "
                          b"script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                          b"connect-src 'self'; img-src data:")
        return dashboard_page()

    @app.route("/api/v1/dashboard", methods=["GET"])
    def dashboard_overview(self, request):
        return json_body(request, 200, self.dashboard.overview(), compact=True)

    @app.route("/api/v1/dashboard/tasks/<task_id>", methods=["GET"])
    def dashboard_task(self, request, task_id):
        view = self.dashboard.task(task_id_of(task_id))
        if view is None:
            raise ApiError(404, f"unknown task {task_id!r}")
        return json_body(request, 200, view, compact=True)

    # -- health and metrics ------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request):
        seed = self.cdn.seed
        body = {"status": "ok" if seed is not None else "starting", "role": "supernode",
                "tasks": self.dashboard.task_count(), "keys": self.signer.keys()}
        if seed is not None:
            body["seed"] = seed.to_json()
            report = getattr(self.cdn.store, "health_report", None)
            if report is not None:
                body.update(report())   # "degraded" (200) or "unavailable" (503)
        if self.cluster is not None:
            body["cluster"] = self.cluster.status()
        if self.handover.draining:
            body["status"] = "draining"   # the other members take the new tasks
        serving = body["status"] in ("ok", "degraded")
        return json_body(request, 200 if serving else 503, body, compact=True)

    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request):
        if self.metrics is None:
            raise ApiError(404, "metrics are not enabled")
        try:
            stats = self.scheduler.stats()
            self.metrics.tasks.set(stats["tasks"])
            self.metrics.peers.set(stats["peers"])
            active = self.dashboard.active()
            self.metrics.active_tasks.set(active["tasks"])
            self.metrics.active_peers.set(active["peers"])
        except Exception:
            self.log.failure("collecting scheduler stats")
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.render()

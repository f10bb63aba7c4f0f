"""Tests for dragonfly.control.client: against the real supernode API (StubTreq)
and against scripted supernodes (registration failover, redirects, verdicts)."""
import json
import os
from dataclasses import replace
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.server import NOT_DONE_YET

from dragonfly.admission import PeerAdmission
from dragonfly.control.client import (
    _describe, Moved, NotRegistered, SourceFailed, SupernodeClient, SupernodeUnavailable, TaskRefused)
from dragonfly.control.messages import (
    FailedPiece, HeartbeatRequest, LeaveRequest, RegisterRequest, ScheduleAnswer,
    ScheduleRequest)
from dragonfly.digest import ALGORITHM, piece_digest
from dragonfly.interfaces import PeerInfo
from dragonfly.metrics import SupernodeMetrics
from dragonfly.origin import OriginClient
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore
from dragonfly.supernode.api import SupernodeAPI
from dragonfly.supernode.cdn import CDN
from dragonfly.supernode.scheduler import Scheduler
from dragonfly.taskid import task_id_for_url
from dragonfly.test.fakeorigin import FakeOrigin

PIECE = 4096
DATA = os.urandom(PIECE * 2 + 10)     # 3 pieces
URL = "http://origin.test/f"
TASK = task_id_for_url(URL)
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)
ME = PeerInfo("me-1-00000000", "127.0.0.1", 65000)
SN1, SN2, SN3 = ("sn1.test", 8002), ("sn2.test", 8002), ("sn3.test", 8002)
REGISTER = RegisterRequest(TASK, URL, {}, ME)
GOOD = {"task_id": TASK, "length": 10, "piece_size": 4, "piece_count": 3,
        "seed": SEED.to_json(), "piece_digest": ALGORITHM}


class _Hosts:
    """An HTTP client sending each request to the resource named by its host;
    connections to any other host are refused."""

    def __init__(self, by_host):
        self.by_host = by_host
        self._stubs = {}

    def post(self, url, **kw):
        netloc = urlsplit(url).netloc
        resource = self.by_host.get(netloc)
        if resource is None:
            return fail(ConnectionRefusedError(url))
        if self._stubs.get(netloc, (None,))[0] is not resource:
            self._stubs[netloc] = (resource, StubTreq(resource))
        return self._stubs[netloc][1].post(url, **kw)

    def flush(self):
        for _, stub in self._stubs.values():
            stub.flush()


class _Scripted(Resource):
    """A supernode answering each endpoint (the last path segment) from a script:
    C{answers[name]} is (code, body) or a list of them used in turn; None hangs."""

    isLeaf = True

    def __init__(self, **answers):
        Resource.__init__(self)
        self.answers = answers
        self.requests = []

    def render_POST(self, request):
        name = request.path.decode().rsplit("/", 1)[-1]
        self.requests.append((request.path.decode(), json.loads(request.content.read())))
        answer = self.answers.get(name)
        if isinstance(answer, list):
            answer = answer.pop(0)
        if answer is None:
            return NOT_DONE_YET
        code, body = answer
        request.setResponseCode(code)
        return body if isinstance(body, bytes) else json.dumps(body).encode()


def real_api(case, clock):
    """(the real L{SupernodeAPI}, its L{Scheduler}) over a CDN on a store in
    C{case}'s temp dir, whose origin serves L{DATA} at /f in L{PIECE}s."""
    origin = FakeOrigin()
    origin.add("/f", DATA)
    store = PieceStore(case.mktemp(), clock=clock, runner=SyncRunner())
    scheduler = Scheduler(clock)
    metrics = SupernodeMetrics()
    cdn = CDN(clock, store, OriginClient(clock, StubTreq(origin)), scheduler,
              PIECE, metrics, SyncRunner(), seed=SEED)
    return SupernodeAPI(clock, cdn, scheduler, metrics), scheduler


class RealSupernodeTests(SynchronousTestCase):
    """The client against the real supernode API resource."""

    def setUp(self):
        self.clock = Clock()
        self.api, self.scheduler = real_api(self, self.clock)
        self.hosts = _Hosts({"sn1.test:8002": self.api.resource()})
        self.client = SupernodeClient(self.clock, self.hosts, [SN1])

    def run_(self, d):
        if not isinstance(d, Deferred):
            d = Deferred.fromCoroutine(d)
        self.hosts.flush()
        return self.successResultOf(d)

    def test_register_schedule_report_leave(self):
        """A peer registers (keeping its admission token and the supernode's
        key), is assigned every piece from the seed with its size and digest,
        reports them and is done (its token renewed), heartbeats and leaves."""
        addr, answer = self.run_(self.client.register(REGISTER))
        self.assertEqual(addr, SN1)
        self.assertEqual((answer.task_id, answer.length, answer.piece_size, answer.piece_count,
                          answer.seed, answer.piece_digest),
                         (TASK, len(DATA), PIECE, 3, SEED, ALGORITHM))
        # The answer's verifying keys and token are kept for the piece ports.
        self.assertEqual(self.client.admission.token_for(TASK), answer.token)
        self.assertTrue(self.client.admission.verify(answer.token, TASK, ME.peer_id))
        got = self.run_(self.client.schedule(addr, TASK, ScheduleRequest(ME.peer_id, want=5)))
        self.assertEqual(sorted(a.index for a in got.assignments), [0, 1, 2])
        for a in got.assignments:
            chunk = DATA[a.index * PIECE:(a.index + 1) * PIECE]
            self.assertEqual((a.size, a.digest, a.source), (len(chunk), piece_digest(chunk), SEED))
        self.assertFalse(got.done)
        done = self.run_(self.client.report(addr, TASK, ME.peer_id, have=[0, 1, 2]))
        self.assertEqual(replace(done, token=None), ScheduleAnswer((), True))
        self.assertEqual(self.client.admission.token_for(TASK), done.token)
        self.assertTrue(self.client.admission.verify(done.token, TASK, ME.peer_id))
        self.client.joined(TASK, addr)
        self.client.admission = PeerAdmission(self.clock)   # keys come with heartbeats too
        self.assertEqual(self.run_(self.client.heartbeat(ME.peer_id)), [])
        self.assertEqual(self.client.admission.keys(), self.api.signer.keys())
        self.assertIsNone(self.run_(self.client.leave(TASK, ME.peer_id)))
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 0)
        self.assertEqual(self.client.members, {})

    def test_report_failures(self):
        """A report of failed sources reaches the scheduler; the piece is
        assigned again from another source (none here: from nobody)."""
        addr, _ = self.run_(self.client.register(REGISTER))
        self.run_(self.client.schedule(addr, TASK, ScheduleRequest(ME.peer_id, want=1)))
        got = self.run_(self.client.report(addr, TASK, ME.peer_id,
                                           failed=[FailedPiece(0, SEED.peer_id)]))
        self.assertEqual(got.assignments, ())

    def test_forgotten_peer(self):
        """A schedule call of a peer the supernode does not know raises NotRegistered;
        a heartbeat of it forgets the membership."""
        self.run_(self.client.register(REGISTER))
        self.assertRaises(NotRegistered, self.failureResultOf(Deferred.fromCoroutine(
            self.client.schedule(SN1, TASK, ScheduleRequest("other-1-0", want=1)))).raiseException)
        self.client.joined(TASK, SN1)
        self.assertEqual(self.run_(self.client.heartbeat("other-1-0")), [TASK])
        self.assertEqual(self.client.members, {})

    def test_bad_request_is_refused(self):
        """A registration the supernode refuses as malformed is a final TaskRefused."""
        bad = RegisterRequest(TASK, "ftp://origin.test/f", {}, ME)
        f = self.failureResultOf(Deferred.fromCoroutine(self.client.register(bad)), TaskRefused)
        self.assertEqual(str(f.value), "supernode refused the task: url must be http or https")


class RegisterTests(SynchronousTestCase):
    """Registration across a scripted cluster."""

    def make(self, supernodes=(SN1,), **by_host):
        self.clock = Clock()
        self.hosts = _Hosts({f"{h}:8002": r for h, r in by_host.items()})
        self.client = SupernodeClient(self.clock, self.hosts, list(supernodes))
        return self.client

    def register(self, request=REGISTER):
        d = Deferred.fromCoroutine(self.client.register(request))
        self.hosts.flush()
        return d

    def test_body(self):
        """The registration body is the message's JSON, as the supernode expects it."""
        sn = _Scripted(tasks=(200, GOOD))
        self.make(**{"sn1.test": sn})
        self.successResultOf(self.register())
        self.assertEqual(sn.requests, [("/api/v1/tasks", dict(REGISTER.to_json(),
                                                              secret=self.client.secret))])

    def test_https_scheme(self):
        """With scheme="https" (mutual TLS) every call, owner redirects too,
        goes to an https URL."""
        sn1 = _Scripted(tasks=(307, {"error": "not mine", "owner": "sn2.test:8002"}))
        sn2 = _Scripted(tasks=(200, GOOD))
        self.make((SN1, SN2), **{"sn1.test": sn1, "sn2.test": sn2})
        self.client.scheme = "https"
        urls = []
        post = self.hosts.post

        def recording(url, **kw):
            urls.append(url)
            return post(url.replace("https://", "http://", 1), **kw)
        self.hosts.post = recording
        self.successResultOf(self.register())
        self.assertEqual(urls, ["https://sn1.test:8002/api/v1/tasks",
                                "https://sn2.test:8002/api/v1/tasks"])
        self.assertEqual(SupernodeClient(self.clock, self.hosts, []).scheme, "http")

    def test_follows_owner_redirect(self):
        """A 307 {"owner"} sends the registration to the owner; the answer is the
        owner's address; the list's preference is unchanged."""
        sn1 = _Scripted(tasks=(307, {"error": "not mine", "owner": "sn2.test:8002"}))
        sn2 = _Scripted(tasks=(200, GOOD))
        self.make((SN1, SN2), **{"sn1.test": sn1, "sn2.test": sn2})
        addr, answer = self.successResultOf(self.register())
        self.assertEqual((addr, answer.piece_count), (SN2, 3))
        self.assertEqual(len(sn2.requests), 1)

    def test_redirect_loop_and_bad_owner(self):
        """A redirect loop, or a redirect without a usable owner, moves on to the
        next supernode; when none is left the reasons of each are given."""
        sn1 = _Scripted(tasks=(307, {"error": "x", "owner": "sn2.test:8002"}))
        sn2 = _Scripted(tasks=(307, {"error": "x", "owner": "sn1.test:8002"}))
        sn3 = _Scripted(tasks=(307, {"error": "x", "owner": "nowhere"}))
        self.make((SN1, SN2, SN3), **{"sn1.test": sn1, "sn2.test": sn2, "sn3.test": sn3})
        f = self.failureResultOf(self.register(), SupernodeUnavailable)
        self.assertEqual(str(f.value), "sn2.test:8002: redirect loop to sn1.test:8002; "
                                       "sn1.test:8002: redirect loop to sn2.test:8002; "
                                       "sn3.test:8002: redirect without a usable owner")

    def test_following_a_redirect_marks_it(self):
        """The registration sent to the owner a redirect named is marked
        redirected (the owner serves it whatever its view of the cluster)."""
        sn1 = _Scripted(tasks=(307, {"error": "not mine", "owner": "sn2.test:8002"}))
        sn2 = _Scripted(tasks=(200, GOOD))
        self.make((SN1, SN2), **{"sn1.test": sn1, "sn2.test": sn2})
        self.successResultOf(self.register())
        self.assertNotIn("redirected", sn1.requests[0][1])
        self.assertIs(sn2.requests[0][1]["redirected"], True)

    def test_unreachable_owner_is_taken_over(self):
        """When the owner a supernode redirects to is unreachable (it died and
        the redirecting node has not noticed yet), the registration goes back to
        the redirecting node, marked redirected: it takes the task over."""
        sn1 = _Scripted(tasks=[(307, {"error": "not mine", "owner": "sn3.test:8002"}),
                               (200, GOOD)])
        self.make((SN1, SN2, SN3), **{"sn1.test": sn1})   # sn3, the owner, is dead
        addr, answer = self.successResultOf(self.register())
        self.assertEqual(addr, SN1)
        self.assertEqual([r[1].get("redirected", False) for r in sn1.requests], [False, True])

    def test_take_over_refused_again(self):
        """A redirecting node that still redirects after the owner failed ends
        that attempt (no loop); the next supernode of the list is asked."""
        sn1 = _Scripted(tasks=(307, {"error": "not mine", "owner": "sn3.test:8002"}))
        sn2 = _Scripted(tasks=(200, GOOD))
        sn1.answers["tasks"] = [sn1.answers["tasks"]] * 2
        self.make((SN1, SN2, SN3), **{"sn1.test": sn1, "sn2.test": sn2})   # sn3 is dead
        addr, _ = self.successResultOf(self.register())
        self.assertEqual((addr, len(sn1.requests)), (SN2, 2))

    def test_prefer_a_moved_owner(self):
        """register(prefer=owner) asks that owner first, marked redirected; when it
        cannot, the list is tried as usual."""
        sn1 = _Scripted(tasks=(200, GOOD))
        sn3 = _Scripted(tasks=(200, GOOD))
        self.make((SN1, SN2, SN3), **{"sn1.test": sn1, "sn3.test": sn3})
        d = Deferred.fromCoroutine(self.client.register(REGISTER, SN3))
        self.hosts.flush()
        self.assertEqual(self.successResultOf(d)[0], SN3)
        self.assertIs(sn3.requests[0][1]["redirected"], True)
        self.assertEqual(sn1.requests, [])
        del self.hosts.by_host["sn3.test:8002"]
        d = Deferred.fromCoroutine(self.client.register(REGISTER, SN3))
        self.hosts.flush()
        self.assertEqual(self.successResultOf(d)[0], SN1)

    def test_moved_owner_must_be_ours(self):
        """An owner a stopping supernode names that is not one of our supernodes
        is not asked (it would get our registration and secret): the list is."""
        sn1 = _Scripted(tasks=(200, GOOD))
        evil = _Scripted(tasks=(200, GOOD))
        self.make((SN1,), **{"sn1.test": sn1, "evil.test": evil})
        d = Deferred.fromCoroutine(self.client.register(REGISTER, ("evil.test", 8002)))
        self.hosts.flush()
        self.assertEqual(self.successResultOf(d)[0], SN1)
        self.assertEqual(evil.requests, [])

    def test_redirect_chain_is_bounded(self):
        """Owner redirects followed from one supernode are bounded."""
        hosts = {f"r{i}.test": _Scripted(tasks=(307, {"error": "x", "owner": f"r{i + 1}.test:8002"}))
                 for i in range(10)}
        self.make([(f"r{i}.test", 8002) for i in range(10)], **hosts)
        f = self.failureResultOf(self.register(), SupernodeUnavailable)
        self.assertIn("redirect loop to r5.test:8002", str(f.value))

    def test_redirect_only_to_members(self):
        """A 307 whose owner is not one of the configured supernodes is not
        followed (nothing is sent there): that supernode counts as unavailable
        and the next one registers us; with none left, SupernodeUnavailable."""
        evil = _Scripted(tasks=(200, GOOD))
        sn1 = _Scripted(tasks=(307, {"error": "x", "owner": "evil.test:8002"}))
        sn2 = _Scripted(tasks=(200, GOOD))
        self.make((SN1, SN2), **{"sn1.test": sn1, "sn2.test": sn2, "evil.test": evil})
        self.assertEqual(self.successResultOf(self.register())[0], SN2)
        self.assertEqual(evil.requests, [])
        self.make((SN1,), **{"sn1.test": _Scripted(tasks=(307, {"error": "x",
                                                               "owner": "SN1.test:9999"})),
                             "sn1.test:9999": evil})
        f = self.failureResultOf(self.register(), SupernodeUnavailable)
        self.assertEqual(str(f.value), "sn1.test:8002: redirect to SN1.test:9999, "
                                       "not a configured supernode")
        self.assertEqual(evil.requests, [])
        self.flushLoggedErrors()

    def test_redirect_member_case_insensitive(self):
        """A member's host name matches without case."""
        self.make((SN1, SN2))
        self.assertTrue(self.client.is_member(("SN2.Test", 8002)))
        self.assertFalse(self.client.is_member(("sn2.test", 8003)))

    def test_next_supernode_and_preference(self):
        """When the first supernode is unreachable the next one registers us, and is
        asked first from then on."""
        sn2 = _Scripted(tasks=[(200, GOOD), (200, GOOD)])
        self.make((SN1, SN2), **{"sn2.test": sn2})
        self.assertEqual(self.successResultOf(self.register())[0], SN2)
        self.hosts.by_host["sn1.test:8002"] = sn1 = _Scripted(tasks=(200, GOOD))
        self.assertEqual(self.successResultOf(self.register())[0], SN2)
        self.assertEqual(sn1.requests, [])

    def test_unavailable(self):
        """Unreachable supernodes, 5xx, 404, 408, 429, unparseable answers, a
        malformed registration answer or another digest algorithm: the next
        supernode, then SupernodeUnavailable naming each reason."""
        for answer, why in [
                ((500, {"error": "boom"}), "boom"),
                ((503, {}), "HTTP 503"),
                ((404, {"error": "gone"}), "gone"),
                ((429, {"error": "slow down"}), "slow down"),
                ((502, {"error": "origin answered 429", "origin_status": 429}), "answered 429"),
                ((200, b"<html>"), "bad registration answer"),
                ((200, dict(GOOD, piece_count=9)), "bad registration answer: piece_count"),
                ((200, dict(GOOD, piece_digest="sha256")), "digests pieces with 'sha256'"),
                ((200, {k: v for k, v in GOOD.items() if k != "piece_digest"}), "'sha256'"),
                ((502, b"x" * 2000000), "supernode answer too large")]:
            self.make((SN1, SN2), **{"sn1.test": _Scripted(tasks=answer)})
            f = self.failureResultOf(self.register(), SupernodeUnavailable)
            self.assertIn(f"sn1.test:8002: ", str(f.value))
            self.assertIn(why, str(f.value))
            self.assertIn("sn2.test:8002: connection refused", str(f.value))
        self.make(())
        f = self.failureResultOf(self.register(), SupernodeUnavailable)
        self.assertEqual(str(f.value), "no supernodes configured")

    def test_verdicts(self):
        """An origin 4xx relayed by the supernode, or a refusal of the request, is
        final: TaskRefused, and the next supernode is not asked."""
        for answer, text in [
                ((502, {"error": "origin answered 404", "origin_status": 404}),
                 "origin answered 404"),
                ((400, {"error": "bad url"}), "supernode refused the task: bad url"),
                ((403, {}), "supernode refused the task: HTTP 403")]:
            sn2 = _Scripted(tasks=(200, GOOD))
            self.make((SN1, SN2), **{"sn1.test": _Scripted(tasks=answer), "sn2.test": sn2})
            f = self.failureResultOf(self.register(), TaskRefused)
            self.assertEqual(str(f.value), text)
            self.assertEqual(sn2.requests, [])

    def test_registration_answer(self):
        """A well-formed registration answer gives length, piece size, count and
        the seed."""
        answer = {"task_id": TASK, "length": 100, "piece_size": 64, "piece_count": 2,
                  "seed": SEED.to_json(), "piece_digest": ALGORITHM}
        self.make((SN1,), **{"sn1.test": _Scripted(tasks=(200, answer))})
        _, got = self.successResultOf(self.register())
        self.assertEqual((got.length, got.piece_size, got.piece_count, got.seed),
                         (100, 64, 2, SEED))

    def test_bad_registration_fields(self):
        """A bad length, piece size, piece count or digest algorithm makes the
        answer unusable: the supernode is passed over, naming the culprit."""
        answer = {"task_id": TASK, "length": 100, "piece_size": 64, "piece_count": 2,
                  "seed": SEED.to_json(), "piece_digest": ALGORITHM}
        for kw, why in (({"length": -1}, "length"), ({"length": True}, "length"),
                        ({"piece_size": 0}, "piece_size"), ({"piece_count": 3}, "piece_count"),
                        ({"piece_digest": "md5"}, "'md5'")):
            self.make((SN1,), **{"sn1.test": _Scripted(tasks=(200, dict(answer, **kw)))})
            f = self.failureResultOf(self.register(), SupernodeUnavailable)
            self.assertIn("bad registration answer", str(f.value))
            self.assertIn(why, str(f.value))

    def test_timeout(self):
        """A registration that gets no answer within register_timeout moves on."""
        self.make((SN1,), **{"sn1.test": _Scripted(tasks=None)})
        self.client.register_timeout = 30
        d = self.register()
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        f = self.failureResultOf(d, SupernodeUnavailable)
        self.assertEqual(str(f.value), "sn1.test:8002: timed out")


class ScheduleTests(SynchronousTestCase):
    """Schedule, report, heartbeat and leave against a scripted supernode."""

    def setUp(self):
        self.clock = Clock()
        self.sn = _Scripted()
        self.hosts = _Hosts({"sn1.test:8002": self.sn})
        self.client = SupernodeClient(self.clock, self.hosts, [SN1], api_timeout=10)

    def schedule(self, request=ScheduleRequest(ME.peer_id, (1,), (FailedPiece(2, "x-1"),), 3, 5)):
        d = Deferred.fromCoroutine(self.client.schedule(SN1, TASK, request))
        self.hosts.flush()
        return d

    def test_request_body(self):
        """The schedule body is the message's JSON at the task's schedule path."""
        self.sn.answers["schedule"] = (200, {"assignments": [], "done": False})
        self.successResultOf(self.schedule())
        self.assertEqual(self.sn.requests, [(f"/api/v1/tasks/{TASK}/schedule", {
            "peer_id": ME.peer_id, "have": [1], "failed": [{"index": 2, "source": "x-1"}],
            "want": 3, "wait": 5, "secret": self.client.secret})])

    def test_request_body_with_cursor(self):
        """have, failed (as index/source objects), want, wait, the cursor and our
        peer id, as the peer's session sends them; the answer's assignments."""
        self.sn.answers["schedule"] = (200, {"assignments": [], "done": False})
        answer = self.successResultOf(self.schedule(
            ScheduleRequest(ME.peer_id, [1], [(2, "p")], 3, 0, 4)))
        self.assertEqual(answer.assignments, ())
        self.assertEqual(self.sn.requests, [(f"/api/v1/tasks/{TASK}/schedule", {
            "peer_id": ME.peer_id, "have": [1], "failed": [{"index": 2, "source": "p"}],
            "want": 3, "wait": 0, "cursor": 4, "secret": self.client.secret})])

    def test_errors(self):
        """404 is NotRegistered, 502 SourceFailed (the supernode's origin fetch
        failed: no use asking again), 507 too (it cannot store the file), other 5xx SupernodeUnavailable, another
        refusal TaskRefused."""
        for answer, exc, text in [
                ((404, {"error": "unknown peer"}), NotRegistered, ""),
                ((503, {"error": "overloaded"}), SupernodeUnavailable, "HTTP 503: overloaded"),
                ((502, {}), SourceFailed, "the supernode could not fetch the file"),
                ((502, {"error": "origin broke off"}), SourceFailed, "origin broke off"),
                ((507, {"error": "the supernode's cache is full: no room"}), SourceFailed,
                 "the supernode's cache is full: no room"),
                ((500, {}), SupernodeUnavailable, "HTTP 500: "),
                ((400, {"error": "bad cursor"}), TaskRefused,
                 "supernode refused to schedule: bad cursor"),
                ((409, {}), TaskRefused, "supernode refused to schedule: 409")]:
            self.sn.answers["schedule"] = answer
            f = self.failureResultOf(self.schedule(), exc)
            self.assertEqual(str(f.value), text)

    def test_moved(self):
        """503 {"moved": true, "owner"} is Moved with the owner's address (None
        when it names none usable); Moved is a NotRegistered."""
        for body, owner in [({"error": "stopping", "moved": True, "owner": "sn2.test:8002"}, SN2),
                            ({"error": "stopping", "moved": True, "owner": None}, None),
                            ({"error": "stopping", "moved": True}, None)]:
            self.sn.answers["schedule"] = (503, body)
            f = self.failureResultOf(self.schedule(), Moved)
            self.assertEqual(f.value.owner, owner)
            self.assertIsInstance(f.value, NotRegistered)

    def test_bad_answers(self):
        """A malformed assignment is set aside; an answer whose envelope does not
        parse counts as no assignments."""
        good = {"index": 0, "size": 4, "digest": "0" * 64, "source": SEED.to_json()}
        self.sn.answers["schedule"] = (200, {"assignments": [good, {"index": 1}], "done": False})
        answer = self.successResultOf(self.schedule())
        self.assertEqual([a.index for a in answer.assignments], [0])
        self.assertEqual(len(answer.rejected), 1)
        for body in ({"assignments": "x", "done": False}, b"not json"):
            self.sn.answers["schedule"] = (200, body)
            answer = self.successResultOf(self.schedule())
            self.assertEqual((answer.assignments, len(answer.rejected)), ((), 1))

    def test_timeout_is_wait_plus_api_timeout(self):
        """A schedule call gives up after its long-poll wait plus api_timeout (the
        request is cancelled: as the HTTP client says it, never a result)."""
        d = self.schedule()
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, DeferredTimeoutError, ResponseNeverReceived)
        self.assertEqual(_describe(f), "timed out")

    def test_report(self):
        """report() sends want 0 and wait 0 with the news and the cursor."""
        self.sn.answers["schedule"] = (200, {"assignments": [], "done": True})
        d = self.client.report(SN1, TASK, ME.peer_id, have=[3], cursor=2)
        self.hosts.flush()
        self.assertTrue(self.successResultOf(d).done)
        self.assertEqual(self.sn.requests[0][1], ScheduleRequest(
            ME.peer_id, (3,), (), 0, 0, 2, self.client.secret).to_json())

    def test_heartbeat(self):
        """Each supernode is told the member tasks we serve there; tasks it answers
        as unknown are forgotten; a failing supernode is logged, not raised."""
        sn2 = _Scripted(heartbeat=(200, {"unknown": ["t2"]}))
        self.hosts.by_host["sn2.test:8002"] = sn2
        self.sn.answers["heartbeat"] = (500, {"error": "boom"})
        for task, sn in (("t1", SN1), ("t2", SN2), ("t3", SN2), ("t4", SN2), ("t5", SN3)):
            self.client.joined(task, sn)
        d = Deferred.fromCoroutine(self.client.heartbeat(ME.peer_id, lambda t: t != "t4"))
        self.hosts.flush()
        self.assertEqual(self.successResultOf(d), ["t2"])
        self.assertEqual(self.sn.requests, [("/api/v1/heartbeat",
                                             HeartbeatRequest(ME.peer_id, ("t1",),
                                                              self.client.secret).to_json())])
        self.assertEqual(sn2.requests[0][1], {"peer_id": ME.peer_id, "tasks": ["t2", "t3"],
                                              "secret": self.client.secret})
        self.assertEqual(self.client.members, {"t1": SN1, "t3": SN2, "t4": SN2, "t5": SN3})
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_report_corrupt(self):
        """report_corrupt() posts a CorruptReport to the supernode named (or to
        each of the list); it never fails."""
        from dragonfly.control.messages import CorruptReport
        self.sn.answers["corrupt"] = [(202, {}), (500, {})]
        d = self.client.report_corrupt(TASK, ME.peer_id, "piece 3 failed", SN1)
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(d))
        d = self.client.report_corrupt(TASK, ME.peer_id, "again")
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.sn.requests, [
            (f"/api/v1/tasks/{TASK}/corrupt", CorruptReport(ME.peer_id, "piece 3 failed").to_json()),
            (f"/api/v1/tasks/{TASK}/corrupt", CorruptReport(ME.peer_id, "again").to_json())])
        d = self.client.report_corrupt(TASK, ME.peer_id, "x", SN3)
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_report_cut(self):
        """report_cut() posts an UploadCut (with our secret) to the supernode
        that counts us in the task's swarm, at most once per receiver per
        CUT_INTERVAL; nothing for a task we are no member of; it never fails
        (an older supernode's 404 is ignored)."""
        from dragonfly.control.client import CUT_INTERVAL
        from dragonfly.control.messages import UploadCut
        self.sn.answers["cut"] = [(404, {"error": "no such endpoint"}), (202, {}), (202, {})]
        self.assertIsNone(self.successResultOf(self.client.report_cut(TASK, ME.peer_id, "r-1")))
        self.assertEqual(self.sn.requests, [])
        self.client.joined(TASK, SN1)
        for receiver in ("r-1", "r-1", "r-2"):
            d = self.client.report_cut(TASK, ME.peer_id, receiver)
            self.hosts.flush()
            self.assertIsNone(self.successResultOf(d))
        self.clock.advance(CUT_INTERVAL)
        d = self.client.report_cut(TASK, ME.peer_id, "r-1")
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(d))
        body = [UploadCut(ME.peer_id, r, self.client.secret).to_json() for r in ("r-1", "r-2", "r-1")]
        self.assertEqual(self.sn.requests, [(f"/api/v1/tasks/{TASK}/cut", b) for b in body])

    def test_leaves_done(self):
        """leaves_done fires at once with no leave in flight, else once every
        leave sent is answered; a hanging one is cancelled after the timeout."""
        self.assertIsNone(self.successResultOf(self.client.leaves_done(2)))
        self.sn.answers["leave"] = (200, {})
        self.client.joined(TASK, SN1)
        self.client.leave(TASK, ME.peer_id)
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(self.client.leaves_done(2)))
        self.sn.answers["leave"] = None     # hangs
        left = self.client.leave_at(SN1, TASK, ME.peer_id)
        d = self.client.leaves_done(2)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(left))
        self.assertIsNone(self.successResultOf(self.client.leaves_done(2)))

    def test_leave(self):
        """leave() forgets the membership and tells its supernode; it never fails,
        and does nothing for a task we are no member of."""
        self.sn.answers["leave"] = (500, {})
        self.client.joined(TASK, SN1)
        d = self.client.leave(TASK, ME.peer_id)
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.sn.requests, [(f"/api/v1/tasks/{TASK}/leave",
                                             LeaveRequest(ME.peer_id,
                                                          self.client.secret).to_json())])
        self.assertIsNone(self.successResultOf(self.client.leave(TASK, ME.peer_id)))
        self.assertEqual(len(self.sn.requests), 1)
        self.assertIsNone(self.successResultOf(self.client.leave_at(SN3, TASK, ME.peer_id)))

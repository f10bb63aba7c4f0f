"""The peer's supernode client: every call a peer makes on a supernode.

L{SupernodeClient} owns the list of supernodes (the one that answered last is
tried first, then the others in order), registration across them (an owner
redirect, 307 C{{"owner"}}, is followed to the supernode owning the task when
that is one of the configured supernodes, else it counts as this supernode
failing; an unreachable or failing supernode makes it try the next), the calls of a
registered peer (schedule, report, heartbeat, leave) with their timeouts, and
the peer's memberships (which supernode counts us in which task's swarm).
Requests are built and answers parsed with L{dragonfly.control.messages}.
It also keeps the peer's secret at each supernode (offered at registration,
the answer's one kept) and adds it to every schedule, heartbeat and leave.

Failover: when the owner a supernode redirects to cannot be reached (it died
and the redirecting node has not noticed yet), the registration goes back to
the redirecting supernode marked C{redirected}, which then takes the task over
(the next member in the task's rendezvous order serves it, not the origin).

What an answer means for the download is said with four exceptions:
L{SupernodeUnavailable} (no supernode can serve the task: go to the origin),
L{NotRegistered} (the supernode forgot us: register again), L{Moved} (the
supernode is stopping and names the next owner: register there) and L{TaskRefused}
(a final verdict on the task itself, e.g. the origin answered 404: do not ask
the origin either). Transport failures and timeouts of a schedule call are
raised as they are (the caller retries them).
"""
import json
import secrets
from dataclasses import replace

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger

from dragonfly.admission import PeerAdmission
from dragonfly.control.messages import (
    CorruptReport, ErrorAnswer, HeartbeatAnswer, HeartbeatRequest, LeaveRequest, MessageError,
    RegisterAnswer, ScheduleAnswer, ScheduleRequest, UploadCut)
from dragonfly.digest import ALGORITHM as DIGEST_ALGORITHM
from dragonfly.egress import REFUSAL_PREFIX
from dragonfly.origin import collect_capped
from dragonfly.httpio import describe as _describe

__all__ = ["SupernodeClient", "SupernodeUnavailable", "SourceFailed", "NotRegistered",
           "Moved", "TaskRefused", "EgressRefused", "MAX_ANSWER"]

#: Bytes of a supernode answer we read at most.
MAX_ANSWER = 1024 * 1024
#: Owner redirects one registration follows at one supernode of the list.
MAX_REDIRECTS = 4
#: Seconds between two cut reports of one receiver of one task (report_cut),
#: and the (task, receiver) pairs remembered before the old ones are dropped.
CUT_INTERVAL = 5.0
MAX_CUTS = 4096


class SupernodeUnavailable(Exception):
    """No supernode could (or would any longer) schedule this task: go to the origin."""


class SourceFailed(SupernodeUnavailable):
    """The supernode gave up fetching the task from its origin (a 502 on
    schedule): asking it again will not help, so go to the origin at once."""


class NotRegistered(Exception):
    """The supernode forgot us (404 on schedule): register again."""


class Moved(NotRegistered):
    """The supernode is stopping (503 with C{owner} on schedule): register
    again, at C{owner} (host, port) first, or anywhere when it is None."""

    def __init__(self, owner=None):
        NotRegistered.__init__(self, owner)
        self.owner = owner


class TaskRefused(Exception):
    """A supernode's final verdict on the task (bad request, origin 4xx); C{str()}
    is a one-line reason fit for a user."""


class EgressRefused(TaskRefused):
    """The supernode's egress policy forbids the origin (403); C{str()} is its
    line, starting with C{origin not allowed: }."""


def _name(addr):
    return f"{addr[0]}:{addr[1]}"


def _url(addr, path, scheme="http"):
    host, port = addr
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def _error_of(code, obj):
    """The error body of an answer, as tolerant of a malformed one as the peer has been."""
    try:
        answer = ErrorAnswer.parse(obj)
    except MessageError:
        owner = obj.get("owner")
        return ErrorAnswer(f"HTTP {code}", None, None if owner is None else str(owner))
    if not answer.error:
        return ErrorAnswer(f"HTTP {code}", answer.origin_status, answer.owner)
    return answer


def _owner_of(obj):
    """The C{owner} of an answer as (host, port), or None."""
    try:
        return ErrorAnswer(str(obj.get("error", "")), None, obj.get("owner")).owner_address()
    except (MessageError, TypeError, ValueError):
        return None


class SupernodeClient:
    """A peer's calls on its supernodes.

    @param clock: IReactorTime for the calls' timeouts.
    @param http_client: a treq-like HTTPClient (C{post(url, json=, ...)}).
    @param supernodes: [(host, port), ...], tried in order.
    @param api_timeout: seconds for a heartbeat or leave, and for a schedule
        call beyond the long-poll wait it asks for.
    @param register_timeout: seconds for one registration (the supernode may
        first fetch the file's head from its origin).
    @ivar members: {task_id: (host, port)}: the supernode that counts us in
        the task's swarm (set it with L{joined}; L{heartbeat} and L{leave} use it).
    @ivar secrets: {(host, port): secret}: our secret at each supernode, from
        its registration answers; L{secret} is the one we offer where we have none.
    @ivar admission: a L{dragonfly.admission.PeerAdmission} (the C{admission}
        given, else a fresh one): registration answers add their verifying
        keys to it, registration and schedule answers their tokens.
    @param scheme: C{http}, or C{https} when the supernodes speak mutual TLS
        (C{http_client} then presents our certificate); owner redirects too.
    """

    log = Logger()

    def __init__(self, clock, http_client, supernodes, *, api_timeout=15.0,
                 register_timeout=120.0, max_answer=MAX_ANSWER, admission=None, scheme="http"):
        self._clock = clock
        self.scheme = scheme
        self._http = http_client
        self.supernodes = list(supernodes)
        self.api_timeout = api_timeout
        self.register_timeout = register_timeout
        self.max_answer = max_answer
        self.members = {}
        self.secret = secrets.token_urlsafe(16)
        self.secrets = {}
        self.admission = admission if admission is not None else PeerAdmission(clock)
        self._preferred = 0        # index of the supernode that answered last
        self._leaving = set()      # leave calls not answered yet
        self._cuts = {}            # (task_id, receiver) -> when its cut was last reported

    # -- one call ----------------------------------------------------------------

    async def call(self, addr, path, body, timeout):
        """POST the JSON object C{body} to a supernode: (status, answer object).

        An answer that is not a JSON object reads as C{{"error": ...}}. Raises
        on transport trouble, and L{DeferredTimeoutError} after C{timeout} seconds.
        """
        d = Deferred.fromCoroutine(self._post(addr, path, body))
        d.addTimeout(timeout, self._clock)
        return await d

    async def _post(self, addr, path, body):
        response = await self._http.post(
            _url(addr, path, self.scheme), json=body, allow_redirects=False, unbuffered=True,
            reactor=self._clock)
        raw = await collect_capped(response, self.max_answer, "supernode answer")
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            obj = {"error": f"unparseable answer ({len(raw)} bytes)"}
        return response.code, obj

    # -- registration ----------------------------------------------------------------

    async def register(self, request, prefer=None):
        """Register with a supernode: (addr, L{RegisterAnswer}).

        C{request} is a L{dragonfly.control.messages.RegisterRequest}. Raises
        L{TaskRefused} on a verdict about the task, L{SupernodeUnavailable}
        when no supernode registered us (every reason, one per supernode).
        C{prefer}: (host, port) of the owner a stopping supernode named; it
        is asked first, as a redirect's target (it serves the task itself),
        if it is one of our supernodes (like any redirect).
        """
        if not self.supernodes and prefer is None:
            raise SupernodeUnavailable("no supernodes configured")
        errors = []
        n = len(self.supernodes)
        order = [self.supernodes[(self._preferred + i) % n] for i in range(n)]
        if prefer is not None and not self.is_member(prefer):
            self.log.error("told to move task {task} to {owner}, which is not one of our "
                           "--supernodes; not following", task=request.task_id,
                           owner=_name(prefer))
            prefer = None
        if prefer is not None:
            answer = await self._register_at(prefer, replace(request, redirected=True), errors)
            if answer is not None:
                return answer
        for first in order:
            answer = await self._register_at(first, request, errors)
            if answer is not None:
                if first in self.supernodes:
                    self._preferred = self.supernodes.index(first)
                return answer
        raise SupernodeUnavailable("; ".join(errors) or "no supernode answered")

    async def _register_at(self, addr, request, errors):
        """(addr, answer) from C{addr} or the owner it redirects to; None (with
        the reason in C{errors}) to try the next supernode."""
        seen = set()
        via = None          # the supernode that redirected us to addr
        while True:
            seen.add(addr)
            body = replace(request, secret=self.secrets.get(addr, self.secret)).to_json()
            try:
                code, obj = await self.call(addr, "/api/v1/tasks", body, self.register_timeout)
            except CancelledError:
                raise
            except Exception as e:
                errors.append(f"{_name(addr)}: {_describe(e)}")
                if via is None:
                    return None
                # The owner is gone and the node that sent us there does not
                # know yet: it takes the task over (the next in its order).
                self.log.info("owner {owner} of {task} unreachable; {via} takes it over",
                              owner=_name(addr), task=request.task_id, via=_name(via))
                addr, via = via, None
                continue
            if code == 200:
                try:
                    answer = self._registration(obj)
                    if answer.secret is not None:
                        self.secrets[addr] = answer.secret
                    self.admission.add_all(answer.keys)
                    self.admission.admit(answer.task_id, answer.token)
                    return addr, answer
                except MessageError as e:
                    errors.append(f"{_name(addr)}: bad registration answer: {e}")
                    return None
            error = _error_of(code, obj)
            if code != 307:
                self._refused(code, error)
                errors.append(f"{_name(addr)}: {error.error}")
                return None
            try:
                nxt = error.owner_address()
            except MessageError:
                errors.append(f"{_name(addr)}: redirect without a usable owner")
                return None
            if not self.is_member(nxt):
                # Only a configured supernode gets our registration (and its
                # secret): an owner elsewhere makes this supernode unusable.
                self.log.error("supernode {sn} redirected task {task} to {owner}, which is not "
                               "one of our --supernodes; not following",
                               sn=_name(addr), task=request.task_id, owner=_name(nxt))
                errors.append(f"{_name(addr)}: redirect to {_name(nxt)}, "
                              f"not a configured supernode")
                return None
            if nxt in seen or len(seen) > MAX_REDIRECTS:
                errors.append(f"{_name(addr)}: redirect loop to {error.owner}")
                return None
            self.log.debug("task {task} owned by {owner}", task=request.task_id, owner=error.owner)
            # Following a redirect: the owner serves the task whatever its view.
            addr, via, request = nxt, addr, replace(request, redirected=True)

    def is_member(self, addr):
        """Is C{addr} (host, port) one of the configured supernodes (host names
        compared without case)?"""
        host, port = addr
        return any(h.lower() == host.lower() and p == port for h, p in self.supernodes)

    @staticmethod
    def _registration(obj):
        answer = RegisterAnswer.parse(obj)
        if answer.piece_digest != DIGEST_ALGORITHM:
            raise MessageError(
                "piece_digest", f"the supernode digests pieces with {answer.piece_digest!r}, "
                f"this peer checks {DIGEST_ALGORITHM!r} (run the same dragonfly version)")
        return answer

    @staticmethod
    def _refused(code, error):
        """Raise L{TaskRefused} when an answer is a verdict about the task itself."""
        status = error.origin_status
        if code == 403 and error.error.startswith(REFUSAL_PREFIX):
            raise EgressRefused(error.error)
        if code == 502 and status is not None and 400 <= status < 500 and status not in (408, 429):
            raise TaskRefused(f"origin answered {status}")
        if 400 <= code < 500 and code not in (404, 408, 429):
            raise TaskRefused(f"supernode refused the task: {error.error}")

    # -- a registered peer's calls ------------------------------------------------------

    async def schedule(self, addr, task_id, request):
        """One schedule call at C{addr}: L{ScheduleAnswer}.

        C{request} is a L{ScheduleRequest}; the call may take its C{wait} plus
        C{api_timeout} seconds. Raises L{NotRegistered} (404),
        L{SourceFailed} (502: the supernode's own origin fetch failed),
        L{SupernodeUnavailable} (other 5xx), L{TaskRefused} (another refusal), or
        the transport's error. An answer whose envelope does not parse counts
        as no assignments (C{rejected} says why).
        """
        request = replace(request, secret=self.secrets.get(addr, self.secret))
        code, obj = await self.call(addr, f"/api/v1/tasks/{task_id}/schedule",
                                    request.to_json(), request.wait + self.api_timeout)
        if code == 404:
            raise NotRegistered()
        if code == 503 and obj.get("moved"):
            raise Moved(_owner_of(obj))
        if code in (502, 507):   # 507: it could not store it (its disk is full)
            raise SourceFailed(obj.get("error") or "the supernode could not fetch the file")
        if code != 200:
            if code >= 500:
                raise SupernodeUnavailable(f"HTTP {code}: {obj.get('error', '')}")
            raise TaskRefused(f"supernode refused to schedule: {obj.get('error') or code}")
        try:
            answer = ScheduleAnswer.parse(obj)
            self.admission.admit(task_id, answer.token)
            return answer
        except MessageError as e:
            self.log.warn("bad schedule answer for {task} from {sn}: {why}",
                          task=task_id, sn=_name(addr), why=str(e))
            return ScheduleAnswer((), False, (e,))

    def report(self, addr, task_id, peer_id, have=(), failed=(), cursor=None):
        """Report pieces held and sources failed without asking for any (want
        and wait 0): a Deferred L{ScheduleAnswer}, failing like L{schedule}."""
        request = ScheduleRequest(peer_id, tuple(have), tuple(failed), 0, 0, cursor)
        return Deferred.fromCoroutine(self.schedule(addr, task_id, request))

    # -- memberships ----------------------------------------------------------------------

    def joined(self, task_id, addr):
        """We are a member of C{task_id}'s swarm at C{addr}."""
        self.members[task_id] = addr

    def leave(self, task_id, peer_id):
        """Tell the supernode we no longer serve C{task_id} (best effort): a Deferred
        that never fails (None at once when we are no member)."""
        addr = self.members.pop(task_id, None)
        if addr is None:
            return succeed(None)
        return self.leave_at(addr, task_id, peer_id)

    def leave_at(self, addr, task_id, peer_id):
        """Leave C{task_id} at C{addr} (best effort): a Deferred that never fails."""
        d = Deferred.fromCoroutine(self.call(
            addr, f"/api/v1/tasks/{task_id}/leave",
            LeaveRequest(peer_id, self.secrets.get(addr, self.secret)).to_json(),
            self.api_timeout))

        def failed(f):
            self.log.debug("leave {task} at {sn} failed: {why}", task=task_id,
                           sn=_name(addr), why=_describe(f))
        d.addCallbacks(lambda _: None, failed)
        if not d.called:
            self._leaving.add(d)
            d.addBoth(lambda r: self._leaving.discard(d) or r)
        return d

    def leaves_done(self, timeout):
        """A Deferred firing (with None, never failing) once every leave call
        sent so far is answered or failed, or after C{timeout} seconds, when
        those still unanswered are cancelled: a stopping peer waits on it
        before its HTTP pool closes, so its swarms drop it at once."""
        pending = list(self._leaving)
        if not pending:
            return succeed(None)
        d = DeferredList(pending, consumeErrors=True)
        d.addTimeout(timeout, self._clock)

        def late(f):
            f.trap(DeferredTimeoutError)
            self.log.info("leave calls unanswered after {t} s: stopping anyway", t=timeout)
        return d.addCallbacks(lambda _: None, late)

    def report_cut(self, task_id, peer_id, receiver_id):
        """Tell the supernode that counts us in C{task_id}'s swarm that our
        upload to C{receiver_id} was cut (best effort, L{UploadCut}): a
        Deferred that never fails (None at once when we are no member, or
        when this receiver of this task was reported within
        L{CUT_INTERVAL} seconds: a receiver that keeps cutting its
        connections makes us call at that rate at most)."""
        addr = self.members.get(task_id)
        now = self._clock.seconds()
        key = (task_id, receiver_id)
        last = self._cuts.get(key)
        if addr is None or last is not None and now - last < CUT_INTERVAL:
            return succeed(None)
        if len(self._cuts) >= MAX_CUTS:
            self._cuts = {k: t for k, t in self._cuts.items() if now - t < CUT_INTERVAL}
        self._cuts[key] = now
        body = UploadCut(peer_id, receiver_id, self.secrets.get(addr, self.secret)).to_json()
        d = Deferred.fromCoroutine(self.call(addr, f"/api/v1/tasks/{task_id}/cut", body,
                                             self.api_timeout))

        def failed(f):
            self.log.debug("cut report for {task} to {sn} failed: {why}", task=task_id,
                           sn=_name(addr), why=_describe(f))
        return d.addCallbacks(lambda _: None, failed)

    def report_corrupt(self, task_id, peer_id, reason, addr=None):
        """Tell the supernode at C{addr} (None: every supernode of the list) that
        our complete copy of C{task_id} failed a digest and was dropped, so it
        re-verifies its own (best effort): a Deferred that never fails."""
        body = CorruptReport(peer_id, reason[:1000]).to_json()
        targets = [addr] if addr is not None else list(self.supernodes)

        async def send():
            for sn in targets:
                try:
                    await self.call(sn, f"/api/v1/tasks/{task_id}/corrupt", body,
                                    self.api_timeout)
                except Exception as e:
                    self.log.info("corrupt report for {task} to {sn} failed: {why}",
                                  task=task_id, sn=_name(sn), why=_describe(e))
        return Deferred.fromCoroutine(send())

    async def heartbeat(self, peer_id, serving=lambda task_id: True):
        """Tell each supernode which of its tasks we still serve.

        C{serving(task_id)} picks the member tasks to name. A supernode that
        answers a task as unknown no longer counts us in it: the task is no
        longer a membership (no more heartbeats, no leave for it). Failures
        are logged, never raised. Returns the task ids forgotten so.
        """
        by_sn = {}
        for task_id, sn in self.members.items():
            if serving(task_id):
                by_sn.setdefault(sn, []).append(task_id)
        forgotten = []
        for sn, tasks in by_sn.items():
            answer = await self._heartbeat_at(
                sn, HeartbeatRequest(peer_id, tuple(tasks), self.secrets.get(sn, self.secret)))
            for task_id in answer.unknown if answer is not None else ():
                if self.members.get(task_id) == sn:
                    del self.members[task_id]
                    forgotten.append(task_id)
        return forgotten

    async def _heartbeat_at(self, sn, request):
        try:
            code, obj = await self.call(sn, "/api/v1/heartbeat", request.to_json(),
                                        self.api_timeout)
        except Exception as e:
            self.log.info("heartbeat to {sn} failed: {why}", sn=_name(sn), why=_describe(e))
            return None
        if code != 200:
            self.log.info("heartbeat to {sn} answered {code}", sn=_name(sn), code=code)
            return None
        try:
            answer = HeartbeatAnswer.parse(obj)
            self.admission.add_all(answer.keys)
            return answer
        except MessageError as e:
            self.log.info("bad heartbeat answer from {sn}: {why}", sn=_name(sn), why=str(e))
            return None

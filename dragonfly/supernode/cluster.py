"""Several supernodes as one: each task has one owner, by rendezvous hashing.

Members are named ``host:port`` (their API address, as the peers reach them).
For a task, every member gets the score ``sha256(member + "\\0" + task_id)``;
the owner is the live member with the highest score. Every node computes the
same order, and losing a member moves only its tasks (each to the next member
in that task's order), so the cluster survives losing a supernode.

Liveness: every C{interval} seconds each other member's ``GET /healthz`` is
checked (with a timeout); a member is dead after C{fail_after} failed checks in
a row and alive again after one success. Until its first check a member counts
as alive. This node always counts itself alive.

A non-owner answers ``POST /api/v1/tasks`` with 307 ``{"owner": "host:port"}``;
a peer that follows it adds ``"redirected": true`` to its body, and a node then
serves the task itself whatever its view of the cluster (no redirect loops while
views differ for a moment).

Each member's /healthz also names the key it signs admission tokens with
(C{"keys"}); the checks add them to this node's trusted keys, so every piece
port of the cluster accepts every member's tokens.
"""
import hashlib
import json

from twisted.application.internet import TimerService
from twisted.internet.defer import DeferredList, succeed
from twisted.logger import Logger

from dragonfly.config import parse_hostport

__all__ = ["Cluster", "member_name"]


def member_name(host, port):
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{int(port)}"


def _normalise(member):
    host, port = parse_hostport(member) if isinstance(member, str) else member
    return member_name(host, port)


def _score(member, task_id):
    return hashlib.sha256(f"{member}\0{task_id}".encode("utf-8")).digest()


def _health(body):
    """The decoded /healthz body (an empty dict if it is not a JSON object)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _task_count(body):
    """The C{tasks} count of a /healthz body, or None."""
    n = _health(body).get("tasks")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


class _Member:
    def __init__(self, name):
        self.name = name
        self.alive = True
        self.failures = 0
        self.checked = False
        self.last_error = None
        self.tasks = None       # what its last /healthz said it knows, if it said


class Cluster:
    """Task ownership across supernodes.

    @param clock: IReactorTime for check timeouts.
    @param http_client: treq-like (C{get(url, timeout=?)}); its own pool.
    @param members: the other supernodes, ``"host:port"`` or (host, port);
        our own name among them is ignored.
    @param self_name: our own ``host:port``; may be set later with
        L{set_self} (when the API port is bound).
    @param admission: the L{dragonfly.admission.AdmissionKeys} that learns
        the members' signing keys from their /healthz (None: not collected).
    @param scheme: how the members' APIs are reached, C{http} or C{https}
        (mutual TLS, through C{http_client}'s TLS policy).
    """

    log = Logger()

    def __init__(self, clock, http_client, members, self_name=None, interval=5.0,
                 timeout=2.0, fail_after=2, admission=None, scheme="http"):
        self.clock = clock
        self.admission = admission
        self.scheme = scheme
        self._http = http_client
        self.interval = interval
        self.timeout = timeout
        self.fail_after = fail_after
        self._members = {}
        for m in members:
            name = _normalise(m)
            self._members.setdefault(name, _Member(name))
        self.self_name = None
        if self_name is not None:
            self.set_self(self_name)

    def set_self(self, name):
        self.self_name = _normalise(name)
        self._members.pop(self.self_name, None)

    # -- ownership -------------------------------------------------------------

    def order(self, task_id):
        """Every member (us included), best owner first."""
        names = list(self._members)
        if self.self_name is not None:
            names.append(self.self_name)
        return sorted(names, key=lambda n: _score(n, task_id), reverse=True)

    def owner(self, task_id):
        """The owner's ``host:port`` if it is another live member, else None (us)."""
        if self.self_name is None:
            return None
        for name in self.order(task_id):
            if name == self.self_name:
                return None
            if self._members[name].alive:
                return name
        return None

    def is_local(self, task_id):
        return self.owner(task_id) is None

    def members(self):
        """Every other member: C{name}, C{alive}, C{tasks} (its own count from
        its last /healthz, None if unknown), C{error} (its last check's)."""
        return [{"name": m.name, "alive": m.alive, "tasks": m.tasks, "error": m.last_error}
                for m in self._members.values()]

    def status(self):
        return {"self": self.self_name,
                "members": {m.name: ("alive" if m.alive else "dead") for m in self._members.values()}}

    # -- health checks -----------------------------------------------------------

    def check(self):
        """Check every other member once; a Deferred that never fails."""
        if not self._members:
            return succeed(None)
        ds = [self._check_one(m) for m in list(self._members.values())]
        return DeferredList(ds, consumeErrors=True)

    def _check_one(self, member):
        url = f"{self.scheme}://{member.name}/healthz"
        try:
            d = self._http.get(url, reactor=self.clock)
            d.addTimeout(self.timeout, self.clock)
        except Exception as e:
            self._mark(member, False, str(e))
            return succeed(None)

        def answered(response):
            ok = 200 <= response.code < 300
            d2 = response.content() if hasattr(response, "content") else succeed(b"")
            d2.addCallback(lambda body: self._read_health(member, body if ok else None))
            d2.addErrback(lambda f: None)
            self._mark(member, ok, None if ok else f"healthz answered {response.code}")
            return d2

        def failed(f):
            self._mark(member, False, f.getErrorMessage() or type(f.value).__name__)

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: self.log.failure("checking {m}", f, m=member.name))
        return d

    def _read_health(self, member, body):
        """What a member's /healthz answer C{body} (None: not 2xx) tells."""
        member.tasks = None if body is None else _task_count(body)
        keys = _health(body).get("keys") if body is not None else None
        if self.admission is not None and isinstance(keys, dict):
            self.admission.add_all(keys)

    def _mark(self, member, ok, error):
        member.checked = True
        if ok:
            member.failures = 0
            member.last_error = None
            if not member.alive:
                member.alive = True
                self.log.info("supernode {m} is back", m=member.name)
            return
        member.failures += 1
        member.last_error = error
        if member.alive and member.failures >= self.fail_after:
            member.alive = False
            self.log.warn("supernode {m} is down ({err}); its tasks move", m=member.name, err=error)

    def _safe_check(self):
        try:
            d = self.check()
        except Exception:
            self.log.failure("cluster health check")
            return None
        d.addErrback(lambda f: self.log.failure("cluster health check", f))
        return d

    def service(self):
        """A TimerService (on our clock) running the checks; its body never raises."""
        s = TimerService(self.interval, self._safe_check)
        s.clock = self.clock
        s.setName("cluster-health")
        return s

"""The peer's calls to its supernodes, and the swarms it is a member of.

L{SupernodeClient} is the only part of the peer that speaks the supernode
API: register a task (owner redirects, fail-over to the next supernode),
schedule/report, heartbeat and leave. It also remembers at which supernode
the peer joined each task's swarm (L{SupernodeClient.joined}), so leaving
and heartbeats go to the right one. Answers are JSON objects capped at
1 MiB; transport trouble raises, HTTP verdicts become L{DownloadError}
(final), L{SupernodeUnavailable} (go to the origin) or L{NotRegistered}
(register again).
"""
import json

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

from dragonfly.digest import ALGORITHM as DIGEST_ALGORITHM
from dragonfly.interfaces import PeerInfo
from dragonfly.peer.errors import (DownloadError, NotRegistered, SourceFailed,
                                   SupernodeUnavailable, describe)

__all__ = ["SupernodeClient", "parse_registration"]

_JSON_CAP = 1024 * 1024


def _hostport_url(addr, path):
    host, port = addr
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


class SupernodeClient:
    """Calls the supernodes C{supernodes} ([(host, port), ...], tried in order).

    @param clock: IReactorTime for the call timeouts.
    @param http: a treq-like HTTPClient.
    @param peer_info: this peer's L{PeerInfo}; the attribute may be replaced
        (once the piece port is bound).
    @param settings: a L{dragonfly.peer.settings.NodeSettings} (its
        C{api_timeout} and C{register_timeout}).
    @ivar joined: {task_id: (host, port)} of the supernode we are a member at.
    """

    log = Logger()

    def __init__(self, clock, http, supernodes, peer_info, settings):
        self._clock = clock
        self._http = http
        self.supernodes = list(supernodes)
        self.peer_info = peer_info
        self._settings = settings
        self.joined = {}
        self._preferred = 0        # index of the supernode that answered last

    async def call(self, addr, path, body, timeout):
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

    async def register(self, task_id, url, headers):
        """Register at a supernode: (addr, info). Raises DownloadError / SupernodeUnavailable."""
        if not self.supernodes:
            raise SupernodeUnavailable("no supernodes configured")
        body = {"task_id": task_id, "url": url, "headers": headers,
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
                    code, obj = await self.call(addr, "/api/v1/tasks", body,
                                                self._settings.register_timeout)
                except CancelledError:
                    raise
                except Exception as e:
                    errors.append(f"{addr[0]}:{addr[1]}: {describe(e)}")
                    break
                if code == 200:
                    try:
                        info = parse_registration(obj)
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
                    self.log.debug("task {task} owned by {owner}", task=task_id, owner=owner)
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
        raise SupernodeUnavailable("; ".join(errors) or "no supernode answered")

    async def schedule(self, addr, task_id, have, failed, want, wait, cursor=None):
        """Report C{have}/C{failed} [(index, source peer id)] and ask for C{want}
        assignments, long-polling up to C{wait} seconds: the answer object."""
        body = {"peer_id": self.peer_info.peer_id, "have": have,
                "failed": [{"index": i, "source": s} for i, s in failed],
                "want": want, "wait": wait}
        if cursor is not None:
            body["cursor"] = cursor
        code, obj = await self.call(addr, f"/api/v1/tasks/{task_id}/schedule", body,
                                    wait + self._settings.api_timeout)
        if code == 404:
            raise NotRegistered()
        if code == 502:
            raise SourceFailed(obj.get("error") or "the supernode could not fetch the file")
        if code != 200:
            raise SupernodeUnavailable(f"HTTP {code}: {obj.get('error', '')}") \
                if code >= 500 else DownloadError(
                    f"supernode refused to schedule: {obj.get('error') or code}")
        return obj

    def leave(self, task_id):
        """Leave C{task_id}'s swarm, if we joined it (best effort): a Deferred."""
        addr = self.joined.pop(task_id, None)
        if addr is None:
            return succeed(None)
        d = Deferred.fromCoroutine(self.call(
            addr, f"/api/v1/tasks/{task_id}/leave", {"peer_id": self.peer_info.peer_id},
            self._settings.api_timeout))

        def failed(f):
            self.log.debug("leave {task} at {sn} failed: {why}", task=task_id,
                           sn=f"{addr[0]}:{addr[1]}", why=describe(f))
        d.addCallbacks(lambda _: None, failed)
        return d

    async def heartbeat(self, serving):
        """Tell each supernode which of the tasks we joined there we still serve.

        C{serving(task_id)} says whether we do. Tasks a supernode answers as
        unknown are forgotten (no more heartbeats, no leave for them).
        """
        by_sn = {}
        for task_id, sn in self.joined.items():
            if serving(task_id):
                by_sn.setdefault(sn, []).append(task_id)
        for sn, tasks in by_sn.items():
            try:
                code, obj = await self.call(sn, "/api/v1/heartbeat", {
                    "peer_id": self.peer_info.peer_id, "tasks": tasks},
                    self._settings.api_timeout)
            except Exception as e:
                self.log.info("heartbeat to {sn} failed: {why}",
                              sn=f"{sn[0]}:{sn[1]}", why=describe(e))
                continue
            if code != 200:
                self.log.info("heartbeat to {sn} answered {code}", sn=f"{sn[0]}:{sn[1]}", code=code)
                continue
            for task_id in obj.get("unknown") or ():
                if self.joined.get(task_id) == sn:
                    del self.joined[task_id]


def parse_registration(obj):
    """The checked fields of a registration answer; ValueError names the bad one."""
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

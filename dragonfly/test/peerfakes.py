"""Fakes shared by the peer tests: a scripted supernode and an in-memory piece pool."""
import json

from klein import Klein
from twisted.internet.defer import Deferred, fail, succeed

from dragonfly.digest import ALGORITHM, piece_digest
from dragonfly.interfaces import PeerInfo

SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)
PEER_A = PeerInfo("hosta-1-aaaaaaaa", "127.0.0.2", 65000)
PEER_B = PeerInfo("hostb-1-bbbbbbbb", "127.0.0.3", 65000)


def pieces_of(data, piece_size):
    return [data[i:i + piece_size] for i in range(0, len(data), piece_size)]


class FakeSupernode:
    """A supernode API with a trivially simple scheduler.

    Assigns each piece the asker lacks from C{sources} in turn, never from a
    source reported failing for that piece. Records every request body.
    """

    app = Klein()

    def __init__(self, data, piece_size=4, sources=(SEED,), seed=SEED):
        self.data = data
        self.piece_size = piece_size
        self.pieces = pieces_of(data, piece_size)
        self.sources = list(sources)
        self.seed = seed
        self.registrations = []
        self.schedules = []
        self.leaves = []
        self.corrupt_reports = []   # (task_id, body)
        self.heartbeats = []
        self.forgotten = set()   # task ids the heartbeat answers as unknown
        self.have = set()
        self.assigned = set()
        self.bad = set()          # (index, source peer id)
        self.register_answer = None   # (code, body) overriding the normal answer
        self.register_script = []     # one-shot (code, body) answers, first first
        self.schedule_answer = None   # (code, body) overriding the normal answer
        self.schedule_script = []     # one-shot (code, body) answers, first first
        self.hold = False             # schedule answers nothing (as if long-polling)
        self.per_source_limit = None  # pieces one source serves us at once
        self.queue_limit = 0          # more of them while we ask for a queue (streaming)
        self.defer_polls = False      # hold empty answers to wait>0 polls until news
        self.held_polls = []          # (body, Deferred)
        self.assigned_from = {}       # index -> source peer id
        self.verified = None          # the attestation (pieces root) answers carry, if any
        self.attests = False          # registration answers promise it (while no verified)
        self.validators = {}          # the copy's etag/last_modified registration answers name
        self._turn = 0

    def resource(self):
        return self.app.resource()

    def _json(self, request, code, body):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    @app.route("/api/v1/tasks", methods=["POST"])
    def register(self, request):
        body = json.loads(request.content.read())
        self.registrations.append(body)
        self.assigned.clear()   # a (re-)registered peer starts with no assignments
        if self.register_script:
            code, answer = self.register_script.pop(0)
            return self._json(request, code, answer)
        if self.register_answer is not None:
            code, answer = self.register_answer
            return self._json(request, code, answer)
        return self._json(request, 200, dict({
            "task_id": body["task_id"], "length": len(self.data),
            "piece_size": self.piece_size, "piece_count": len(self.pieces),
            "seed": self.seed.to_json(), "piece_digest": ALGORITHM},
            **({"verified": self.verified} if self.verified else
               {"attests": True} if self.attests else {}), **self.validators))

    @app.route("/api/v1/tasks/<task_id>/schedule", methods=["POST"])
    def schedule(self, request, task_id):
        body = json.loads(request.content.read())
        self.schedules.append(body)
        if self.schedule_script:
            code, answer = self.schedule_script.pop(0)
            return self._json(request, code, answer)
        if self.schedule_answer is not None:
            code, answer = self.schedule_answer
            return self._json(request, code, answer)
        self.have.update(body["have"])
        for i in body["have"]:
            self.assigned_from.pop(i, None)
        for f in body["failed"]:
            self.bad.add((f["index"], f["source"]))
            self.assigned.discard(f["index"])
            self.assigned_from.pop(f["index"], None)
        for i in body.get("fetched", ()):
            self.assigned_from.pop(i, None)   # the source's slot is free again
        out = self._assign(body)
        if body["have"] or body["failed"] or body.get("fetched"):
            self._wake_polls()
        if not out and self.defer_polls and body["wait"] > 0:
            from twisted.internet.defer import Deferred

            d = Deferred()
            self.held_polls.append((body, d))
            request.setHeader(b"content-type", b"application/json")
            return d
        done = len(self.have) == len(self.pieces)
        return self._json(request, 200, dict({"assignments": out, "done": done},
                                             **({"verified": self.verified} if self.verified else {})))

    def _wake_polls(self):
        held, self.held_polls = self.held_polls, []
        for body, d in held:
            out = self._assign(body)
            if out:
                d.callback(json.dumps({"assignments": out, "done": False}).encode())
            else:
                self.held_polls.append((body, d))

    def release_polls(self):
        held, self.held_polls = self.held_polls, []
        for body, d in held:
            d.callback(json.dumps({"assignments": [], "done": False}).encode())

    def _assign(self, body):
        out = []
        if not self.hold:
            # From the stream's cursor on first, as the real scheduler does.
            n, cursor = len(self.pieces), body.get("cursor") or 0
            for i in list(range(cursor, n)) + list(range(min(cursor, n))):
                if len(out) >= body["want"]:
                    break
                if i in self.have or i in self.assigned:
                    continue
                src = self._pick(i, self.queue_limit if body.get("queue") else 0)
                if src is None:
                    continue
                self.assigned.add(i)
                self.assigned_from[i] = src.peer_id
                out.append({"index": i, "size": len(self.pieces[i]),
                            "digest": piece_digest(self.pieces[i]),
                            "source": src.to_json()})
        return out

    def _pick(self, index, queue=0):
        for k in range(len(self.sources)):
            src = self.sources[(self._turn + k) % len(self.sources)]
            busy = sum(1 for s in self.assigned_from.values() if s == src.peer_id)
            if self.per_source_limit is not None and busy >= self.per_source_limit + queue:
                continue
            if (index, src.peer_id) not in self.bad:
                self._turn += 1
                return src
        return None

    @app.route("/api/v1/tasks/<task_id>/leave", methods=["POST"])
    def leave(self, request, task_id):
        self.leaves.append((task_id, json.loads(request.content.read())))
        self.have.clear()   # like the scheduler: a peer that leaves holds nothing
        return self._json(request, 200, {})

    @app.route("/api/v1/tasks/<task_id>/corrupt", methods=["POST"])
    def corrupt(self, request, task_id):
        self.corrupt_reports.append((task_id, json.loads(request.content.read())))
        return self._json(request, 202, {})

    @app.route("/api/v1/heartbeat", methods=["POST"])
    def heartbeat(self, request):
        body = json.loads(request.content.read())
        self.heartbeats.append(body)
        return self._json(request, 200, {"unknown": [t for t in body["tasks"]
                                                     if t in self.forgotten]})


class FakePiecePool:
    """IPieceSource serving from memory; some sources lie, some never answer."""

    peer_id = "me-1-00000000"

    def __init__(self, data, piece_size):
        self.pieces = pieces_of(data, piece_size)
        self.corrupt = set()   # source peer ids answering wrong bytes
        self.broken = set()    # source peer ids failing
        self.busy = set()      # source peer ids answering BUSY (all slots taken)
        self.manual = False    # hold fetches until release()
        self.fetches = []      # (source peer id, task_id, index)
        self.held = []         # (Deferred, bytes)

    def fetch_piece(self, source, task_id, index, length, hashed=True):
        """Like PieceClientPool.fetch_piece: the body in chunks, hashed as received."""
        from dragonfly.protocol.clientstate import ReceivedPiece

        def wrap(data):
            chunks = [data[i:i + 3] for i in range(0, len(data), 3)] or [b""]
            digest = piece_digest(data) if hashed else None
            return ReceivedPiece(index, chunks, len(data), digest)
        return self.fetch(source, task_id, index, length).addCallback(wrap)

    def fetch(self, source, task_id, index, length):
        self.fetches.append((source.peer_id, task_id, index))
        if source.peer_id in self.broken:
            return fail(ConnectionError(f"{source.peer_id} refused"))
        if source.peer_id in self.busy:
            from dragonfly.protocol import codec
            from dragonfly.protocol.clientstate import PieceFetchError
            return fail(PieceFetchError(source, index, "server busy", codec.BUSY))
        data = self.pieces[index]
        if source.peer_id in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        if self.manual:
            d = Deferred()
            self.held.append((d, data))
            return d
        return succeed(data)

    def release(self, n=None):
        held, self.held = self.held, []
        if n is not None:
            self.held = held[n:]
            held = held[:n]
        for d, data in held:
            if not d.called:
                d.callback(data)


class FakeOrigin:
    """IOrigin over bytes in memory (or an error), recording calls."""

    def __init__(self, data=None, error=None, chunk=3, unknown_length=False):
        self.data = data
        self.error = error
        self.chunk = chunk
        self.unknown_length = unknown_length
        self.calls = []

    #: C{allowed(url, headers) -> status}: the origin's answer to a probe (200 by default).
    allowed = None

    def probe(self, url, headers=None):
        from dragonfly.origin import Probe
        self.probes = getattr(self, "probes", [])
        self.probes.append((url, dict(headers or {})))
        if self.error is not None:
            return fail(self.error)
        status = self.allowed(url, headers or {}) if self.allowed else 200
        return succeed(Probe(status, len(self.data), '"e1"'))

    #: The ETag of the version it serves: a resume whose If-Range names
    #: another one gets the whole file (200), as an HTTP origin answers.
    etag = '"e1"'

    def get(self, url, headers=None, offset=0, etag=None, last_modified=None):
        self.calls.append((url, dict(headers or {}), offset))
        self.validators = getattr(self, "validators", [])
        self.validators.append((etag, last_modified))
        if self.error is not None:
            return fail(self.error)
        if offset and etag is not None and not etag.startswith("W/") and etag != self.etag:
            offset = 0
        r = _FakeOriginResponse(self.data, offset, self.chunk)
        r.etag = self.etag
        if self.unknown_length:
            r.length = r.body_length = None
        return succeed(r)


class _FakeOriginResponse:
    def __init__(self, data, offset, chunk):
        self.status = 206 if offset else 200
        self.offset = offset
        self.length = len(data)
        self.body_length = len(data) - offset
        self.etag = '"e1"'
        self.last_modified = None
        self._data = data
        self._chunk = chunk
        self.discarded = False
        self.limiters = []

    def discard(self):
        self.discarded = True

    def pace_also(self, limiter):
        self.limiters.append(limiter)

    async def _pump(self, consumer):
        for i in range(self.offset, len(self._data), self._chunk):
            chunk = self._data[i:i + self._chunk]
            for limiter in self.limiters:
                await limiter.wait(len(chunk))
            r = consumer.write(chunk)
            if r is not None:
                await r
        return len(self._data) - self.offset

    def deliver(self, consumer):
        return Deferred.fromCoroutine(self._pump(consumer))

"""Every peer<->supernode JSON message: one typed definition each, parsed and built here.

The supernode API parses what peers send and builds its answers with these
classes; the peer's supernode client (L{dragonfly.control.client}) builds its
requests and parses the answers with the same ones. No one else builds or
checks these bodies. Each message is a frozen dataclass with C{parse(obj)}
(the decoded JSON object -> the message; every field checked for type, range
and length, raising one L{MessageError} naming the field) and C{to_json()} /
C{serialize()} (-> the JSON object / compact UTF-8 bytes). Constructors do not
validate: a message is checked where it is received, by C{parse}. The wire
format (field names, optional fields, limits) is the one the supernode has
always spoken; see docs/design.md "Supernode HTTP API".
"""
import json
import math
from dataclasses import dataclass
from typing import NamedTuple

from dragonfly.control.fields import (
    HEX_RE, MAX_INDEX, MAX_LENGTH, MAX_PIECE_SIZE, MAX_URL, MessageError, boolean, byte_range,
    check_headers, check_peer_id, check_secret, check_task_id, check_url, integer, object_of,
    optional_integer, origin_validators, peer_info, sendable_validators, string, task_identity,
    task_ids)
from dragonfly.admission import KEY_ID_RE, MAX_KEYS, MAX_TOKEN, PUBLIC_KEY_RE, TOKEN_RE
from dragonfly.digest import ALGORITHM as DIGEST_ALGORITHM
from dragonfly.digest import HEX_LENGTH
from dragonfly.interfaces import Assignment, PeerInfo
from dragonfly.redact import redact_text, redact_url
from dragonfly.units import BadValue, parse_hostport

__all__ = [
    "MessageError", "RegisterRequest", "RegisterAnswer", "ScheduleRequest", "FailedPiece",
    "ScheduleAnswer", "HeartbeatRequest", "HeartbeatAnswer", "LeaveRequest", "LeaveAnswer",
    "CorruptReport", "UploadCut",
    "TaskInfo", "ErrorAnswer", "parse_assignment", "MAX_WANT", "MAX_LIST", "MAX_HEARTBEAT_TASKS", "FAILURE_REASONS",
    "check_secret",
    # the field checks, for the supernode's own path segments and preheat
    "check_task_id", "check_url", "check_headers", "sendable_validators",
]

MAX_WANT = 256              # assignments one schedule call may ask for
MAX_LIST = 1 << 16          # have/failed entries in one report
#: Task ids one heartbeat may name (the 1 MiB body cap allows ~8,000 anyway).
MAX_HEARTBEAT_TASKS = 10000
MAX_REASON = 1024
#: A failure report's reason: "digest" (the piece failed verification) counts
#: as a bad piece of the source, "busy" (the source answered BUSY: all its
#: upload slots taken) only rests the source a moment, anything else is a
#: failed fetch.
FAILURE_REASONS = ("fetch", "timeout", "short", "digest", "busy")


class _Message:
    """Serialisation shared by every message."""

    def serialize(self):
        """The message as compact JSON bytes."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")


def _with_secret(out, secret):
    if secret is not None:
        out["secret"] = secret
    return out


def _token(obj):
    """The optional admission C{token} of an answer, checked for shape only."""
    token = obj.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN
                              or not TOKEN_RE.match(token)):
        raise MessageError("token", "token is not an admission token")
    return token


def _keys(obj):
    """The optional C{keys} of an answer: {key id: Ed25519 public key (base64url)}."""
    keys = obj.get("keys")
    if keys is None:
        return None
    if not isinstance(keys, dict) or len(keys) > MAX_KEYS:
        raise MessageError("keys", f"keys must be an object of at most {MAX_KEYS} keys")
    for kid, key in keys.items():
        if not KEY_ID_RE.match(kid) or not isinstance(key, str) or not PUBLIC_KEY_RE.match(key):
            raise MessageError("keys", "keys must map 16 hex digits to a public key")
    return dict(keys)


def _verified(obj):
    """The optional C{verified} of an answer: the pieces root (hex) of a copy
    whose whole content matched the task's digest."""
    root = obj.get("verified")
    if root is not None and (not isinstance(root, str) or not HEX_RE.match(root)):
        raise MessageError("verified", f"verified is not {HEX_LENGTH} hex digits")
    return root


def _attests(obj):
    """The optional C{attests} of an answer: the supernode will attest the
    task (send C{verified}) once its running check of the content passes."""
    flag = obj.get("attests", False)
    if not isinstance(flag, bool):
        raise MessageError("attests", "attests must be true or false")
    return flag


def _with_verified(out, root, attests=False):
    if root is not None:
        out["verified"] = root
    if attests:
        out["attests"] = True
    return out


def _with_admission(out, token, keys=None):
    if token is not None:
        out["token"] = token
    if keys:
        out["keys"] = dict(keys)
    return out


# -- registration ------------------------------------------------------------------

@dataclass(frozen=True)
class RegisterRequest(_Message):
    """C{POST /api/v1/tasks}: join C{task_id} (fetching C{url} if new) as C{peer}.

    C{parse} derives the id (L{task_identity}: C{url}, C{filters}, C{tag},
    C{digest}) and refuses a C{task_id} that differs. C{redirected}: the sender
    follows an owner redirect; any supernode then serves the task itself.
    C{peer} None only asks for the task to be seeded. C{want} (JSON
    C{"range"}): the bytes [first, last] the peer needs first (a range
    request); the supernode asks its origin for them first.
    """

    task_id: str
    url: str
    headers: dict
    peer: PeerInfo = None
    redirected: bool = False
    filters: tuple = ()
    tag: str = ""
    digest: str = None
    secret: str = None           # the peer's secret at this supernode, once it has one
    want: tuple = None           # bytes (first, last) wanted first

    def to_json(self):
        out = {"task_id": self.task_id, "url": self.url, "headers": dict(self.headers)}
        if self.want is not None:
            out["range"] = list(self.want)
        if self.peer is not None:
            out["peer"] = self.peer.to_json()
        if self.redirected:
            out["redirected"] = True
        for key, value in (("filter", list(self.filters)), ("tag", self.tag),
                           ("digest", self.digest)):
            out.update({key: value} if value else {})
        return _with_secret(out, self.secret)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a registration")
        url = check_url(obj.get("url"))
        ident = task_identity(obj, url, required=True)
        headers = check_headers(obj.get("headers"))
        peer = obj.get("peer")
        if peer is not None:
            peer = peer_info(peer, "peer")
        return cls(ident.task_id, url, headers, peer, boolean(obj, "redirected"),
                   ident.filters, ident.tag, ident.digest,
                   secret=check_secret(obj.get("secret")),
                   want=byte_range(obj.get("range"), "range"))


@dataclass(frozen=True)
class RegisterAnswer(_Message):
    """The answer to a registration: the task's geometry and the seed's address.

    C{piece_digest} names the piece digest algorithm; an answer without one
    comes from an older supernode, which used sha256. C{token} admits the
    registered peer to the task's piece ports for a while; C{keys} are the
    supernode's (and its cluster's) verifying keys, {key id: public key}.
    C{verified}: the task is named by a content digest and the supernode's
    own copy matched it whole; the value is that copy's pieces root
    (L{dragonfly.digest.pieces_root}), absent otherwise (not checked yet, a
    failed check, a task not named by a digest, an older supernode).
    C{attests}: not verified yet, but the task is named by a digest and the
    supernode's fetch of it, which checks the whole content, is under way:
    C{verified} follows in a schedule answer once that check passed (a
    promise to wait for a while, never a verdict).
    C{etag} (strong only) and C{last_modified}: the origin's validators of
    the supernode's copy, as its CDN recorded them; a peer that falls back
    to the origin mid-download resumes with C{If-Range} on them, so a file
    changed at the origin since never meets the swarm's pieces. Absent (an
    older supernode, an origin without them): the peer resumes as before.
    """

    task_id: str
    length: int
    piece_size: int
    piece_count: int
    seed: PeerInfo
    piece_digest: str = DIGEST_ALGORITHM
    secret: str = None           # the registered peer's secret for its later calls
    token: str = None            # its admission token for the task
    keys: dict = None            # key id -> public key the supernodes sign tokens with
    verified: str = None         # pieces root of the copy that matched the task's digest
    attests: bool = False        # verified follows once the running check passed
    etag: str = None             # the origin's strong ETag of the supernode's copy
    last_modified: str = None    # and its Last-Modified

    def to_json(self):
        out = _with_verified(_with_admission(_with_secret({
            "task_id": self.task_id, "length": self.length, "piece_size": self.piece_size,
            "piece_count": self.piece_count, "seed": self.seed.to_json(),
            "piece_digest": self.piece_digest}, self.secret), self.token, self.keys),
            self.verified, self.attests)
        for name, value in (("etag", self.etag), ("last_modified", self.last_modified)):
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a registration answer")
        task_id = check_task_id(obj.get("task_id"))
        length = integer(obj.get("length"), "length", 0, MAX_LENGTH)
        piece_size = integer(obj.get("piece_size"), "piece_size", 1, MAX_PIECE_SIZE)
        expected = -(-length // piece_size)
        count = obj.get("piece_count")
        if count is not None and (isinstance(count, bool) or count != expected):
            raise MessageError("piece_count", f"piece_count {count!r} is not {expected}")
        algorithm = obj.get("piece_digest", "sha256")
        string(algorithm, "piece_digest", 64)
        seed = peer_info(obj.get("seed"), "seed")
        secret = check_secret(obj.get("secret"))
        etag, last_modified = origin_validators(obj)
        return cls(task_id, length, piece_size, expected, seed, algorithm, secret=secret,
                   token=_token(obj), keys=_keys(obj), verified=_verified(obj),
                   attests=_attests(obj), etag=etag, last_modified=last_modified)

    def check_assignment(self, assignment):
        """C{assignment} if it names a piece of this task with that piece's size,
        else L{MessageError}."""
        index, size = assignment.index, assignment.size
        if not 0 <= index < self.piece_count:
            raise MessageError("index", f"piece index {index!r} out of range")
        expected = min(self.piece_size, self.length - index * self.piece_size)
        if size != expected:
            raise MessageError("size", f"piece {index} size {size!r} is not {expected}")
        return assignment


# -- scheduling ----------------------------------------------------------------------

class FailedPiece(NamedTuple):
    """Fetching piece C{index} from the peer C{source} failed (C{reason}:
    one of L{FAILURE_REASONS}; "digest": the piece it sent failed verification)."""

    index: int
    source: str
    reason: str = "fetch"

    def to_json(self):
        out = {"index": self.index, "source": self.source}
        if self.reason != "fetch":
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class ScheduleRequest(_Message):
    """C{POST /api/v1/tasks/<id>/schedule}: report C{have} and C{failed}, ask for
    up to C{want} assignments, waiting up to C{wait} seconds for some.

    C{cursor}: the sender streams the task in order and holds every piece
    below it (None: no preference). A report alone has C{want} 0.
    C{seed_only}: assign pieces from the supernode's seed only, never from
    other peers (dfget C{--pattern cdn}). C{queue}: with a C{cursor}, a reader
    waits on the bytes in order: queue more at busy sources (absent: no).
    C{fetched}: pieces whose bytes arrived, not yet verified and written (the
    supernode frees their sources' upload slots now; a later report says
    C{have} or C{failed}). Absent from older peers: nothing is freed early.
    """

    peer_id: str
    have: tuple = ()
    failed: tuple = ()           # FailedPiece
    want: int = 0
    wait: float = 0
    cursor: int = None
    secret: str = None
    seed_only: bool = False
    fetched: tuple = ()
    queue: bool = False

    def to_json(self):
        out = {"peer_id": self.peer_id, "have": list(self.have),
               "failed": [FailedPiece(*f).to_json() for f in self.failed],
               "want": self.want, "wait": self.wait}
        if self.cursor is not None:
            out["cursor"] = self.cursor
        if self.seed_only:
            out["seed_only"] = True
        if self.fetched:
            out["fetched"] = list(self.fetched)
        if self.queue:
            out["queue"] = True
        return _with_secret(out, self.secret)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a schedule request")
        peer_id = check_peer_id(obj.get("peer_id"))
        have = obj.get("have", [])
        if not isinstance(have, list) or len(have) > MAX_LIST:
            raise MessageError("have", f"have must be a list of at most {MAX_LIST} piece indexes")
        for i in have:
            integer(i, "have entries", 0, MAX_INDEX, "have")
        fetched = obj.get("fetched", [])
        if not isinstance(fetched, list) or len(fetched) > MAX_LIST:
            raise MessageError("fetched",
                               f"fetched must be a list of at most {MAX_LIST} piece indexes")
        for i in fetched:
            integer(i, "fetched entries", 0, MAX_INDEX, "fetched")
        failed_in = obj.get("failed", [])
        if not isinstance(failed_in, list) or len(failed_in) > MAX_LIST:
            raise MessageError("failed", f"failed must be a list of at most {MAX_LIST} entries")
        failed = []
        for f in failed_in:
            if not isinstance(f, dict):
                raise MessageError("failed", 'failed entries must be {"index", "source"} objects')
            reason = f.get("reason", "fetch")
            if reason not in FAILURE_REASONS:
                raise MessageError("failed", f"failed reason must be one of {FAILURE_REASONS}")
            failed.append(FailedPiece(integer(f.get("index"), "failed index", 0, MAX_INDEX, "failed"),
                                      check_peer_id(f.get("source"), "failed source"), reason))
        want = integer(obj.get("want", 0), "want", 0, MAX_WANT)
        wait = obj.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) \
                or not math.isfinite(wait) or wait < 0:
            raise MessageError("wait", "wait must be a non-negative number of seconds")
        cursor = optional_integer(obj, "cursor", 0, MAX_INDEX)
        return cls(peer_id, tuple(have), tuple(failed), want, wait, cursor,
                   check_secret(obj.get("secret")), boolean(obj, "seed_only"), tuple(fetched),
                   boolean(obj, "queue"))


def parse_assignment(obj):
    """An L{Assignment} from its JSON object, else L{MessageError}."""
    obj = object_of(obj, "an assignment")
    index = integer(obj.get("index"), "index", 0, MAX_INDEX)
    size = integer(obj.get("size"), "size", 1, MAX_PIECE_SIZE)
    digest = obj.get("digest")
    if not isinstance(digest, str) or not HEX_RE.match(digest):
        raise MessageError("digest", f"piece {index} digest is not {HEX_LENGTH} hex digits")
    return Assignment(index, size, digest, peer_info(obj.get("source"), "source"))


@dataclass(frozen=True)
class ScheduleAnswer(_Message):
    """The answer to a schedule call: new C{assignments}; C{done} when the peer holds all.

    C{parse} sets an assignment that does not parse aside in C{rejected} (its
    L{MessageError}) instead of failing the answer: one bad entry costs only itself.
    C{token} renews the peer's admission token for the task; C{verified} as
    in L{RegisterAnswer} (sent once the supernode's check passed), and
    C{attests} too (sent while that check runs).
    """

    assignments: tuple = ()      # Assignment
    done: bool = False
    rejected: tuple = ()         # MessageError, parse only
    token: str = None
    verified: str = None
    attests: bool = False

    def to_json(self):
        return _with_verified(_with_admission(
            {"assignments": [a.to_json() for a in self.assignments], "done": self.done},
            self.token), self.verified, self.attests)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a schedule answer")
        raw = obj.get("assignments")
        if not isinstance(raw, list) or len(raw) > MAX_LIST:
            raise MessageError("assignments", f"assignments must be a list of at most {MAX_LIST}")
        done = obj.get("done")
        if not isinstance(done, bool):
            raise MessageError("done", "done must be true or false")
        good, bad = [], []
        for item in raw:
            try:
                good.append(parse_assignment(item))
            except MessageError as e:
                bad.append(e)
        return cls(tuple(good), done, tuple(bad), _token(obj), _verified(obj), _attests(obj))


# -- membership ----------------------------------------------------------------------

@dataclass(frozen=True)
class HeartbeatRequest(_Message):
    """C{POST /api/v1/heartbeat}: the peer still serves C{tasks}."""

    peer_id: str
    tasks: tuple = ()
    secret: str = None

    def to_json(self):
        return _with_secret({"peer_id": self.peer_id, "tasks": list(self.tasks)}, self.secret)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a heartbeat")
        peer_id = check_peer_id(obj.get("peer_id"))
        return cls(peer_id, task_ids(obj.get("tasks"), "tasks", MAX_HEARTBEAT_TASKS),
                   check_secret(obj.get("secret")))


@dataclass(frozen=True)
class HeartbeatAnswer(_Message):
    """The tasks of a heartbeat the supernode no longer counts the peer in;
    C{keys}: the cluster's current verifying keys (as in L{RegisterAnswer})."""

    unknown: tuple = ()
    keys: dict = None

    def to_json(self):
        return _with_admission({"unknown": list(self.unknown)}, None, self.keys)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a heartbeat answer")
        return cls(task_ids(obj.get("unknown"), "unknown", MAX_HEARTBEAT_TASKS), _keys(obj))


@dataclass(frozen=True)
class LeaveRequest(_Message):
    """C{POST /api/v1/tasks/<id>/leave}: the peer no longer serves the task."""

    peer_id: str
    secret: str = None

    def to_json(self):
        return _with_secret({"peer_id": self.peer_id}, self.secret)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a leave request")
        return cls(check_peer_id(obj.get("peer_id")), check_secret(obj.get("secret")))


@dataclass(frozen=True)
class UploadCut(_Message):
    """C{POST /api/v1/tasks/<id>/cut}: the peer C{peer_id} (its C{secret})
    was uploading to C{receiver} when that connection ended: the supernode
    checks whether C{receiver} died (L{dragonfly.supernode.liveness}).
    Answered by a L{LeaveAnswer} (202). An older supernode answers 404."""

    peer_id: str
    receiver: str
    secret: str = None

    def to_json(self):
        return _with_secret({"peer_id": self.peer_id, "receiver": self.receiver}, self.secret)

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "an upload cut report")
        return cls(check_peer_id(obj.get("peer_id")), check_peer_id(obj.get("receiver"), "receiver"),
                   check_secret(obj.get("secret")))


@dataclass(frozen=True)
class CorruptReport(_Message):
    """C{POST /api/v1/tasks/<id>/corrupt}: a holder dropped its complete copy, which
    failed a digest; the supernode re-verifies its own. Answered by a L{LeaveAnswer}."""

    peer_id: str
    reason: str = ""

    def to_json(self):
        return {"peer_id": self.peer_id, "reason": self.reason}

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a corrupt report")
        return cls(check_peer_id(obj.get("peer_id")),
                   string(obj.get("reason", ""), "reason", MAX_REASON))


@dataclass(frozen=True)
class LeaveAnswer(_Message):
    """The (empty) answer to a leave."""

    def to_json(self):
        return {}

    @classmethod
    def parse(cls, obj):
        object_of(obj, "a leave answer")
        return cls()


# -- task info and errors ------------------------------------------------------------

_TASK_INFO_INTS = ("length", "piece_size", "piece_count")


@dataclass(frozen=True)
class TaskInfo(_Message):
    """C{GET /api/v1/tasks/<id>}: what the supernode knows of a task.

    C{error} and C{origin_status} describe a failed fetch; C{done_peers} is
    present while the task has a swarm.
    """

    task_id: str
    url: str = None
    length: int = None
    piece_size: int = None
    piece_count: int = None
    seeded: int = 0
    peers: int = 0
    state: str = "unknown"
    error: str = None
    origin_status: int = None
    done_peers: int = None

    def to_json(self):
        out = {"task_id": self.task_id, "url": redact_url(self.url), "length": self.length,
               "piece_size": self.piece_size, "piece_count": self.piece_count,
               "seeded": self.seeded, "peers": self.peers, "state": self.state}
        for name in ("error", "origin_status", "done_peers"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.error is not None:
            out["error"] = redact_text(self.error)
        return out

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a task description")
        ints = {n: optional_integer(obj, n, 0, MAX_LENGTH) for n in _TASK_INFO_INTS}
        return cls(check_task_id(obj.get("task_id")), string(obj.get("url"), "url", optional=True),
                   seeded=integer(obj.get("seeded", 0), "seeded", 0, MAX_INDEX),
                   peers=integer(obj.get("peers", 0), "peers", 0, MAX_LENGTH),
                   state=string(obj.get("state", "unknown"), "state", 64),
                   error=string(obj.get("error"), "error", MAX_URL, optional=True),
                   origin_status=optional_integer(obj, "origin_status", 100, 599),
                   done_peers=optional_integer(obj, "done_peers", 0, MAX_LENGTH), **ints)


@dataclass(frozen=True)
class ErrorAnswer(_Message):
    """Every answer other than 200/202: C{{"error": text}}, plus C{origin_status}
    (the origin's HTTP status, on 502) or C{owner} (the ``host:port`` of the
    supernode owning the task, on a 307 owner redirect)."""

    error: str
    origin_status: int = None
    owner: str = None

    @classmethod
    def owner_redirect(cls, task_id, owner):
        return cls(f"task {task_id} belongs to supernode {owner}", owner=owner)

    def owner_address(self):
        """The owner as (host, port), else L{MessageError}."""
        try:
            return parse_hostport(str(self.owner))
        except BadValue:
            raise MessageError("owner", "redirect without a usable owner")

    def to_json(self):
        out = {"error": self.error}
        if self.origin_status is not None:
            out["origin_status"] = self.origin_status
        if self.owner is not None:
            out["owner"] = self.owner
        return out

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "an error answer")
        error = string(obj.get("error"), "error", 1 << 16)
        status = optional_integer(obj, "origin_status", 100, 599)
        owner = string(obj.get("owner"), "owner", 1024, optional=True)
        answer = cls(error, status, owner)
        if owner is not None:
            answer.owner_address()
        return answer

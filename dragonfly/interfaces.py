"""The seams between dragonfly's parts."""
from dataclasses import dataclass

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class PeerInfo:
    """Where a node's piece port can be reached."""

    peer_id: str
    host: str
    port: int

    def to_json(self):
        return {"peer_id": self.peer_id, "host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, obj):
        from dragonfly.taskid import validate_peer_id

        if not isinstance(obj, dict):
            raise ValueError("peer must be an object")
        port = obj.get("port")
        host = obj.get("host")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("peer port must be an integer 1-65535")
        if not isinstance(host, str) or not host or len(host) > 255:
            raise ValueError("peer host must be a non-empty string")
        return cls(validate_peer_id(obj.get("peer_id")), host, port)


@dataclass(frozen=True)
class Assignment:
    """Fetch piece C{index} (C{size} bytes, piece digest C{digest}) from C{source}."""

    index: int
    size: int
    digest: str
    source: PeerInfo

    def to_json(self):
        return {"index": self.index, "size": self.size, "digest": self.digest,
                "source": self.source.to_json()}


class IPieceStore(Interface):
    """On-disk pieces of tasks, with quota and TTL."""

    def get(task_id):
        """The TaskFile of C{task_id}, or None."""

    def create(task_id, url, length, piece_size, etag=None, last_modified=None):
        """A new (or reset) TaskFile."""

    def remove(task_id):
        """Forget a task and delete its files."""

    def fits(length):
        """True if a file of C{length} bytes could fit the quota at all (evicts nothing)."""

    def fits_disk(length):
        """False if a file of C{length} bytes could not fit on the disk even
        with every task evicted (evicts and reserves nothing)."""

    def gc():
        """Evict expired then least-recently-used unpinned tasks; return bytes freed."""


class IRunner(Interface):
    """Runs blocking work somewhere that is not the reactor thread."""

    def run(f, *args, **kwargs):
        """Return a Deferred firing with f(*args, **kwargs)."""


class IScheduler(Interface):
    """Decides which peer fetches which piece from whom."""

    def assign(task_id, peer_id, want, cursor=None, seed_only=False, queue=False):
        """Up to C{want} Assignments for C{peer_id}; C{cursor}: it streams in
        order and holds every piece below that index (None: no preference);
        C{seed_only}: from the seed only, never from other peers; C{queue}
        (with a cursor): a reader waits, queue more at its sources."""

    def report(task_id, peer_id, have=(), failed=(), fetched=()):
        """Record finished pieces, failed sources and pieces whose bytes
        arrived (C{fetched}: their sources' slots are free again)."""


class IOrigin(Interface):
    """Fetches a URL from where it really lives."""

    def get(url, headers, offset=0, etag=None, last_modified=None, end=None):
        """A Deferred OriginResponse (C{end}: the inclusive last byte of a range)."""

    def probe(url, headers=None):
        """A Deferred Probe: the origin's answer to this request (status, length,
        validators), body unread (see L{dragonfly.privacy})."""


class IBodySink(Interface):
    """Where a streamed body goes (an origin body into pieces, or into a spool).

    The one back-pressure rule of every body path: while the Deferred that
    C{write} returned is pending, the producer feeding it stays paused.
    """

    def write(data):
        """Take C{data} (bytes-like; not kept past the call unless copied). Returns
        None when ready for more, or a Deferred that fires when it is."""


class IDownloader(Interface):
    """What the registry mirror asks of the peer: get a task, then its bytes in order."""

    def download(url, headers=None, task_id=None, on_start=None, digest=None, want=None):
        """Fetch C{url} (as task C{task_id}, named by its content C{digest} when
        given) into the store; a Deferred firing with its TaskFile. C{on_start}, a Deferred, fires with the TaskFile once its length is
        known, before the pieces arrive. C{want}: the bytes (first, last) the
        caller needs first."""

    def drop_corrupt(task_id, reason):
        """Our complete copy of C{task_id} failed a digest check: drop it and
        report it to the supernode (a Deferred that never fails)."""

    def stream(task_file, consumer, start=0, end=None):
        """Write the task's bytes [start, end) to C{consumer} in order as pieces
        arrive, registering a producer with it; a Deferred fired when all are written."""


class IPieceSource(Interface):
    """Fetches one piece from a remote node: what the peer's download calls."""

    def fetch(source, task_id, index, length):
        """A Deferred firing with the piece's bytes."""

    def fetch_piece(source, task_id, index, length, hashed=True):
        """A Deferred firing with the piece as received: an object with
        C{index}, C{chunks} (the body as bytes-like slices, in order),
        C{nbytes} and C{digest} (None unless C{hashed})."""


class IServedTask(Interface):
    """A task's pieces as the piece server reads them."""

    path = Attribute("the task's data file; each piece is read from it at its range")
    piece_count = Attribute("how many pieces the task has")

    def has(index):
        """True when piece C{index} is complete on disk."""

    def piece_range(index):
        """C{(offset, length)} of piece C{index} in the data file."""

    def pin():
        """Keep the task (and its file) from eviction while a piece is served."""

    def unpin():
        """Undo one L{pin}."""


class IServedStore(Interface):
    """Where the piece server finds the tasks it may serve."""

    def get(task_id):
        """The L{IServedTask} of C{task_id}, or None when it is not held."""


class IAdmission(Interface):
    """Who a piece server serves: the check of a peer's admission token at Hello."""

    def verify(token, task_id, peer_id):
        """True when C{token} (a string, or None when the Hello carried none)
        is a current proof, signed by a trusted supernode key, that
        C{peer_id} was admitted to C{task_id}."""

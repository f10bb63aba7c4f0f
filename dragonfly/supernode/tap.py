"""``twistd supernode``: options and service construction.

Only this module touches the global reactor (when makeService is not given one).
"""
import os
import re

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from dragonfly.config import (
    ConfigOptions, check_endpoint, check_writable_dir, parse_hostports, parse_rate, parse_size)
from dragonfly.supernode.service import SupernodeConfig

MIN_PIECE = 1024
MAX_PIECE = 64 << 20     # the piece protocol's largest piece
_HOST_RE = re.compile(r"\A(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9_.-]+)\Z")


class Options(ConfigOptions):
    """twistd supernode [options]"""

    role = "supernode"
    synopsis = "[options]"
    longdesc = ("The dragonfly supernode: tracker and scheduler of every task, and CDN "
                "seed that fetches each file from its origin once and serves its pieces.")

    optParameters = [
        ["listen", None, "tcp:8002", "API endpoint (twisted endpoint string)."],
        ["piece-listen", None, "tcp:8001", "Piece port endpoint."],
        ["advertise", None, None,
         "Address peers use to reach this node's piece port (default 127.0.0.1)."],
        ["data-dir", None, "/var/lib/dragonfly/supernode", "Where pieces and metadata live."],
        ["cluster", None, "", "The other supernodes, HOST:PORT,... (their API addresses)."],
        ["piece-size", None, "4M", "Piece size of new tasks (K/M suffixes)."],
        ["origin-limit", None, "0", "Bytes/s read from origins (K/M/G); 0 = unlimited."],
        ["upload-limit", None, "0", "Bytes/s of pieces served to peers; 0 = unlimited."],
        ["download-limit", None, "0",
         "Bytes/s downloaded (from origins, for a supernode); 0 = unlimited. "
         "With --origin-limit too, the lower one applies."],
        ["cache-size", None, "0", "Disk quota for cached tasks (K/M/G/T); 0 = no quota."],
        ["cache-ttl", None, "0", "Seconds an unused task stays cached; 0 = forever."],
        ["log-format", None, "text", "text or json."],
        ["port-file", None, None,
         'Write {"api": PORT, "piece": PORT} (JSON) here once listening.'],
        ["max-uploads", None, "32", "Pieces the seed serves at once."],
        ["cluster-check-interval", None, "5", "Seconds between cluster health checks."],
    ]

    def postOptions(self):
        self.applyConfig()
        c = SupernodeConfig()
        for name in ("listen", "piece-listen"):
            check_endpoint(name, self[name])
        c.listen = self["listen"]
        c.piece_listen = self["piece-listen"]
        adv = self["advertise"]
        if adv is not None:
            adv = str(adv).strip()
            if not adv or not _HOST_RE.match(adv):
                raise usage.UsageError(f"--advertise: not a host name or address: {self['advertise']!r}")
            c.advertise = adv.strip("[]")
        data_dir = self["data-dir"]
        if not data_dir or not str(data_dir).strip():
            raise usage.UsageError("--data-dir must not be empty")
        c.data_dir = os.path.abspath(str(data_dir))
        check_writable_dir("data-dir", c.data_dir)
        cluster = self["cluster"] or ""
        c.cluster = parse_hostports(cluster) if str(cluster).strip() else []
        c.piece_size = _size("piece-size", self["piece-size"])
        if not MIN_PIECE <= c.piece_size <= MAX_PIECE:
            raise usage.UsageError(f"--piece-size must be between 1K and 64M, not {self['piece-size']}")
        c.origin_limit = _size("origin-limit", self["origin-limit"], parse_rate)
        c.upload_limit = _size("upload-limit", self["upload-limit"], parse_rate)
        c.download_limit = _size("download-limit", self["download-limit"], parse_rate)
        c.cache_size = _size("cache-size", self["cache-size"])
        if c.cache_size and c.cache_size < c.piece_size:
            raise usage.UsageError("--cache-size is smaller than one piece")
        try:
            c.cache_ttl = float(self["cache-ttl"])
        except (TypeError, ValueError):
            raise usage.UsageError(f"--cache-ttl must be a number of seconds, not {self['cache-ttl']!r}")
        if not c.cache_ttl >= 0 or c.cache_ttl == float("inf"):
            raise usage.UsageError("--cache-ttl must be a non-negative number of seconds")
        fmt = str(self["log-format"]).lower()
        if fmt not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        c.log_format = fmt
        if self["port-file"]:
            c.port_file = os.path.abspath(str(self["port-file"]))
            parent = os.path.dirname(c.port_file)
            if not os.path.isdir(parent):
                raise usage.UsageError(f"--port-file: directory {parent} does not exist")
        try:
            c.max_uploads = int(self["max-uploads"])
        except (TypeError, ValueError):
            raise usage.UsageError("--max-uploads must be an integer")
        if not 1 <= c.max_uploads <= 4096:
            raise usage.UsageError("--max-uploads must be from 1 to 4096")
        try:
            c.cluster_interval = float(self["cluster-check-interval"])
        except (TypeError, ValueError):
            raise usage.UsageError("--cluster-check-interval must be a number of seconds")
        if not 0.1 <= c.cluster_interval <= 3600:
            raise usage.UsageError("--cluster-check-interval must be from 0.1 to 3600 seconds")
        self.config = c


def _size(flag, value, parse=parse_size):
    try:
        return parse(value)
    except usage.UsageError as e:
        raise usage.UsageError(f"--{flag}: {e}")


def makeService(options, reactor=None):
    """The supernode's MultiService, built from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    return build_supernode(reactor, options.config)


def build_supernode(reactor, c):
    from twisted.web.client import HTTPConnectionPool

    from dragonfly.logsetup import make_observer
    from dragonfly.metrics import SupernodeMetrics
    from dragonfly.origin import OriginClient, make_http_client
    from dragonfly.protocol.client import tune_allocator
    from dragonfly.protocol.server import PieceServerFactory
    from dragonfly.runtime.ratelimit import TokenBucket
    from dragonfly.storage.store import PieceStore
    from dragonfly.supernode.api import SupernodeAPI, api_site
    from dragonfly.supernode.cdn import CDN
    from dragonfly.supernode.cluster import Cluster
    from dragonfly.supernode.preheat import Preheater
    from dragonfly.supernode.scheduler import Scheduler
    from dragonfly.supernode.service import SupernodeService
    from dragonfly.runtime.threads import ThreadRunner

    tune_allocator()   # origin bodies arrive as piece-sized runs of chunks too
    runner = ThreadRunner(reactor, max_threads=4, name="supernode-io")
    metrics = SupernodeMetrics()
    store = PieceStore(os.path.join(c.data_dir, "pieces"), quota=c.cache_size, ttl=c.cache_ttl,
                       clock=reactor, runner=runner)
    scheduler = Scheduler(reactor, seed_max_uploads=c.max_uploads)

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.retryAutomatically = False
    rates = [r for r in (c.origin_limit, c.download_limit) if r > 0]
    origin_limiter = TokenBucket(reactor, min(rates)) if rates else None
    origin = OriginClient(reactor, make_http_client(reactor, pool), origin_limiter)
    cdn = CDN(reactor, store, origin, scheduler, c.piece_size, metrics, runner,
              spool_dir=os.path.join(c.data_dir, "spool"), max_spool=c.cache_size)
    closers = [pool.closeCachedConnections]

    cluster = None
    if c.cluster:
        cpool = HTTPConnectionPool(reactor, persistent=False)
        cluster = Cluster(reactor, make_http_client(reactor, cpool), c.cluster,
                          interval=c.cluster_interval)
        closers.append(cpool.closeCachedConnections)
    preheater = Preheater(reactor, cdn)
    api = SupernodeAPI(reactor, cdn, scheduler, metrics, cluster=cluster, preheater=preheater)
    site = api_site(api)

    upload_limiter = TokenBucket(reactor, c.upload_limit) if c.upload_limit > 0 else None
    piece_factory = PieceServerFactory(store, reactor, upload_limiter=upload_limiter,
                                       max_uploads=c.max_uploads,
                                       on_upload=metrics.upload_bytes.inc)
    observer = make_observer("json") if c.log_format == "json" else None
    return SupernodeService(
        reactor, c, store, scheduler, cdn, site, piece_factory,
        serverFromString(reactor, c.listen), serverFromString(reactor, c.piece_listen),
        metrics, preheater=preheater, cluster=cluster, runner=runner, closers=closers,
        log_observer=observer)

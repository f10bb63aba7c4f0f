"""``twistd supernode``: the options (validated into a L{SupernodeConfig}) and
a C{makeService} that hands them to L{dragonfly.supernode.assembly}.

Only this module touches the global reactor (when makeService is not given one).
"""
from twisted.python import usage

from dragonfly.config import ConfigOptions, check_endpoint, parse_hostports, parse_rate
from dragonfly.logsetup import twistd_log_file
from dragonfly.nodeoptions import (
    CACHE_SIZE, CACHE_TTL, LOG_FORMAT, MAX_FILE_SIZE, PORT_FILE, check_data_dir, check_host,
    check_log_format, check_max_file_size, check_port_file, flag_int, flag_seconds, flag_size)
from dragonfly.nodeoptions import EGRESS_LISTS, EgressFlags, check_egress
from dragonfly.nodeoptions import TLS_CA, TLS_CERT, TLS_KEY, check_tls
from dragonfly.supernode.service import SupernodeConfig

MIN_PIECE = 1024
MAX_PIECE = 64 << 20     # the piece protocol's largest piece


class Options(EgressFlags, ConfigOptions):
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
        ["upload-limit", None, "0", "Bytes/s of pieces served to peers, all uploads together (paced per socket by the "
         "kernel on Linux; set it a little under the uplink); 0 = unlimited."],
        ["download-limit", None, "0",
         "Bytes/s downloaded (from origins, for a supernode); 0 = unlimited. "
         "With --origin-limit too, the lower one applies."],
        CACHE_SIZE,
        CACHE_TTL,
        MAX_FILE_SIZE,
        LOG_FORMAT,
        PORT_FILE,
        ["max-uploads", None, "32", "Pieces the seed serves at once (to a swarm of more than "
         "4 downloaders at most 4 at once, so each piece reaches it sooner)."],
        ["swarm-uploads", None, "4", "In a swarm of more than this many downloaders, the pieces "
         "each peer uploads, the seed serves and each peer fetches at once (the "
         "scheduler's plan); 1 pipelines whole pieces (one per link, at full rate: "
         "docs/operations.md, \"Swarm pipelining\")."],
        ["max-peers-per-address", None, "1024",
         "Peers one source address may have in one task (0 = no cap)."],
        ["cluster-check-interval", None, "5", "Seconds between cluster health checks."],
        ["drain-timeout", None, "60",
         "Seconds a stopping cluster member keeps serving its tasks' peers before "
         "moving them to the next supernode; 0 = move them at once."],
        TLS_CERT,
        TLS_KEY,
        TLS_CA,
    ]
    listOptions = EGRESS_LISTS
    optFlags = [
        ["trust-advertised", None,
         "Dial peers at the host they advertise; by default a peer's address is the "
         "source address of its registration (its advertised port is kept)."],
    ]

    def postOptions(self):
        self.applyConfig()
        c = SupernodeConfig()
        for name in ("listen", "piece-listen"):
            check_endpoint(name, self[name])
        c.listen = self["listen"]
        c.piece_listen = self["piece-listen"]
        if self["advertise"] is not None:
            c.advertise = check_host("advertise", self["advertise"])
        c.data_dir = check_data_dir(self["data-dir"])
        cluster = self["cluster"] or ""
        c.cluster = parse_hostports(cluster) if str(cluster).strip() else []
        c.piece_size = flag_size("piece-size", self["piece-size"])
        if not MIN_PIECE <= c.piece_size <= MAX_PIECE:
            raise usage.UsageError(f"--piece-size must be between 1K and 64M, not {self['piece-size']}")
        c.origin_limit = flag_size("origin-limit", self["origin-limit"], parse_rate)
        c.upload_limit = flag_size("upload-limit", self["upload-limit"], parse_rate)
        c.download_limit = flag_size("download-limit", self["download-limit"], parse_rate)
        c.cache_size = flag_size("cache-size", self["cache-size"])
        if c.cache_size and c.cache_size < c.piece_size:
            raise usage.UsageError("--cache-size is smaller than one piece")
        c.cache_ttl = flag_seconds("cache-ttl", self["cache-ttl"])
        c.max_file_size = check_max_file_size(self["max-file-size"])
        c.swarm_uploads = flag_int("swarm-uploads", self["swarm-uploads"], 1, 64)
        c.max_peers_per_address = flag_int("max-peers-per-address",
                                           self["max-peers-per-address"], 0, 1 << 20)
        c.log_format = check_log_format(self["log-format"])
        c.log_file = twistd_log_file(self) if c.log_format == "json" else "-"
        c.port_file = check_port_file(self["port-file"])
        c.allow_origin, c.deny_origin = check_egress(self)
        c.tls = check_tls(self)
        c.trust_advertised = bool(self["trust-advertised"])
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
        c.drain_timeout = flag_seconds("drain-timeout", self["drain-timeout"])
        self.config = c


def makeService(options, reactor=None):
    """The supernode's MultiService, built from parsed L{Options}; without
    C{reactor} (twistd), on the global one, exiting 0 after SIGTERM."""
    from dragonfly.runtime.exitstatus import twistd_service
    from dragonfly.supernode.assembly import build_supernode

    return twistd_service(lambda o, r: build_supernode(r, o.config), options, reactor)


"""L{NodeConfig}: the settings a supernode and a peer share.

Where the node keeps its data, how it logs, where it writes its port file,
its piece port and advertised host, the cache (quota and TTL), the largest file
it takes, the transfer limits, the upload slots, the store's GC interval, the I/O thread pool and
the egress policy's entries (C{--allow-origin}, C{--deny-origin}) and the TLS
files (C{--tls-cert}, C{--tls-key}, C{--tls-ca}).
Each role's config (C{SupernodeConfig}, C{PeerConfig}) is a dataclass
subclass adding its own fields and giving its own defaults where they differ
(a field redeclared in a subclass keeps its place and takes the new default).
"""
from dataclasses import dataclass, field

__all__ = ["NodeConfig"]


@dataclass
class NodeConfig:
    """Settings every node has; a role subclass sets the role defaults.

    Sizes and rates are bytes (0: no limit), durations seconds (C{cache_ttl}
    0: no expiry).
    """

    data_dir: str = None            # set by each role
    piece_listen: str = None        # endpoint string; set by each role
    advertise: str = None           # host other nodes reach us at
    cache_size: int = 0
    cache_ttl: float = 0
    max_file_size: int = 1 << 40    # larger origins are refused (413) before anything is reserved
    upload_limit: int = 0
    download_limit: int = 0
    log_format: str = "text"
    log_file: str = "-"             # where JSON logs go: "-" stdout, a path, None (syslog)
    port_file: str = None
    max_uploads: int = 8
    gc_interval: float = 60.0
    threads: int = 4                # I/O thread pool (store reads and writes)
    allow_origin: list = field(default_factory=list)   # egress policy entries (text)
    deny_origin: list = field(default_factory=list)
    tls: object = None              # a dragonfly.tls.TLSFiles (mutual TLS), or None: plain TCP

    def gc_every(self):
        """Seconds between store GC runs: C{gc_interval}, or C{cache_ttl} when
        that is shorter (at least 1 s), so an unused task goes within about
        twice its TTL rather than up to a minute late."""
        if self.cache_ttl > 0:
            return min(self.gc_interval, max(float(self.cache_ttl), 1.0))
        return self.gc_interval

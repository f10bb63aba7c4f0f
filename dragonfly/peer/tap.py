"""``twistd peer``: options and service construction.

L{PeerOptions} is meant to be subclassed: the dfdaemon's options add their
own C{optParameters}, set C{role}/C{default_data_dir}, call
C{PeerOptions.postOptions(self)} and then read C{self.config} (a
L{PeerConfig}); its tap calls L{make_peer_service} and adds its listeners.

Only this module (and the CLI) touches the global reactor, and only when
C{makeService} is not given one.
"""
from twisted.python import usage

from dragonfly.config import ConfigOptions, check_endpoint, parse_hostports, parse_rate
from dragonfly.logsetup import twistd_log_file
from dragonfly.nodeoptions import (
    CACHE_SIZE, CACHE_TTL, LOG_FORMAT, MAX_FILE_SIZE, PORT_FILE, check_data_dir, check_host,
    check_log_format, check_max_file_size, check_port_file, flag_int, flag_seconds, flag_size)
from dragonfly.nodeoptions import EGRESS_LISTS, EgressFlags, check_egress
from dragonfly.nodeoptions import TLS_CA, TLS_CERT, TLS_KEY, check_tls
from dragonfly.nodeoptions import API_SOCKET, check_api_socket
from dragonfly.peer.assembly import make_peer_service
from dragonfly.peer.service import PeerConfig
from dragonfly.runtime.exitstatus import twistd_service

__all__ = ["PeerOptions", "Options", "makeService", "make_peer_service"]


class PeerOptions(EgressFlags, ConfigOptions):
    """twistd peer [options]"""

    role = "peer"
    default_data_dir = "/var/lib/dragonfly/peer"
    synopsis = "[options]"
    longdesc = ("The dragonfly peer: a per-host agent that downloads pieces from other "
                "peers and the supernodes, verifies them, caches them on disk and serves "
                "them to other peers. dfget uses its local API.")

    optParameters = [
        ["supernodes", None, "127.0.0.1:8002", "Supernode API addresses, HOST:PORT,..."],
        ["piece-listen", None, "tcp:65000", "Piece port endpoint."],
        ["api-listen", None, "tcp:65002:interface=127.0.0.1",
         "Local API endpoint (keep it on loopback)."],
        API_SOCKET,
        ["advertise", None, "127.0.0.1",
         "Address other hosts use to reach this node's piece port."],
        ["data-dir", None, None, "Where pieces and metadata live "
         "(default /var/lib/dragonfly/<role>)."],
        CACHE_SIZE,
        CACHE_TTL,
        MAX_FILE_SIZE,
        ["upload-limit", None, "0", "Bytes/s of pieces served to others (K/M/G), all uploads together (paced per "
         "socket by the kernel on Linux; set it a little under the uplink); 0 = unlimited."],
        ["download-limit", None, "0", "Bytes/s downloaded (K/M/G); 0 = unlimited."],
        LOG_FORMAT,
        PORT_FILE,
        ["concurrency", None, "8", "Pieces fetched at once per download."],
        ["max-uploads", None, "8", "Pieces served at once."],
        TLS_CERT,
        TLS_KEY,
        TLS_CA,
    ]
    listOptions = EGRESS_LISTS

    def postOptions(self):
        self.applyConfig()
        self.config = self.build_config(PeerConfig())

    def build_config(self, c):
        """Validate the peer flags into PeerConfig C{c} (subclasses call this)."""
        try:
            c.supernodes = parse_hostports(self["supernodes"] or "")
        except usage.UsageError as e:
            raise usage.UsageError(f"--supernodes: {e}")
        for name in ("piece-listen", "api-listen"):
            check_endpoint(name, self[name], example="tcp:65000")
        c.piece_listen = self["piece-listen"]
        c.api_listen = self["api-listen"]
        c.api_socket = check_api_socket(self["api-socket"])
        c.advertise = check_host("advertise", self["advertise"])
        c.data_dir = check_data_dir(self["data-dir"] or self.default_data_dir)
        c.cache_size = flag_size("cache-size", self["cache-size"])
        c.cache_ttl = flag_seconds("cache-ttl", self["cache-ttl"])
        c.max_file_size = check_max_file_size(self["max-file-size"])
        c.upload_limit = flag_size("upload-limit", self["upload-limit"], parse_rate)
        c.download_limit = flag_size("download-limit", self["download-limit"], parse_rate)
        c.log_format = check_log_format(self["log-format"])
        c.log_file = twistd_log_file(self) if c.log_format == "json" else "-"
        c.port_file = check_port_file(self["port-file"])
        c.concurrency = flag_int("concurrency", self["concurrency"], 1, 256)
        c.max_uploads = flag_int("max-uploads", self["max-uploads"], 1, 4096)
        c.allow_origin, c.deny_origin = check_egress(self)
        c.tls = check_tls(self)
        return c


Options = PeerOptions


def makeService(options, reactor=None):
    """The peer's MultiService, built from parsed L{PeerOptions}; without
    C{reactor} (twistd), on the global one, exiting 0 after SIGTERM."""
    return twistd_service(lambda o, r: make_peer_service(o, r)[0], options, reactor)


"""``twistd peer``: options and service construction.

L{PeerOptions} is meant to be subclassed: the dfdaemon's options add their
own C{optParameters}, set C{role}/C{default_data_dir}, call
C{PeerOptions.postOptions(self)} and then read C{self.config} (a
L{PeerConfig}); its tap calls L{make_peer_service} and adds its listeners.

Only this module (and the CLI) touches the global reactor, and only when
C{makeService} is not given one.
"""
import ipaddress
import os
import re

from twisted.python import usage

from dragonfly.config import (
    ConfigOptions, check_endpoint, check_writable_dir, parse_hostports, parse_rate, parse_size)
from dragonfly.peer.assembly import make_peer_service
from dragonfly.peer.service import PeerConfig

__all__ = ["PeerOptions", "Options", "makeService", "make_peer_service"]

_HOST_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,253}\Z")


class PeerOptions(ConfigOptions):
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
        ["advertise", None, "127.0.0.1",
         "Address other hosts use to reach this node's piece port."],
        ["data-dir", None, None, "Where pieces and metadata live "
         "(default /var/lib/dragonfly/<role>)."],
        ["cache-size", None, "0", "Disk quota for cached tasks (K/M/G/T); 0 = no quota."],
        ["cache-ttl", None, "0", "Seconds an unused task stays cached; 0 = forever."],
        ["upload-limit", None, "0", "Bytes/s of pieces served to others (K/M/G); 0 = unlimited."],
        ["download-limit", None, "0", "Bytes/s downloaded (K/M/G); 0 = unlimited."],
        ["log-format", None, "text", "text or json."],
        ["port-file", None, None, 'Write {"api": PORT, "piece": PORT} (JSON) here once listening.'],
        ["concurrency", None, "8", "Pieces fetched at once per download."],
        ["max-uploads", None, "8", "Pieces served at once."],
    ]

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
        c.advertise = check_host("advertise", self["advertise"])
        data_dir = self["data-dir"] or self.default_data_dir
        if not str(data_dir).strip():
            raise usage.UsageError("--data-dir must not be empty")
        c.data_dir = os.path.abspath(str(data_dir))
        check_writable_dir("data-dir", c.data_dir)
        c.cache_size = _size("cache-size", self["cache-size"])
        c.cache_ttl = _seconds("cache-ttl", self["cache-ttl"])
        c.upload_limit = _size("upload-limit", self["upload-limit"], parse_rate)
        c.download_limit = _size("download-limit", self["download-limit"], parse_rate)
        fmt = str(self["log-format"]).lower()
        if fmt not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        c.log_format = fmt
        if self["port-file"]:
            c.port_file = os.path.abspath(str(self["port-file"]))
            if not os.path.isdir(os.path.dirname(c.port_file)):
                raise usage.UsageError(
                    f"--port-file: directory {os.path.dirname(c.port_file)} does not exist")
        c.concurrency = _int("concurrency", self["concurrency"], 1, 256)
        c.max_uploads = _int("max-uploads", self["max-uploads"], 1, 4096)
        return c


Options = PeerOptions


def makeService(options, reactor=None):
    """The peer's MultiService, built from parsed L{PeerOptions}."""
    svc, node, metrics = make_peer_service(options, reactor)
    return svc


def check_host(flag, value):
    text = str(value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST_RE.match(text):
        raise usage.UsageError(f"--{flag}: not a host name or address: {value!r}")
    return text


def _size(flag, value, parse=parse_size):
    try:
        return parse(value)
    except usage.UsageError as e:
        raise usage.UsageError(f"--{flag}: {e}")


def _seconds(flag, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag} must be a number of seconds, not {value!r}")
    if not v >= 0 or v == float("inf"):
        raise usage.UsageError(f"--{flag} must be a non-negative number of seconds")
    return v


def _int(flag, value, lo, hi):
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag} must be an integer, not {value!r}")
    if not lo <= v <= hi:
        raise usage.UsageError(f"--{flag} must be from {lo} to {hi}")
    return v

"""The supernode assembled: store, scheduler, CDN, API, piece server, cluster.

L{SupernodeService} is a MultiService. Start-up order matters and is explicit:

  1. the piece port listens; its bound address becomes the seed L{PeerInfo}
     (``supernode-<advertise>:<port>``) so ``--piece-listen tcp:0`` works;
  2. then the API port listens (until the seed is known it would answer 503);
  3. the bound ports are logged ("supernode api listening on HOST:PORT",
     "supernode pieces listening on HOST:PORT") and written to --port-file.

Timers (scheduler expiry, store GC, cluster health) are TimerServices on the
injected clock whose bodies log exceptions and never stop the timer.
"""
import json
import os
import shutil
from dataclasses import dataclass, field

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dragonfly.runtime.daemon import ListeningService, release, safe_timer
from dragonfly.interfaces import PeerInfo

__all__ = ["SupernodeConfig", "SupernodeService"]


@dataclass
class SupernodeConfig:
    listen: str = "tcp:8002"
    piece_listen: str = "tcp:8001"
    advertise: str = None
    data_dir: str = "/var/lib/dragonfly/supernode"
    cluster: list = field(default_factory=list)     # [(host, port)]
    piece_size: int = 4 << 20
    origin_limit: int = 0
    upload_limit: int = 0
    download_limit: int = 0
    cache_size: int = 0
    cache_ttl: float = 0
    log_format: str = "text"
    port_file: str = None
    max_uploads: int = 32
    gc_interval: float = 60.0
    expire_interval: float = 5.0
    cluster_interval: float = 5.0


def _address(port, default_host="127.0.0.1"):
    addr = port.getHost()
    host = getattr(addr, "host", None) or default_host
    return host, getattr(addr, "port", 0)


def _hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _advertised(configured, bound_host):
    """--advertise, else the bound interface when specific, else 127.0.0.1."""
    if configured:
        return configured
    if bound_host and bound_host not in ("0.0.0.0", "::", "::0"):
        return bound_host
    return "127.0.0.1"


class SupernodeService(service.MultiService):
    """Every part of a supernode; see the module docstring for start-up order."""

    log = Logger()

    def __init__(self, reactor, config, store, scheduler, cdn, api_site, piece_factory,
                 api_endpoint, piece_endpoint, metrics, preheater=None, cluster=None,
                 runner=None, closers=(), log_observer=None):
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.cdn = cdn
        self.api_site = api_site
        self.piece_factory = piece_factory
        self.metrics = metrics
        self.preheater = preheater
        self.cluster = cluster
        self.runner = runner
        self.log_observer = log_observer
        self._closers = list(closers)
        self.api_address = None
        self.piece_address = None
        self._ready_waiters = []

        self.piece_service = ListeningService(piece_endpoint, piece_factory, "pieces")
        self.api_service = ListeningService(api_endpoint, api_site, "api")
        # Listeners are started by hand (in order), not as children.
        self.piece_service.parent = self
        self.api_service.parent = self

        safe_timer(config.expire_interval, scheduler.expire, reactor,
                   "scheduler-expire", self.log).setServiceParent(self)
        safe_timer(config.gc_interval, self._gc, reactor, "store-gc", self.log).setServiceParent(self)
        if cluster is not None:
            cluster.service().setServiceParent(self)

    def setServiceParent(self, parent):
        # Under twistd the parent is the Application: offer our log observer
        # (--log-format json) the supported way, as an ILogObserver component.
        service.MultiService.setServiceParent(self, parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)

    def whenReady(self):
        """A Deferred firing with (api_address, piece_address) once both listen."""
        if self.api_address is not None:
            return succeed((self.api_address, self.piece_address))
        d = Deferred()
        self._ready_waiters.append(d)
        return d

    def _gc(self):
        freed = self.store.gc()
        if freed:
            self.log.info("store gc freed {freed} bytes", freed=freed)
        # Tasks the store dropped must not be offered from the seed any more.
        self.cdn.forget_missing()

    def startService(self):
        try:
            self.store.load()
        except Exception:
            self.log.failure("loading the piece store at {root}", root=self.config.data_dir)
            raise
        spool = self.cdn.spool_dir
        if spool and os.path.isdir(spool):
            shutil.rmtree(spool, ignore_errors=True)
        service.MultiService.startService(self)
        self.piece_service.privilegedStartService()
        self.piece_service.startService()
        d = self.piece_service.whenListening()
        d.addCallback(self._piece_bound)
        d.addCallback(lambda _: self._start_api())
        d.addCallback(self._api_bound)
        d.addErrback(self._start_failed)

    def _piece_bound(self, port):
        host, bound = _address(port)
        self.piece_address = (host, bound)
        advertise = _advertised(self.config.advertise, host)
        self.cdn.set_seed(PeerInfo(f"supernode-{advertise}:{bound}", advertise, bound))
        # The address is in the format string itself (it has no braces), so
        # the line is greppable in text and JSON logs alike.
        addr = _hostport(host, bound)
        self.log.info("supernode pieces listening on " + addr, address=addr)
        return port

    def _start_api(self):
        self.api_service.startService()
        return self.api_service.whenListening()

    def _api_bound(self, port):
        host, bound = _address(port)
        self.api_address = (host, bound)
        if self.cluster is not None and self.cluster.self_name is None:
            self.cluster.set_self(f"{_advertised(self.config.advertise, host)}:{bound}")
        addr = _hostport(host, bound)
        self.log.info("supernode api listening on " + addr, address=addr)
        self._write_port_file()
        waiting, self._ready_waiters = self._ready_waiters, []
        for d in waiting:
            d.callback((self.api_address, self.piece_address))

    def _write_port_file(self):
        path = self.config.port_file
        if not path:
            return
        body = json.dumps({"api": self.api_address[1], "piece": self.piece_address[1],
                           "api_host": self.api_address[0], "piece_host": self.piece_address[0],
                           "pid": os.getpid()})
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(body + "\n")
            os.replace(tmp, path)
        except OSError as e:
            self.log.error("cannot write port file {path}: {err}", path=path, err=e)

    def _start_failed(self, f):
        self.log.failure("supernode failed to start", f)
        waiting, self._ready_waiters = self._ready_waiters, []
        for d in waiting:
            d.errback(f)
        # Without its ports a supernode is useless: stop the process.
        stop = getattr(self.reactor, "stop", None)
        if stop is not None and getattr(self.reactor, "running", False):
            self.reactor.callLater(0, stop)

    def stopService(self):
        self.cdn.stop()
        ds = []
        for s in (self.api_service, self.piece_service):
            if s.running:
                ds.append(s.stopService())
        ds.append(service.MultiService.stopService(self))
        # Let pieces in flight finish, refuse new requests, drop the connections.
        close_pieces = getattr(self.piece_factory, "close", None)
        if close_pieces is not None:
            ds.append(close_pieces())
        return release(self.log, ds, self._closers, self.store, self.config.port_file)

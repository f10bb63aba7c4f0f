"""A peer assembled: store, piece server, piece client pool, node, local API.

L{dragonfly.peer.assembly.make_peer_service} builds everything from a L{PeerConfig} and returns
C{(PeerService, PeerNode, PeerMetrics)}; the dfdaemon reuses it and adds its
mirror listener with L{PeerService.add_listener}.

Start-up order (L{PeerService.startService}):

  1. the store is scanned;
  2. the piece port listens; its bound port becomes the node's L{PeerInfo}
     (C{--advertise} host), so C{--piece-listen tcp:0} works;
  3. the API port listens, then any extra listeners (the mirror);
  4. the bound addresses are logged ("peer pieces listening on HOST:PORT",
     "peer api listening on HOST:PORT") and written to C{--port-file} as JSON
     C{{"api": port, "piece": port, ...}}.

Stopping leaves every swarm (best effort), drains the piece server, closes
connection pools and saves the store's metadata.
"""
import json
import os
from dataclasses import dataclass, field

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dragonfly.runtime.daemon import ListeningService, release, safe_timer
from dragonfly.interfaces import PeerInfo

#: Seconds between heartbeats for finished tasks; well under the supernode's
#: peer timeout (120 s), so a live peer is never dropped as silent.
HEARTBEAT_INTERVAL = 30.0

__all__ = ["PeerConfig", "PeerService"]


@dataclass
class PeerConfig:
    supernodes: list = field(default_factory=lambda: [("127.0.0.1", 8002)])
    piece_listen: str = "tcp:65000"
    api_listen: str = "tcp:65002:interface=127.0.0.1"
    advertise: str = "127.0.0.1"
    data_dir: str = "/var/lib/dragonfly/peer"
    cache_size: int = 0
    cache_ttl: float = 0
    upload_limit: int = 0
    download_limit: int = 0
    log_format: str = "text"
    port_file: str = None
    concurrency: int = 8
    max_uploads: int = 8
    gc_interval: float = 60.0
    peer_id: str = None
    threads: int = 4


class PeerService(service.MultiService):
    """Every part of a peer; see the module docstring for the start-up order."""

    log = Logger()

    def __init__(self, reactor, config, store, node, api_site, piece_factory,
                 piece_endpoint, api_endpoint, metrics, piece_pool=None, runner=None,
                 closers=(), log_observer=None):
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.config = config
        self.store = store
        self.node = node
        self.api_site = api_site
        self.piece_factory = piece_factory
        self.metrics = metrics
        self.piece_pool = piece_pool
        self.runner = runner
        self.log_observer = log_observer
        self._closers = list(closers)
        self.addresses = {}
        self._ready = []
        self._failed = None
        self.piece_service = ListeningService(piece_endpoint, piece_factory, "piece")
        self.api_service = ListeningService(api_endpoint, api_site, "api")
        self._listeners = [("piece", "pieces", self.piece_service),
                           ("api", "api", self.api_service)]
        for _, _, s in self._listeners:
            s.parent = self      # started by hand, in order
        safe_timer(config.gc_interval, self.gc, reactor, "store-gc", self.log) \
            .setServiceParent(self)
        # Keep finished tasks in their swarms (supernodes drop silent peers).
        safe_timer(HEARTBEAT_INTERVAL, lambda: Deferred.fromCoroutine(node.heartbeat()),
                   reactor, "heartbeat", self.log).setServiceParent(self)

    def add_listener(self, name, endpoint, factory, label=None):
        """Listen on C{endpoint} too (after the API); its port goes in the port file
        under C{name} and is logged as "peer <label> listening on ..."."""
        if self.running:
            raise RuntimeError("add listeners before the service starts")
        s = ListeningService(endpoint, factory, name)
        s.parent = self
        self._listeners.append((name, label or name, s))
        return s

    def setServiceParent(self, parent):
        # Under twistd the parent is the Application: offer our log observer
        # (--log-format json) as its ILogObserver component.
        service.MultiService.setServiceParent(self, parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)

    def whenReady(self):
        """A Deferred firing with {name: (host, port)} once every listener is bound."""
        if self._failed is not None:
            from twisted.internet.defer import fail
            return fail(self._failed)
        if len(self.addresses) == len(self._listeners):
            return succeed(dict(self.addresses))
        d = Deferred()
        self._ready.append(d)
        return d

    def gc(self):
        freed = self.store.gc()
        if freed:
            self.log.info("store gc freed {freed} bytes", freed=freed)
        self.node.forget_missing()
        held = getattr(self.store, "held_bytes", None)
        if held is not None:
            self.metrics.cache_bytes.set(held())

    def startService(self):
        try:
            self.store.load()
        except Exception:
            self.log.failure("loading the piece store at {root}", root=self.store.root)
            raise
        service.MultiService.startService(self)
        Deferred.fromCoroutine(self._listen()).addErrback(self._start_failed)

    async def _listen(self):
        for name, label, s in self._listeners:
            s.privilegedStartService()
            s.startService()
            port = await s.whenListening()
            addr = port.getHost()
            host, bound = getattr(addr, "host", None) or "127.0.0.1", getattr(addr, "port", 0)
            self.addresses[name] = (host, bound)
            if name == "piece":
                self.node.peer_info = PeerInfo(self.node.peer_info.peer_id,
                                               self.config.advertise, bound)
                self.log.info("peer id {peer_id}, advertised as {host}:{port}",
                              peer_id=self.node.peer_info.peer_id,
                              host=self.config.advertise, port=bound)
            self.log.info("peer " + label + " listening on {address}",
                          address=f"{host}:{bound}")
        self._write_port_file()
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(dict(self.addresses))

    def _write_port_file(self):
        path = self.config.port_file
        if not path:
            return
        body = {name: addr[1] for name, addr in self.addresses.items()}
        body["pid"] = os.getpid()
        body["peer_id"] = self.node.peer_info.peer_id
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(body) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            self.log.error("cannot write port file {path}: {err}", path=path, err=e)

    def _start_failed(self, f):
        # Without its ports a peer is useless: say why and stop the process.
        self._failed = f.value
        self.log.failure("peer failed to start", f)
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(f)
        stop = getattr(self.reactor, "stop", None)
        if stop is not None and getattr(self.reactor, "running", False):
            self.reactor.callLater(0, stop)

    def stopService(self):
        ds = [self.node.shutdown()]
        close = getattr(self.piece_factory, "close", None)
        if close is not None:
            ds.append(close())
        for _, _, s in reversed(self._listeners):
            if s.running:
                ds.append(s.stopService())
        ds.append(service.MultiService.stopService(self))
        if self.piece_pool is not None:
            ds.append(self.piece_pool.close())
        return release(self.log, ds, self._closers, self.store, self.config.port_file)


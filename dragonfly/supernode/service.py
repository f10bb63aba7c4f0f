"""The supernode assembled: store, scheduler, CDN, API, piece server, cluster.

L{SupernodeService} is a MultiService. Start-up order matters and is explicit:

  1. the piece port listens; its bound address becomes the seed L{PeerInfo}
     (``supernode-<advertise>:<port>``) so ``--piece-listen tcp:0`` works;
  2. then the API port listens (until the seed is known it would answer 503);
     the bound ports are logged ("supernode api listening on HOST:PORT",
     "supernode pieces listening on HOST:PORT");
  3. only then the store loads and the CDN's old spool is cleared (a second
     supernode started on a running one's ports exits before touching its
     data: "cannot listen on tcp:8002: Address already in use", status 1);
  4. the timers start and the ports are written to --port-file.

Stopping, a cluster member first hands its peers over
(L{dragonfly.supernode.handover}), then stops as a single node does.

Timers (scheduler expiry, store GC, cluster health) are TimerServices on the
injected clock whose bodies log exceptions and never stop the timer.
"""
import os
import shutil
from dataclasses import dataclass, field

from dragonfly.interfaces import PeerInfo
from dragonfly.runtime.nodeconfig import NodeConfig
from dragonfly.runtime.nodeservice import NodeService

__all__ = ["SupernodeConfig", "SupernodeService"]


@dataclass
class SupernodeConfig(NodeConfig):
    """A supernode's settings: L{NodeConfig}'s, with the supernode's defaults, and its own."""

    data_dir: str = "/var/lib/dragonfly/supernode"
    piece_listen: str = "tcp:8001"
    max_uploads: int = 32
    listen: str = "tcp:8002"
    cluster: list = field(default_factory=list)     # [(host, port)]
    piece_size: int = 4 << 20
    origin_limit: int = 0
    max_peers_per_address: int = 1024
    swarm_uploads: int = 4
    expire_interval: float = 5.0
    cluster_interval: float = 5.0
    drain_timeout: float = 60.0
    trust_advertised: bool = False


def _advertised(configured, bound_host):
    """--advertise, else the bound interface when specific, else 127.0.0.1."""
    if configured:
        return configured
    if bound_host and bound_host not in ("0.0.0.0", "::", "::0"):
        return bound_host
    return "127.0.0.1"


class SupernodeService(NodeService):
    """Every part of a supernode; see the module docstring for start-up order.

    The listeners, port file, readiness and stop order are L{NodeService}'s;
    this class adds the seed address, the cluster's own name, the timers and
    what stops around the listeners.
    """

    role = "supernode"

    def __init__(self, reactor, config, store, scheduler, cdn, api_site, piece_factory,
                 api_endpoint, piece_endpoint, metrics, preheater=None, cluster=None,
                 runner=None, closers=(), log_observer=None, handover=None):
        NodeService.__init__(self, reactor, config, store, metrics, runner=runner,
                             closers=closers, log_observer=log_observer)
        self.scheduler = scheduler
        self.cdn = cdn
        self.api_site = api_site
        self.piece_factory = piece_factory
        self.preheater = preheater
        self.cluster = cluster
        self.handover = handover
        self.piece_service = self.add_listener("piece", piece_endpoint, piece_factory, "pieces")
        self.api_service = self.add_listener("api", api_endpoint, api_site)
        self.add_timer(config.expire_interval, scheduler.expire, "scheduler-expire")
        self.add_timer(config.gc_every(), self.gc, "store-gc")
        if cluster is not None:
            cluster.service().setServiceParent(self)

    @property
    def api_address(self):
        return self.addresses.get("api")

    @property
    def piece_address(self):
        return self.addresses.get("piece")

    def ready_result(self):
        """L{whenReady} fires with C{(api_address, piece_address)}."""
        return (self.api_address, self.piece_address)

    def gc(self):
        freed = NodeService.gc(self)
        # Tasks the store dropped must not be offered from the seed any more.
        self.cdn.forget_missing()
        return freed

    def after_load(self):
        spool = self.cdn.spool_dir
        if spool and os.path.isdir(spool):
            shutil.rmtree(spool, ignore_errors=True)

    def listener_bound(self, name, host, port):
        advertise = _advertised(self.config.advertise, host)
        if name == "piece":
            self.cdn.set_seed(PeerInfo(f"supernode-{advertise}:{port}", advertise, port))
        elif name == "api" and self.cluster is not None and self.cluster.self_name is None:
            self.cluster.set_self(f"{advertise}:{port}")

    def port_file_body(self):
        return {"api": self.api_address[1], "piece": self.piece_address[1],
                "api_host": self.api_address[0], "piece_host": self.piece_address[0],
                "pid": os.getpid()}

    def stopService(self):
        """Hand over first (drain, then move the peers: L{HandOver}), then stop."""
        if self.handover is None or not self.running:
            return NodeService.stopService(self)
        d = self.handover.run()
        d.addCallback(lambda _: NodeService.stopService(self))
        return d

    def before_unlisten(self):
        self.cdn.stop()
        return []

    def after_unlisten(self):
        # Let pieces in flight finish, refuse new requests, drop the connections.
        close_pieces = getattr(self.piece_factory, "close", None)
        return [close_pieces()] if close_pieces is not None else []

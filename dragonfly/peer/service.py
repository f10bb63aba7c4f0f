"""A peer assembled: store, piece server, piece client pool, node, local API.

L{dragonfly.peer.assembly.make_peer_service} builds everything from a L{PeerConfig} and returns
C{(PeerService, PeerNode, PeerMetrics)}; the dfdaemon reuses it and adds its
mirror listener with L{PeerService.add_listener}.

Start-up order (L{PeerService.startService}):

  1. the piece port listens; its bound port becomes the node's L{PeerInfo}
     (C{--advertise} host), so C{--piece-listen tcp:0} works;
  2. the API port listens, then the API's unix socket (C{--api-socket}),
     then any extra listeners (the mirror); each bound
     address is logged ("peer pieces listening on HOST:PORT", "peer api
     listening on HOST:PORT"); a port that cannot listen ends the start
     before anything else ran ("cannot listen on tcp:65002:...: Address
     already in use", exit status 1);
  3. the store is scanned and the timers start;
  4. the bound addresses are written to C{--port-file} as JSON
     C{{"api": port, "piece": port, ...}}.

Stopping leaves every swarm (best effort; the answers are awaited for
C{leave_timeout} at most, before the HTTP pool closes), drains the piece
server, closes connection pools and saves the store's metadata.
"""
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from dragonfly.interfaces import PeerInfo
from dragonfly.runtime.nodeconfig import NodeConfig
from dragonfly.runtime.nodeservice import NodeService

#: Seconds between heartbeats for finished tasks; well under the supernode's
#: peer timeout (120 s), so a live peer is never dropped as silent.
HEARTBEAT_INTERVAL = 30.0

__all__ = ["PeerConfig", "PeerService"]


@dataclass
class PeerConfig(NodeConfig):
    """A peer's settings: L{NodeConfig}'s, with the peer's defaults, and its own."""

    data_dir: str = "/var/lib/dragonfly/peer"
    piece_listen: str = "tcp:65000"
    advertise: str = "127.0.0.1"
    supernodes: list = field(default_factory=lambda: [("127.0.0.1", 8002)])
    api_listen: str = "tcp:65002:interface=127.0.0.1"
    #: a unix socket path the local API also listens on (mode 0600), or None
    api_socket: str = None
    concurrency: int = 8
    peer_id: str = None


class PeerService(NodeService):
    """Every part of a peer; see the module docstring for the start-up order.

    The listeners, port file, readiness and stop order are L{NodeService}'s;
    this class adds the node's advertised address, the peer id in the port
    file, the heartbeat and what stops around the listeners.
    """

    role = "peer"

    def __init__(self, reactor, config, store, node, api_site, piece_factory,
                 piece_endpoint, api_endpoint, metrics, piece_pool=None, runner=None,
                 closers=(), log_observer=None, api_socket_endpoint=None):
        NodeService.__init__(self, reactor, config, store, metrics, runner=runner,
                             closers=closers, log_observer=log_observer)
        self.node = node
        self.api_site = api_site
        self.piece_factory = piece_factory
        self.piece_pool = piece_pool
        self.piece_service = self.add_listener("piece", piece_endpoint, piece_factory, "pieces")
        self.api_service = self.add_listener("api", api_endpoint, api_site)
        if api_socket_endpoint is not None:
            # the same Site, so the same rules (Host, Origin, JSON bodies)
            self.add_listener("api-socket", api_socket_endpoint, api_site, "api socket")
        self.add_timer(config.gc_every(), self.gc, "store-gc")
        # Keep finished tasks in their swarms (supernodes drop silent peers).
        self.add_timer(HEARTBEAT_INTERVAL, lambda: Deferred.fromCoroutine(node.heartbeat()),
                       "heartbeat")

    def gc(self):
        freed = NodeService.gc(self)
        self.node.forget_missing()
        held = getattr(self.store, "held_bytes", None)
        if held is not None:
            self.metrics.cache_bytes.set(held())
        return freed

    def listener_bound(self, name, host, port):
        if name == "piece":
            self.node.peer_info = PeerInfo(self.node.peer_info.peer_id,
                                           self.config.advertise, port)
            self.log.info("peer id {peer_id}, advertised as {host}:{port}",
                          peer_id=self.node.peer_info.peer_id,
                          host=self.config.advertise, port=port)

    def port_file_body(self):
        body = NodeService.port_file_body(self)
        body["peer_id"] = self.node.peer_info.peer_id
        return body

    def before_unlisten(self):
        ds = [self.node.shutdown()]
        close = getattr(self.piece_factory, "close", None)
        if close is not None:
            ds.append(close())
        return ds

    def after_unlisten(self):
        return [self.piece_pool.close()] if self.piece_pool is not None else []


"""One peer, assembled in one place: L{build_peer}.

Every peer of the product is built here from a L{PeerConfig}: the piece
store, the piece client pool, the L{PeerNode}, the piece server, and
(optionally) the local API Site. C{twistd peer} and C{twistd dfdaemon} wrap
the result in a L{PeerService} (L{make_peer_service}); dfget's embedded mode
runs the same object graph for the length of one download with
L{Peer.start} / L{Peer.stop}. What differs in embedded mode is said with
parameters, not with a second wiring: no API (C{api=False}), the caller's
runner and HTTP client, its own user agent, a temporary C{data_dir} and a
piece port on an ephemeral port (L{ephemeral_listen}).
"""
import ipaddress
from dataclasses import dataclass, field

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from dragonfly.interfaces import PeerInfo
from dragonfly.peer.service import PeerConfig, PeerService
from dragonfly.taskid import new_peer_id

__all__ = ["Peer", "PeerConfig", "build_peer", "make_peer_service", "ephemeral_listen"]


@dataclass
class Peer:
    """The parts of one peer, as L{build_peer} wired them.

    @ivar api_site: the local API's Site, or None (built with C{api=False}).
    @ivar closers: callables run when the peer stops (its own HTTP pool).
    @ivar tls: the L{dragonfly.tls.NodeTLS} of its piece port, piece client
        and supernode client, or None (plain TCP).
    """

    reactor: object
    config: PeerConfig
    node: object
    store: object
    metrics: object
    runner: object
    piece_pool: object
    piece_factory: object
    piece_endpoint: object
    api_site: object = None
    api_endpoint: object = None
    api_socket_endpoint: object = None
    closers: list = field(default_factory=list)
    log_observer: object = None
    tls: object = None
    _port: object = field(default=None, init=False, repr=False)

    log = Logger()

    def service(self):
        """The daemon's lifecycle: a L{PeerService} over these parts (reloading
        the TLS files on SIGHUP when there are some; else saying TLS is off)."""
        from dragonfly.tls import ReloadOnHangup, warn_tls_off

        svc = PeerService(self.reactor, self.config, self.store, self.node, self.api_site,
                          self.piece_factory, self.piece_endpoint, self.api_endpoint,
                          self.metrics, piece_pool=self.piece_pool, runner=self.runner,
                          closers=self.closers, log_observer=self.log_observer,
                          api_socket_endpoint=self.api_socket_endpoint)
        if self.tls is None:
            warn_tls_off()
        else:
            ReloadOnHangup(self.reactor, self.tls).setServiceParent(svc)
        return svc

    async def start(self):
        """A peer for one download (no daemon): listen on the piece port and
        advertise it. Nothing is loaded and no timer runs."""
        port = await self.piece_endpoint.listen(self.piece_factory)
        self._port = port
        addr = port.getHost()
        self.node.peer_info = PeerInfo(self.node.peer_info.peer_id, self.config.advertise,
                                       addr.port)
        self.log.info("embedded peer {peer} serving pieces on {host}:{port}",
                      peer=self.node.peer_info.peer_id, host=addr.host, port=addr.port)

    async def stop(self, grace=1.0):
        """End what L{start} began: leave the swarms, drain the piece server
        (C{grace} seconds), stop listening, close the pools, save the store."""
        await self.node.shutdown()
        await self.piece_factory.close(grace=grace)
        port, self._port = self._port, None
        if port is not None:
            await maybeDeferred(port.stopListening)
        await self.piece_pool.close()
        for close in self.closers:
            await maybeDeferred(close)
        self.store.close()


def build_peer(reactor, config, *, runner=None, http_client=None, origin_http=None, api=True,
               user_agent="dragonfly-peer"):
    """Every part of a peer from a L{PeerConfig}: a L{Peer}.

    @param runner: the IRunner for disk and hashing work; by default a
        thread pool of C{config.threads} threads.
    @param http_client: a treq-like HTTPClient for the supernodes; by
        default one over a pool of its own, closed on stop.
    @param origin_http: the HTTPClient for origins; by default one over a
        pool of its own (closed on stop) that connects only where the
        config's egress policy (C{allow_origin}/C{deny_origin}) allows.
    @param api: build the local API (on C{config.api_listen}, and on the unix
        socket C{config.api_socket} when set).
    @param user_agent: what the origin client calls itself.
    """
    from dragonfly.admission import PeerAdmission
    from dragonfly.metrics import PeerMetrics
    from dragonfly.origin import OriginClient
    from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
    from dragonfly.protocol.pool import PieceClientPool
    from dragonfly.protocol.server import PieceServerFactory
    from dragonfly.runtime.daemon import server_endpoint, unix_socket_endpoint
    from dragonfly.runtime.ratelimit import TokenBucket
    from dragonfly.storage.store import PieceStore

    c = config
    tls, runner, closers, http_client, origin_http = _runtime(
        reactor, c, runner, http_client, origin_http)
    metrics = PeerMetrics()
    store = PieceStore(c.data_dir, quota=c.cache_size, ttl=c.cache_ttl, clock=reactor,
                       runner=runner, pass_through=True)
    metrics.watch_store(store)
    peer_id = c.peer_id or new_peer_id(None if tls is None else tls.names[0])
    download_limiter = TokenBucket(reactor, c.download_limit) if c.download_limit > 0 else None
    upload_limiter = TokenBucket(reactor, c.upload_limit) if c.upload_limit > 0 else None
    origin = OriginClient(reactor, origin_http, download_limiter, user_agent=user_agent)
    admission = PeerAdmission(reactor)   # our tokens, and the keys we check others' with
    piece_pool = PieceClientPool(reactor, peer_id, download_limiter=download_limiter,
                                 tokens=admission, endpoint_factory=_tls_endpoints(reactor, tls))
    node = PeerNode(NodeDeps(reactor, store, http_client, piece_pool, metrics, runner,
                             origin=origin, admission=admission),
                    c.supernodes, PeerInfo(peer_id, c.advertise, 0),
                    NodeSettings(concurrency=c.concurrency, spool_dir=c.data_dir,
                                 max_file_size=c.max_file_size,
                                 supernode_scheme="http" if tls is None else "https"))
    piece_factory = PieceServerFactory(store, reactor, upload_limiter=upload_limiter,
                                       max_uploads=c.max_uploads,
                                       on_upload=metrics.upload_bytes.inc, admission=admission,
                                       on_cut=node.upload_cut)
    piece_endpoint = server_endpoint(reactor, c.piece_listen)
    if tls is not None:
        piece_endpoint = tls.wrap_server(piece_endpoint)
    peer = Peer(reactor, c, node, store, metrics, runner, piece_pool, piece_factory,
                piece_endpoint, closers=closers, tls=tls)
    if api:
        peer.api_site = _api_site(node, store, metrics, reactor)
        peer.api_endpoint = server_endpoint(reactor, c.api_listen)
        if c.api_socket:
            peer.api_socket_endpoint = unix_socket_endpoint(reactor, c.api_socket)
    if c.log_format == "json":
        from dragonfly.logsetup import json_observer_for
        peer.log_observer = json_observer_for(reactor, c)
    return peer


def _runtime(reactor, c, runner, http_client, origin_http):
    """What a peer runs on, the given parts or its own: (TLS material or None,
    runner, closers of what it made, supernode HTTP client, origin HTTP client)."""
    tls = None
    if c.tls is not None:
        from dragonfly.tls import NodeTLS
        tls = NodeTLS(c.tls, clock=reactor)
    if runner is None:
        from dragonfly.runtime.threads import ThreadRunner
        runner = ThreadRunner(reactor, max_threads=c.threads, name="peer-io")
    closers = []
    if http_client is None:
        http_client = _own_http_client(reactor, closers, context_factory=tls, control=True)
    if origin_http is None:
        from dragonfly.egress import EgressPolicy
        origin_http = _own_http_client(reactor, closers,
                                       EgressPolicy(c.allow_origin, c.deny_origin))
    return tls, runner, closers, http_client, origin_http


def _own_http_client(reactor, closers, egress=None, context_factory=None, control=False):
    """An HTTP client over a pool of its own (closed by C{closers}); with
    C{control}, the supernode calls' (L{dragonfly.control.http})."""
    from twisted.web.client import HTTPConnectionPool

    from dragonfly.origin import make_http_client

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    closers.append(pool.closeCachedConnections)
    if control:
        from dragonfly.control.http import make_control_client
        return make_control_client(reactor, pool, context_factory=context_factory)
    return make_http_client(reactor, pool, egress=egress, context_factory=context_factory)


def _tls_endpoints(reactor, tls, connect_timeout=10):
    """The piece pool's endpoint factory: None (plain TCP, the pool's default)
    without TLS, else TCP endpoints wrapped in our mutual TLS."""
    if tls is None:
        return None
    from dragonfly.protocol.pool import default_endpoint

    def endpoint(host, port):
        return tls.wrap_client(default_endpoint(reactor, host, port, connect_timeout), host)
    return endpoint


def _api_site(node, store, metrics, reactor):
    from twisted.web.server import Site

    from dragonfly.httpsite import harden_site
    from dragonfly.peer.api import PeerAPI

    site = Site(PeerAPI(node, store, metrics, reactor).resource(),
                parsePOSTFormSubmission=False)  # JSON bodies only
    site.displayTracebacks = False
    return harden_site(site)


def make_peer_service(options, reactor=None):
    """(PeerService, PeerNode, PeerMetrics) from parsed L{dragonfly.peer.tap.PeerOptions}
    (or anything with a C{.config} L{PeerConfig}, or a PeerConfig itself)."""
    if reactor is None:
        from twisted.internet import reactor
    config = options if isinstance(options, PeerConfig) else options.config
    peer = build_peer(reactor, config)
    return peer.service(), peer.node, peer.metrics


def ephemeral_listen(advertise):
    """An endpoint string for a piece port on an ephemeral port of the address
    C{advertise} (of every IPv4 address when it is a host name)."""
    try:
        ipaddress.ip_address(advertise)
        interface = advertise
    except ValueError:
        interface = "0.0.0.0"
    if ":" in interface:
        return "tcp6:0:interface=" + interface.replace(":", "\\:")
    return f"tcp:0:interface={interface}"

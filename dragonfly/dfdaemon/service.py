"""The dfdaemon's mirror side assembled: upstream agent, mirror, listening Site.

A dfdaemon is a peer (built by ``dragonfly.peer.assembly.make_peer_service``,
the same code as ``twistd peer``) plus the mirror: :func:`attach_mirror` adds
its Site as one more listener of the peer's service (``--listen``, any
endpoint string: ``tcp:65001``, ``ssl:65001:privateKey=...:certKey=...``,
``unix:...``; its port goes in the port file as ``"mirror"``) and a child
service that closes the upstream connection pool on stop.
"""
from dataclasses import dataclass, field

from twisted.application import service
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from dragonfly.dfdaemon.mirror import RegistryMirror
from dragonfly.dfdaemon.upload import StreamingChannel, StreamingRequest
from dragonfly.httpsite import harden_site
from dragonfly.dfdaemon.upstream import DEFAULT_REGISTRY, Upstreams, UpstreamTLSPolicy
from dragonfly.runtime.daemon import server_endpoint
from dragonfly.runtime.threads import ThreadRunner

__all__ = ["MirrorConfig", "UpstreamPoolService", "make_upstream_agent", "build_mirror",
           "attach_mirror", "registry_origins"]


@dataclass
class MirrorConfig:
    listen: str = "tcp:65001"
    registry: str = DEFAULT_REGISTRY
    allow_registry: list = field(default_factory=list)
    insecure_registry: list = field(default_factory=list)
    upstream_timeout: float = 60.0      # seconds to the upstream's response headers
    connect_timeout: float = 30.0
    check_access: bool = True           # HEAD the registry before serving a blob from P2P


def make_upstream_agent(reactor, upstreams, pool, connect_timeout=30.0, egress=None):
    """An Agent for the upstreams: verified TLS except opted-in hosts; no
    redirects, cookies or content decoding (bytes pass through as they are).
    With C{egress} (an L{dragonfly.egress.EgressPolicy}) it connects only to
    addresses the policy allows."""
    if egress is not None:
        from dragonfly.egressguard import guarded_agent
        return guarded_agent(reactor, egress, UpstreamTLSPolicy(upstreams), pool, connect_timeout)
    return Agent(reactor, contextFactory=UpstreamTLSPolicy(upstreams), pool=pool,
                 connectTimeout=connect_timeout)


def registry_origins(config):
    """The egress policy entries (HOST:PORT) of a L{MirrorConfig}'s registries."""
    upstreams = Upstreams.from_options(config.registry, config.allow_registry,
                                       config.insecure_registry)
    return [f"[{u.host}]:{u.port}" if ":" in u.host else f"{u.host}:{u.port}"
            for u in upstreams.all]


class MirrorChannel(StreamingChannel):
    """HTTP/1.1 channel that drops a connection opening with a TLS handshake.

    skopeo and podman try an ``insecure = true`` mirror over TLS first, then
    plain HTTP. A plain-HTTP port that waits for the end of a "request line"
    that never comes stalls each pull by the client's TLS handshake timeout
    (10 s); closing at once makes the client fall back immediately. (On an
    ``ssl:`` endpoint the channel only sees decrypted bytes.)
    """

    _first = True

    def dataReceived(self, data):
        if self._first and data:
            self._first = False
            if data[:1] == b"\x16":  # TLS record type "handshake"
                self.transport.abortConnection()
                return
        StreamingChannel.dataReceived(self, data)


class MirrorSite(Site):
    """The mirror's Site: no tracebacks to clients; TLS on the plain port dropped
    at once; request bodies streamed (L{dragonfly.dfdaemon.upload})."""

    displayTracebacks = False
    protocol = MirrorChannel
    requestFactory = StreamingRequest

    def __init__(self, resource, reactor=None):
        Site.__init__(self, resource, reactor=reactor)
        harden_site(self, MirrorChannel)


class UpstreamPoolService(service.Service):
    """Closes the mirror's upstream connection pool when the dfdaemon stops."""

    def __init__(self, pool):
        self.pool = pool
        self.setName("mirror-upstream-pool")

    def stopService(self):
        service.Service.stopService(self)
        return self.pool.closeCachedConnections()


def build_mirror(reactor, config, peer, metrics, health=None, egress=None):
    """(RegistryMirror, Site, HTTPConnectionPool) in front of C{peer}.

    @param config: a L{MirrorConfig} (already validated).
    @param peer: the dfdaemon's L{dragonfly.peer.node.PeerNode}.
    @param metrics: the peer's L{dragonfly.metrics.PeerMetrics} (one registry).
    """
    upstreams = Upstreams.from_options(config.registry, config.allow_registry,
                                       config.insecure_registry)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 60
    agent = make_upstream_agent(reactor, upstreams, pool, config.connect_timeout, egress)
    mirror = RegistryMirror(reactor, agent, peer, upstreams, metrics,
                            header_timeout=config.upstream_timeout, health=health,
                            check_access=config.check_access,
                            runner=ThreadRunner(reactor, max_threads=2, name="dragonfly-blobhash"))
    site = MirrorSite(mirror.resource(), reactor=reactor)
    return mirror, site, pool


def attach_mirror(peer_service, reactor, config, node, metrics, endpoint=None, egress=None):
    """Add the mirror to a peer's service (L{dragonfly.peer.service.PeerService}).

    The mirror listens after the peer's piece and API ports, and its port is
    written to the port file as C{"mirror"}. Returns the L{RegistryMirror}.
    """
    if endpoint is None:
        endpoint = server_endpoint(reactor, config.listen)
    health = getattr(peer_service.store, "health_report", None)   # the cache's state
    mirror, site, pool = build_mirror(reactor, config, node, metrics, health=health,
                                      egress=egress)
    peer_service.add_listener("mirror", endpoint, site, label="registry mirror")
    UpstreamPoolService(pool).setServiceParent(peer_service)
    Logger().info("dfdaemon mirror upstreams: {upstreams}",
                  upstreams=", ".join(u["url"] for u in mirror.upstreams.describe()))
    return mirror

"""The dfdaemon's HTTP proxy (``--proxy-listen``): P2P for the URLs its rules name.

Clients use it as their C{HTTP_PROXY}: they send absolute-URI requests
(C{GET http://host/path HTTP/1.1}) and C{CONNECT host:port} for HTTPS.
L{HTTPProxy} handles each request in this order:

  1. the target is read (L{dragonfly.dfdaemon.proxyrules.parse_target}); a
     path-only or malformed target is a 400;
  2. the egress policy (C{--allow-origin}/C{--deny-origin}, the same as the
     peer's) judges every address the host resolves to: a refusal is a 403
     and the host never receives a byte;
  3. L{dragonfly.dfdaemon.proxyrules.decide}: C{CONNECT} opens a raw tunnel
     (L{dragonfly.dfdaemon.tunnel}); a GET matching a C{--proxy-rule} is
     served through P2P (L{dragonfly.dfdaemon.proxyfetch}), falling back to
     the origin's own answer when P2P cannot start; anything else passes
     through to the origin (L{dragonfly.dfdaemon.proxyrelay}).

Errors the proxy answers itself are JSON C{{"error": ...}}. Each request is
counted in C{dragonfly_proxy_requests_total{outcome}} (C{p2p},
C{p2p_fallback}, C{passthrough}, C{tunnel}, C{denied}, C{invalid},
C{failed}) and the bytes sent to clients in
C{dragonfly_proxy_bytes_total{path}} (C{p2p}, C{passthrough}, C{tunnel}),
in the peer's registry (its C{/metrics}).

The listener is loopback-only unless C{--proxy-allow-remote} is given: a
proxy reachable from other hosts lends them this node's egress.
"""
import re
from dataclasses import dataclass, field

from prometheus_client import Counter
from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from dragonfly.dfdaemon.proxyfetch import P2PFailed, P2PFetch, ProxyError, origin_headers
from dragonfly.dfdaemon.proxyrelay import ProxyRelay
from dragonfly.dfdaemon.proxyrules import BadRequest, RuleError, Rules, decide, parse_target
from dragonfly.dfdaemon.routes import Exchange
from dragonfly.dfdaemon.tunnel import Splice, TunnelFailed, open_tunnel, take_over
from dragonfly.httpio import abort, describe, write_json
from dragonfly.httpsite import harden_site
from dragonfly.origin import OriginRefused
from dragonfly.redact import redact_text, redact_url

__all__ = ["ProxyConfig", "HTTPProxy", "ProxyMetrics", "ProxySite", "attach_proxy",
           "check_proxy_options", "PROXY_ROWS", "PROXY_FLAGS", "VIA"]

VIA = b"1.1 dragonfly"
OUTCOMES = ("p2p", "p2p_fallback", "passthrough", "tunnel", "denied", "invalid", "failed")

#: The dfdaemon's option rows for the proxy (C{--proxy-rule} is a list option).
PROXY_ROWS = [
    ["proxy-listen", None, None,
     "HTTP proxy endpoint (default: no proxy), e.g. tcp:65003:interface=127.0.0.1; "
     "loopback only unless --proxy-allow-remote."],
]
PROXY_FLAGS = [
    ["proxy-allow-remote", None,
     "Let --proxy-listen bind a non-loopback address (other hosts then use this "
     "node's egress: firewall the port)."],
]
_INTERFACE_RE = re.compile(r"(?:^|:)interface=((?:\\.|[^:])*)")
_LOOPBACK = re.compile(r"\A(127(\.\d{1,3}){3}|::1|localhost)\Z")


@dataclass
class ProxyConfig:
    listen: str = None                   # None: no proxy
    rules: list = field(default_factory=list)
    allow_remote: bool = False
    header_timeout: float = 60.0         # seconds to an origin's response headers
    connect_timeout: float = 30.0
    tunnel_idle: float = 600.0           # seconds a silent CONNECT tunnel stays open


def loopback_only(endpoint):
    """Does the endpoint string C{endpoint} listen on loopback (or a UNIX socket) only?"""
    if endpoint.startswith("unix:"):
        return True
    m = _INTERFACE_RE.search(endpoint)
    if m is None:
        return False
    return bool(_LOOPBACK.match(m.group(1).replace("\\", "").strip("[]")))


def check_proxy_options(options, upstream_timeout=60.0):
    """The L{ProxyConfig} of a dfdaemon's options; UsageError when they do not hold."""
    from dragonfly.config import check_endpoint

    c = ProxyConfig(header_timeout=upstream_timeout)
    rules = [str(r) for r in options["proxy_rule"]]
    try:
        Rules(rules)
    except RuleError as e:
        raise usage.UsageError(str(e))
    c.rules = rules
    c.allow_remote = bool(options["proxy-allow-remote"])
    listen = options["proxy-listen"]
    if not listen:
        if rules:
            raise usage.UsageError("--proxy-rule needs --proxy-listen")
        return c
    check_endpoint("proxy-listen", listen, example="tcp:65003:interface=127.0.0.1")
    if not c.allow_remote and not loopback_only(listen):
        raise usage.UsageError(
            f"--proxy-listen {listen} is not loopback-only: add interface=127.0.0.1 "
            f"(or ::1, or use unix:), or give --proxy-allow-remote to serve other hosts")
    c.listen = listen
    return c


class ProxyMetrics:
    """The proxy's counters, in the peer's registry."""

    def __init__(self, registry):
        self.requests = Counter("dragonfly_proxy_requests", "HTTP proxy requests by outcome",
                                ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        self.bytes = Counter("dragonfly_proxy_bytes", "Bytes sent to proxy clients, by path",
                             ["path"], registry=registry)
        for path in ("p2p", "passthrough", "tunnel"):
            self.bytes.labels(path=path)

    def counter(self, path):
        return self.bytes.labels(path=path).inc


class HTTPProxy:
    """The proxy's HTTP side; C{resource()} is what its Site serves.

    @param peer: an L{dragonfly.interfaces.IDownloader} (the peer node).
    @param rules: a L{dragonfly.dfdaemon.proxyrules.Rules}.
    @param guard: an L{dragonfly.egressguard.EgressGuard} (the node's policy).
    @param agent: an C{IAgent} through the same policy, following no redirects.
    @param metrics: a L{ProxyMetrics}.
    """

    log = Logger()

    def __init__(self, reactor, peer, rules, guard, agent, metrics, header_timeout=60.0,
                 connect_timeout=30.0, tunnel_idle=600.0):
        self.reactor = reactor
        self.rules = rules
        self.guard = guard
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.tunnel_idle = tunnel_idle
        self.fetch = P2PFetch(peer, metrics.counter("p2p"), VIA)
        self.relay = ProxyRelay(reactor, agent, metrics.counter("passthrough"), VIA,
                                header_timeout, drop=rules.digest_headers)

    def resource(self):
        return ProxyResource(self)

    def render(self, request):
        request.defaultContentType = None
        ex = Exchange(request)
        ex.kind = "invalid"
        ex.counted = False
        request.notifyFinish().addBoth(lambda _: self._count(ex))
        d = defer.Deferred.fromCoroutine(self._handle(ex))
        d.addErrback(self._failed, ex)
        return NOT_DONE_YET

    async def _handle(self, ex):
        request = ex.request
        try:
            target = parse_target(request.method, request.uri)
            headers = {n.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                       for n, v in request.requestHeaders.getAllRawHeaders()}
            decision = decide(target, self.rules, headers)
        except BadRequest as e:
            raise ProxyError(400, str(e))
        ex.kind = "denied"
        await self._check_egress(target)
        if ex.gone:
            return
        if decision.kind == "tunnel":
            ex.kind = "tunnel"
            return await self._tunnel(ex, target)
        if decision.kind == "p2p":
            ex.kind = "p2p"
            try:
                return await self.fetch.serve(ex, target.url, decision,
                                              origin_headers(request, self.rules.digest_headers))
            except P2PFailed:
                if ex.gone:
                    return
                ex.kind = "p2p_fallback"
        else:
            ex.kind = "passthrough"
        await self.relay.relay(ex, target.url)

    async def _check_egress(self, target):
        try:
            await self.guard.check(target.host, target.port)
        except OriginRefused as e:
            raise ProxyError(403, e.message)
        except DNSLookupError as e:
            raise ProxyError(502, f"cannot resolve {target.host}: {describe(e)}")

    async def _tunnel(self, ex, target):
        splice = Splice(self.reactor, on_bytes=self._tunnel_bytes, idle_timeout=self.tunnel_idle)
        ex.on_gone.append(splice.abort)
        try:
            await open_tunnel(self.reactor, self.guard, target, splice, self.connect_timeout)
        except OriginRefused as e:
            raise ProxyError(403, e.message)
        except TunnelFailed as e:
            raise ProxyError(502, str(e))
        if ex.gone:
            splice.abort()
            return
        ex.on_gone.remove(splice.abort)
        self._count(ex)     # the request never finishes: the connection is the tunnel's now
        take_over(ex.request, splice, VIA)

    def _tunnel_bytes(self, direction, n):
        if direction == "down":
            self.metrics.bytes.labels(path="tunnel").inc(n)

    def _count(self, ex):
        if not ex.counted:
            ex.counted = True
            self.metrics.requests.labels(outcome=ex.kind).inc()

    def _failed(self, failure, ex):
        request = ex.request
        if ex.gone or request.finished:
            return None
        if failure.check(ProxyError):
            e = failure.value
            if e.status >= 500 and ex.kind not in ("invalid", "denied"):
                ex.kind = "failed"
            elif e.status == 400:
                ex.kind = "invalid"
            elif e.status == 403:
                ex.kind = "denied"
            self._error(request, e.status, e.message)
            return None
        self.log.failure("proxy request {uri} failed", failure, uri=redact_url(request.uri))
        ex.kind = "failed"
        self._error(request, 500, "internal error")
        return None

    @staticmethod
    def _error(request, status, message):
        if request.startedWriting:
            abort(request)
            return
        request.setHeader(b"via", VIA)
        if status == 400:
            request.setHeader(b"connection", b"close")
        write_json(request, status, {"error": redact_text(message)})


class ProxyResource(Resource):
    """The leaf resource that hands every request to the proxy's C{render}."""

    isLeaf = True

    def __init__(self, proxy):
        Resource.__init__(self)
        self._proxy = proxy

    def render(self, request):
        return self._proxy.render(request)


class ProxySite(Site):
    """The proxy's Site: JSON 400s for malformed requests, no tracebacks, redacted access log."""

    displayTracebacks = False

    def __init__(self, resource, reactor=None):
        Site.__init__(self, resource, reactor=reactor)
        harden_site(self)


def attach_proxy(peer_service, reactor, config, node, metrics, egress):
    """Add the proxy to a dfdaemon's peer service, listening on C{config.listen}.

    @param config: a L{ProxyConfig} with a C{listen}.
    @param node: the peer node (an L{dragonfly.interfaces.IDownloader}).
    @param metrics: the peer's L{dragonfly.metrics.PeerMetrics} (its registry).
    @param egress: the node's L{dragonfly.egress.EgressPolicy}.
    Its port goes in the port file as C{"proxy"}. Returns the L{HTTPProxy}.
    """
    from twisted.web.client import HTTPConnectionPool

    from dragonfly.dfdaemon.service import UpstreamPoolService
    from dragonfly.egressguard import EgressGuard, guarded_agent
    from dragonfly.runtime.daemon import server_endpoint

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    pool.cachedConnectionTimeout = 60
    agent = guarded_agent(reactor, egress, None, pool, config.connect_timeout)
    proxy = HTTPProxy(reactor, node, Rules(config.rules), EgressGuard(reactor, egress), agent,
                      ProxyMetrics(metrics.registry), config.header_timeout,
                      config.connect_timeout, config.tunnel_idle)
    site = ProxySite(proxy.resource(), reactor=reactor)
    peer_service.add_listener("proxy", server_endpoint(reactor, config.listen), site,
                              label="HTTP proxy")
    pool_service = UpstreamPoolService(pool)
    pool_service.setName("proxy-origin-pool")
    pool_service.setServiceParent(peer_service)
    Logger().info("dfdaemon HTTP proxy: {n} P2P rule(s)", n=len(config.rules))
    return proxy

"""Enforcing the egress policy where connections are made.

L{EgressGuard} resolves a host (numeric forms without DNS, names through the
reactor's C{nameResolver}), judges every address with an
L{dragonfly.egress.EgressPolicy} and refuses the whole host when any address
is denied (L{dragonfly.origin.OriginRefused}). L{GuardedEndpointFactory} is an
C{IAgentEndpointFactory}: an C{Agent} built with it
(L{dragonfly.origin.make_http_client}) connects only to addresses the guard
checked, never re-resolving the name, so every request and every redirect
hop (a redirect is a new request through the same agent) is checked at
connect time. HTTPS keeps verifying the certificate for the URL's host name.
Imports no role.
"""
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from dragonfly.egress import literal_address, normalize_host
from dragonfly.origin import OriginRefused
from dragonfly.runtime.tuning import DownloadEndpoint

__all__ = ["EgressGuard", "GuardedEndpointFactory", "guarded_agent"]


@implementer(IResolutionReceiver)
class _Collect:
    def __init__(self):
        self.addresses = []
        self.done = Deferred()

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self):
        self.done.callback(self.addresses)


class EgressGuard:
    """The policy applied to names: C{check(host, port)} -> the allowed addresses.

    @param reactor: provides C{nameResolver} (IReactorPluggableNameResolver),
        unless C{resolver} (an IHostnameResolver) is given.
    @param policy: an L{dragonfly.egress.EgressPolicy}.
    """

    def __init__(self, reactor, policy, resolver=None):
        self._reactor = reactor
        self.policy = policy
        self._resolver = resolver

    def check(self, host, port):
        """A Deferred list of address strings C{host} resolves to, every one
        allowed; fails with L{OriginRefused} naming the first denied one, or
        with C{DNSLookupError} when the name resolves to nothing."""
        return Deferred.fromCoroutine(self._check(host, port))

    def check_url(self, url):
        """L{check} for the host and port of an http(s) C{url} (str)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        default = 443 if parts.scheme.lower() == "https" else 80
        return self.check(parts.hostname or "", port or default)

    async def _check(self, host, port):
        name = normalize_host(host)
        literal = literal_address(name)
        if literal is not None:
            addresses = [str(literal)]
        else:
            addresses = await self._resolve(name, port)
            if not addresses:
                raise error.DNSLookupError(f"no address for {name}")
        for address in addresses:
            verdict = self.policy.decide(name, address, port)
            if not verdict.allowed:
                raise OriginRefused(self.policy.refusal(name, address, port, verdict))
        return addresses

    def _resolve(self, name, port):
        resolver = self._resolver or self._reactor.nameResolver
        receiver = _Collect()
        resolver.resolveHostName(receiver, name, port)
        return receiver.done


@implementer(IStreamClientEndpoint)
class _GuardedTCPEndpoint:
    """TCP to C{host}:C{port}, only at addresses the guard allowed (in order)."""

    def __init__(self, reactor, guard, host, port, timeout=30, bind_address=None):
        self._reactor = reactor
        self._guard = guard
        self._host = host
        self._port = port
        self._timeout = timeout
        self._bind = bind_address

    def __repr__(self):
        return f"<_GuardedTCPEndpoint {self._host}:{self._port}>"

    def connect(self, protocol_factory):
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, protocol_factory):
        addresses = await self._guard.check(self._host, self._port)
        last = None
        for address in addresses:
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(self._reactor, address, self._port, timeout=self._timeout,
                            bindAddress=self._bind)
            try:
                return await DownloadEndpoint(endpoint).connect(protocol_factory)
            except CancelledError:
                raise
            except Exception as e:
                last = e
        raise last


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """Endpoints for an C{Agent}: TCP (plus TLS for https) through L{EgressGuard}.

    @param tls_policy: an C{IPolicyForHTTPS} (default: browser-like, verified).
    """

    def __init__(self, reactor, guard, tls_policy=None, connect_timeout=30, bind_address=None):
        self._reactor = reactor
        self.guard = guard
        self._tls = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        self._timeout = connect_timeout
        self._bind = bind_address

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII")
        host = normalize_host(host)
        endpoint = _GuardedTCPEndpoint(self._reactor, self.guard, host, uri.port,
                                       self._timeout, self._bind)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(host.encode("ascii"), uri.port)
            return wrapClientTLS(creator, endpoint)
        from twisted.web.error import SchemeNotSupported
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


def guarded_agent(reactor, policy, tls_policy=None, pool=None, connect_timeout=30):
    """An C{Agent} that connects only where the L{dragonfly.egress.EgressPolicy}
    C{policy} allows (give it a pool no unguarded agent shares).

    Its connections are witnessed (L{dragonfly.connwitness}): a body without
    a length read through it ends only at a clean close, never at a reset."""
    from twisted.web.client import Agent

    from dragonfly.connwitness import WitnessEndpointFactory

    factory = GuardedEndpointFactory(reactor, EgressGuard(reactor, policy), tls_policy,
                                     connect_timeout)
    return Agent.usingEndpointFactory(reactor, WitnessEndpointFactory(factory), pool=pool)

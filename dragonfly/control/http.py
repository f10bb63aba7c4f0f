"""The peer's HTTP client for its supernodes: JSON POSTs straight on an Agent.

A downloading peer makes one schedule call per one or two pieces (~140 per
GiB with 4 MiB pieces, ~520 with 2 MiB, ~1,000 with 1 MiB), and through treq's
C{HTTPClient} each call also parsed and re-encoded its URL with hyperlink,
ran a cookie jar over the request and the answer, and went through a
content-decoding agent: 1,408 Python calls per call against 726 here, and
~0.2-0.3 ms less of the peer's reactor thread (bench/README.md, issue 20,
round five, branch dfcpu). L{ControlHTTP} is the treq-like
C{post} that L{dragonfly.control.client.SupernodeClient} uses, on the
same C{Agent} (the same connection pool, the same mutual-TLS policy): the
body is the JSON text as treq encodes it, with a Content-Length; no
redirect is followed (the client handles owner redirects itself); the
answer is the Agent's C{IResponse}, read with
L{dragonfly.origin.collect_capped}; cancelling the Deferred cancels the
request as before. Any other call (C{get}, C{request}, ...) goes to the
treq client it wraps, unchanged.

The Agent's endpoints come from L{SupernodeEndpoints}: a plain HTTP
endpoint is made once per supernode rather than per request (Twisted's
default builds a C{HostnameEndpoint}, IDNA check and all, for every request,
even one that reuses a pooled connection: ~100 of the ~830 Python calls
left per call).
"""
import json

from twisted.internet.defer import succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

__all__ = ["ControlHTTP", "BytesProducer", "SupernodeEndpoints", "make_control_client"]

#: Plain endpoints kept (one per supernode host and port).
MAX_ENDPOINTS = 64

_JSON = b"application/json; charset=UTF-8"


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written at once."""

    def __init__(self, data):
        self._data = data
        self.length = len(data) if data is not None else UNKNOWN_LENGTH

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class ControlHTTP:
    """C{post(url, json=obj)} on a bare C{Agent}; everything else to C{fallback}.

    @param agent: the C{IAgent} (its pool and TLS policy are the calls').
    @param fallback: a treq C{HTTPClient} on the same agent, for any other
        method.
    """

    def __init__(self, agent, fallback):
        self._agent = agent
        self._fallback = fallback

    def post(self, url, json=None, headers=None, allow_redirects=False, unbuffered=True,
             reactor=None, **kwargs):
        """POST the JSON object C{json} to C{url} (str): a Deferred C{IResponse}.

        Only what the supernode client asks for is taken here (a JSON body,
        no redirects, an unbuffered answer); any other use goes to treq.
        """
        try:
            target = url.encode("ascii")
        except (AttributeError, UnicodeEncodeError):
            target = None     # bytes, a URL object, a name to IDNA-encode: treq's job
        if target is None or allow_redirects or not unbuffered or kwargs or headers:
            return self._fallback.post(url, json=json, headers=headers,
                                       allow_redirects=allow_redirects,
                                       unbuffered=unbuffered, reactor=reactor, **kwargs)
        body = _encode(json)
        return self._agent.request(b"POST", target,
                                   Headers({b"content-type": [_JSON]}), BytesProducer(body))

    def __getattr__(self, name):
        return getattr(self._fallback, name)


def _encode(obj):
    """The body treq sends for C{json=obj}."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@implementer(IAgentEndpointFactory)
class SupernodeEndpoints:
    """The supernode calls' endpoints, as Twisted's Agent makes them by default
    (TCP for C{http}, TCP and TLS for C{https}), except that a plain one is
    made once per host and port and reused (a C{HostnameEndpoint} resolves
    its name again at every connect). An HTTPS endpoint is made per request
    with the creator C{policy} gives then: the node's certificates reload on
    SIGHUP, and a kept endpoint would keep the old ones.

    @param policy: the C{IPolicyForHTTPS} (the node's L{dragonfly.tls.NodeTLS});
        None: Twisted's default, C{BrowserLikePolicyForHTTPS}.
    """

    def __init__(self, reactor, policy=None):
        if policy is None:
            from twisted.web.client import BrowserLikePolicyForHTTPS
            policy = BrowserLikePolicyForHTTPS()
        self._reactor = reactor
        self._policy = policy
        self._plain = {}

    def endpointForURI(self, uri):
        if uri.scheme == b"http":
            key = (uri.host, uri.port)
            endpoint = self._plain.get(key)
            if endpoint is None:
                endpoint = self._tcp(uri)
                if len(self._plain) < MAX_ENDPOINTS:
                    self._plain[key] = endpoint
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port),
                                 self._tcp(uri))
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")

    def _tcp(self, uri):
        return HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port)


def make_control_client(reactor, pool=None, context_factory=None):
    """A L{ControlHTTP} for a peer's supernode calls, over an Agent on
    C{pool} (HTTPS verified by C{context_factory}: the node's mutual TLS)."""
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    from treq.client import HTTPClient
    from twisted.web.client import Agent

    agent = Agent.usingEndpointFactory(reactor, SupernodeEndpoints(reactor, context_factory),
                                       pool=pool)
    jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return ControlHTTP(agent, HTTPClient(agent, cookiejar=jar))

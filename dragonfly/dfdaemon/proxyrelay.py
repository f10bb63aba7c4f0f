"""The proxy's pass-through: a request sent on to its (allowed) origin, the answer relayed.

Any method. The client's headers go on minus the hop-by-hop ones (RFC 9110
7.6.1: C{Connection} and every header it names, C{Keep-Alive},
C{Proxy-Authorization}, C{Proxy-Connection}, C{TE}, C{Trailer},
C{Transfer-Encoding}, C{Upgrade}) and the headers the proxy's rules read
digests from; C{Via} gets this proxy appended. The origin's status, headers
(minus hop-by-hop, plus C{Via}; Twisted's client consumes the origin's
C{Connection} header itself, so headers it names other than the standard
hop-by-hop ones pass) and body come back as they are: redirects
are handed to the client, bodies are not decoded. The response body is
relayed with the origin's transport registered as the push producer of the
client's (the client's socket paces the origin; memory stays at socket
buffers). A request body has already been read by Twisted's server (into
memory up to 100 KB, else a temporary file) and is sent from there.

The agent connects only where the egress policy allows
(L{dragonfly.egressguard.guarded_agent}). An origin that cannot be reached
is a 502, one that does not answer in time a 504, an address the policy
refuses a 403 (L{dragonfly.dfdaemon.proxyfetch.ProxyError}).
"""
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from dragonfly.dfdaemon.passthrough import Discard, relay_body
from dragonfly.dfdaemon.proxyfetch import ProxyError
from dragonfly.httpio import describe
from dragonfly.origin import OriginRefused
from dragonfly.redact import redact_url

__all__ = ["ProxyRelay", "HOP_BY_HOP", "end_to_end"]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                        b"proxy-authorization", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


def end_to_end(headers, drop=frozenset()):
    """A copy of the Twisted C{Headers} without hop-by-hop ones (those named by
    C{Connection} too) and the lower-case C{drop}; repeated lines kept."""
    named = {t.strip().lower() for v in headers.getRawHeaders(b"connection") or []
             for t in v.split(b",") if t.strip()}
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname in _NOT_FORWARDED or lname in named or lname in drop:
            continue
        out.setRawHeaders(name, list(values))
    return out


def _add_via(headers, via):
    headers.addRawHeader(b"via", via)
    return headers


class ProxyRelay:
    """Sends requests to their origins and relays the answers.

    @param agent: an C{IAgent} that connects only where the egress policy
        allows, follows no redirects and decodes nothing.
    @param on_bytes: called with the number of body bytes sent to a client.
    @param via: this proxy's C{Via} value (bytes).
    @param drop: lower-case request header names never forwarded (the rules'
        digest headers).
    """

    log = Logger()

    def __init__(self, reactor, agent, on_bytes, via, header_timeout=60.0, drop=frozenset()):
        self.reactor = reactor
        self.agent = agent
        self.on_bytes = on_bytes
        self.via = via
        self.header_timeout = header_timeout
        self.drop = frozenset(drop)
        self._cooperator = task.Cooperator(
            scheduler=lambda f: reactor.callLater(0, f), started=True)

    def _body(self, request):
        """A body producer for the client's request body, or None without one."""
        has_body = (request.requestHeaders.hasHeader(b"content-length")
                    or request.requestHeaders.hasHeader(b"transfer-encoding"))
        if not has_body or request.content is None:
            return None
        request.content.seek(0)
        return FileBodyProducer(request.content, cooperator=self._cooperator)

    async def _ask(self, request, url):
        headers = _add_via(end_to_end(request.requestHeaders, self.drop), self.via)
        d = self.agent.request(request.method, url.encode("ascii"), headers,
                               self._body(request))
        timer = self.reactor.callLater(self.header_timeout, d.cancel)
        try:
            return await d
        except defer.CancelledError:
            raise ProxyError(504, f"origin did not answer within {self.header_timeout:g}s")
        except OriginRefused as e:
            raise ProxyError(403, e.message)
        except Exception as e:  # noqa: BLE001 - every connection failure is a 502
            refused = _refusal(e)
            if refused is not None:
                raise ProxyError(403, refused)
            self.log.info("origin {url} failed: {error}", url=redact_url(url), error=describe(e))
            raise ProxyError(502, f"origin unreachable: {describe(e)}")
        finally:
            if timer.active():
                timer.cancel()

    async def relay(self, ex, url):
        """Answer the exchange C{ex} with the origin's answer to its request, sent to C{url}."""
        request = ex.request
        response = await self._ask(request, url)
        if ex.gone:
            response.deliverBody(Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        for name, values in end_to_end(response.headers).getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, list(values))
        request.responseHeaders.addRawHeader(b"via", self.via)
        await relay_body(ex, response, request.method == b"HEAD", url, self.log.info, "origin",
                         on_bytes=self.on_bytes, failed_kind="failed")


def _refusal(exc):
    """The egress refusal inside a connection failure (the agent may wrap it), or None."""
    for reason in getattr(exc, "reasons", None) or ():
        if reason.check(OriginRefused):
            return reason.value.message
    return None

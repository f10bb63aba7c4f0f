"""The mirror's pass-through: requests to the upstream registry and their answers relayed.

Every request header is kept, repeated lines included (Twisted ``Headers``
keep each value), minus hop-by-hop ones; the upstream's status, headers
(``WWW-Authenticate`` too) and body come back as they are, so clients do the
Bearer-token dance themselves. Redirects are handed to the client, not
followed. The body is relayed with the upstream transport registered as the
push producer of the client's, so the client's socket paces the upstream.
A request body (a push) goes up as the C{IBodyProducer} given
(L{dragonfly.dfdaemon.upload}), and the answer's C{Location} through the
mapping given (L{dragonfly.dfdaemon.locations}); every other header of the
answer (C{Docker-Upload-UUID}, C{Range}, C{Docker-Content-Digest}) is kept.
An upstream that does not answer in time is a 504 (with a body, the time
runs from the last byte of it that went up), one that cannot be reached a
502 (L{dragonfly.dfdaemon.routes.MirrorError}).
"""
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from dragonfly.dfdaemon.routes import MirrorError
from dragonfly.httpio import abort, describe, unregister
from dragonfly.redact import redact_url

# Never forwarded in either direction (RFC 9110 7.6.1), plus Host (the agent sets it).
_HOP_BY_HOP = frozenset(h.lower() for h in (
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"))
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Range, conditionals and encodings are not for a HEAD that only asks "may I?".
NOT_FOR_ACCESS_CHECK = frozenset({b"range", b"if-range", b"if-match", b"if-none-match",
                                  b"if-modified-since", b"if-unmodified-since"})


def forward_headers(request, drop=frozenset()):
    """The client's headers for the upstream: all of them, repeated lines included,
    minus hop-by-hop ones and C{drop}."""
    out = Headers()
    for name, values in request.requestHeaders.getAllRawHeaders():
        lname = name.lower()
        if lname in _NOT_FORWARDED or lname in drop:
            continue
        out.setRawHeaders(name, list(values))
    return out


class Discard(Protocol):
    """Swallows a response body nobody wants."""

    def connectionLost(self, reason):
        pass


class BodyRelay(Protocol):
    """Streams an upstream (or origin) response body to the client, paced by
    the client's socket; C{finished} fires with the byte count, or fails when
    the body broke off. C{on_bytes}, if given, is called with each chunk's
    size as it goes to the client (the proxy's byte counter)."""

    def __init__(self, request, finished, on_bytes=None):
        self.request = request
        self.finished = finished
        self.on_bytes = on_bytes
        self.bytes = 0

    def connectionMade(self):
        if self.request.channel is None:
            self.transport.stopProducing()
            return
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.bytes += len(data)
        if self.request.channel is not None:
            self.request.write(data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))

    def connectionLost(self, reason):
        unregister(self.request)
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(self.bytes)
        else:
            self.finished.errback(reason)


async def relay_body(ex, response, head, url, log, what, on_bytes=None, failed_kind=None):
    """Send C{response}'s body (its status and headers already set on the
    request) to the client of C{ex}, paced by the client's socket, and
    finish; a C{head} request or an answer without a body finishes at once.
    A body that breaks off is logged with C{log} (naming C{what}: "upstream",
    "origin") and the response cut, C{ex.kind} set to C{failed_kind} if given.
    """
    request = ex.request
    if not head and response.length is not UNKNOWN_LENGTH:
        # The agent keeps a body's Content-Length out of .headers.
        request.setHeader(b"content-length", b"%d" % response.length)
    if head or response.code in (204, 304) or response.length == 0:
        response.deliverBody(Discard())
        request.finish()
        return
    finished = defer.Deferred()
    relay = BodyRelay(request, finished, on_bytes)
    ex.on_gone.append(lambda: relay.transport and relay.transport.stopProducing())
    response.deliverBody(relay)
    try:
        await finished
    except Exception as e:  # noqa: BLE001
        if not ex.gone:
            log("{what} body for {url} broke: {error}", what=what,
                url=redact_url(url), error=describe(e))
            if failed_kind is not None:
                ex.kind = failed_kind
            abort(request)
        return
    if not ex.gone:
        request.finish()


class Passthrough:
    """Asks the upstream registry and relays its answer to the client.

    @param agent: an C{IAgent} for the upstreams (no redirect following, no
        cookies, no content decoding: bytes pass through as they are).
    """

    log = Logger()

    def __init__(self, reactor, agent, header_timeout=60.0):
        self.reactor = reactor
        self.agent = agent
        self.header_timeout = header_timeout

    async def upstream(self, method, url, headers, body=None):
        """The upstream's response (headers only) to C{method url}, or a MirrorError.

        @param body: an C{IBodyProducer} for the request body, or None; while
            it streams, each byte sent up restarts the timeout.
        """
        d = self.agent.request(method, url, headers, body)
        timer = self.reactor.callLater(self.header_timeout, d.cancel)
        if body is not None and hasattr(body, "on_progress"):
            def progress():
                if timer.active():
                    timer.reset(self.header_timeout)
            body.on_progress = progress
        try:
            return await d
        except defer.CancelledError:
            raise MirrorError(504, "UNAVAILABLE", f"upstream did not answer within "
                                                  f"{self.header_timeout:g}s")
        except MirrorError:
            raise
        except Exception as e:  # noqa: BLE001 - every connection failure is a 502
            if getattr(body, "client_left", False):   # not the upstream's doing
                raise MirrorError(502, "UNAVAILABLE", "the client left mid-body")
            self.log.warn("upstream {url} failed: {error}", url=redact_url(url),
                          error=describe(e))
            raise MirrorError(502, "UNAVAILABLE", f"upstream registry unreachable: {describe(e)}")
        finally:
            if timer.active():
                timer.cancel()

    async def relay(self, ex, url, method=None, body=None, location=None):
        """Answer the exchange C{ex} with the upstream's answer to its request at C{url}.

        @param body: the request body's C{IBodyProducer}, or None.
        @param location: maps each C{Location} value (bytes) of the answer to
            the one the client gets; None keeps them.
        """
        request = ex.request
        method = method or request.method
        response = await self.upstream(method, url, forward_headers(request), body)
        if ex.gone:
            response.deliverBody(Discard())
            return
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            if location is not None and name.lower() == b"location":
                values = [location(v) for v in values]
            request.responseHeaders.setRawHeaders(name, list(values))
        await relay_body(ex, response, method == b"HEAD", url, self.log.warn, "upstream")

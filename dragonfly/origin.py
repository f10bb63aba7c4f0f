"""Fetching files from where they really live: HTTP(S) origins, streamed.

L{OriginClient} wraps an injected treq-like C{HTTPClient}. A response body is
never buffered whole: L{OriginResponse.deliver} hands chunks to a consumer
whose C{write(data)} may return a Deferred; while that Deferred is pending the
TCP transport is paused, so memory stays bounded by what the consumer holds
(about one piece for the CDN) plus one socket read.

Semantics, in HTTP terms:

  - non-2xx (after redirects, which are followed) -> L{OriginError}(status);
  - C{offset > 0} sends C{Range: bytes=offset-} (plus C{If-Range} with a strong
    ETag or Last-Modified when known); a 206 must carry a matching
    C{Content-Range}; a 200 means "starting from 0" (C{response.offset == 0});
    with C{end} (an inclusive last byte) the range is C{bytes=offset-end} and a
    206 must end there (or at the file's last byte, if that comes first);
  - C{offset == 0} with C{etag}/C{last_modified} sends C{If-None-Match} /
    C{If-Modified-Since}; a 304 comes back as C{response.status == 304};
  - user headers (e.g. C{Authorization}) are passed on, except hop-by-hop,
    range and conditional headers, which this client owns. Twisted's redirect
    agent drops C{Authorization}/C{Cookie} when a redirect leaves the origin.
"""
import re

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer

from hyperlink import EncodedURL

from dragonfly.httpio import describe as _describe
from dragonfly.interfaces import IOrigin
from dragonfly.ingest.receiver import BodyReceiver
from dragonfly.ingest.splice import take_body
from dragonfly.redact import has_userinfo, redact_text, redact_url, userinfo_error
from dragonfly.runtime.ratelimit import all_of
from dragonfly.runtime.tuning import DownloadEndpoint

__all__ = ["OriginError", "OriginRefused", "BodyBroken", "OriginResponse", "OriginClient",
           "Probe",
           "make_http_client", "collect_capped", "request_url"]

# Headers a caller may not pass through to the origin: hop-by-hop, framing,
# and the range/conditional headers this client sets itself.
_DROP_HEADERS = frozenset(h.lower() for h in (
    "Host", "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length",
    "Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match",
    "If-Unmodified-Since", "Accept-Encoding", "Expect",
))
_TOKEN_RE = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CONTENT_RANGE_RE = re.compile(r"\A\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*\Z", re.IGNORECASE)
_ERROR_BODY_CAP = 64 * 1024


class OriginError(Exception):
    """The origin could not give us the file.

    C{status} is the HTTP status the origin answered with, or None when no
    usable answer came (connection refused, reset, timeout, truncated body);
    C{challenge} the C{WWW-Authenticate} of a 401 answer, if it had one.
    """

    challenge = None

    def __init__(self, status=None, message=None):
        self.status = status
        if message is None:
            message = f"origin answered {status}" if status is not None else "origin unreachable"
        self.message = message
        Exception.__init__(self, message)

    @property
    def retryable(self):
        """Worth trying again: network trouble or a 5xx/429, not a 4xx verdict."""
        return self.status is None or self.status >= 500 or self.status in (408, 429)

    def __repr__(self):
        return f"OriginError({self.status!r}, {self.message!r})"


class OriginRefused(OriginError):
    """The egress policy forbids connecting to the origin (it was never contacted).

    The message starts with C{origin not allowed: } and names the address and
    the C{--allow-origin} entry that would allow it; the APIs answer it with 403.
    """

    http_status = 403

    def __init__(self, message):
        OriginError.__init__(self, None, message)

    @property
    def retryable(self):
        return False


class BodyBroken(OriginError):
    """The origin's answer began but its body broke off (closed early, reset,
    stalled, or carried another length than announced)."""


def clean_headers(headers):
    """Validate and filter user headers for the origin: {name: value} of str.

    Raises ValueError on names/values that are not legal HTTP (CR/LF injection).
    """
    out = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise ValueError(f"bad header name {name!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"bad value for header {name}")
        if name.lower() in _DROP_HEADERS:
            continue
        out[name] = value
    return out


@implementer(IAgentEndpointFactory)
class _DownloadEndpoints:
    """An C{Agent}'s endpoints as its standard ones (TCP, plus TLS for https
    under C{tls_policy}, default browser-like and verified), each connection
    marked as a download (L{dragonfly.runtime.tuning.prioritise})."""

    def __init__(self, reactor, tls_policy=None):
        self._reactor = reactor
        self._tls = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII")
        endpoint = DownloadEndpoint(HostnameEndpoint(self._reactor, host, uri.port))
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


def make_http_client(reactor, pool=None, context_factory=None, egress=None):
    """A treq HTTPClient over a plain Agent (HTTPS verified by default), its
    connections marked as downloads (L{dragonfly.runtime.tuning.prioritise}).

    Pass your own C{HTTPConnectionPool} so its lifetime is yours to end. With
    C{egress} (an L{dragonfly.egress.EgressPolicy}) every connection, redirect
    hops included, goes only to addresses the policy allows (see
    L{dragonfly.egressguard}); never share that pool with an unguarded client.
    Those connections are also witnessed (L{dragonfly.connwitness}), so a
    body without a length that ends in a reset is a broken body: build every
    origin client with C{egress}.
    """
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    from treq.client import HTTPClient

    if egress is not None:
        from dragonfly.egressguard import guarded_agent
        agent = guarded_agent(reactor, egress, context_factory, pool)
    else:
        agent = Agent.usingEndpointFactory(reactor, _DownloadEndpoints(reactor, context_factory),
                                           pool=pool)
    # One origin client fetches for many users: never keep or replay cookies.
    jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar)


def collect_capped(response, cap, what="body"):
    """A Deferred firing with the whole body of a treq C{response} (bytes), or
    failing with ValueError("<what> too large") once it passes C{cap} bytes.
    Cancel it (e.g. C{addTimeout}) to stop reading."""
    from treq import collect

    parts = []
    size = [0]

    def got(data):
        size[0] += len(data)
        if size[0] > cap:
            raise ValueError(f"{what} too large")
        parts.append(data)
    return collect(response, got).addCallback(lambda _: b"".join(parts))


class _LiteralHostURL(EncodedURL):
    """A URL whose IPv6-literal host survives treq: hyperlink's C{to_uri}
    would IDNA-encode C{::1} and fail; the other parts are encoded as usual."""

    def to_uri(self):
        host = self.host
        if not host or ":" not in host:
            return EncodedURL.to_uri(self)
        return EncodedURL.to_uri(self.replace(host="ipv6-literal.invalid")).replace(host=host)


def request_url(url):
    """C{url} as the HTTP client should be given it (str, or a hyperlink URL
    for an IPv6-literal host such as C{http://[::1]:8080/f})."""
    if "://[" not in url:
        return url
    try:
        return _LiteralHostURL.from_text(url)
    except ValueError as e:
        raise OriginError(None, f"bad URL {redact_url(url)}: {redact_text(str(e))}")


def _header(response, name):
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    v = values[-1]
    return v.decode("latin-1") if isinstance(v, bytes) else v


class _Discard(Protocol):
    """Reads (and drops) at most a small error body, then hangs up."""

    def __init__(self):
        self.seen = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.seen += len(data)
        if self.seen > _ERROR_BODY_CAP and self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.callback(None)


def _broken(message, reason=None):
    """The error for a body that broke (see L{BodyReceiver})."""
    if reason is not None:
        message = f"{message}: {_describe(reason)}"
    return BodyBroken(None, message)


class OriginResponse:
    """Headers of an origin answer; the body is pulled with L{deliver}.

    @ivar status: 200, 206 (resumed) or 304 (revalidated: no body).
    @ivar offset: the byte of the file the body starts at (0 unless a 206).
    @ivar length: the whole file's length, or None when the origin did not say.
    @ivar body_length: bytes this body will carry, or None when unknown.
    """

    def __init__(self, response, status, offset, length, body_length, etag, last_modified,
                 clock, limiter=None, idle_timeout=None, on_bytes=None):
        self._response = response
        self.status = status
        self.offset = offset
        self.length = length
        self.body_length = body_length
        self.etag = etag
        self.last_modified = last_modified
        self._clock = clock
        self._limiter = limiter
        self._idle_timeout = idle_timeout
        self._on_bytes = on_bytes
        self._delivered = False

    def pace_also(self, limiter):
        """Pace the body by C{limiter} (C{wait(n)}) as well as by the client's."""
        self._limiter = all_of(self._limiter, limiter)

    def deliver(self, consumer):
        """Stream the body into C{consumer.write(data) -> Deferred|None}.

        Returns a Deferred firing with the byte count once the body ended
        cleanly, or failing with L{OriginError} (status None) when the
        connection broke, stalled, or carried a different length. A body
        without a length ends cleanly only where the origin closed the
        connection cleanly (a reset breaks it: L{dragonfly.connwitness},
        with the egress-guarded clients L{make_http_client} builds).
        Cancelling it drops the connection.
        """
        if self._delivered:
            raise RuntimeError("body already delivered")
        self._delivered = True
        receiver = BodyReceiver(consumer, self.body_length, self._clock, self._limiter,
                                self._idle_timeout, self._on_bytes, _broken)
        self._response.deliverBody(receiver)
        return receiver.done

    def take_body(self):
        """The body as a L{dragonfly.ingest.splice.RawBody}, to splice from its
        socket into a store file, or None (then L{deliver} it): a large body
        of known length from a plain TCP origin with no rate limit."""
        if self._delivered or self._limiter is not None or not self.body_length:
            return None
        raw = take_body(self._response, self.body_length, self._clock, self._idle_timeout,
                        self._on_bytes, _broken)
        if raw is not None:
            self._delivered = True
        return raw

    def discard(self):
        """Throw the body away (bounded), freeing the connection."""
        if self._delivered:
            return
        self._delivered = True
        p = _Discard()
        self._response.deliverBody(p)
        return p.done


class Probe:
    """The origin's answer to a caller's request, without its body: C{status}
    (a 206 to the 1-byte range reads as 200), the file's C{length} (or None),
    C{etag} and C{last_modified} (or None)."""

    def __init__(self, status, length, etag=None, last_modified=None):
        self.status = status
        self.length = length
        self.etag = etag
        self.last_modified = last_modified

    def __repr__(self):
        return f"Probe({self.status!r}, {self.length!r}, {self.etag!r}, {self.last_modified!r})"


@implementer(IOrigin)
class OriginClient:
    """Gets files from origins over an injected treq-like HTTP client.

    @param reactor: an IReactorTime (timeouts, rate-limit waits).
    @param http_client: has C{get(url, headers=, unbuffered=, allow_redirects=, reactor=)}.
    @param download_limiter: a L{dragonfly.runtime.ratelimit.TokenBucket} or None.
    @param on_bytes: called with each chunk's size (metrics).
    """

    log = Logger()

    def __init__(self, reactor, http_client, download_limiter=None, connect_timeout=60.0,
                 idle_timeout=120.0, on_bytes=None, user_agent="dragonfly-supernode"):
        self._reactor = reactor
        self._http = http_client
        self._limiter = download_limiter
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_bytes = on_bytes
        self.user_agent = user_agent

    def get(self, url, headers=None, offset=0, etag=None, last_modified=None, end=None):
        """A Deferred L{OriginResponse} (see the module docstring)."""
        return Deferred.fromCoroutine(self._get(url, headers, offset, etag, last_modified, end))

    def request_headers(self, headers, offset=0, etag=None, last_modified=None, end=None):
        h = clean_headers(headers)
        if self.user_agent and not any(k.lower() == "user-agent" for k in h):
            h["User-Agent"] = self.user_agent
        # treq adds "gzip" (and decodes it transparently, length unknown):
        # we prefer the bytes as stored.
        h["Accept-Encoding"] = "identity"
        if offset > 0 or end is not None:
            h["Range"] = f"bytes={offset}-{'' if end is None else end}"
            if etag and not etag.startswith("W/"):
                h["If-Range"] = etag
            elif last_modified:
                h["If-Range"] = last_modified
        else:
            if etag:
                h["If-None-Match"] = etag
            if last_modified:
                h["If-Modified-Since"] = last_modified
        return {k: [v] for k, v in h.items()}

    def probe(self, url, headers=None):
        """A Deferred L{Probe}: the origin's answer to this request, body unread.

        A C{HEAD}; where the origin does not allow one (405, 501) a 1-byte
        ranged C{GET}. Redirects are followed (credentials stay with the
        origin, as for L{get}). Fails with L{OriginError} when no answer came.
        """
        return Deferred.fromCoroutine(self._probe(url, headers))

    async def _probe(self, url, headers):
        probe = await self._ask(url, headers, b"HEAD")
        if probe.status in (405, 501):
            probe = await self._ask(url, headers, b"GET")
        return probe

    async def _ask(self, url, headers, method):
        if not isinstance(url, str) or not re.match(r"\Ahttps?://", url, re.IGNORECASE) \
                or has_userinfo(url):
            raise OriginError(None, f"unsupported URL {redact_url(url)!r}")
        hdrs = self.request_headers(headers)
        if method == b"GET":
            hdrs["Range"] = ["bytes=0-0"]
        d = self._http.request(method.decode(), request_url(url), headers=hdrs, unbuffered=True,
                               allow_redirects=True, reactor=self._reactor)
        if self.connect_timeout:
            d.addTimeout(self.connect_timeout, self._reactor)
        try:
            response = await d
        except (TimeoutError, CancelledError):
            raise OriginError(None, f"no answer from origin within {self.connect_timeout:g}s")
        except OriginError:
            raise
        except Exception as e:
            raise OriginError(None, f"cannot reach origin: {_describe(Failure(e))}")
        response.deliverBody(_Discard())
        length = _header(response, "Content-Length")
        length = int(length) if length is not None and length.strip().isdigit() else None
        status = response.code
        if method == b"GET":
            m = _CONTENT_RANGE_RE.match(_header(response, "Content-Range") or "")
            if status == 206:
                length = int(m.group(3)) if m and m.group(3) != "*" else None
                status = 200
            elif response.length is not UNKNOWN_LENGTH:
                length = response.length
        return Probe(status, length, _header(response, "ETag"), _header(response, "Last-Modified"))

    async def _get(self, url, headers, offset, etag, last_modified, end=None):
        if not isinstance(url, str) or not re.match(r"\Ahttps?://", url, re.IGNORECASE):
            raise OriginError(None, f"unsupported URL {redact_url(url)!r} (http or https only)")
        if has_userinfo(url):
            raise OriginError(400, userinfo_error(url))
        asked = end
        conditional = offset == 0 and end is None and bool(etag or last_modified)
        hdrs = self.request_headers(headers, offset, etag, last_modified, end)
        d = self._http.get(request_url(url), headers=hdrs, unbuffered=True, allow_redirects=True,
                           reactor=self._reactor)
        if self.connect_timeout:
            d.addTimeout(self.connect_timeout, self._reactor)
        try:
            response = await d
        except OriginError:
            raise
        except (TimeoutError, CancelledError):
            raise OriginError(None, f"no answer from origin within {self.connect_timeout:g}s")
        except Exception as e:
            raise OriginError(None, f"cannot reach origin: {_describe(Failure(e))}")

        status = response.code
        etag_out = _header(response, "ETag")
        lm_out = _header(response, "Last-Modified")
        raw_length = response.length
        body_length = None if raw_length is UNKNOWN_LENGTH or raw_length is None else int(raw_length)

        def make(status, offset, length, body_length):
            return OriginResponse(response, status, offset, length, body_length, etag_out, lm_out,
                                  self._reactor, self._limiter, self.idle_timeout, self.on_bytes)

        if status == 304 and conditional:
            r = make(304, 0, None, 0)
            r.discard()
            return r
        if status == 206:
            cr = _header(response, "Content-Range") or ""
            m = _CONTENT_RANGE_RE.match(cr)
            if not m or int(m.group(1)) != offset or int(m.group(2)) < int(m.group(1)):
                make(status, 0, None, None).discard()
                raise OriginError(206, f"origin answered a range we did not ask for: {cr!r}")
            start, last = int(m.group(1)), int(m.group(2))
            total = None if m.group(3) == "*" else int(m.group(3))
            if total is not None and last >= total:
                make(status, 0, None, None).discard()
                raise OriginError(206, f"bad Content-Range {cr!r}")
            span = last - start + 1
            if body_length is not None and body_length != span:
                make(status, 0, None, None).discard()
                raise OriginError(206, f"Content-Length {body_length} disagrees with {cr!r}")
            wanted = (total - 1 if total is not None else last) if asked is None \
                else min(asked, total - 1 if total is not None else asked)
            if last != wanted:
                # Not the range we asked for (a partial tail, or a longer one).
                make(status, 0, None, None).discard()
                raise OriginError(206, f"origin sent a short range {cr!r}")
            return make(206, start, total, span)
        if 200 <= status < 300:
            if status == 204:
                body_length = 0
            return make(status, 0, body_length, body_length)
        make(status, 0, None, None).discard()
        error = OriginError(status)
        if status == 401:
            error.challenge = _header(response, "WWW-Authenticate")
        raise error

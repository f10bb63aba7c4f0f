"""May this client read this blob? The registry's answer, as the mirror counts it.

Before a layer held by the swarm goes to a client, the registry is asked
with the client's own headers (a C{HEAD} of the blob URL). Only a I{final
2xx} counts as access: the registry's redirects (301, 302, 303, 307, 308,
at most L{MAX_REDIRECTS}) are followed, and a hop to another scheme, host
or port carries none of the client's credentials (C{Authorization},
C{Cookie}, C{Proxy-Authorization}), as a blob store's signed URL needs none.
A 302 to a single sign-on page ends in that page's 200, so the final answer
must also describe the blob: no HTML, a C{Docker-Content-Digest} (if given)
equal to the digest, and a C{Content-Length} that the caller compares with
the blob's length before sending a byte (L{Access.matches}). Anything else
(3xx left over, 4xx, 5xx, a redirect loop) is a refusal, and the client gets
the registry's own answer to its request.
"""
from urllib.parse import urljoin, urlsplit

from twisted.web.http_headers import Headers

from dragonfly.dfdaemon.passthrough import Discard

__all__ = ["Access", "check", "MAX_REDIRECTS", "CREDENTIALS"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Request headers that never follow a redirect to another origin.
CREDENTIALS = frozenset({b"authorization", b"cookie", b"proxy-authorization"})


class Access:
    """The outcome of one access check.

    @ivar allowed: the registry's final answer was a 2xx describing the blob.
    @ivar length: that answer's C{Content-Length}, or None.
    @ivar reason: why access was refused (for the log), or None.
    """

    def __init__(self, allowed, length=None, reason=None):
        self.allowed = allowed
        self.length = length
        self.reason = reason

    def matches(self, length):
        """Is C{length} (the blob's, from the swarm) the one the registry gave?"""
        return self.allowed and self.length == length


def _same_origin(a, b):
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.hostname, pa.port) == (pb.scheme.lower(), pb.hostname, pb.port)


def _without_credentials(headers):
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in CREDENTIALS:
            out.setRawHeaders(name, list(values))
    return out


def _header(response, name):
    values = response.headers.getRawHeaders(name) or []
    return values[0].decode("latin-1").strip() if len(values) == 1 else None


def judge_final(response, digest):
    """The L{Access} that a final (non-redirect) answer C{response} grants."""
    if not 200 <= response.code < 300:
        return Access(False, reason=f"registry answered {response.code}")
    ctype = (_header(response, b"content-type") or "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        return Access(False, reason="registry answered with a web page")
    named = _header(response, b"docker-content-digest")
    if named is not None and named != digest:
        return Access(False, reason=f"registry answered for {named}")
    length = _header(response, b"content-length")
    if length is None or not length.isdigit():
        return Access(False, reason="registry gave no Content-Length")
    return Access(True, int(length))


async def check(passthrough, url, headers, digest, max_redirects=MAX_REDIRECTS):
    """Ask the registry (through C{passthrough.upstream}) whether the client
    whose request C{headers} these are may read the blob C{digest} at C{url}
    (bytes); return an L{Access}."""
    start = url.decode("ascii")
    current = start
    for _ in range(max_redirects + 1):
        response = await passthrough.upstream(b"HEAD", current.encode("ascii"), headers)
        response.deliverBody(Discard())
        if response.code not in _REDIRECTS:
            return judge_final(response, digest)
        location = _header(response, b"location")
        if not location:
            return Access(False, reason=f"registry answered {response.code} without Location")
        try:
            target = urljoin(current, location)
            target.encode("ascii")
            urlsplit(target).port  # noqa: B018 - raises ValueError on a bad port
        except (ValueError, UnicodeError):
            return Access(False, reason="registry redirected to a malformed URL")
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            return Access(False, reason="registry redirected off HTTP")
        if not _same_origin(start, target):
            headers = _without_credentials(headers)
        current = target
    return Access(False, reason=f"more than {max_redirects} redirects")

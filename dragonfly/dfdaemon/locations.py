"""The registry's ``Location`` header, as a client of the mirror must see it.

A registry names the next URL of a push in ``Location`` (the upload session
after ``POST .../blobs/uploads/``, the session again after each ``PATCH``,
the blob or manifest after the final ``PUT``), and it builds that URL from
the ``Host`` it was asked with (distribution answers absolute URLs unless it
runs with ``relativeurls``). Through the mirror that host is the upstream,
so the client would leave the mirror for the rest of the push, or lose its
credentials on the way (containerd drops its authorizer when an upload
moves to another host). L{client_location} turns a Location on the upstream
the request went to into a path on the mirror (a relative reference,
resolved by every client against the mirror URL it used), keeping the
query (distribution's signed ``_state``) and adding back containerd's
``ns`` so the next request reaches the same upstream.

A Location anywhere else is left exactly as the registry sent it: a blob
store's signed URL, another registry's name. The mirror never contacts such
a host (it is no open proxy, so it cannot relay there), and the client
reaches it on its own, with its own rules for credentials on another host.
A Location on the upstream outside the registry API (not ``/v2/...``) is
left as is too: the mirror would refuse it. Pure: no I/O.
"""
from urllib.parse import quote, urljoin, urlsplit

__all__ = ["client_location"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts):
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    return scheme, host, port


def client_location(location, request_url, upstream, ns=None):
    """The Location (bytes) the client gets for the upstream's C{location} (bytes).

    @param request_url: the upstream URL (bytes) the answer is to; a relative
        Location is resolved against it.
    @param upstream: the L{dragonfly.dfdaemon.upstream.Upstream} asked.
    @param ns: containerd's ``ns`` value of the client's request, or None.
    """
    try:
        text = location.decode("ascii").strip()
        target = urljoin(request_url.decode("ascii"), text)
        parts = urlsplit(target)
    except (UnicodeError, ValueError):
        return location
    if parts.username is not None or parts.password is not None:
        return location
    if _origin(parts) != (upstream.scheme, upstream.host, upstream.port):
        return location
    path = parts.path
    if not (path == "/v2" or path.startswith("/v2/")):
        return location
    query = parts.query
    if ns is not None:
        query = (query + "&" if query else "") + "ns=" + quote(ns, safe=":[]")
    out = path + ("?" + query if query else "")
    if parts.fragment:
        out += "#" + parts.fragment
    return out.encode("ascii")

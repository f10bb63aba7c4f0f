"""A registry's token auth, for the supernode's image preheat.

A registry with token auth (Docker Hub, even for public images; the CNCF
distribution registry with C{auth: token}) answers an unauthenticated
request 401 with C{WWW-Authenticate: Bearer realm="...",service="...",
scope="..."}. L{RegistryAuth} does what a container engine does then: a
C{GET realm?service=...&scope=repository:NAME:pull} -- with the preheat
request's C{Authorization: Basic ...}, if it had one, and with nothing else
of the caller's -- takes C{token} (or C{access_token}) from the JSON answer,
and sends C{Authorization: Bearer TOKEN} to the registry from then on (the
manifests and every blob). A token that stops working mid-preheat (a 401
after it was accepted) is exchanged once more.

The realm comes from the registry, so it gets what every origin fetch gets:
the egress guard (asked first, for a clear message, then again at connect
time by the origin client), and TLS: a realm must be https unless the
registry itself was reached over plain http (C{--insecure}, a lab
registry). The caller's Basic credentials go to the realm only -- a
registry that wants Basic itself says so (C{WWW-Authenticate: Basic}) and
gets them then -- and neither they nor a token appear in a message.

A caller who sends its own C{Authorization: Bearer ...} keeps it: no
exchange is made for it.
"""
import json
import re
from urllib.parse import urlencode, urlsplit

from dragonfly.origin import OriginError, OriginRefused
from dragonfly.redact import has_userinfo, redact_text, redact_url

__all__ = ["parse_challenge", "RegistryAuth", "MAX_TOKEN_ANSWER"]

MAX_TOKEN_ANSWER = 64 * 1024

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(r'\s*(' + _TOKEN + r')\s*=\s*'
                       r'(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*))\s*(?:,|\Z)')


def parse_challenge(value):
    """C{WWW-Authenticate} C{'Bearer realm="https://a/t",service="s",scope="x,y"'}
    -> C{("bearer", {"realm": ..., "service": ..., "scope": ...})}: the scheme in
    lower case and its parameters (quoted values may hold commas and escapes).
    Raises ValueError when it does not parse."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("no challenge")
    scheme, _, rest = value.strip().partition(" ")
    if not re.fullmatch(_TOKEN, scheme):
        raise ValueError(f"bad auth scheme {scheme!r}")
    params = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if m is None:
            raise ValueError("bad challenge parameters")
        quoted = m.group(2)
        params[m.group(1).lower()] = (re.sub(r"\\(.)", r"\1", quoted) if quoted is not None
                                      else m.group(3))
        pos = m.end()
    return scheme.lower(), params


def _split_authorization(headers):
    """(the caller's headers less a Basic Authorization, that Basic value or None)."""
    out, basic = {}, None
    for name, value in (headers or {}).items():
        if name.lower() == "authorization" and value.strip().lower().startswith("basic "):
            basic = value
        else:
            out[name] = value
    return out, basic


class Collector:
    """Consumer that keeps a small body (a token answer, a manifest) in
    memory, capped: C{what} names it in the error past C{cap} bytes."""

    def __init__(self, cap, what="answer"):
        self.cap = cap
        self.what = what
        self.parts = []
        self.size = 0

    def write(self, data):
        self.size += len(data)
        if self.size > self.cap:
            raise OriginError(None, f"{self.what} larger than {self.cap} bytes")
        self.parts.append(data)

    def value(self):
        return b"".join(self.parts)


class RegistryAuth:
    """The headers an image preheat sends to one registry, and the token dance.

    @param origin: the L{dragonfly.origin.OriginClient} of every origin fetch.
    @param base: the registry's base URL (C{https://reg:5000}).
    @param name: the repository (the token's scope is C{repository:NAME:pull}).
    @param headers: the preheat request's headers.
    @param egress: an L{dragonfly.egressguard.EgressGuard} or None.
    @param clock: IReactorTime bounding the egress check (None: unbounded).
    """

    #: Token exchanges per preheat: the first, and one more when a token
    #: stops working.
    max_exchanges = 2

    def __init__(self, origin, base, name, headers, egress=None, clock=None):
        self.origin = origin
        self.clock = clock
        self.base = base
        self.name = name
        self.egress = egress
        self._plain, self._basic = _split_authorization(headers)
        self._own = any(k.lower() == "authorization" for k in self._plain)
        self.headers = dict(self._plain)
        self.exchanges = 0
        self._bearer = None     # the last Bearer challenge's parameters

    async def get(self, url, headers=None):
        """C{origin.get(url)} with these headers (and C{headers} on top),
        answering the registry's challenge once; the L{OriginResponse}."""
        retried = False
        while True:
            try:
                return await self.origin.get(url, dict(self.headers, **(headers or {})))
            except OriginError as e:
                if retried or not await self.answer(e):
                    raise
                retried = True

    async def answer(self, error):
        """After C{error} (an L{OriginError} from a registry request): True when
        L{headers} changed so the request is worth sending again (a token got,
        or the caller's Basic credentials for a registry that asks for them)."""
        if error.status != 401:
            return False
        try:
            scheme, params = parse_challenge(error.challenge) if error.challenge else (None, {})
        except ValueError as e:
            raise OriginError(401, f"registry answered 401 with an unreadable challenge: {e}")
        if scheme == "basic":
            if self._basic is None or self.headers.get("Authorization") == self._basic:
                return False
            self.headers["Authorization"] = self._basic
            return True
        if scheme == "bearer":
            self._bearer = params
        elif scheme is not None or self._bearer is None:
            return False
        if self._own or self.exchanges >= self.max_exchanges:
            return False
        token = await self._exchange(self._bearer)
        self.headers = dict(self._plain, Authorization=f"Bearer {token}")
        return True

    def _realm(self, params):
        realm = params.get("realm")
        if not realm:
            raise OriginError(401, "registry answered 401 with a Bearer challenge that "
                                   "names no realm")
        try:
            scheme = urlsplit(realm).scheme.lower()
            host = urlsplit(realm).hostname
        except ValueError:
            scheme = host = None
        if scheme not in ("http", "https") or not host or has_userinfo(realm):
            raise OriginError(401, f"registry's token realm {redact_url(realm)!r} is not "
                                   "an http(s) URL")
        if scheme == "http" and urlsplit(self.base).scheme.lower() != "http":
            raise OriginError(401, f"registry's token realm {redact_url(realm)} is plain http "
                                   "while the registry is https: not sending credentials there")
        query = {"service": params["service"]} if params.get("service") else {}
        query["scope"] = f"repository:{self.name}:pull"
        return realm + ("&" if urlsplit(realm).query else "?") + urlencode(query)

    async def _exchange(self, params):
        """A token from the realm of the Bearer challenge C{params}."""
        url = self._realm(params)
        shown = redact_url(params["realm"])
        self.exchanges += 1
        if self.egress is not None:
            # Asked first for a clear message; any other trouble (no such
            # name, a slow resolver) is left to the fetch, guarded again.
            d = self.egress.check_url(url)
            if self.clock is not None:
                d.addTimeout(5.0, self.clock)
            try:
                await d
            except OriginRefused as e:
                raise OriginRefused(f"{e.message} (the registry's token realm {shown})")
            except Exception:   # noqa: BLE001
                pass
        headers = dict(self._plain, Accept="application/json")
        headers.pop("Authorization", None)
        if self._basic is not None:
            headers["Authorization"] = self._basic
        try:
            resp = await self.origin.get(url, headers)
            body = Collector(MAX_TOKEN_ANSWER)
            await resp.deliver(body)
        except OriginRefused as e:
            raise OriginRefused(f"{e.message} (the registry's token realm {shown})")
        except OriginError as e:
            what = f"answered {e.status}" if e.status is not None else \
                f"failed: {redact_text(e.message)}"
            if e.status in (401, 403):
                what += " (wrong or missing credentials for this image?)"
            raise OriginError(e.status, f"registry token service {shown} {what}")
        try:
            doc = json.loads(body.value())
        except ValueError:
            doc = None
        token = None
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0 "):
            raise OriginError(None, f"registry token service {shown} answered no token")
        return token

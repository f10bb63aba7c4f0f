"""The registries a dfdaemon mirror may talk to, and how it connects to them.

The mirror is never an open proxy: every upstream URL it ever builds starts
from one of the :class:`Upstream` objects here, fixed at start-up from
``--registry`` and ``--allow-registry``. containerd's ``?ns=<host>`` parameter
only *selects* among them (:meth:`Upstreams.select`); anything else is refused.

HTTPS upstreams are verified (service-identity, the system trust store);
``--insecure-registry HOST[:PORT]`` opts one upstream into plain HTTP or
unverified TLS.
"""
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet.ssl import CertificateOptions
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

DEFAULT_REGISTRY = "https://registry-1.docker.io"

# Docker Hub is known by several names; containerd sends ns=docker.io.
_ALIASES = {
    "registry-1.docker.io": ("docker.io", "index.docker.io"),
}
_HOST_RE = re.compile(r"\A[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamError(ValueError):
    """A registry address that cannot be used (bad syntax, or plain HTTP not opted in)."""


class Refused(Exception):
    """A request names a registry that is not an allowed upstream."""


def _norm_host(host):
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_RE.match(host):
        raise UpstreamError(f"bad registry host {host!r}")
    return host


def _join(host, port, scheme):
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return shown
    return f"{shown}:{port}"


def parse_hostport_key(value):
    """'Registry.Example:443' -> ('registry.example', 443 or None): host and explicit port."""
    value = value.strip()
    if not value:
        raise UpstreamError("empty registry address")
    if "/" in value or "@" in value or "?" in value or "#" in value:
        raise UpstreamError(f"bad registry address {value!r} (want HOST[:PORT])")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise UpstreamError(f"bad registry address {value!r}")
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UpstreamError(f"bad port in registry address {value!r}")
        port = int(port)
    return _norm_host(host), port


@dataclass(frozen=True)
class Upstream:
    """One registry: ``scheme://host[:port]``, verified unless C{insecure}."""

    scheme: str
    host: str
    port: int
    insecure: bool = False
    names: frozenset = field(default=frozenset())  # host[:port] keys ns= may use

    @property
    def netloc(self):
        return _join(self.host, self.port, self.scheme)

    @property
    def base(self):
        return f"{self.scheme}://{self.netloc}"

    def url(self, path, query=b""):
        """The upstream URL (bytes) for an already-validated C{path} (bytes, starts with /v2)."""
        u = self.base.encode("ascii") + path
        return u + b"?" + query if query else u

    def blob_url(self, name, digest):
        return f"{self.base}/v2/{name}/blobs/{digest}"


def parse_upstream(value, insecure_keys=()):
    """An Upstream from a URL (``https://host[:port]``) or a bare ``HOST[:PORT]``.

    A bare address means HTTPS unless it is listed in C{insecure_keys}, in
    which case it means plain HTTP (like a docker "insecure registry" on a
    lab network). ``http://`` URLs are accepted only for insecure hosts.
    """
    value = value.strip()
    if "://" in value:
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise UpstreamError(f"registry URL must be http:// or https://, not {value!r}")
        if parts.username or parts.password or parts.query or parts.fragment \
                or parts.path not in ("", "/"):
            raise UpstreamError(f"registry URL must be scheme://host[:port] only: {value!r}")
        try:
            host, port = parse_hostport_key(parts.netloc)
        except UpstreamError as e:
            raise UpstreamError(f"bad registry URL {value!r}: {e}")
    else:
        host, port = parse_hostport_key(value)
        scheme = None
    insecure = _is_listed(host, port, insecure_keys)
    if scheme is None:
        scheme = "http" if insecure else "https"
    if scheme == "http" and not insecure:
        raise UpstreamError(
            f"{value}: plain HTTP to a registry needs --insecure-registry "
            f"{_join(host, port, scheme)}")
    port = port or _DEFAULT_PORTS[scheme]
    names = {_join(host, port, scheme), _join(host, port, "https" if scheme == "http" else "http")}
    names.add(f"{_join(host, None, scheme)}:{port}")
    if port == _DEFAULT_PORTS[scheme]:
        names.add(_join(host, None, scheme))
    for alias in _ALIASES.get(host, ()):
        names.add(alias)
    return Upstream(scheme, host, port, insecure, frozenset(names))


def _is_listed(host, port, keys):
    for key in keys:
        khost, kport = key
        if khost == host and (kport is None or kport == port):
            return True
    return False


class Upstreams:
    """The default upstream plus the allow-list; ``?ns=`` picks among them."""

    def __init__(self, default, allowed=()):
        self.default = default
        self.all = [default] + [u for u in allowed if u != default]
        self._by_name = {}
        for u in self.all:
            for name in u.names:
                self._by_name.setdefault(name, u)

    @classmethod
    def from_options(cls, registry=DEFAULT_REGISTRY, allow=(), insecure=()):
        """Build from the flag values (strings); raises UpstreamError."""
        keys = [parse_hostport_key(v) for v in insecure]
        default = parse_upstream(registry or DEFAULT_REGISTRY, keys)
        return cls(default, [parse_upstream(v, keys) for v in allow])

    def select(self, ns=None):
        """The upstream named by containerd's ``ns`` (None: the default); raises Refused."""
        if ns is None:
            return self.default
        try:
            host, port = parse_hostport_key(ns)
        except UpstreamError:
            raise Refused(f"bad registry name {ns!r}")
        key = _join(host, port, "https") if port is not None else host
        upstream = self._by_name.get(key)
        if upstream is None:
            raise Refused(f"registry {ns!r} is not an allowed upstream")
        return upstream

    def describe(self):
        return [{"url": u.base, "insecure": u.insecure} for u in self.all]


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS without certificate checks (``--insecure-registry`` only), still sending SNI."""

    def __init__(self, hostname):
        self._options = CertificateOptions(verify=False)
        try:
            ipaddress.ip_address(hostname)
            self._sni = None
        except ValueError:
            self._sni = hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


@implementer(IPolicyForHTTPS)
class UpstreamTLSPolicy:
    """Verify every HTTPS upstream, except those explicitly marked insecure."""

    def __init__(self, upstreams, verified=None):
        self._insecure = {(u.host, u.port) for u in upstreams.all if u.insecure}
        self._verified = verified or BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname, port):
        host = hostname.decode("ascii") if isinstance(hostname, bytes) else hostname
        if (_norm_host(host), port) in self._insecure:
            return _UnverifiedTLS(host)
        return self._verified.creatorForNetloc(hostname, port)

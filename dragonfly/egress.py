"""The egress policy: which origin addresses a node may connect to (SSRF guard).

Pure and synchronous (standard library only): L{EgressPolicy} answers, for a
host name as the URL gave it, one address it resolved to and the port,
whether a connection is allowed and why. The rules, in order:

  1. an explicit C{--deny-origin} entry that matches wins;
  2. then an explicit C{--allow-origin} entry that matches;
  3. then the default: deny loopback, link-local (169.254.0.0/16, fe80::/10,
     which holds the cloud metadata address 169.254.169.254), the other
     well-known metadata addresses, unspecified, multicast and broadcast
     addresses; allow the rest.

An entry is C{HOST}, C{HOST:PORT}, an address, C{ADDRESS:PORT} (IPv6 in
brackets) or a CIDR; flag values are comma-separated and repeatable. A host
name entry matches the URL's host name (not what it resolves to); an address
or CIDR entry matches the resolved address. An IPv4-mapped IPv6 address is
judged as its IPv4 address. L{literal_address} reads the numeric host forms a
resolver would accept (C{2130706433}, C{0x7f000001}, C{127.1}), so they are
judged like the address they name. Enforcement (at connect time, on every
redirect hop) is L{dragonfly.egressguard}'s job. Imports no role.
"""
import ipaddress
import re

__all__ = ["EgressPolicy", "Entry", "Verdict", "BadEntry", "REFUSAL_PREFIX", "parse_entries",
           "literal_address", "normalize_host"]

#: How every refusal message starts (the API and dfget show it as is).
REFUSAL_PREFIX = "origin not allowed: "

_HOST_RE = re.compile(r"\A[a-z0-9_]([a-z0-9_.-]{0,252})?\Z")

#: Denied by default: (network, reason). Checked in order; the first match names the reason.
_DEFAULT_DENY = tuple((ipaddress.ip_network(net), reason) for net, reason in (
    ("169.254.169.254/32", "cloud metadata address"),
    ("fd00:ec2::254/128", "cloud metadata address"),
    ("100.100.100.200/32", "cloud metadata address"),
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
))


class BadEntry(ValueError):
    """An --allow-origin / --deny-origin entry that does not parse."""


def normalize_host(host):
    """A URL's host as the policy compares it: lower case, no brackets, no trailing dot."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".") if host != "." else host


def _inet_aton_part(text):
    if re.fullmatch(r"0[xX][0-9a-fA-F]*", text):
        return int(text[2:] or "0", 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)
    if re.fullmatch(r"[1-9][0-9]*", text):
        return int(text)
    return None


def _ipv4_numeric(text):
    """The IPv4 address of a classic C{inet_aton} form (1 to 4 parts, each
    decimal, octal or hex), or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or len(text) > 64:
        return None
    values = [_inet_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    # The last part fills the remaining bytes: a.b.c.d, a.b.c16, a.b24, a32.
    last_bits = 8 * (5 - len(values))
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = 0
    for v in values[:-1]:
        number = number << 8 | v
    number = number << last_bits | values[-1]
    return ipaddress.IPv4Address(number)


def literal_address(host):
    """The address a host text names without DNS, or None for a host name.

    IPv6 literals (with or without brackets; a zone id is kept out) and every
    numeric IPv4 form a C{getaddrinfo} resolver accepts: dotted quads,
    C{2130706433}, C{0x7f000001}, C{0177.0.0.1}, C{127.1}.
    """
    text = normalize_host(host)
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    return _ipv4_numeric(text) if text else None


def _judged(address):
    """An ip_address, with an IPv4-mapped IPv6 address turned into its IPv4."""
    address = ipaddress.ip_address(address) if not isinstance(
        address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _show(address, port=None):
    text = str(address)
    if port is None:
        return text
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class _Frozen:
    """A value: its fields set once, compared, hashed and shown by value (what
    a frozen dataclass gives, without importing dataclasses, which dfget's
    option parser would pay at start-up for --allow-origin: issue 20, round six)."""

    __slots__ = ()

    def __init__(self, *args, **kw):
        names = self.__slots__
        values = dict(zip(names, args), **kw)
        for name in names:
            object.__setattr__(self, name, values.get(name, self._defaults.get(name)))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._fields()))
        return f"{type(self).__name__}({shown})"


class Entry(_Frozen):
    """One parsed entry: a host name or a network, with an optional port:
    C{text}, C{host} (a host name entry, normalized), C{network} (an
    ip_network entry), C{port}."""

    __slots__ = ("text", "host", "network", "port")
    _defaults = {}

    def matches(self, host, address, port):
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return self.host == host
        return address.version == self.network.version and address in self.network


def _split_port(text):
    """(host part, port or None) of one entry."""
    if text.startswith("["):
        inner, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise BadEntry(f"bad entry {text!r} (want [IPv6]:PORT)")
        return inner, (rest[1:] if rest else None)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None


def _parse_entry(text):
    raw = text.strip()
    host, port_text = _split_port(raw)
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadEntry(f"bad port in {raw!r}")
        port = int(port_text)
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise BadEntry(f"bad CIDR {raw!r}")
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                and net.network_address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        return Entry(raw, network=net, port=port)
    address = literal_address(host)
    if address is not None:
        address = _judged(address)
        return Entry(raw, network=ipaddress.ip_network(address), port=port)
    name = normalize_host(host)
    if not _HOST_RE.match(name) or ".." in name:
        raise BadEntry(f"not a host, address or CIDR: {raw!r}")
    return Entry(raw, host=name, port=port)


def parse_entries(values):
    """Entries from flag values: each a string of comma-separated entries (or a
    list of such strings). Raises L{BadEntry} naming the bad one."""
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values or ():
        for item in str(value).split(","):
            if item.strip():
                out.append(_parse_entry(item))
    return out


class Verdict(_Frozen):
    """Whether one address may be connected to (C{allowed}), and why (a
    short C{reason}); C{explicit}: decided by an --allow-origin /
    --deny-origin entry."""

    __slots__ = ("allowed", "reason", "explicit")
    _defaults = {"explicit": False}


class EgressPolicy:
    """The decision for (host, address, port); see the module docstring.

    @param allow: entries (strings or L{Entry}) of C{--allow-origin}.
    @param deny: entries of C{--deny-origin}.
    """

    def __init__(self, allow=(), deny=()):
        self.allow = tuple(e if isinstance(e, Entry) else _parse_entry(e)
                           for e in _flatten(allow))
        self.deny = tuple(e if isinstance(e, Entry) else _parse_entry(e)
                          for e in _flatten(deny))

    def with_allowed(self, entries):
        """A policy that also allows C{entries} (e.g. the dfdaemon's registries)."""
        return EgressPolicy(self.allow + tuple(parse_entries(list(entries))), self.deny)

    def decide(self, host, address, port):
        """The L{Verdict} for connecting to C{address} (text or ip_address) on
        C{port} for a URL whose host is C{host}."""
        name = normalize_host(host)
        address = _judged(address)
        for e in self.deny:
            if e.matches(name, address, port):
                return Verdict(False, f"listed in --deny-origin {e.text}", True)
        for e in self.allow:
            if e.matches(name, address, port):
                return Verdict(True, f"--allow-origin {e.text}", True)
        for net, reason in _DEFAULT_DENY:
            if address.version == net.version and address in net:
                return Verdict(False, reason)
        return Verdict(True, "default")

    def refusal(self, host, address, port, verdict):
        """The one-line message for a refused connection (starts with L{REFUSAL_PREFIX})."""
        shown = normalize_host(host)
        text = f"{REFUSAL_PREFIX}{shown} resolves to {address} ({verdict.reason})"
        if verdict.explicit:
            return text
        if literal_address(shown) is not None:
            suggestion = _show(_judged(address), port)
        else:
            suggestion = f"{shown}:{port}"
        return f"{text}; allow it with --allow-origin {suggestion}"


def _flatten(values):
    if isinstance(values, (str, Entry)):
        values = [values]
    out = []
    for v in values or ():
        if isinstance(v, Entry):
            out.append(v)
        else:
            out.extend(item for item in str(v).split(",") if item.strip())
    return out

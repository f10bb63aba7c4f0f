"""Sizes, rates and HOST:PORT lists as the command line and config files give them.

Standard library only: dfget parses its options with these before deciding
whether it needs Twisted at all (dragonfly.dfget.cli). L{dragonfly.config}
wraps them to raise C{usage.UsageError} for the twistd plugins.
"""
import ipaddress
import re

__all__ = ["BadValue", "parse_size", "parse_rate", "parse_hostport", "parse_hostports"]


class BadValue(ValueError):
    """A value that does not parse; the message says what was wanted."""


_SIZE_RE = re.compile(
    r"\A\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_PORT_RE = re.compile(r"\A[0-9]{1,5}\Z")
_BAD_HOST_RE = re.compile(r"[\s/\\@\[\]?#,]")


def parse_size(value):
    """'4M' -> 4194304. K/M/G/T are powers of 1024; a plain integer is bytes.

    Accepts C{4M}, C{4MB}, C{4MiB}, C{1.5G}, C{512} and C{512B}
    (case-insensitive); fractions of a byte are dropped. Raises
    L{BadValue} for anything else, including negative numbers.
    """
    if isinstance(value, bool):
        raise BadValue(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BadValue(f"size must not be negative: {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise BadValue(f"not a size: {value!r} (use e.g. 4M, 512K, 1G)")
    number, unit = m.group(1), _UNITS[(m.group(2) or "").upper()]
    if number.isdigit():
        return int(number) * unit
    # (imported here: dfget's start-up parses its sizes, whole numbers, without it)
    from fractions import Fraction
    return int(Fraction(number) * unit)


def parse_rate(value):
    """Bytes per second with K/M/G suffixes; 0 means unlimited."""
    return parse_size(value)


def parse_hostport(value, default_port=None):
    """'host:port' or '[v6]:port' -> (host, port).

    Without a port, C{default_port} is used (or L{BadValue} raised
    when there is none). An IPv6 address with a port needs brackets; a bare
    IPv6 address is accepted only when C{default_port} supplies the port.
    """
    text = str(value).strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            raise BadValue(f"missing ']' in {value!r}")
        if rest and not rest.startswith(":"):
            raise BadValue(f"junk after ']' in {value!r} (want [HOST]:PORT)")
        port = rest[1:]
        if rest == ":":
            raise BadValue(f"empty port in {value!r}")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BadValue(f"not an IPv6 address in brackets: {value!r}")
    elif text.count(":") > 1:
        # A bare IPv6 address: no room for a port (say [v6]:port for that).
        try:
            ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise BadValue(
                f"too many colons in {value!r} (write IPv6 as [ADDR]:PORT)")
        host, port = text, ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
        elif not port:
            raise BadValue(f"empty port in {value!r}")
    if not port:
        if default_port is None:
            raise BadValue(f"missing port in {value!r} (want HOST:PORT)")
        port = default_port
    elif not _PORT_RE.match(port):
        raise BadValue(f"bad port in {value!r}")
    port = int(port)
    if not host or _BAD_HOST_RE.search(host) and not text.startswith("["):
        raise BadValue(f"bad address {value!r} (want HOST:PORT)")
    if not 0 < port < 65536:
        raise BadValue(f"port out of range in {value!r} (1-65535)")
    return host, port


def parse_hostports(value, default_port=None):
    """'a:1,b:2' (or a list of such items) -> [('a', 1), ('b', 2)]."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = [v for v in str(value).split(",") if v.strip()]
    return [parse_hostport(v, default_port) for v in items]

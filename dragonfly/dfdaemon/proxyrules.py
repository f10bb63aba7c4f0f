"""The proxy's decisions, pure: its rules, the request target, and where a request goes.

A I{rule} (C{--proxy-rule}, repeatable; C{proxy-rule = [...]} in the TOML
file) is one regular expression, searched in the absolute URL of a request
(C{re.search}: anchor it with C{^}/C{$} if needed), optionally followed by
options separated by white space (a URL never contains white space, so the
first field is always the whole expression)::

    REGEX [filter=NAME,...] [tag=TEXT] [digest-header=HEADER]

A GET whose URL a rule matches is served through P2P exactly as
C{dfget URL [--filter ...] [--tag ...] [--digest ...]} would fetch it: the
same task id (the URL less the C{filter} query parameters, plus the tag; a
sha256 digest names the task itself). The rule says where a digest is:

  - a named group of the expression called C{sha256}, C{sha512} or C{md5}
    captures it from the URL in hex, e.g.
    C{/by-hash/sha256/(?P<sha256>[0-9a-f]{64})$};
  - C{digest-header=NAME}: the request header NAME carries it, as
    C{ALGO:HEX} or bare hex (the algorithm read from its length: 64 hex
    digits sha256, 128 sha512, 32 md5). That header is for the proxy only
    and is not sent to the origin.

The first rule that matches wins. Then L{decide} is the decision table (the
egress policy, which needs DNS, is applied by the caller before acting on
it): C{CONNECT} -> a tunnel; a GET matching a rule -> P2P; any other
request -> passed through to the origin.

L{parse_target} reads a proxy request's target: an absolute http(s) URI, or
C{host:port} for C{CONNECT}; anything else is L{BadRequest} (400).
"""
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from dragonfly.egress import normalize_host

__all__ = ["RuleError", "BadRequest", "ProxyRule", "Rules", "parse_rule", "Target",
           "parse_target", "Decision", "decide", "DIGEST_ALGOS", "parse_digest_value"]

#: Digest algorithms a rule may name, and their length in hex digits.
DIGEST_ALGOS = {"sha256": 64, "sha512": 128, "md5": 32}
_BY_LENGTH = {n: algo for algo, n in DIGEST_ALGOS.items()}
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")
_TOKEN_RE = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOST_RE = re.compile(r"\A[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})?\Z")
_OPTIONS = ("filter", "tag", "digest-header")
MAX_URI = 8192


class RuleError(ValueError):
    """A C{--proxy-rule} that does not parse (the message names it)."""


class BadRequest(ValueError):
    """A request the proxy cannot read: answered 400."""


def parse_digest_value(text):
    """C{"algo:hex"} from a digest as given (C{ALGO:HEX} or bare hex); BadRequest otherwise."""
    value = text.strip()
    algo, sep, hexpart = value.partition(":")
    if not sep:
        algo, hexpart = _BY_LENGTH.get(len(value)), value
        if algo is None:
            raise BadRequest(f"digest {value!r}: want ALGO:HEX or 32, 64 or 128 hex digits")
    algo = algo.lower()
    if algo not in DIGEST_ALGOS:
        raise BadRequest(f"digest {value!r}: unknown algorithm (sha256, sha512, md5)")
    if len(hexpart) != DIGEST_ALGOS[algo] or not _HEX_RE.match(hexpart):
        raise BadRequest(f"digest {value!r}: {algo} wants {DIGEST_ALGOS[algo]} hex digits")
    return f"{algo}:{hexpart.lower()}"


@dataclass(frozen=True)
class ProxyRule:
    """One parsed rule: the expression and what dfget would have been told."""

    text: str
    pattern: re.Pattern
    filters: tuple = ()
    tag: str = ""
    digest_header: str = None

    @property
    def digest_groups(self):
        return [g for g in self.pattern.groupindex if g in DIGEST_ALGOS]

    def digest(self, match, headers):
        """The digest (C{"algo:hex"}) this rule finds for a request, or None.

        @param match: the expression's match on the URL.
        @param headers: the request's headers, C{{lower-case name: value}}.
        Raises L{BadRequest} when two places disagree or one is malformed.
        """
        found = set()
        for algo in self.digest_groups:
            value = match.group(algo)
            if value:
                found.add(parse_digest_value(f"{algo}:{value}"))
        if self.digest_header is not None:
            value = headers.get(self.digest_header)
            if value:
                found.add(parse_digest_value(value))
        if len(found) > 1:
            raise BadRequest("the request names two different digests")
        return found.pop() if found else None


def parse_rule(text):
    """A L{ProxyRule} from a C{--proxy-rule} value; L{RuleError} if it does not parse."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("--proxy-rule must not be empty")
    regex, *options = text.split()
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise RuleError(f"--proxy-rule {regex!r}: bad regular expression: {e}")
    kw = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in _OPTIONS or not value:
            raise RuleError(f"--proxy-rule {text!r}: bad option {option!r} "
                            f"(want filter=NAME,..., tag=TEXT or digest-header=NAME)")
        if key in kw:
            raise RuleError(f"--proxy-rule {text!r}: {key} given twice")
        kw[key] = value
    header = kw.get("digest-header")
    if header is not None and not _TOKEN_RE.match(header):
        raise RuleError(f"--proxy-rule {text!r}: bad header name {header!r}")
    filters = tuple(f for f in kw.get("filter", "").split(",") if f)
    return ProxyRule(text.strip(), pattern, filters, kw.get("tag", ""),
                     header.lower() if header else None)


class Rules:
    """The rules in order; L{match} finds the first one that matches a URL."""

    def __init__(self, rules=()):
        self.rules = tuple(r if isinstance(r, ProxyRule) else parse_rule(r) for r in rules)

    def __len__(self):
        return len(self.rules)

    def match(self, url):
        """C{(rule, match)} of the first rule whose expression is found in C{url}, or None."""
        for rule in self.rules:
            m = rule.pattern.search(url)
            if m is not None:
                return rule, m
        return None

    @property
    def digest_headers(self):
        """The lower-case names of the headers rules read digests from (never forwarded)."""
        return frozenset(r.digest_header for r in self.rules if r.digest_header)


@dataclass(frozen=True)
class Target:
    """Where a proxy request goes: C{url} (str, None for CONNECT), scheme, host, port."""

    method: bytes
    scheme: str
    host: str
    port: int
    url: str = None

    @property
    def authority(self):
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{shown}:{self.port}"


def _check_host(host):
    host = normalize_host(host)
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOST_RE.match(host) or ".." in host:
        raise BadRequest(f"bad host {host!r}")
    return host


def _connect_target(uri):
    text = uri.decode("ascii")
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise BadRequest("CONNECT wants HOST:PORT")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise BadRequest("CONNECT wants HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest("CONNECT wants HOST:PORT with a port from 1 to 65535")
    return Target(b"CONNECT", "tcp", _check_host(host), int(port))


def parse_target(method, uri):
    """The L{Target} of a request line's C{method} and C{uri} (bytes); BadRequest otherwise.

    A proxy takes absolute URIs only (C{http://host[:port]/path?query}); a
    path alone is what a client sends to a server, not to a proxy.
    """
    if len(uri) > MAX_URI:
        raise BadRequest("request URI too long")
    try:
        uri.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("request URI is not ASCII")
    if any(c in uri for c in b" \t\r\n\0#\\"):
        raise BadRequest("bad characters in the request URI")
    if method == b"CONNECT":
        return _connect_target(uri)
    text = uri.decode("ascii")
    if text.startswith("/"):
        raise BadRequest("this is a proxy: the request target must be an absolute "
                         "http:// or https:// URL")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise BadRequest("malformed URL")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest("only http:// and https:// URLs")
    if not parts.hostname:
        raise BadRequest("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("credentials in the URL are refused (send an Authorization header)")
    host = _check_host(parts.hostname)
    if port == 0:
        raise BadRequest("port 0")
    port = port or (443 if scheme == "https" else 80)
    if not parts.path:
        text = urlunsplit(parts._replace(path="/"))
    return Target(method, scheme, host, port, text)


@dataclass(frozen=True)
class Decision:
    """What to do with a request: C{kind} is "tunnel", "p2p" or "passthrough";
    for P2P the C{rule} and the C{digest} ("algo:hex" or None)."""

    kind: str
    rule: ProxyRule = None
    digest: str = None


def decide(target, rules, headers):
    """The L{Decision} for a request to C{target} (its egress is checked apart).

    @param rules: the L{Rules}.
    @param headers: the request's headers, C{{lower-case name: value}} (str).
    Raises L{BadRequest} for a malformed digest.
    """
    if target.method == b"CONNECT":
        return Decision("tunnel")
    if target.method == b"GET":
        found = rules.match(target.url)
        if found is not None:
            rule, m = found
            return Decision("p2p", rule, rule.digest(m, headers))
    return Decision("passthrough")

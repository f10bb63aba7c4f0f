"""dfget's command line: parsing, validation and --help, on the standard library only.

dfget parses its options before it knows whether it needs Twisted: through a
running peer daemon it never does (L{dragonfly.dfget.viadaemon}), and Twisted's
imports are most of a short download's run time. So this module, and
everything it imports, stays free of Twisted.
"""
import getopt
import os
import re
import textwrap
from urllib.parse import unquote, urlsplit

from dragonfly import __version__
from dragonfly.dfget import compat
from dragonfly.redact import has_userinfo, redact_text, redact_url, userinfo_error
from dragonfly.taskid import derive_task_id
from dragonfly.units import BadValue, parse_hostports, parse_rate

__all__ = ["DfgetError", "OptionsError", "ShowText", "parse", "parse_digest",
           "default_output", "error_line", "help_text", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
           "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DIGEST_ALGOS = {"sha256": 64, "sha512": 128, "md5": 32}
DEFAULT_DAEMON = "http://127.0.0.1:65002"

SYNOPSIS = "Usage: dfget [options] URL  (or: dfget -u URL -o FILE)"
LONGDESC = ("Download URL through the dragonfly P2P network (the local peer daemon, "
            "or an embedded peer when none answers). The output file appears only "
            "complete and verified.")

#: (long name, short letter or None, help)
FLAGS = [
    ("quiet", "q", "No progress bar."),
    ("verbose", "v", "Log what happens on stderr."),
    ("no-back-source", None, "Fail rather than fetch from the origin directly."),
    ("help", "h", "Display this help and exit."),
    ("version", None, "Display dfget's version and exit."),
    ("help-compat", None, "List the Dragonfly 1.x/2.x flags dfget accepts and exit."),
    ("recursive", None, "Download every file under the URL's directory listing (nginx/"
                        "Apache autoindex, JSON index) into the output directory, each as "
                        "its own task, keeping relative paths (needs the peer daemon)."),
]
#: (long name, short letter or None, default, help)
PARAMETERS = [
    ("url", "u", None, "The URL (Dragonfly 1.x style; same as the argument)."),
    ("output", "O", None, "Output file (default: the URL's basename; - = stdout). "
                          "-o is an alias."),
    ("header", "H", None, "'Name: value' header passed to the origin (repeatable)."),
    ("supernodes", None, None, "Supernodes HOST:PORT,... for the embedded peer "
                               "(default 127.0.0.1:8002)."),
    ("daemon", None, DEFAULT_DAEMON,
     "The local peer daemon's API; 'none' = always use an embedded peer."),
    ("daemon-socket", None, None,
     "The local peer daemon's API on a unix socket (its --api-socket), used "
     "instead of --daemon."),
    ("digest", None, None, "Expected digest ALGO:HEX (sha256, sha512, md5)."),
    ("md5", None, None, "Expected MD5 (same as --digest md5:HEX)."),
    ("filter", None, None, "Query parameters NAME,... (or NAME&...) ignored when deriving "
                           "the task id."),
    ("tag", None, "", "Text added to the task id (different tag = different task)."),
    ("limit", None, "0",
     "Download rate limit, bytes/s with K/M/G; the peer daemon paces this download too."),
    ("timeout", None, "0", "Give up after this many seconds, or a duration like 5m "
                           "(0 = never)."),
    ("pattern", None, "p2p", "p2p; cdn (the supernodes only, no other peers); or source "
                             "(fetch from the origin directly)."),
    ("level", None, "5", "--recursive: directory levels to walk (0 = no limit)."),
    ("accept-regex", None, None, "--recursive: only files whose URL matches this regex."),
    ("reject-regex", None, None, "--recursive: skip files whose URL matches this regex."),
    ("advertise", None, None,
     "Address other peers use to reach the embedded peer (default 127.0.0.1)."),
    ("allow-origin", None, None,
     "Origins the embedded peer may fetch from although the default denies them "
     "(loopback, link-local, metadata...): HOST, HOST:PORT or CIDR, comma-separated; "
     "repeatable. Through a daemon, the daemon's policy applies."),
    ("deny-origin", None, None,
     "Origins the embedded peer never fetches from (wins over --allow-origin); repeatable."),
    ("tls-cert", None, None, "The embedded peer's certificate (PEM) when the supernodes and "
                             "peers speak mutual TLS; with --tls-key and --tls-ca."),
    ("tls-key", None, None, "The private key of --tls-cert (PEM)."),
    ("tls-ca", None, None, "The fleet's CA certificate (PEM)."),
]
#: The mutual TLS files of the embedded peer: all three or none.
TLS_FLAGS = ("tls-cert", "tls-key", "tls-ca")
#: Parameters that may repeat: their values are collected into a list.
REPEATABLE = ("allow-origin", "deny-origin")
#: Short aliases that are not in the help table's own column.
ALIASES = {"o": "output"}

_HEADER_NAME_RE = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOST_RE = re.compile(r"\A[A-Za-z0-9_.:-]+\Z")


class DfgetError(Exception):
    """A failure to report as C{dfget: error: <message>}."""

    def __init__(self, message, code=EXIT_FAILED):
        Exception.__init__(self, message)
        self.code = code


class OptionsError(DfgetError):
    """A bad command line (exit status 2)."""

    def __init__(self, message):
        DfgetError.__init__(self, message, EXIT_USAGE)


class ShowText(Exception):
    """--help or --version: print C{text} on stdout and exit 0."""

    def __init__(self, text):
        Exception.__init__(self, text)
        self.text = text


def _tables():
    short = {}
    for name, letter, _ in FLAGS:
        if letter:
            short[letter] = (name, False)
    for name, letter, _, _ in PARAMETERS:
        if letter:
            short[letter] = (name, True)
    for letter, name in list(ALIASES.items()) + list(compat.SHORT_ALIASES.items()):
        short[letter] = (name, True)
    long_ = {name: False for name, _, _ in FLAGS}
    long_.update({name: True for name, _, _, _ in PARAMETERS})
    dialect_short, dialect_long = compat.tables()
    short.update(dialect_short)
    for name, takes in dialect_long.items():
        long_.setdefault(name, takes)
    return short, long_


def parse(argv):
    """The options of C{argv} (without the program name) as a dict.

    GNU style, like wget: options may follow the URL. Besides every flag and
    parameter by its long name, the dict holds the derived values the run
    uses: C{header_map}, C{digest_spec}, C{filters}, C{limit_bps},
    C{showbar}, C{compat_ignored} (Dragonfly 1.x/2.x flags, L{compat}),
    C{timeout_s}, C{supernode_list}, C{daemon_url} (None: no daemon),
    C{daemon_socket} (an absolute path, or None),
    C{allow_origin}/C{deny_origin} (checked egress entries) and C{task_id}. Raises L{OptionsError} or, for --help/--version, L{ShowText}.
    """
    short, long_ = _tables()
    shortopts = "".join(letter + (":" if takes else "") for letter, (_, takes) in short.items())
    longopts = [name + ("=" if takes else "") for name, takes in long_.items()]
    try:
        opts, args = getopt.gnu_getopt(list(argv), shortopts, longopts)
    except getopt.GetoptError as e:
        raise OptionsError(str(e))
    o = {name: False for name, _, _ in FLAGS}
    o.update({name: default for name, _, default, _ in PARAMETERS})
    o.update({name: [] for name in REPEATABLE})
    headers = []
    ours = {name for name, _, _ in FLAGS} | {name for name, _, _, _ in PARAMETERS}
    for opt, arg in opts:
        name = short[opt[1]][0] if not opt.startswith("--") else opt[2:]
        if name == "help":
            raise ShowText(help_text())
        if name == "help-compat":
            raise ShowText(compat.help_text())
        if name not in ours:
            _compat(compat.apply, o, name, arg)
            continue
        if name == "version":
            raise ShowText(f"dfget (dragonfly) {__version__}\n")
        if name == "header":
            headers.append(_parse_header(arg))
        elif name in REPEATABLE:
            o[name].append(arg)
        elif long_[name]:
            o[name] = arg
        else:
            o[name] = True
    if len(args) > 1:
        raise OptionsError("one URL at a time")
    if args:
        if o["url"] is not None and o["url"] != args[0]:
            raise OptionsError("give the URL once (either -u URL or as the argument)")
        o["url"] = args[0]
    o["headers"] = headers
    _compat(compat.finish, o)
    _derive(o)
    return o


def _compat(fn, *args):
    try:
        fn(*args)
    except compat.CompatError as e:
        raise OptionsError(str(e))


def _parse_header(value):
    name, sep, val = value.partition(":")
    name, val = name.strip(), val.strip()
    if not sep or not _HEADER_NAME_RE.match(name) or any(c in val for c in "\r\n\0"):
        raise OptionsError(f"bad header {value!r} (want 'Name: value')")
    return name, val


def _derive(o):
    url = o["url"]
    if not url:
        raise OptionsError("no URL given")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise OptionsError(f"not an http(s) URL: {redact_url(url)!r} ({e})")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname \
            or any(c in url for c in " \r\n\0"):
        raise OptionsError(f"not an http(s) URL: {redact_url(url)!r}")
    if has_userinfo(url):
        raise OptionsError(userinfo_error(url))
    headers = {}
    for name, val in o["headers"]:
        key = next((k for k in headers if k.lower() == name.lower()), name)
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    o["header_map"] = headers
    digest = o["digest"]
    if o["md5"]:
        if digest:
            raise OptionsError("give --digest or --md5, not both")
        digest = f"md5:{o['md5']}"
    o["digest_spec"] = parse_digest(digest) if digest else None
    o["filters"] = compat.split_filter(o["filter"])
    if o["pattern"] not in ("p2p", "cdn", "source"):
        raise OptionsError("--pattern must be p2p, cdn or source")
    try:
        o["limit_bps"] = parse_rate(o["limit"])
    except BadValue as e:
        raise OptionsError(f"--limit: {e}")
    _compat(lambda: o.__setitem__("timeout_s", compat.parse_duration(o["timeout"])))
    if not 0 <= o["timeout_s"] < float("inf"):
        raise OptionsError("--timeout must be a non-negative number of seconds")
    try:
        o["supernode_list"] = parse_hostports(o["supernodes"] or "127.0.0.1:8002")
    except BadValue as e:
        raise OptionsError(f"--supernodes: {e}")
    if not o["supernode_list"]:
        raise OptionsError("--supernodes: no address given")
    daemon = (o["daemon"] or "").strip()
    if daemon.lower() in ("", "none", "off"):
        o["daemon_url"] = None
    else:
        d = urlsplit(daemon)
        if d.scheme not in ("http", "https") or not d.netloc:
            raise OptionsError(f"--daemon must be an http URL, not {daemon!r}")
        o["daemon_url"] = daemon.rstrip("/")
    socket_path = (o["daemon-socket"] or "").strip()
    o["daemon_socket"] = os.path.abspath(socket_path) if socket_path else None
    if o["advertise"] is not None and not _HOST_RE.match(o["advertise"]):
        raise OptionsError(f"--advertise: not a host: {o['advertise']!r}")
    for name in REPEATABLE:
        o[name.replace("-", "_")] = _egress_entries(name, o[name]) if o[name] else []
    _derive_recursive(o)
    _derive_tls(o)
    # A sha256 --digest names the content: the task is the digest's,
    # whatever URL serves it (the supernode derives the same id).
    spec = o["digest_spec"]
    o["content_digest"] = f"sha256:{spec[1]}" if spec and spec[0] == "sha256" else None
    o["task_id"] = derive_task_id(url, o["filters"], o["tag"] or "", o["content_digest"])


def _derive_tls(o):
    """C{tls_files}: the absolute (cert, key, ca) paths, or None. The files'
    contents are checked when the embedded peer starts (the daemon path, which
    talks only to the loopback API, does not use them)."""
    given = [f for f in TLS_FLAGS if o[f]]
    o["tls_files"] = None
    if not given:
        return
    if len(given) != len(TLS_FLAGS):
        missing = ", ".join("--" + f for f in TLS_FLAGS if f not in given)
        raise OptionsError(f"--tls-cert, --tls-key and --tls-ca go together: {missing} missing")
    for flag in TLS_FLAGS:
        if not os.path.isfile(o[flag]):
            raise OptionsError(f"--{flag}: {o[flag]}: no such file")
    o["tls_files"] = tuple(os.path.abspath(o[f]) for f in TLS_FLAGS)


def _egress_entries(name, values):
    """The checked --allow-origin/--deny-origin entries, as text. The egress
    module is imported only when they are given: dfget's start-up stays lean."""
    from dragonfly.egress import BadEntry, parse_entries
    try:
        return [e.text for e in parse_entries(values)]
    except BadEntry as e:
        raise OptionsError(f"--{name}: {e}")


def _derive_recursive(o):
    try:
        o["level_n"] = int(o["level"])
    except ValueError:
        o["level_n"] = -1
    if o["level_n"] < 0:
        raise OptionsError(f"--level must be a whole number >= 0, not {o['level']!r}")
    for name in ("accept-regex", "reject-regex"):
        if o[name] is not None:
            try:
                re.compile(o[name])
            except re.error as e:
                raise OptionsError(f"--{name}: {e}")
    if o["recursive"] and (o["digest_spec"] or o["output"] == "-"):
        raise OptionsError("--recursive takes no --digest/--md5 and no -O -")


def parse_digest(spec):
    """'sha256:HEX' -> ('sha256', 'hex'), checked for the algorithm and length."""
    algo, sep, hexpart = spec.partition(":")
    algo = algo.strip().lower()
    hexpart = hexpart.strip().lower()
    if not sep:
        raise OptionsError(f"--digest must be ALGO:HEX, not {spec!r}")
    if algo not in DIGEST_ALGOS:
        raise OptionsError(f"--digest: unknown algorithm {algo!r} (sha256, sha512, md5)")
    if len(hexpart) != DIGEST_ALGOS[algo] or not re.match(r"\A[0-9a-f]+\Z", hexpart):
        raise OptionsError(f"--digest: {algo} wants {DIGEST_ALGOS[algo]} hex digits")
    return algo, hexpart


def default_output(url):
    """The URL path's basename, percent-decoded (index.html when there is none)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "\0" in name:
        name = "index.html"
    return name


def error_line(text):
    """The one line dfget prints on stderr for a failure."""
    return "dfget: error: " + " ".join(redact_text(str(text)).split())[:500] + "\n"


def help_text(width=80):
    rows = []
    for name, letter, text in FLAGS:
        rows.append((name, letter, False, None, text))
    for name, letter, default, text in PARAMETERS:
        rows.append((name, letter, True, default, text))
    rows.sort(key=lambda r: r[0])
    lines = [SYNOPSIS, "Options:"]
    col = 24
    for name, letter, takes, default, text in rows:
        head = f"  {'-' + letter + ', ' if letter else '    '}--{name}{'=' if takes else ''}"
        if default not in (None, ""):
            text += f" [default: {default}]"
        body = textwrap.wrap(text, width - col)
        first = head.ljust(col) if len(head) < col else head + "\n" + " " * col
        lines.append(first + body[0])
        lines.extend(" " * col + more for more in body[1:])
    lines.append("")
    lines.extend(textwrap.wrap(LONGDESC, width))
    return "\n".join(lines) + "\n"

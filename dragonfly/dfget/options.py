"""dfget's command line: parsing, validation and --help, on the standard library only.

dfget parses its options before it knows whether it needs Twisted: through a
running peer daemon it never does (L{dragonfly.dfget.viadaemon}), and Twisted's
imports are most of a short download's run time. So this module, and
everything it imports, stays free of Twisted.
"""
import getopt
import re
import textwrap
from urllib.parse import unquote, urlsplit

from dragonfly import __version__
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
    ("digest", None, None, "Expected digest ALGO:HEX (sha256, sha512, md5)."),
    ("md5", None, None, "Expected MD5 (same as --digest md5:HEX)."),
    ("filter", None, None, "Query parameters NAME,... ignored when deriving the task id."),
    ("tag", None, "", "Text added to the task id (different tag = different task)."),
    ("limit", None, "0", "Download rate limit, bytes/s with K/M/G (embedded peer)."),
    ("timeout", None, "0", "Give up after this many seconds (0 = never)."),
    ("pattern", None, "p2p", "p2p, or source (fetch from the origin directly)."),
    ("advertise", None, None,
     "Address other peers use to reach the embedded peer (default 127.0.0.1)."),
]
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
    for letter, name in ALIASES.items():
        short[letter] = (name, True)
    long_ = {name: False for name, _, _ in FLAGS}
    long_.update({name: True for name, _, _, _ in PARAMETERS})
    return short, long_


def parse(argv):
    """The options of C{argv} (without the program name) as a dict.

    GNU style, like wget: options may follow the URL. Besides every flag and
    parameter by its long name, the dict holds the derived values the run
    uses: C{header_map}, C{digest_spec}, C{filters}, C{limit_bps},
    C{timeout_s}, C{supernode_list}, C{daemon_url} (None: no daemon) and
    C{task_id}. Raises L{OptionsError} or, for --help/--version, L{ShowText}.
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
    headers = []
    for opt, arg in opts:
        name = short[opt[1]][0] if not opt.startswith("--") else opt[2:]
        if name == "help":
            raise ShowText(help_text())
        if name == "version":
            raise ShowText(f"dfget (dragonfly) {__version__}\n")
        if name == "header":
            headers.append(_parse_header(arg))
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
    _derive(o)
    return o


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
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc \
            or any(c in url for c in " \r\n\0"):
        raise OptionsError(f"not an http(s) URL: {url!r}")
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
    o["filters"] = [f.strip() for f in (o["filter"] or "").split(",") if f.strip()]
    if o["pattern"] not in ("p2p", "source"):
        raise OptionsError("--pattern must be p2p or source")
    try:
        o["limit_bps"] = parse_rate(o["limit"])
    except BadValue as e:
        raise OptionsError(f"--limit: {e}")
    try:
        o["timeout_s"] = float(o["timeout"])
    except ValueError:
        raise OptionsError(f"--timeout must be a number of seconds, not {o['timeout']!r}")
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
    if o["advertise"] is not None and not _HOST_RE.match(o["advertise"]):
        raise OptionsError(f"--advertise: not a host: {o['advertise']!r}")
    # A sha256 --digest names the content: the task is the digest's,
    # whatever URL serves it (the supernode derives the same id).
    spec = o["digest_spec"]
    o["content_digest"] = f"sha256:{spec[1]}" if spec and spec[0] == "sha256" else None
    o["task_id"] = derive_task_id(url, o["filters"], o["tag"] or "", o["content_digest"])


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
    return "dfget: error: " + " ".join(str(text).split())[:500] + "\n"


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

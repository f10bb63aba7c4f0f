"""The Dragonfly 1.x and 2.x dfget flags, mapped onto ours (standard library only).

Users migrating from Dragonfly keep their scripts: L{dragonfly.dfget.options}
parses these flags next to ours and calls L{apply} for each one that is not
ours by name, then L{finish} once before deriving the run's values. A flag
that means something here becomes our option (C{-n/--node} -> C{--supernodes},
C{-s/--locallimit} -> C{--limit}, ...); one that means nothing here (C{--callsystem},
C{--console}, ...) is collected in C{o["compat_ignored"]} so dfget prints one
warning line; one whose meaning we cannot honour (C{--range}) is an error
rather than a silently different download. C{dfget --help-compat} prints
L{help_text}, generated from the same table.
"""
import re
import textwrap

from dragonfly.units import BadValue, parse_rate

__all__ = ["COMPAT", "CompatError", "SHORT_ALIASES", "apply", "finish", "help_text",
           "parse_duration", "split_filter", "tables", "warning_line"]

#: Default supernode port of Dragonfly 1.x's --node when an entry names none.
NODE_PORT = 8002

#: (long name, short letter or None, takes a value, dialect, what it means here).
#: C{what} starting with "ignored" or "refused" says how L{apply} treats it.
COMPAT = [
    ("node", "n", True, "1.x", "--supernodes (HOST[:PORT][=WEIGHT],...; port 8002 by "
                               "default, the weight is dropped)"),
    ("locallimit", "s", True, "1.x", "--limit (per download; the lowest limit given wins)"),
    ("totallimit", None, True, "1.x", "--limit (the lowest limit given wins)"),
    ("notbs", None, False, "1.x", "--no-back-source"),
    ("disable-back-source", None, False, "2.x", "--no-back-source"),
    ("identifier", "i", True, "1.x", "--tag"),
    ("showbar", "b", False, "1.x", "a progress bar even when stderr is not a terminal"),
    ("show-progress", None, False, "2.x", "a progress bar even when stderr is not a terminal"),
    ("callsystem", None, True, "1.x/2.x", "ignored (debugging label)"),
    ("console", None, False, "1.x/2.x", "ignored (use -v)"),
    ("dfdaemon", None, False, "1.x", "ignored"),
    ("home", None, True, "1.x", "ignored (the daemon keeps the data)"),
    ("clientqueue", None, True, "1.x", "ignored"),
    ("minrate", None, True, "1.x", "ignored"),
    ("expiretime", None, True, "1.x", "ignored (see the peer's --cache-ttl)"),
    ("alivetime", None, True, "1.x", "ignored"),
    ("ip", None, True, "1.x", "ignored (see --advertise)"),
    ("port", None, True, "1.x", "ignored"),
    ("insecure", None, False, "1.x", "ignored"),
    ("cacerts", None, True, "1.x", "ignored"),
    ("application", None, True, "2.x", "ignored"),
    ("priority", None, True, "2.x", "ignored"),
    ("workhome", None, True, "2.x", "ignored"),
    ("logdir", None, True, "2.x", "ignored"),
    ("daemon-sock", None, True, "2.x", "ignored (see --daemon)"),
    ("range", None, True, "2.x", "refused (partial downloads are not supported)"),
    ("original-offset", None, False, "2.x", "refused (partial downloads are not supported)"),
    ("keep-original-offset", None, False, "2.x",
     "refused (partial downloads are not supported)"),
    ("list", None, False, "2.x", "refused (use --recursive)"),
]

#: Dialect short letters for options we have under the same long name.
SHORT_ALIASES = {"m": "md5", "f": "filter", "e": "timeout", "p": "pattern"}

#: Rows of --help-compat for flags that are ours already, or whose values differ.
SAME_ROWS = [
    ("-u, --url URL", "1.x/2.x", "the URL (or give it as the argument)"),
    ("-o, -O, --output FILE", "1.x/2.x", "--output"),
    ("--header 'Name: value'", "1.x/2.x", "-H, --header"),
    ("-m, --md5 HEX", "1.x", "--md5 (same as --digest md5:HEX)"),
    ("--digest ALGO:HEX", "2.x", "--digest"),
    ("-f, --filter A&B", "1.x/2.x", "--filter (& or , between names)"),
    ("--tag TEXT", "2.x", "--tag"),
    ("-e, --timeout DURATION", "1.x/2.x", "--timeout (seconds, or 30s, 5m, 1h30m)"),
    ("--limit RATE", "2.x", "--limit"),
    ("-p, --pattern p2p|cdn|source", "1.x", "--pattern (cdn = the supernodes only, no peers)"),
    ("--recursive, --level, --accept-regex, --reject-regex", "2.x", "the same"),
    ("--verbose", "1.x/2.x", "-v, --verbose"),
    ("-v, --version", "1.x", "-v is --verbose here; --version is the version"),
]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


class CompatError(ValueError):
    """A dialect flag with a bad value, or one we refuse."""


def tables():
    """(short letter -> (long name, takes value), long name -> takes value)."""
    short = {letter: (name, takes) for name, letter, takes, _, _ in COMPAT if letter}
    long_ = {name: takes for name, _, takes, _, _ in COMPAT}
    return short, long_


def apply(o, name, arg):
    """Record dialect flag C{--name} (value C{arg}) in the options dict C{o}."""
    what = next(row[4] for row in COMPAT if row[0] == name)
    if what.startswith("refused"):
        raise CompatError(f"--{name} is not supported: {what[len('refused '):].strip('()')}")
    if what.startswith("ignored"):
        ignored = o.setdefault("compat_ignored", [])
        if f"--{name}" not in ignored:
            ignored.append(f"--{name}")
    elif name == "node":
        o["supernodes"] = node_list(arg)
    elif name in ("locallimit", "totallimit"):
        o.setdefault("compat_limits", []).append((name, arg))
    elif name in ("notbs", "disable-back-source"):
        o["no-back-source"] = True
    elif name == "identifier":
        o["tag"] = arg
    elif name in ("showbar", "show-progress"):
        o["showbar"] = True


def finish(o):
    """After every flag: fold the dialect rate limits into C{o["limit"]}."""
    o.setdefault("showbar", False)
    o.setdefault("compat_ignored", [])
    limits = o.pop("compat_limits", [])
    if not limits:
        return
    try:
        rates = [parse_rate(o["limit"] or "0")]
    except BadValue:
        return   # options reports the bad --limit itself
    for name, value in limits:
        try:
            rates.append(parse_rate(value))
        except BadValue as e:
            raise CompatError(f"--{name}: {e}")
    given = [r for r in rates if r > 0]
    o["limit"] = str(min(given)) if given else "0"


def node_list(value):
    """1.x --node 'a:8002=1,b' -> 'a:8002,b:8002' (weights dropped)."""
    out = []
    for item in value.split(","):
        item = item.strip().partition("=")[0].strip()
        if not item:
            continue
        bare_v6 = item.count(":") > 1 and not item.startswith("[")
        if bare_v6:
            item = f"[{item}]:{NODE_PORT}"
        elif not re.search(r":\d+\Z", item):
            item = f"{item}:{NODE_PORT}"
        out.append(item)
    if not out:
        raise CompatError("--node: no address given")
    return ",".join(out)


def split_filter(value):
    """--filter names, separated by ',' (ours) or '&' (Dragonfly's)."""
    return [f.strip() for f in re.split(r"[,&]", value or "") if f.strip()]


def parse_duration(value):
    """Seconds from '30', '2.5', '30s', '5m', '1h30m' or '500ms' (Go-style durations)."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise CompatError(f"--timeout must be seconds or a duration like 30s, 5m, 1h30m, "
                          f"not {value!r}")
    return total


def warning_line(o):
    """The one warning line for ignored dialect flags, or None."""
    ignored = o.get("compat_ignored")
    if not ignored:
        return None
    return f"dfget: warning: ignoring {', '.join(ignored)} (no meaning in this dfget)\n"


def help_text(width=80):
    """C{dfget --help-compat}: every Dragonfly 1.x/2.x flag and what it is here."""
    rows = list(SAME_ROWS)
    for name, letter, takes, dialect, what in COMPAT:
        flag = (f"-{letter}, " if letter else "") + f"--{name}" + (" VALUE" if takes else "")
        rows.append((flag, dialect, what))
    lines = ["Dragonfly 1.x and 2.x dfget flags and what they mean here:", ""]
    col = 32
    for flag, dialect, what in rows:
        body = textwrap.wrap(f"[{dialect}] {what}", width - col)
        head = "  " + flag
        first = head.ljust(col) if len(head) < col else head + "\n" + " " * col
        lines.append(first + body[0])
        lines.extend(" " * col + more for more in body[1:])
    lines.append("")
    lines.extend(textwrap.wrap(
        "Flags marked ignored are accepted with one warning line on stderr; refused "
        "flags are an error. Everything else in 'dfget --help' works as documented there.",
        width))
    return "\n".join(lines) + "\n"

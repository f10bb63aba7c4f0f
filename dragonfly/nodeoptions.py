"""What the daemons' twistd options share: the flag rows they have in common
and the checks that turn a flag's text into a config value.

The supernode's and the peer's (hence the dfdaemon's) C{Options} list these
rows in their C{optParameters} and validate with these functions, so a shared
flag has one help text and one error message, each naming the flag. Imports
no role.
"""
import ipaddress
import os
import re

from twisted.python import usage

from dragonfly.config import check_writable_dir, parse_size
from dragonfly.egress import BadEntry, parse_entries

__all__ = ["CACHE_SIZE", "CACHE_TTL", "LOG_FORMAT", "MAX_FILE_SIZE", "PORT_FILE", "EGRESS_LISTS",
           "EgressFlags", "check_data_dir", "check_egress", "check_host", "check_log_format",
           "check_max_file_size", "check_port_file", "flag_int", "flag_seconds", "flag_size",
           "TLS_CERT", "TLS_KEY", "TLS_CA", "check_tls", "API_SOCKET", "check_api_socket"]

CACHE_SIZE = ["cache-size", None, "0", "Disk quota for cached tasks (K/M/G/T); 0 = no quota."]
CACHE_TTL = ["cache-ttl", None, "0", "Seconds an unused task stays cached; 0 = forever."]
MAX_FILE_SIZE = ["max-file-size", None, "1T",
                 "Largest origin file accepted (K/M/G/T); a larger one is refused with 413."]
LOG_FORMAT = ["log-format", None, "text", "text or json."]
PORT_FILE = ["port-file", None, None,
             'Write {"api": PORT, "piece": PORT} (JSON) here once listening.']
API_SOCKET = ["api-socket", None, None,
              "Also serve the local API on this unix socket (mode 0600: only this node's "
              "user, and root); dfget --daemon-socket PATH uses it."]
TLS_CERT = ["tls-cert", None, None,
            "This node's certificate (PEM); with --tls-key and --tls-ca every API, piece "
            "port and cluster link speaks mutual TLS."]
TLS_KEY = ["tls-key", None, None, "The private key of --tls-cert (PEM, unencrypted)."]
TLS_CA = ["tls-ca", None, None,
          "The CA certificate (PEM) that every node's certificate must chain to."]

#: The repeatable egress flags (C{listOptions} of a ConfigOptions; see L{EgressFlags}).
EGRESS_LISTS = ("allow-origin", "deny-origin")

_HOST_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,253}\Z")


class EgressFlags:
    """Mix-in of the C{--allow-origin}/C{--deny-origin} handlers for a
    L{dragonfly.config.ConfigOptions} that lists L{EGRESS_LISTS} in its
    C{listOptions}; C{postOptions} reads them with L{check_egress}."""

    def opt_allow_origin(self, value):
        """Origins this node may fetch from although the default denies them (loopback, link-local, metadata, multicast...): HOST, HOST:PORT or CIDR, comma-separated; repeatable."""  # noqa: E501
        self["allow_origin"].append(value)

    def opt_deny_origin(self, value):
        """Origins this node never fetches from (wins over --allow-origin): HOST, HOST:PORT or CIDR, comma-separated; repeatable."""  # noqa: E501
        self["deny_origin"].append(value)


def check_egress(options):
    """(allow, deny): the checked entry texts of --allow-origin and --deny-origin."""
    out = []
    for flag in EGRESS_LISTS:
        try:
            entries = parse_entries(options[flag.replace("-", "_")])
        except BadEntry as e:
            raise usage.UsageError(f"--{flag}: {e}")
        out.append([e.text for e in entries])
    return tuple(out)


def check_host(flag, value):
    """An IP address (brackets removed) or a host name, else UsageError."""
    text = str(value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST_RE.match(text):
        raise usage.UsageError(f"--{flag}: not a host name or address: {value!r}")
    return text


def flag_size(flag, value, parse=parse_size):
    """C{parse(value)}, its UsageError prefixed with the flag."""
    try:
        return parse(value)
    except usage.UsageError as e:
        raise usage.UsageError(f"--{flag}: {e}")


def check_max_file_size(value):
    """The --max-file-size in bytes: a positive size."""
    size = flag_size("max-file-size", value)
    if size <= 0:
        raise usage.UsageError("--max-file-size must be larger than 0")
    return size


def flag_seconds(flag, value):
    """A finite, non-negative number of seconds."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag} must be a number of seconds, not {value!r}")
    if not v >= 0 or v == float("inf"):
        raise usage.UsageError(f"--{flag} must be a non-negative number of seconds")
    return v


def flag_int(flag, value, lo, hi):
    """An integer from C{lo} to C{hi}."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag} must be an integer, not {value!r}")
    if not lo <= v <= hi:
        raise usage.UsageError(f"--{flag} must be from {lo} to {hi}")
    return v


def check_data_dir(value):
    """The absolute --data-dir, which must be non-empty and writable (or creatable)."""
    if not value or not str(value).strip():
        raise usage.UsageError("--data-dir must not be empty")
    path = os.path.abspath(str(value))
    check_writable_dir("data-dir", path)
    return path


def check_log_format(value):
    """C{"text"} or C{"json"} (any case)."""
    fmt = str(value).lower()
    if fmt not in ("text", "json"):
        raise usage.UsageError(f"--log-format must be text or json, not {value!r}")
    return fmt


def check_port_file(value):
    """The absolute --port-file, whose directory must exist; None when not given."""
    if not value:
        return None
    path = os.path.abspath(str(value))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise usage.UsageError(f"--port-file: directory {parent} does not exist")
    return path


#: Longest socket path the kernel takes (sun_path is 108 bytes with its NUL).
UNIX_PATH_MAX = 107


def check_api_socket(value):
    """The absolute --api-socket path, whose directory must exist; None when not given."""
    if not value:
        return None
    path = os.path.abspath(str(value))
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise usage.UsageError(f"--api-socket: {path} is longer than {UNIX_PATH_MAX} bytes")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise usage.UsageError(f"--api-socket: directory {parent} does not exist")
    return path


def check_tls(options, load=None):
    """The checked L{dragonfly.tls.TLSFiles} of --tls-cert/--tls-key/--tls-ca
    (absolute paths), or None when none is given; all three or none, and the
    files must be usable (L{dragonfly.tls.load_material}), else UsageError."""
    from dragonfly.tls import TLSError, TLSFiles, load_material

    flags = ("tls-cert", "tls-key", "tls-ca")
    given = [f for f in flags if options[f]]
    if not given:
        return None
    if len(given) != len(flags):
        missing = ", ".join("--" + f for f in flags if f not in given)
        raise usage.UsageError(f"--tls-cert, --tls-key and --tls-ca go together: {missing} missing")
    files = TLSFiles(*(os.path.abspath(str(options[f])) for f in flags))
    try:
        (load or load_material)(files)
    except TLSError as e:
        raise usage.UsageError(str(e))
    return files

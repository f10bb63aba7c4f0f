"""Field checks shared by the control messages: ids, URLs, origin headers, numbers.

Each check returns the value (or its cleaned form) or raises L{MessageError}
naming the field; L{dragonfly.control.messages} builds every message from them.
"""
import re
from typing import NamedTuple
from urllib.parse import urlsplit

from dragonfly.digest import HEX_LENGTH
from dragonfly.interfaces import PeerInfo
from dragonfly.origin import clean_headers
from dragonfly.redact import has_userinfo, userinfo_error
from dragonfly.taskid import content_digest, derive_task_id, validate_peer_id, validate_task_id

__all__ = ["MessageError", "check_task_id", "check_peer_id", "check_url", "check_headers",
           "MAX_URL", "MAX_HEADERS", "MAX_HEADER_BYTES", "MAX_INDEX", "MAX_PIECE_SIZE",
           "MAX_LENGTH", "check_secret", "TaskIdentity", "task_identity", "byte_range",
           "origin_validators", "sendable_validators", "MAX_VALIDATOR"]

MAX_URL = 8192
MAX_HEADERS = 64
MAX_HEADER_BYTES = 32 * 1024
MAX_INDEX = 1 << 31         # piece indexes (and cursors) are 0..MAX_INDEX
MAX_PIECE_SIZE = 1 << 31
MAX_LENGTH = (1 << 63) - 1
MAX_TAG = 1024
MAX_FILTERS = 64
HEX_RE = re.compile(r"\A[0-9a-f]{%d}\Z" % HEX_LENGTH)
MAX_VALIDATOR = 1024
_VALIDATOR_RE = re.compile(r"\A[\x20-\x7e]+\Z")    # one printable header value


class MessageError(ValueError):
    """A body that does not follow its message's schema; C{field} names the culprit."""

    def __init__(self, field, message):
        ValueError.__init__(self, message)
        self.field = field


# -- field checks ----------------------------------------------------------------

def object_of(obj, what):
    if not isinstance(obj, dict):
        raise MessageError("", f"{what} must be a JSON object")
    return obj


def integer(value, name, lo, hi, field=None):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MessageError(field or name, f"{name} must be an integer from {lo} to {hi}")
    return value


def optional_integer(obj, name, lo, hi):
    value = obj.get(name)
    return None if value is None else integer(value, name, lo, hi)


def byte_range(value, name):
    """An optional inclusive byte range [first, last] -> (first, last) or None."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise MessageError(name, f"{name} must be [first, last]")
    first, last = (integer(v, name, 0, MAX_LENGTH) for v in value)
    if last < first:
        raise MessageError(name, f"{name} must not end before it starts")
    return first, last


def string(value, name, max_len=MAX_URL, optional=False):
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise MessageError(name, f"{name} must be a string of at most {max_len} characters")
    return value


def origin_validators(obj):
    """The optional C{etag} and C{last_modified} of C{obj}: the origin's
    validators of the content a task's pieces are (a peer sends them back to
    that origin in C{If-Range}), each None or one printable header value of
    at most L{MAX_VALIDATOR} characters (no CR, LF or other control byte: it
    goes into a request header)."""
    out = []
    for name in ("etag", "last_modified"):
        value = obj.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_VALIDATOR
                                  or not _VALIDATOR_RE.match(value)):
            raise MessageError(name, f"{name} must be one printable header value of at most "
                               f"{MAX_VALIDATOR} characters")
        out.append(value)
    return tuple(out)


def sendable_validators(etag, last_modified):
    """C{{"etag": ..., "last_modified": ...}} for an answer: a strong ETag
    only (a weak one cannot go in C{If-Range}), and only values that
    L{origin_validators} accepts (one odd origin header must not make the
    whole answer unreadable); None for the rest."""
    def ok(value):
        return isinstance(value, str) and len(value) <= MAX_VALIDATOR \
            and bool(_VALIDATOR_RE.match(value))
    return {"etag": etag if ok(etag) and not etag.startswith("W/") else None,
            "last_modified": last_modified if ok(last_modified) else None}


def boolean(obj, name, default=False):
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise MessageError(name, f"{name} must be true or false")
    return value


def check_task_id(value, field="task_id"):
    """C{value} if it is a well-formed task id, else L{MessageError}."""
    try:
        return validate_task_id(value)
    except ValueError:
        raise MessageError(field, f"bad {field}")


def check_peer_id(value, field="peer_id"):
    try:
        return validate_peer_id(value)
    except ValueError:
        raise MessageError(field, f"bad {field}")


def peer_info(value, field):
    try:
        return PeerInfo.from_json(value)
    except ValueError as e:
        raise MessageError(field, f"bad {field}: {e}")


def check_url(url):
    """An absolute http(s) URL we are willing to fetch, else L{MessageError}."""
    if not isinstance(url, str) or not url:
        raise MessageError("url", "url must be a non-empty string")
    if len(url) > MAX_URL:
        raise MessageError("url", f"url longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise MessageError("url", "url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise MessageError("url", f"bad url: {e}")
    if parts.scheme.lower() not in ("http", "https"):
        raise MessageError("url", "url must be http or https")
    if not parts.hostname:
        raise MessageError("url", "url has no host")
    if has_userinfo(url):
        raise MessageError("url", userinfo_error(url))
    return url


def check_headers(headers):
    """{name: value} for the origin (hop-by-hop names dropped), else L{MessageError}."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise MessageError("headers", "headers must be an object of strings")
    if len(headers) > MAX_HEADERS:
        raise MessageError("headers", f"more than {MAX_HEADERS} headers")
    if sum(len(str(k)) + len(str(v)) for k, v in headers.items()) > MAX_HEADER_BYTES:
        raise MessageError("headers", f"headers larger than {MAX_HEADER_BYTES} bytes")
    try:
        return clean_headers(headers)
    except ValueError as e:
        raise MessageError("headers", f"headers: {e}")


def task_ids(value, name, limit):
    if not isinstance(value, list) or len(value) > limit:
        raise MessageError(name, f"{name} must be a list of at most {limit} task ids")
    for t in value:
        if not isinstance(t, str):
            raise MessageError(name, f"{name} must be task id strings")
        check_task_id(t, name)
    return tuple(value)


_SECRET_RE = re.compile(r"\A[A-Za-z0-9_-]{16,128}\Z")


def check_secret(value, field="secret"):
    """A peer secret (16-128 URL-safe base64 characters) or None, else L{MessageError}.

    The supernode gives each registered peer one; the peer's schedule,
    heartbeat and leave calls carry it (until mTLS authenticates peers).
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _SECRET_RE.match(value):
        raise MessageError(field, f"{field} must be 16-128 URL-safe characters")
    return value
class TaskIdentity(NamedTuple):
    """What a task id is derived from, and the id itself (L{derive_task_id})."""

    task_id: str
    filters: tuple = ()
    tag: str = ""
    digest: str = None


def task_identity(obj, url, required=False):
    """The L{TaskIdentity} a request body names: its C{filter}, C{tag} and
    C{digest} fields and the id derived from them and C{url}.
    C{required}: the body must name its C{task_id} (a registration does).

    A C{task_id} the body names too must be that id: a client cannot file a
    URL's bytes under another task's id (L{MessageError} naming both).
    """
    filters = obj.get("filter") or ()
    if isinstance(filters, str):
        filters = [f for f in filters.split(",") if f]
    if not isinstance(filters, (list, tuple)) or len(filters) > MAX_FILTERS \
            or not all(isinstance(f, str) and len(f) <= MAX_TAG for f in filters):
        raise MessageError("filter", "filter must be a list of query parameter names")
    tag = obj.get("tag") or ""
    if not isinstance(tag, str) or len(tag) > MAX_TAG:
        raise MessageError("tag", "tag must be a string")
    try:
        digest = content_digest(obj.get("digest"))
    except ValueError as e:
        raise MessageError("digest", str(e))
    derived = derive_task_id(url, filters, tag, digest)
    claimed = obj.get("task_id")
    if claimed is not None or required:
        check_task_id(claimed)
        if claimed != derived:
            raise MessageError("task_id", f"task_id mismatch: {claimed} is not the id of this "
                               f"request ({derived}, from its {_derived_from(digest)})")
    return TaskIdentity(derived, tuple(filters), tag, digest)


def _derived_from(digest):
    return "digest" if digest is not None else "url less filtered parameters and tag"

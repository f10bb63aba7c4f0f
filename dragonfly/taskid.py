"""Task and peer identifiers: how a URL (or a content digest) names one task.

A task id is derived, never chosen: L{derive_task_id} maps what a download
is (its URL less the C{--filter} query parameters, its tag, or a known
content digest) to the one id the supernode computes too, so no client can
file other bytes under another URL's id.
"""
import hashlib
import os
import re
import socket
from urllib.parse import unquote_plus, urlsplit, urlunsplit

_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9:._-]{0,127}\Z")
_CONTENT_DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_OCI_DIGEST_RE = re.compile(r"\A(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z")


def validate_task_id(value):
    """Return C{value} if it is a well-formed task or peer id, else raise ValueError."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"malformed id: {value!r}")
    return value


validate_peer_id = validate_task_id


def is_oci_digest(value):
    return isinstance(value, str) and bool(_OCI_DIGEST_RE.match(value))


def strip_query(url, filters=()):
    """Remove the query parameters named in C{filters} from C{url}.

    The other parameters are kept byte for byte, in their order (names are
    compared after percent-decoding).
    """
    if not filters:
        return url
    parts = urlsplit(url)
    if not parts.query:
        return url
    if isinstance(filters, str):  # "a,b" as given to --filter
        filters = filters.split(",")
    drop = {f.strip() for f in filters if f.strip()}
    kept = [seg for seg in parts.query.split("&")
            if unquote_plus(seg.partition("=")[0]) not in drop]
    return urlunsplit(parts._replace(query="&".join(kept)))


def task_id_for_url(url, filters=(), tag=""):
    """The task id of C{url}: sha256 of the URL without filtered params, plus the tag."""
    key = strip_query(url, filters)
    if tag:
        key += "\0" + tag
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def content_digest(value):
    """C{value} if it is a content digest a task may be named by (C{sha256:<hex>},
    64 lower-case hex digits), None when C{value} is None or empty; ValueError
    otherwise."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _CONTENT_DIGEST_RE.match(value):
        raise ValueError(f"digest must be sha256:<64 lower-case hex digits>, not {value!r}")
    return value


def digest_named(task_id):
    """The content digest a task id is (L{derive_task_id} of a digest), or None."""
    if isinstance(task_id, str) and _CONTENT_DIGEST_RE.match(task_id):
        return task_id
    return None


def derive_task_id(url, filters=(), tag="", digest=None):
    """The id of a task: the content digest itself when one is known (the same
    bytes behind two URLs are one task, as the mirror has always named blobs),
    else L{task_id_for_url} of the URL, filters and tag."""
    digest = content_digest(digest)
    if digest is not None:
        return digest
    return task_id_for_url(url, filters, tag)


def new_peer_id(name=None):
    # The id must start with a letter or digit (see validate_peer_id). With
    # mutual TLS, C{name} is the certificate's first name (the identity rule
    # of dragonfly.tls.peer_id_allowed); else the host name.
    host = re.sub(r"[^A-Za-z0-9.-]", "-", name or socket.gethostname()).lstrip(".-")[:48] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(4).hex()}"

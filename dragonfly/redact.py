"""Keeping secrets out of logs and answers: URLs and headers as they may be shown.

A URL's query string (tokens, ``X-Amz-Signature``), its userinfo
(``user:pass@``) and its fragment are shown as ``<redacted>`` wherever a URL
reaches a log line, an API answer or an error message: L{redact_url} for one
URL, L{redact_text} for free text that may quote URLs, L{redact_headers} for
a header map (the values of C{Authorization}, C{Cookie} and the like). Task
ids are still derived from the real URL; only what is shown changes.
L{userinfo_error} is the one refusal text for a URL that carries credentials.
Imports no role.
"""
import re
from urllib.parse import urlsplit

__all__ = ["REDACTED", "redact_url", "redact_text", "redact_headers", "has_userinfo",
           "userinfo_error", "SECRET_HEADERS"]

REDACTED = "<redacted>"
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-amz-security-token", "x-registry-auth"))
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_NETLOC = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*:)?//([^/?#]*)")


def _as_text(url):
    if isinstance(url, bytes):
        return url.decode("latin-1")
    if url is None:
        return None
    return url if isinstance(url, str) else str(url)


def redact_url(url):
    """C{url} (str or bytes; None stays None) with its userinfo, query and
    fragment each replaced by C{<redacted>}; the scheme, host, port and path
    are kept. Text that does not parse is cut at its first C{?} or C{#} and
    loses anything before an C{@} in its authority."""
    url = _as_text(url)
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_crudely(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    out = (parts.scheme + ":") if parts.scheme else ""
    if netloc or url[len(out):].startswith("//"):
        out += "//" + netloc
    out += parts.path
    if parts.query:
        out += "?" + REDACTED
    elif "?" in url.partition("#")[0]:
        out += "?"
    if parts.fragment:
        out += "#" + REDACTED
    elif "#" in url:
        out += "#"
    return out


def _redact_crudely(text):
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=-1)
    tail = ""
    if cut >= 0:
        text, tail = text[:cut], text[cut] + REDACTED
    m = _NETLOC.match(text)
    if m and "@" in m.group(2):
        host = m.group(2).rpartition("@")[2]
        text = (m.group(1) or "") + "//" + REDACTED + "@" + host + text[m.end():]
    return text + tail


def redact_text(text):
    """C{text} with every URL in it passed through L{redact_url}."""
    text = _as_text(text)
    if not text or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_headers(headers):
    """A copy of a {name: value} map with the values of credential headers redacted."""
    return {k: (REDACTED if str(k).lower() in SECRET_HEADERS else v)
            for k, v in (headers or {}).items()}


def has_userinfo(url):
    """Whether C{url} carries C{user[:password]@} in its authority."""
    url = _as_text(url) or ""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        m = _NETLOC.match(url)
        netloc = m.group(2) if m else ""
    return "@" in netloc


def userinfo_error(url):
    """The refusal for a URL with credentials in it (shown redacted)."""
    return (f"credentials in the URL are not accepted ({redact_url(url)}): "
            "pass them as a header instead, e.g. -H 'Authorization: Basic ...'")

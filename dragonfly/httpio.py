"""What every HTTP surface of the product shares: byte ranges, JSON bodies, error text.

The peer API, the supernode API and the registry mirror all answer with the
helpers here, so a Range header means the same thing on each and a JSON
answer is written one way: L{parse_range} reads one ``Range`` header into an
inclusive window (or None for the whole body, or L{RangeNotSatisfiable} for a
416); L{json_body} sets status and headers and returns the body (Klein
handlers return it), L{write_json} writes and finishes a plain resource's
request, L{error_body} is the house error shape ``{"error": message, ...}``;
L{abort} and L{unregister} end a response or its producer also after the
client left; L{describe} turns an exception or Failure into one short line.
Imports no role.
"""
import json

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet import error as neterr
from twisted.python.failure import Failure

from dragonfly.redact import redact_text

__all__ = ["RangeNotSatisfiable", "parse_range", "content_range", "json_body",
           "error_body", "write_json", "abort", "unregister", "describe"]


class RangeNotSatisfiable(ValueError):
    """A Range the body cannot satisfy: answer 416 with C{Content-Range: bytes */length}."""


def parse_range(value, length):
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range of a C{length}-byte body.

    C{value} is the header as bytes or str (None when absent). Returns
    (first, last), both inclusive, clipped to the body; None to send the
    whole body (no header, a malformed one, another unit, or several ranges
    of which at least one is satisfiable: RFC 9110 lets a server answer a
    multi-range request with the whole body); raises L{RangeNotSatisfiable}
    when no byte of the body is in the range (in any of the ranges).
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    value = value.strip()
    if not value.startswith(b"bytes="):
        return None
    specs = value[6:].split(b",")
    if len(specs) == 1:
        return _one_range(specs[0], length)
    unsatisfiable = 0
    for spec in specs:
        try:
            if _one_range(spec, length) is None:
                return None   # a malformed part: ignore the whole header
        except RangeNotSatisfiable:
            unsatisfiable += 1
    if unsatisfiable == len(specs):
        raise RangeNotSatisfiable("no range overlaps the body")
    return None


#: Parts of a multipart/byteranges answer, at most; more ranges get the whole body.
MAX_PARTS = 16


def parse_ranges(value, length, max_parts=MAX_PARTS):
    """Every range of a ``Range`` header, for a multipart/byteranges answer.

    Returns a list of windows (first, last), inclusive and clipped, in the
    order to send them; None for the whole body (no header, a malformed one,
    another unit, more than C{max_parts} ranges, or ranges that ask for their
    parts out of order); raises L{RangeNotSatisfiable} when no range overlaps
    the body. Unsatisfiable ranges are left out; overlapping or adjacent ones
    are coalesced (RFC 9110 14.6), which is allowed whatever their order, but
    ranges that stay apart must come in ascending order.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    value = value.strip()
    if not value.startswith(b"bytes="):
        return None
    specs = value[6:].split(b",")
    if len(specs) > 16 * max_parts:
        return None       # not worth parsing: the whole body
    windows = []
    for spec in specs:
        try:
            window = _one_range(spec, length)
        except RangeNotSatisfiable:
            continue
        if window is None:
            return None   # a malformed part: ignore the whole header
        windows.append(window)
    if not windows:
        raise RangeNotSatisfiable("no range overlaps the body")
    merged = []
    for first, last in sorted(windows):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    order = [next(i for i, m in enumerate(merged) if m[0] <= w[0] <= m[1]) for w in windows]
    if len(merged) > max_parts or order != sorted(order):
        return None
    return merged


def _one_range(spec, length):
    """The window of one range spec (``a-b``, ``a-``, ``-n``), as L{parse_range}."""
    first, sep, last = spec.partition(b"-")
    first, last = first.strip(), last.strip()
    if not sep or (first and not first.isdigit()) or (last and not last.isdigit()) \
            or not (first or last):
        return None
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or length == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, length - n), length - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= length:
        raise RangeNotSatisfiable("range starts past the end")
    return start, length - 1 if end is None else min(end, length - 1)


def content_range(window, length):
    """The Content-Range value for C{window} (first, last) of C{length} bytes;
    for None, the one a 416 carries (``bytes */length``)."""
    if window is None:
        return b"bytes */%d" % length
    return b"bytes %d-%d/%d" % (window[0], window[1], length)


def json_body(request, status, obj, compact=False):
    """Set C{status} and the JSON headers on C{request}; return C{obj} encoded.

    C{compact} leaves out the blanks after separators (the supernode's
    answers, the bulk of the control traffic, are sent that way).
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj)
    return text.encode("utf-8") + b"\n"


def error_body(request, status, message, compact=False, **extra):
    """The house error answer: C{{"error": message, **extra}} with C{status}
    (URLs quoted in C{message} are shown redacted)."""
    return json_body(request, status, {"error": redact_text(message), **extra}, compact)


def write_json(request, status, obj):
    """Answer C{request} (a plain resource's, not Klein's) with C{obj} and finish it."""
    data = json_body(request, status, obj)
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def unregister(request):
    """Unregister the request's producer, also after the client went away."""
    if request.channel is not None:
        request.unregisterProducer()
    else:
        request.producer = None


def abort(request):
    """Drop the client connection without completing the response."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) if channel is not None else None
    if transport is None:
        return
    close = getattr(transport, "abortConnection", None)
    (close or transport.loseConnection)()


def describe(exc):
    """One short line for an exception or Failure (every reason of a multi-reason one)."""
    if isinstance(exc, Failure):
        exc = exc.value
    if not isinstance(exc, BaseException):
        return str(exc)
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(describe(r) for r in reasons)
    if isinstance(exc, (DeferredTimeoutError, CancelledError)):
        return "timed out"
    if isinstance(exc, neterr.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, neterr.DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(exc, (neterr.TimeoutError, neterr.TCPTimedOutError)):
        return "connection timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

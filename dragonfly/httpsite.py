"""What every HTTP server of the product shares below the resources: the channel and the access log.

The supernode API, the peer API and the registry mirror each serve a Twisted
C{Site}; L{harden_site} gives each the same two things. L{JSONErrorChannel}
answers a request Twisted rejects before any resource sees it (a malformed
C{Content-Length} or C{Transfer-Encoding}, a bad request line or header, too
many or too large headers) with the house JSON error ``{"error": ...}`` and
status 400 instead of Twisted's empty 400. L{redacted_log_formatter} writes
the combined access-log line with the request URI and the Referer passed
through L{dragonfly.redact.redact_url}, so query strings and userinfo never
reach the access log. L{ControlChannel} is the channel of a control API
whose callers wait on every answer (the supernode's). Imports no role.
"""
import json

from twisted.web.http import HTTPChannel, combinedLogFormatter

from dragonfly.redact import redact_url
from dragonfly.runtime.tuning import prioritise

__all__ = ["JSONErrorChannel", "ControlChannel", "redacted_log_formatter", "harden_site",
           "bad_request_bytes"]


def bad_request_bytes(message):
    """A complete HTTP/1.1 400 answer carrying C{{"error": message}}, closing the connection."""
    body = json.dumps({"error": message}).encode("utf-8") + b"\n"
    return (b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: application/json\r\n"
            b"Cache-Control: no-store\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class JSONErrorChannel(HTTPChannel):
    """An HTTPChannel whose own rejections (before a resource runs) are JSON 400s.

    Twisted's channel answers a malformed request head with a bare
    ``400 Bad Request`` and no body; ours says what was wrong in the house
    error shape and then closes the connection as Twisted does.
    """

    _bad_request_reason = None

    def _failChooseTransferDecoder(self):
        # A Content-Length that is not one non-negative integer, or a
        # Transfer-Encoding we cannot decode (Twisted's private hook).
        self._bad_request_reason = "malformed Content-Length or Transfer-Encoding header"
        return HTTPChannel._failChooseTransferDecoder(self)

    def _respondToBadRequestAndDisconnect(self):
        reason = self._bad_request_reason or "malformed request line or headers"
        self._bad_request_reason = None
        self.transport.write(bad_request_bytes(f"bad request: {reason}"))
        self.loseConnection()


class ControlChannel(JSONErrorChannel):
    """A L{JSONErrorChannel} whose connection has the host's higher priority
    (L{dragonfly.runtime.tuning.prioritise}): the supernode's answers are a
    few hundred bytes that a peer's next fetch waits for, and they leave
    through the same uplink as the supernode's piece uploads; with the
    priority they go ahead of them where the host's qdisc has bands."""

    def connectionMade(self):
        prioritise(self.transport)
        JSONErrorChannel.connectionMade(self)


class _Shown:
    """A request as the access log may show it: URI and Referer redacted."""

    def __init__(self, request):
        self._request = request
        self.uri = _as_bytes(redact_url(request.uri))

    def __getattr__(self, name):
        return getattr(self._request, name)

    def getHeader(self, name):
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return _as_bytes(redact_url(value))
        return value


def _as_bytes(text):
    return text.encode("latin-1", "replace") if isinstance(text, str) else text


def redacted_log_formatter(timestamp, request):
    """Twisted's combined log line, with the URI's query and userinfo redacted."""
    return combinedLogFormatter(timestamp, _Shown(request))


def harden_site(site, channel=None):
    """Give C{site} the JSON-error channel (or C{channel}, a subclass of it)
    and the redacting access log; returns C{site}."""
    site.protocol = channel or JSONErrorChannel
    site._logFormatter = redacted_log_formatter
    return site

"""The supernode API's HTTP plumbing: its Site, body caps, error type and request checks.

L{LimitedRequest} (the request factory of L{api_site}) stops storing a body
as soon as it passes the cap, so a handler can refuse it with 413 before
parsing; L{ApiSite} keeps the bulk of the traffic (successful schedule calls)
out of the access log. L{ApiError} is an answer other than 200 that a route
raises; L{check_identity}, L{parse} and L{task_id_of} are the checks every
route shares (mutual TLS identity, message schema, task id). The routes
themselves are L{dragonfly.supernode.api.SupernodeAPI}.
"""
from twisted.internet.defer import CancelledError, FailureGroup
from twisted.web import server

from dragonfly.control.messages import MessageError, check_task_id
from dragonfly.httpsite import ControlChannel, harden_site
from dragonfly.tls import peer_id_allowed, peer_names

__all__ = ["ApiError", "ApiSite", "LimitedRequest", "api_site", "cancelled", "check_identity",
           "parse", "task_id_of", "MAX_BODY"]

MAX_BODY = 1 << 20


class ApiError(Exception):
    """An answer other than 200: C{status} and C{{"error": message, **extra}}."""

    def __init__(self, status, message, headers=None, **extra):
        Exception.__init__(self, message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


class LimitedRequest(server.Request):
    """A Request that stops keeping its body once it passes C{max_body} bytes.

    The connection keeps reading (HTTP framing) but nothing more is stored;
    C{body_too_large} tells the handler to answer 413.
    """

    max_body = MAX_BODY
    body_too_large = False
    _body_seen = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0  # a BytesIO, which we will never fill
        server.Request.gotLength(self, length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        server.Request.handleContentChunk(self, data)


def api_site(api, max_body=MAX_BODY):
    """A Site serving C{api} whose requests cap their bodies at C{max_body}."""

    class _Request(LimitedRequest):
        pass

    _Request.max_body = max_body
    site = ApiSite(api.resource(), parsePOSTFormSubmission=False)
    site.requestFactory = _Request
    site.displayTracebacks = False
    return harden_site(site, ControlChannel)


class ApiSite(server.Site):
    """The supernode API's Site.

    Bodies are JSON, never forms: Twisted's form parsing (a MIME parse of every
    POST's Content-Type) is switched off. Successful schedule calls, the bulk
    of the traffic (every peer, every few pieces), stay out of the access log;
    everything else, and every error, is logged.
    """

    def log(self, request):
        if request.code < 400 and (request.path.endswith(b"/schedule")
                                   or request.path.startswith(b"/api/v1/dashboard")):
            return
        server.Site.log(self, request)


def cancelled(failure):
    """race() reports its cancellation as a FailureGroup: say CancelledError."""
    failure.trap(FailureGroup)
    raise CancelledError()


def check_identity(request, peer_id):
    """With mutual TLS, a peer registers only under an id its certificate
    carries (L{peer_id_allowed}); 403 otherwise. Plain TCP: no check."""
    names = peer_names(getattr(request, "transport", None))
    if names is not None and not peer_id_allowed(peer_id, names):
        raise ApiError(403, f"peer_id {peer_id!r} is not one of this certificate's names "
                       f"({', '.join(names)}) nor starts with one and '-'")


def parse(message, obj):
    """C{message.parse(obj)}; a body that does not follow the schema is a 400."""
    try:
        return message.parse(obj)
    except MessageError as e:
        raise ApiError(400, str(e))


def task_id_of(value):
    try:
        return check_task_id(value)
    except MessageError as e:
        raise ApiError(400, str(e))

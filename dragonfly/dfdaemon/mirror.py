"""The registry mirror: OCI distribution API in front of allowed upstream registries.

L{RegistryMirror} is the facade the daemon serves; it composes the three
rooms of the mirror: L{dragonfly.dfdaemon.routes} (which requests are taken,
where each goes, ``/healthz`` and ``/metrics``), L{dragonfly.dfdaemon.blobs}
(blob GETs through P2P, verified against their digest) and
L{dragonfly.dfdaemon.passthrough} (everything else under ``/v2/``, pushes
too, relayed from the upstream as it is; request bodies streamed up by
L{dragonfly.dfdaemon.upload}, the registry's C{Location} kept on the
mirror by L{dragonfly.dfdaemon.locations}). It runs each request, counts
it in the metrics by kind and status, and writes a L{MirrorError} as JSON
(or drops the connection when the answer has already started).
"""
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from dragonfly.dfdaemon.blobs import BlobSink, Blobs
from dragonfly.dfdaemon.locations import client_location
from dragonfly.dfdaemon.passthrough import Passthrough
from dragonfly.dfdaemon.routes import NAME_RE, Exchange, MirrorError, MirrorResource, Routes
from dragonfly.dfdaemon.routes import write_error
from dragonfly.dfdaemon.upload import body_of
from dragonfly.httpio import abort
from dragonfly.redact import redact_url

__all__ = ["RegistryMirror", "MirrorError", "BlobSink", "NAME_RE"]


class RegistryMirror:
    """The mirror's HTTP side. ``resource()`` is what the listening Site serves.

    @param agent: an C{IAgent} for the upstreams (no redirect following, no
        cookies, no content decoding: bytes pass through as they are).
    @param peer: the blob source, an L{dragonfly.interfaces.IDownloader} (the
        peer node).
    @param upstreams: a L{dragonfly.dfdaemon.upstream.Upstreams}.
    @param metrics: a L{dragonfly.metrics.PeerMetrics}.
    @param health: optional callable returning a dict merged into /healthz.
    """

    log = Logger()

    def __init__(self, reactor, agent, peer, upstreams, metrics,
                 header_timeout=60.0, health=None, check_access=True, runner=None):
        self.metrics = metrics
        self.routes = Routes(upstreams, metrics, health)
        self.passthrough = Passthrough(reactor, agent, header_timeout)
        self.blobs = Blobs(peer, self.passthrough, metrics, check_access, reactor=reactor,
                           runner=runner)

    @property
    def upstreams(self):
        return self.routes.upstreams

    @property
    def peer(self):
        return self.blobs.peer

    @peer.setter
    def peer(self, peer):
        self.blobs.peer = peer

    def resource(self):
        return MirrorResource(self)

    def render(self, request):
        request.defaultContentType = None
        ex = Exchange(request)
        request.notifyFinish().addBoth(lambda _: self._count(ex))
        try:
            coro = self._dispatch(ex)
        except MirrorError as e:
            self._error(request, e)
            return NOT_DONE_YET
        if coro is None:
            return NOT_DONE_YET
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._failed, ex)
        return NOT_DONE_YET

    def _dispatch(self, ex):
        """Route synchronously; return a coroutine for the async part (None if answered)."""
        target = self.routes.dispatch(ex)
        if target is None:
            return None
        if target.digest is not None:
            return self.blobs.get(ex, target)
        url = target.url
        return self.passthrough.relay(
            ex, url, body=body_of(ex.request),
            location=lambda value: client_location(value, url, target.upstream, target.ns))

    def _count(self, ex):
        self.metrics.mirror_requests.labels(kind=ex.kind, code=str(ex.request.code)).inc()

    @staticmethod
    def _error(request, e):
        if request.startedWriting:
            abort(request)
            return
        write_error(request, e)

    def _failed(self, failure, ex):
        if ex.gone or ex.request.finished:
            return None
        if failure.check(MirrorError):
            self._error(ex.request, failure.value)
            return None
        self.log.failure("mirror request {uri} failed", failure,
                         uri=redact_url(ex.request.uri))
        self._error(ex.request, MirrorError(500, "UNKNOWN", "internal error"))
        return None

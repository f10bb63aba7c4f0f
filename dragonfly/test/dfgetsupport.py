"""What the dfget tests share: the payload, a mixin that runs dfget into a temporary
directory, a loopback server and a scripted peer daemon that misbehaves on cue."""
import hashlib
import io
import json
import os

from twisted.internet import reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

DATA = b"dragonfly!" * 100  # 1000 bytes
SHA = hashlib.sha256(DATA).hexdigest()

def _serve(case, resource):
    """Serve C{resource} on an ephemeral loopback port; its base URL."""
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class RunMixin:
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.out = os.path.join(self.dir, "file.bin")
        self.stdout = io.BytesIO()
        self.stderr = io.StringIO()

    def listing(self):
        return sorted(os.listdir(self.dir))

    def check_ok(self, code):
        self.assertEqual((code, self.stderr.getvalue()), (0, ""))

    def check_fails(self, code):
        self.assertNotEqual(code, 0)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("dfget: error: "), lines)
        return lines[0]


class _Scripted(Resource):
    """A scripted peer daemon: C{routes} maps a path (or a prefix ending in /) to
    C{handler(request)}; records what was asked and tracks open requests."""

    isLeaf = True

    def __init__(self, routes):
        Resource.__init__(self)
        self.routes = {"/healthz": lambda r: b'{"status": "ok"}'}
        self.routes.update(routes)
        self.paths = []
        self.open = []

    def render(self, request):
        path = request.path.decode()
        self.paths.append(path)
        handler = self.routes.get(path) or next(
            (h for p, h in self.routes.items() if p.endswith("/") and path.startswith(p)),
            None)
        if handler is None:
            request.setResponseCode(404)
            return b'{"error": "no route"}'
        self.open.append(request)
        request.notifyFinish().addBoth(lambda _: self.open.remove(request))
        return handler(request)

    async def drain(self, timeout=30):
        """Wait for every request to end (the client hung up or was answered)."""
        for r in list(self.open):
            r.channel.transport.loseConnection()
        await _until(lambda: not self.open, timeout)


async def _until(predicate, timeout=60, step=0.02):
    """Poll C{predicate} until true; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        await task.deferLater(reactor, step, lambda: None)


def _ndjson(*objs):
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def _hold(request):
    return NOT_DONE_YET

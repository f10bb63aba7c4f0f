"""Tests for dragonfly.control.http: the supernode calls' POST on a bare Agent."""
import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource

from dragonfly.control.client import SupernodeClient
from dragonfly.control.http import (
    BytesProducer, ControlHTTP, SupernodeEndpoints, make_control_client)
from dragonfly.control.messages import RegisterRequest, ScheduleRequest
from dragonfly.interfaces import PeerInfo
from dragonfly.origin import collect_capped
from dragonfly.test.test_control_client import DATA, PIECE, TASK, URL, real_api

ME = PeerInfo("me-1-00000000", "127.0.0.1", 65000)
SN = ("sn1.test", 8002)


class _Recorder(Resource):
    """Answers every POST with C{code} and a JSON body, keeping what it got."""

    isLeaf = True

    def __init__(self, code=200, headers=()):
        Resource.__init__(self)
        self.code = code
        self.headers = list(headers)
        self.got = []

    def render_POST(self, request):
        self.got.append((request.method, request.uri, request.requestHeaders.copy(),
                         request.content.read()))
        request.setResponseCode(self.code)
        for k, v in self.headers:
            request.setHeader(k, v)
        return json.dumps({"ok": True}).encode()


class _Fallback:
    """A treq-like client recording the calls handed to it."""

    def __init__(self):
        self.calls = []

    def post(self, url, **kw):
        self.calls.append(("post", url, kw))
        return Deferred()

    def get(self, url, **kw):
        self.calls.append(("get", url, kw))
        return Deferred()


class ControlHTTPTests(SynchronousTestCase):

    def client(self, resource, fallback=None):
        self.agent = RequestTraversalAgent(resource)
        return ControlHTTP(self.agent, fallback or _Fallback())

    def answer(self, d):
        self.agent.flush()
        response = self.successResultOf(d)
        body = collect_capped(response, 1 << 20)
        self.agent.flush()
        return response.code, json.loads(self.successResultOf(body))

    def test_json_post(self):
        """The body is the compact JSON text treq sends for json=, with its
        Content-Type and exact Content-Length; the answer is the response's."""
        rec = _Recorder()
        http = self.client(rec)
        obj = {"peer_id": ME.peer_id, "have": [1, 2], "name": "caf\u00e9"}
        code, answer = self.answer(http.post("http://sn1.test:8002/api/v1/tasks/x/schedule",
                                             json=obj, allow_redirects=False, unbuffered=True,
                                             reactor=Clock()))
        self.assertEqual((code, answer), (200, {"ok": True}))
        [(method, uri, headers, body)] = rec.got
        self.assertEqual((method, uri), (b"POST", b"/api/v1/tasks/x/schedule"))
        self.assertEqual(body, json.dumps(obj, separators=(",", ":")).encode("utf-8"))
        self.assertEqual(headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=UTF-8"])
        self.assertEqual(headers.getRawHeaders(b"content-length"), [b"%d" % len(body)])

    def test_redirect_not_followed(self):
        """A redirect is the caller's answer (owner redirects are the
        supernode client's to follow, or not)."""
        rec = _Recorder(307, [(b"location", b"http://elsewhere.test/")])
        http = self.client(rec)
        code, _ = self.answer(http.post("http://sn1.test:8002/api/v1/tasks", json={}))
        self.assertEqual(code, 307)
        self.assertEqual(len(rec.got), 1)

    def test_other_uses_go_to_treq(self):
        """What the supernode client never asks for (redirects, buffering,
        headers, a non-ASCII name, bytes) and other methods go to the treq
        client, untouched; the agent is not used."""
        fallback = _Fallback()
        rec = _Recorder()
        http = self.client(rec, fallback)
        http.post("http://sn1.test/", json={}, allow_redirects=True)
        http.post("http://sn1.test/", json={}, unbuffered=False)
        http.post("http://sn1.test/", json={}, headers={"X": "1"})
        http.post("http://sn\u00fc.test/", json={})
        http.post(b"http://sn1.test/", json={})
        http.get("http://sn1.test/")
        self.agent.flush()
        self.assertEqual(rec.got, [])
        self.assertEqual([c[0] for c in fallback.calls], ["post"] * 5 + ["get"])
        self.assertEqual(fallback.calls[3][1], "http://sn\u00fc.test/")

    def test_bytes_producer(self):
        """The body is written whole at once, its length known up front."""
        written = []

        class Consumer:
            write = written.append
        p = BytesProducer(b"abc")
        self.assertEqual(p.length, 3)
        self.successResultOf(p.startProducing(Consumer()))
        self.assertEqual(written, [b"abc"])

    def test_make_control_client(self):
        """make_control_client: a ControlHTTP whose fallback is treq on the same
        agent, which takes its endpoints from SupernodeEndpoints."""
        from treq.client import HTTPClient
        http = make_control_client(Clock())
        self.assertIsInstance(http, ControlHTTP)
        self.assertIsInstance(http._fallback, HTTPClient)
        self.assertIs(http._fallback._agent, http._agent)
        self.assertIsInstance(http._agent._endpointFactory, SupernodeEndpoints)


class _Policy:
    """An IPolicyForHTTPS handing out a new creator per call, counting them."""

    def __init__(self):
        self.asked = []

    def creatorForNetloc(self, host, port):
        self.asked.append((host, port))
        return object()


class SupernodeEndpointsTests(SynchronousTestCase):

    def test_plain_kept(self):
        """A plain endpoint is made once per host and port, to that host and port."""
        eps = SupernodeEndpoints(Clock(), _Policy())
        one = eps.endpointForURI(URI.fromBytes(b"http://sn1.test:8002/api/v1/heartbeat"))
        self.assertIs(eps.endpointForURI(URI.fromBytes(b"http://sn1.test:8002/other")), one)
        other = eps.endpointForURI(URI.fromBytes(b"http://sn1.test:8003/api"))
        self.assertIsNot(other, one)
        self.assertEqual((one._hostText, one._port), ("sn1.test", 8002))
        v6 = eps.endpointForURI(URI.fromBytes(b"http://[::1]:8002/api"))
        self.assertEqual((v6._hostText, v6._port), ("::1", 8002))

    def test_tls_fresh(self):
        """An HTTPS endpoint is made per request, with the creator the policy
        gives at that moment (certificates reload)."""
        policy = _Policy()
        eps = SupernodeEndpoints(Clock(), policy)
        uri = URI.fromBytes(b"https://sn1.test:8002/api/v1/heartbeat")
        first, second = eps.endpointForURI(uri), eps.endpointForURI(uri)
        self.assertIsNot(first, second)
        self.assertEqual(policy.asked, [(b"sn1.test", 8002)] * 2)

    def test_other_schemes(self):
        eps = SupernodeEndpoints(Clock(), _Policy())
        self.assertRaises(SchemeNotSupported, eps.endpointForURI,
                          URI.fromBytes(b"ftp://sn1.test:21/x"))


class RealSupernodeTests(SynchronousTestCase):
    """The supernode client over ControlHTTP against the real API resource."""

    def setUp(self):
        self.clock = Clock()
        api, _ = real_api(self, self.clock)
        self.agent = RequestTraversalAgent(api.resource())
        http = ControlHTTP(self.agent, StubTreq(api.resource()))
        self.client = SupernodeClient(self.clock, http, [SN])

    def run_(self, coro):
        d = Deferred.fromCoroutine(coro)
        for _ in range(5):
            self.agent.flush()
        return self.successResultOf(d)

    def test_register_and_schedule(self):
        """Registration and a schedule call go through: every piece assigned
        from the seed, with its size."""
        addr, answer = self.run_(self.client.register(RegisterRequest(TASK, URL, {}, ME)))
        self.assertEqual((addr, answer.length, answer.piece_count), (SN, len(DATA), 3))
        got = self.run_(self.client.schedule(addr, TASK, ScheduleRequest(ME.peer_id, want=5)))
        self.assertEqual(sorted((a.index, a.size) for a in got.assignments),
                         [(0, PIECE), (1, PIECE), (2, 10)])

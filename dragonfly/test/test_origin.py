"""Tests for dragonfly.origin: the streaming origin client."""
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.python.failure import Failure

from dragonfly.origin import OriginClient, OriginError, OriginResponse, clean_headers
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.fakeorigin import FakeOrigin

DATA = bytes(range(256)) * 40  # 10240 bytes
URL = "http://origin.test/f"


class Collect:
    """A consumer that keeps everything; optionally returns a pending Deferred."""

    def __init__(self, block=False):
        self.data = []
        self.block = block
        self.pending = []

    def write(self, data):
        self.data.append(data)
        if self.block:
            d = Deferred()
            self.pending.append(d)
            return d
        return None

    def value(self):
        return b"".join(self.data)


class OriginClientTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.origin = FakeOrigin()
        self.origin.add("/f", DATA, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        self.client = OriginClient(self.clock, StubTreq(self.origin))

    def get(self, *a, **kw):
        return self.successResultOf(self.client.get(*a, **kw))

    def test_provides_origin(self):
        """The origin client is the L{IOrigin} the CDN and the peer fetch through."""
        from zope.interface.verify import verifyObject

        from dragonfly.interfaces import IOrigin
        self.assertTrue(verifyObject(IOrigin, self.client))

    def test_streams_whole_body(self):
        """When the origin answers 200, the response carries length and
        validators and deliver() streams the exact bytes."""
        r = self.get(URL, {})
        self.assertEqual((r.status, r.offset, r.length), (200, 0, len(DATA)))
        self.assertEqual(r.etag, '"v1"')
        c = Collect()
        self.assertEqual(self.successResultOf(r.deliver(c)), len(DATA))
        self.assertEqual(c.value(), DATA)

    def test_error_status(self):
        """When the origin answers 404, get() fails with OriginError(404)."""
        f = self.failureResultOf(self.client.get("http://origin.test/missing", {}), OriginError)
        self.assertEqual(f.value.status, 404)
        self.assertFalse(f.value.retryable)
        self.origin.status["/boom"] = 503
        f = self.failureResultOf(self.client.get("http://origin.test/boom", {}), OriginError)
        self.assertEqual(f.value.status, 503)
        self.assertTrue(f.value.retryable)

    def test_range_resume(self):
        """When asked for an offset, a Range request is sent and a 206 starts
        the body at that offset, with the whole file's length."""
        r = self.get(URL, {}, offset=4096, etag='"v1"')
        self.assertEqual((r.status, r.offset, r.length, r.body_length), (206, 4096, len(DATA), len(DATA) - 4096))
        headers = self.origin.gets("/f")[-1][2]
        self.assertEqual(headers["range"], "bytes=4096-")
        self.assertEqual(headers["if-range"], '"v1"')
        c = Collect()
        self.successResultOf(r.deliver(c))
        self.assertEqual(c.value(), DATA[4096:])

    def test_bounded_range(self):
        """With C{end}, the Range is bounded (from byte 0 too, with If-Range);
        a 206 of exactly that window is taken; an end past the file is clipped
        by the origin and taken too."""
        r = self.get(URL, {}, offset=0, etag='"v1"', end=4095)
        self.assertEqual((r.status, r.offset, r.length, r.body_length), (206, 0, len(DATA), 4096))
        headers = self.origin.gets("/f")[-1][2]
        self.assertEqual((headers["range"], headers["if-range"]), ("bytes=0-4095", '"v1"'))
        self.assertNotIn("if-none-match", headers)
        c = Collect()
        self.successResultOf(r.deliver(c))
        self.assertEqual(c.value(), DATA[:4096])
        r = self.get(URL, {}, offset=4096, end=len(DATA) + 10_000)
        self.assertEqual((r.status, r.offset, r.body_length), (206, 4096, len(DATA) - 4096))
        r.discard()

    def test_bounded_range_answered_longer(self):
        """A 206 that runs past the bounded range asked for is refused."""
        self.origin.open_ranges.add("/f")
        f = self.failureResultOf(self.client.get(URL, {}, offset=10, end=19), OriginError)
        self.assertEqual(f.value.status, 206)

    def test_range_ignored(self):
        """When the origin ignores Range and answers 200, the body starts at 0."""
        self.origin.no_range.add("/f")
        r = self.get(URL, {}, offset=4096)
        self.assertEqual((r.status, r.offset), (200, 0))
        c = Collect()
        self.successResultOf(r.deliver(c))
        self.assertEqual(c.value(), DATA)

    def test_weak_etag_not_used_for_if_range(self):
        """When the ETag is weak, If-Range uses Last-Modified instead."""
        self.get(URL, {}, offset=10, etag='W/"x"', last_modified="lm").discard()
        self.assertEqual(self.origin.gets("/f")[-1][2]["if-range"], "lm")

    def test_not_modified(self):
        """When the validators still match, the origin's 304 comes back as status 304."""
        r = self.get(URL, {}, etag='"v1"')
        self.assertEqual(r.status, 304)
        self.assertEqual(self.origin.gets("/f")[-1][2]["if-none-match"], '"v1"')
        r = self.get(URL, {}, last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        self.assertEqual(r.status, 304)

    def test_modified(self):
        """When the validators do not match, a full 200 comes back."""
        r = self.get(URL, {}, etag='"old"')
        self.assertEqual((r.status, r.length, r.etag), (200, len(DATA), '"v1"'))
        r.discard()

    def test_redirect_and_headers(self):
        """When the origin redirects, the client follows it, passing the
        user's headers (Authorization) along on the same origin."""
        self.origin.redirects["/old"] = "http://origin.test/f"
        r = self.get("http://origin.test/old", {"Authorization": "Bearer t", "X-Trace": "1"})
        self.assertEqual((r.status, r.length), (200, len(DATA)))
        r.discard()
        method, path, headers = self.origin.gets("/f")[-1]
        self.assertEqual(headers["authorization"], "Bearer t")
        self.assertEqual(headers["x-trace"], "1")
        self.assertTrue(headers["accept-encoding"].startswith("identity"))

    def test_clean_headers(self):
        """Hop-by-hop, range and conditional headers are dropped; CR/LF injection is refused."""
        self.assertEqual(clean_headers({"Range": "bytes=0-1", "Host": "x", "Authorization": "a",
                                        "If-None-Match": "e", "Connection": "close"}),
                         {"Authorization": "a"})
        self.assertRaises(ValueError, clean_headers, {"X": "a\r\nInjected: 1"})
        self.assertRaises(ValueError, clean_headers, {"Bad Name": "a"})
        self.assertRaises(ValueError, clean_headers, {"X": 5})

    def test_unsupported_scheme(self):
        """Only http and https URLs are fetched."""
        f = self.failureResultOf(self.client.get("file:///etc/passwd", {}), OriginError)
        self.assertIn("http", f.value.message)
        self.assertEqual(self.origin.requests, [])

    def test_broken_body(self):
        """When the connection drops mid-body, deliver() fails with a
        retryable OriginError after handing over the bytes that arrived."""
        self.origin.breaks["/f"] = [3000]
        r = self.get(URL, {})
        c = Collect()
        f = self.failureResultOf(r.deliver(c), OriginError)
        self.assertIsNone(f.value.status)
        self.assertTrue(f.value.retryable)
        self.assertEqual(c.value(), DATA[:3000])

    def test_no_content_length(self):
        """When the origin sends no Content-Length, length is None and the
        body is still delivered whole."""
        self.origin.chunked.add("/f")
        r = self.get(URL, {})
        self.assertIsNone(r.length)
        c = Collect()
        self.successResultOf(r.deliver(c))
        self.assertEqual(c.value(), DATA)

    def test_connect_timeout(self):
        """When the origin does not answer within connect_timeout, get() fails."""
        client = OriginClient(self.clock, _HangingClient(), connect_timeout=5)
        d = client.get(URL, {})
        self.assertNoResult(d)
        self.clock.advance(5)
        f = self.failureResultOf(d, OriginError)
        self.assertIsNone(f.value.status)


class _HangingClient:
    def get(self, url, **kw):
        return Deferred()


class FakeResponse:
    def __init__(self):
        self.transport = StringTransport()
        self.protocol = None

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class BodyBackPressureTests(SynchronousTestCase):
    def make(self, length=None, limiter=None, idle=None):
        self.clock = Clock()
        self.fake = FakeResponse()
        return OriginResponse(self.fake, 200, 0, length, length, None, None, self.clock,
                              limiter, idle)

    def test_pauses_while_consumer_busy(self):
        """When the consumer's write returns a pending Deferred, the transport
        is paused until it fires; chunks that still arrive are queued, in order."""
        r = self.make(length=6)
        c = Collect(block=True)
        d = r.deliver(c)
        p = self.fake.protocol
        p.dataReceived(b"ab")
        self.assertEqual(self.fake.transport.producerState, "paused")
        p.dataReceived(b"cd")
        p.dataReceived(b"ef")
        self.assertEqual(c.data, [b"ab"])
        p.connectionLost(Failure(ResponseDone()))
        self.assertNoResult(d)
        c.pending[0].callback(None)
        self.assertEqual(c.data, [b"ab", b"cd"])
        c.pending[1].callback(None)
        c.pending[2].callback(None)
        self.assertEqual(self.successResultOf(d), 6)
        self.assertEqual(c.value(), b"abcdef")

    def test_resumes_after_write(self):
        """When the pending write finishes, the transport produces again."""
        r = self.make()
        c = Collect(block=True)
        r.deliver(c)
        self.fake.protocol.dataReceived(b"x")
        self.assertEqual(self.fake.transport.producerState, "paused")
        c.pending[0].callback(None)
        self.assertEqual(self.fake.transport.producerState, "producing")

    def test_consumer_error_aborts(self):
        """When a consumer write fails, the connection is dropped and
        deliver() fails with that error."""
        r = self.make()
        c = Collect(block=True)
        d = r.deliver(c)
        self.fake.protocol.dataReceived(b"x")
        c.pending[0].errback(OSError("disk full"))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.fake.transport.producerState, "stopped")

    def test_short_body(self):
        """When the body ends before Content-Length bytes, deliver() fails."""
        r = self.make(length=10)
        d = r.deliver(Collect())
        self.fake.protocol.dataReceived(b"12345")
        self.fake.protocol.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(d, OriginError)

    def test_rate_limit(self):
        """With a limiter, the transport pauses until the bucket allows more."""
        clock = Clock()
        bucket = TokenBucket(clock, rate=1000, burst=1000)
        self.fake = FakeResponse()
        r = OriginResponse(self.fake, 200, 0, None, None, None, None, clock, bucket, None)
        c = Collect()
        r.deliver(c)
        self.fake.protocol.dataReceived(b"x" * 3000)
        self.assertEqual(self.fake.transport.producerState, "paused")
        clock.advance(1.9)
        self.assertEqual(self.fake.transport.producerState, "paused")
        clock.advance(0.2)
        self.assertEqual(self.fake.transport.producerState, "producing")

    def test_idle_timeout(self):
        """When the origin sends nothing for idle_timeout seconds, the
        connection is dropped and deliver() fails with a retryable error."""
        r = self.make(idle=30)
        d = r.deliver(Collect())
        self.clock.advance(20)
        self.fake.protocol.dataReceived(b"x")
        self.clock.advance(20)
        self.assertNoResult(d)
        self.clock.advance(10)
        f = self.failureResultOf(d, OriginError)
        self.assertTrue(f.value.retryable)
        self.assertEqual(self.fake.transport.producerState, "stopped")

    def test_no_idle_timeout_while_consumer_busy(self):
        """While we ourselves hold the origin paused, the idle timer does not run."""
        r = self.make(idle=30)
        c = Collect(block=True)
        d = r.deliver(c)
        self.fake.protocol.dataReceived(b"x")
        self.clock.advance(100)
        self.assertNoResult(d)
        c.pending[0].callback(None)
        self.clock.advance(31)
        self.failureResultOf(d, OriginError)

    def test_cancel(self):
        """Cancelling deliver() drops the connection."""
        r = self.make()
        d = r.deliver(Collect())
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.fake.transport.producerState, "stopped")

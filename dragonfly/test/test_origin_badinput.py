"""Tests for dragonfly.origin on bad input: IPv6 literals, credentials in the
URL, a body that breaks off."""
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.origin import BodyBroken, OriginClient, OriginError, request_url
from dragonfly.test.fakeorigin import FakeOrigin
from dragonfly.test.test_origin import DATA, Collect


class _RecordingAgent:
    """An IAgent that records the URIs it is asked for and never answers."""

    def __init__(self):
        self.uris = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.uris.append(uri)
        return Deferred()


class IPv6Tests(SynchronousTestCase):
    def test_request_url(self):
        """An IPv6-literal URL reaches the agent as the same bytes (treq's
        hyperlink would otherwise IDNA-encode the host and fail)."""
        agent = _RecordingAgent()
        client = OriginClient(Clock(), HTTPClient(agent))
        client.get("http://[::1]:8080/a/f.bin?x=1", {})
        client.get("http://[2001:db8::7]/f", {})
        self.assertEqual(agent.uris, [b"http://[::1]:8080/a/f.bin?x=1", b"http://[2001:db8::7]/f"])

    def test_plain_hosts_untouched(self):
        """Host names and IPv4 addresses are passed through as strings."""
        self.assertEqual(request_url("http://h.test/f"), "http://h.test/f")
        self.assertEqual(request_url("http://127.0.0.1:80/f"), "http://127.0.0.1:80/f")

    def test_bad_literal(self):
        """A malformed IPv6 literal is an OriginError, not a crash."""
        f = self.failureResultOf(OriginClient(Clock(), HTTPClient(_RecordingAgent())).get(
            "http://[::1/f?token=s3cret", {}), OriginError)
        self.assertNotIn("s3cret", str(f.value))

    def test_fetch_ipv6(self):
        """A whole download from an IPv6-literal origin works."""
        origin = FakeOrigin()
        origin.add("/f", DATA)
        r = self.successResultOf(OriginClient(Clock(), StubTreq(origin)).get("http://[::1]:81/f"))
        c = Collect()
        self.successResultOf(r.deliver(c))
        self.assertEqual(c.value(), DATA)


class UserinfoTests(SynchronousTestCase):
    def test_refused_without_request(self):
        """A URL with userinfo fails at once with a non-retryable error that
        names the header to use; nothing is sent."""
        agent = _RecordingAgent()
        f = self.failureResultOf(OriginClient(Clock(), HTTPClient(agent)).get(
            "http://user:hunter2@h.test/f", {}), OriginError)
        self.assertFalse(f.value.retryable)
        self.assertIn("Authorization", str(f.value))
        self.assertNotIn("hunter2", str(f.value))
        self.assertEqual(agent.uris, [])


class BrokenBodyTests(SynchronousTestCase):
    def test_truncated_body(self):
        """A body that ends before its Content-Length fails with BodyBroken
        (an OriginError with no status, retryable)."""
        origin = FakeOrigin()
        origin.add("/f", DATA)
        origin.breaks["/f"] = [100]
        r = self.successResultOf(OriginClient(Clock(), StubTreq(origin)).get("http://h.test/f"))
        f = self.failureResultOf(r.deliver(Collect()), BodyBroken)
        self.assertIsNone(f.value.status)
        self.assertTrue(f.value.retryable)

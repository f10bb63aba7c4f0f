"""Tests for dragonfly.httpsite: JSON 400s from the channel, a redacting access log."""
import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from dragonfly.httpsite import JSONErrorChannel, harden_site, redacted_log_formatter


class _Hello(Resource):
    isLeaf = True

    def render_POST(self, request):
        return b"hello"

    render_GET = render_POST


def exchange(site, data):
    """Feed C{data} to a fresh channel of C{site}; (bytes written, connection closing?)."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    written = transport.value()
    closing = transport.disconnecting
    channel.connectionLost(None)
    return written, closing


def json_answer(test, written):
    """The status line and JSON body of a raw HTTP answer."""
    head, _, body = written.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(l.lower().split(b": ", 1) for l in lines[1:])
    test.assertEqual(headers[b"content-type"], b"application/json")
    test.assertEqual(int(headers[b"content-length"]), len(body))
    return lines[0], json.loads(body)


def assert_json_bad_request(test, site):
    """A malformed Content-Length to C{site} gets a JSON 400 and the connection closes."""
    for value in (b"abc", b"-1", b"1x", b"5, 6"):
        written, closing = exchange(
            site, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + value + b"\r\n\r\n")
        status, body = json_answer(test, written)
        test.assertEqual(status, b"HTTP/1.1 400 Bad Request")
        test.assertIn("Content-Length", body["error"])
        test.assertTrue(closing)


class ChannelTests(SynchronousTestCase):
    def site(self):
        return harden_site(Site(_Hello()))

    def test_malformed_content_length(self):
        """When a request's Content-Length is not one non-negative integer,
        the answer is a 400 with a JSON error naming the header."""
        assert_json_bad_request(self, self.site())

    def test_malformed_request_line(self):
        """A request line or header Twisted cannot parse gets a JSON 400 too."""
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"):
            written, closing = exchange(self.site(), raw)
            status, body = json_answer(self, written)
            self.assertEqual(status, b"HTTP/1.1 400 Bad Request")
            self.assertIn("malformed request", body["error"])
            self.assertTrue(closing)

    def test_good_requests_unchanged(self):
        """A well-formed request is served as before."""
        written, _ = exchange(self.site(), b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(written.endswith(b"hello"))

    def test_harden_site(self):
        """harden_site installs the channel (or a given subclass) and the formatter."""
        site = self.site()
        self.assertIs(site.protocol, JSONErrorChannel)

        class Sub(JSONErrorChannel):
            pass
        self.assertIs(harden_site(Site(_Hello()), Sub).protocol, Sub)


class AccessLogTests(SynchronousTestCase):
    def test_uri_and_referer_redacted(self):
        """The access-log line shows neither the query string nor userinfo of
        the URI or the Referer; the rest of the combined format stays."""
        request = DummyRequest([b"f"])
        request.uri = b"http://user:pw@h.test/f?token=s3cret"
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 5
        request.requestHeaders.setRawHeaders(b"referer", [b"http://h.test/?sig=abc"])
        request.requestHeaders.setRawHeaders(b"user-agent", [b"ua"])
        line = redacted_log_formatter("[ts]", request)
        self.assertNotIn("s3cret", line)
        self.assertNotIn("pw", line)
        self.assertNotIn("sig=abc", line)
        self.assertIn('"GET http://<redacted>@h.test/f?<redacted> HTTP/1.1" 200 5', line)
        self.assertIn('"http://h.test/?<redacted>" "ua"', line)


class ControlChannelTests(SynchronousTestCase):
    def test_prioritised(self):
        """When a ControlChannel's connection is made, its socket gets the
        host's higher priority, and it still answers as its parent."""
        import socket

        from dragonfly.httpsite import ControlChannel
        from dragonfly.runtime.tuning import HIGH_PRIORITY
        if not hasattr(socket, "SO_PRIORITY"):
            raise self.skipTest("no SO_PRIORITY here")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)

        class SocketTransport(StringTransport):
            def getHandle(self):
                return sock
        site = harden_site(Site(_Hello()), ControlChannel)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = SocketTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, None)   # (its idle timer)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY), HIGH_PRIORITY)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_supernode_api(self):
        """The supernode's API site uses the ControlChannel."""
        from dragonfly.httpsite import ControlChannel
        from dragonfly.supernode.api import api_site

        class Api:
            def resource(self):
                return _Hello()
        self.assertIs(api_site(Api()).protocol, ControlChannel)

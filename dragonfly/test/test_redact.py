"""Tests for dragonfly.redact: URLs, free text and headers as they may be shown."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.redact import (
    REDACTED, has_userinfo, redact_headers, redact_text, redact_url, userinfo_error)


class RedactURLTests(SynchronousTestCase):
    def test_query(self):
        """A query string is replaced as a whole; scheme, host, port and path stay."""
        self.assertEqual(redact_url("https://h.test:8443/a/b?token=s3cret&x=1"),
                         "https://h.test:8443/a/b?<redacted>")
        self.assertEqual(redact_url("https://bucket.s3.test/k?X-Amz-Signature=abc"),
                         "https://bucket.s3.test/k?<redacted>")

    def test_userinfo(self):
        """user:pass@ (and a bare user@) becomes <redacted>@; the host stays."""
        self.assertEqual(redact_url("http://user:pass@h.test/f"), "http://<redacted>@h.test/f")
        self.assertEqual(redact_url("http://user@h.test:81/f"), "http://<redacted>@h.test:81/f")
        self.assertEqual(redact_url("http://a@b@h.test/f"), "http://<redacted>@h.test/f")

    def test_fragment(self):
        """A fragment is redacted too (tokens travel there as well)."""
        self.assertEqual(redact_url("http://h.test/f#access_token=x"), "http://h.test/f#<redacted>")
        self.assertEqual(redact_url("http://u:p@h.test/f?q=1#frag"),
                         "http://<redacted>@h.test/f?<redacted>#<redacted>")

    def test_nothing_secret(self):
        """A URL with nothing secret in it is shown unchanged."""
        for url in ("http://h.test/f", "https://h.test:8080/a/b.tar.gz", "http://h.test/",
                    "http://[::1]:8080/f", "http://h.test/f?", "http://h.test/f#"):
            self.assertEqual(redact_url(url), url)

    def test_ipv6_host(self):
        """IPv6 literal hosts keep their brackets and port."""
        self.assertEqual(redact_url("http://[::1]:8080/f?sig=1"), "http://[::1]:8080/f?<redacted>")
        self.assertEqual(redact_url("http://u:p@[2001:db8::1]/f"),
                         "http://<redacted>@[2001:db8::1]/f")

    def test_other_schemes(self):
        """Non-http schemes and a bare path with a query are redacted alike."""
        self.assertEqual(redact_url("ftp://u:p@h.test/x"), "ftp://<redacted>@h.test/x")
        self.assertEqual(redact_url("s3://b/k?sig=1"), "s3://b/k?<redacted>")
        self.assertEqual(redact_url("/v2/x/blobs/uploads?token=1"), "/v2/x/blobs/uploads?<redacted>")

    def test_garbage(self):
        """Text that does not parse as a URL still loses its query and userinfo;
        bytes are accepted, None stays None, other objects are shown as text."""
        self.assertEqual(redact_url("http://u:p@[::1/x?y=1"), "http://<redacted>@[::1/x?<redacted>")
        self.assertEqual(redact_url("not a url ?secret"), "not a url ?<redacted>")
        self.assertEqual(redact_url(b"http://h.test/x?q=1"), "http://h.test/x?<redacted>")
        self.assertIsNone(redact_url(None))
        self.assertEqual(redact_url(""), "")
        self.assertEqual(redact_url(42), "42")
        self.assertNotIn("secret", redact_url("http://h.test:notaport/x?secret"))


class RedactTextTests(SynchronousTestCase):
    def test_urls_in_text(self):
        """Every URL quoted in a message is redacted; the rest is kept."""
        text = "GET 'http://u:pw@h.test/x?t=1' failed; tried \"https://h2.test/y?z=2\" too"
        self.assertEqual(redact_text(text), "GET 'http://<redacted>@h.test/x?<redacted>' failed; "
                                            "tried \"https://h2.test/y?<redacted>\" too")

    def test_plain_text(self):
        """Text without URLs (or None) comes back unchanged."""
        self.assertEqual(redact_text("origin answered 404"), "origin answered 404")
        self.assertIsNone(redact_text(None))


class RedactHeadersTests(SynchronousTestCase):
    def test_credentials(self):
        """Authorization, Proxy-Authorization and Cookie values are hidden,
        whatever their case; other headers are kept."""
        shown = redact_headers({"Authorization": "Bearer x", "cookie": "a=b",
                                "Proxy-Authorization": "Basic y", "Accept": "*/*"})
        self.assertEqual(shown, {"Authorization": REDACTED, "cookie": REDACTED,
                                 "Proxy-Authorization": REDACTED, "Accept": "*/*"})
        self.assertEqual(redact_headers(None), {})


class UserinfoTests(SynchronousTestCase):
    def test_has_userinfo(self):
        """Userinfo is found in the authority only (not an @ in the path or query)."""
        self.assertTrue(has_userinfo("http://u:p@h.test/"))
        self.assertTrue(has_userinfo("http://u@[::1]:80/"))
        self.assertTrue(has_userinfo("http://u:p@[::1/"))
        self.assertFalse(has_userinfo("http://h.test/@x?a=b@c"))
        self.assertFalse(has_userinfo("http://[::1]:80/"))
        self.assertFalse(has_userinfo(None))

    def test_error_text(self):
        """The refusal names the remedy and never the password."""
        text = userinfo_error("http://u:hunter2@h.test/f")
        self.assertIn("-H 'Authorization: ", text)
        self.assertNotIn("hunter2", text)
        self.assertIn("http://<redacted>@h.test/f", text)

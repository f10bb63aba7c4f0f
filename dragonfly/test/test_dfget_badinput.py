"""dfget on bad input: credentials in the URL, IPv6 literals, secrets in its output."""
import io

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import cli
from dragonfly.dfget.options import OptionsError, error_line, parse
from dragonfly.taskid import task_id_for_url


class UserinfoTests(SynchronousTestCase):
    def test_refused_before_anything_is_sent(self):
        """A URL with user:pass@ is a usage error: dfget exits 2 with one line
        telling the user to pass -H 'Authorization: ...', without contacting
        any daemon, and the password is not printed."""
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["http://user:hunter2@h.test/f", "--daemon", "http://127.0.0.1:1"],
                        stdout=out, stderr=err, embedded=lambda *a: self.fail("started"))
        self.assertEqual(code, 2)
        self.assertIn("-H 'Authorization: ", err.getvalue())
        self.assertNotIn("hunter2", err.getvalue())

    def test_parse(self):
        """parse() raises OptionsError for userinfo, with or without a password."""
        for url in ("http://u:p@h.test/f", "http://u@h.test/f", "https://u:p@[::1]:8/f"):
            self.assertRaises(OptionsError, parse, [url])


class IPv6Tests(SynchronousTestCase):
    def test_ipv6_literal(self):
        """An IPv6-literal URL parses; its task id is that of the URL as given."""
        url = "http://[::1]:8080/f.bin?x=1"
        o = parse([url])
        self.assertEqual(o["task_id"], task_id_for_url(url))

    def test_filter_keeps_the_literal(self):
        """--filter drops its parameters from an IPv6-literal URL and keeps the
        bracketed host and port as they were."""
        o = parse(["http://[::1]:8080/f?sig=1&x=2", "--filter", "sig"])
        self.assertEqual(o["task_id"], task_id_for_url("http://[::1]:8080/f?x=2"))

    def test_malformed(self):
        """A malformed literal or port is a usage error, not a crash."""
        for url in ("http://[::1/f", "http://[::1]:port/f", "http://h.test:70000/f", "http:///f"):
            self.assertRaises(OptionsError, parse, [url])


class RedactionTests(SynchronousTestCase):
    def test_error_line(self):
        """The error line shows URL query strings as <redacted>."""
        line = error_line("origin answered 403 for http://h.test/f?X-Amz-Signature=abc")
        self.assertEqual(line, "dfget: error: origin answered 403 for http://h.test/f?<redacted>\n")

    def test_verbose_log(self):
        """-v lines show URL query strings as <redacted>."""
        err = io.StringIO()
        cli._logger(err)("asking for http://h.test/f?token=s3cret")
        self.assertIn("http://h.test/f?<redacted>", err.getvalue())
        self.assertNotIn("s3cret", err.getvalue())

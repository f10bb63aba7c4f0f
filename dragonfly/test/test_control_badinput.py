"""control.fields.check_url on bad input: credentials in the URL, IPv6 literals."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control.fields import MessageError, check_url
from dragonfly.control.messages import TaskInfo
from dragonfly.control.preheat import PreheatStatus


class CheckURLTests(SynchronousTestCase):
    def test_ipv6(self):
        """IPv6-literal origins are accepted, with or without a port."""
        for url in ("http://[::1]:8080/f", "https://[2001:db8::1]/f?x=1"):
            self.assertEqual(check_url(url), url)

    def test_bad_ipv6(self):
        """A malformed literal is a MessageError for the url field."""
        for url in ("http://[::1/f", "http://[::1]:x/f"):
            e = self.assertRaises(MessageError, check_url, url)
            self.assertEqual(e.field, "url")

    def test_userinfo(self):
        """userinfo is refused, naming the header to use, not echoing the password."""
        e = self.assertRaises(MessageError, check_url, "http://u:hunter2@h.test/f")
        self.assertIn("Authorization", str(e))
        self.assertNotIn("hunter2", str(e))


class AnswerRedactionTests(SynchronousTestCase):
    def test_task_info(self):
        """TaskInfo answers show the URL and any URL in the error redacted."""
        out = TaskInfo("t" * 64, "http://h.test/f?token=1",
                       error="fetch of http://h.test/f?token=1 broke").to_json()
        self.assertEqual(out["url"], "http://h.test/f?<redacted>")
        self.assertEqual(out["error"], "fetch of http://h.test/f?<redacted> broke")

    def test_preheat_status(self):
        """PreheatStatus answers (and each blob task of an image) show URLs redacted;
        the redacted answer still parses."""
        s = PreheatStatus("job0", "running", "image", "https://r.test/v2/a/manifests/1?t=1", 1.0,
                          tasks=[{"task_id": "x", "url": "https://r.test/v2/a/blobs/x?t=2"}])
        out = s.to_json()
        self.assertEqual(out["url"], "https://r.test/v2/a/manifests/1?<redacted>")
        self.assertEqual(out["tasks"][0]["url"], "https://r.test/v2/a/blobs/x?<redacted>")
        self.assertEqual(s.tasks[0]["url"], "https://r.test/v2/a/blobs/x?t=2")
        self.assertEqual(PreheatStatus.parse(out).url, out["url"])

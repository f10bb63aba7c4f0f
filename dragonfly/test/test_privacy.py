"""Tests of dragonfly.privacy: which requests make a task private, and the
decision table for the origin's answer to a caller's own request."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.privacy import FetchedBy, judge, omits_checked


class OmitsCheckedTests(SynchronousTestCase):

    def test_headers(self):
        """Credential headers, and any header outside the harmless list, make a
        task private; harmless ones (any case) do not."""
        for name in ("Authorization", "cookie", "Proxy-Authorization", "X-Api-Key",
                     "X-Amz-Security-Token", "Private-Token"):
            self.assertTrue(omits_checked("http://o/f", {name: "x"}), name)
        self.assertFalse(omits_checked("http://o/f", {}))
        self.assertFalse(omits_checked("http://o/f", None))
        self.assertFalse(omits_checked("http://o/f", {"Accept": "*/*", "USER-AGENT": "a",
                                                      "Accept-Language": "en"}))

    def test_filtered_query(self):
        """A query parameter the filter drops makes it private; a filter naming
        no parameter of the URL does not."""
        self.assertTrue(omits_checked("http://o/f?sig=1&x=2", {}, ["sig"]))
        self.assertTrue(omits_checked("http://o/f?x=2&s%69g=1", {}, "sig"))
        self.assertFalse(omits_checked("http://o/f?x=2", {}, ["sig"]))
        self.assertFalse(omits_checked("http://o/f?sig=1", {}, []))


class JudgeTests(SynchronousTestCase):

    def test_table(self):
        """2xx with the task's length and (where both have one) validators admits;
        a refusal carries the origin's status; other content has no status."""
        ok = judge(200, 10, '"a"', "Mon", 10, '"a"', "Mon")
        self.assertTrue(ok.admitted)
        self.assertTrue(judge(204, 10, None, None, 10, '"a"', "Mon").admitted)
        self.assertTrue(judge(200, 10, 'W/"a"', None, 10, '"a"').admitted)
        for status in (401, 403, 404, 407, 500, 302, 304):
            v = judge(status, 10, None, None, 10)
            self.assertEqual((v.admitted, v.status), (False, status))
            self.assertEqual(v.reason, f"origin answered {status}")
        for args in ((200, 11, None, None, 10), (200, None, None, None, 10),
                     (200, 10, '"b"', None, 10, '"a"'),
                     (200, 10, None, "Tue", 10, None, "Mon")):
            v = judge(*args)
            self.assertEqual((v.admitted, v.status), (False, None), args)


class FetchedByTests(SynchronousTestCase):

    def test_unknown_is_private(self):
        """A task not recorded needs the check; one fetched publicly does not;
        the oldest records are dropped beyond the limit."""
        f = FetchedBy(limit=2)
        self.assertTrue(f.needs_check("t1"))
        f.record("t1", False)
        f.record("t2", True)
        self.assertFalse(f.needs_check("t1"))
        self.assertTrue(f.needs_check("t2"))
        f.record("t3", False)
        self.assertTrue(f.needs_check("t1"))
        f.forget("t3")
        self.assertTrue(f.needs_check("t3"))

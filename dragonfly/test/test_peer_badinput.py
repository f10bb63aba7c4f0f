"""The peer on bad input: a supernode that gave up on the origin, credentials in the URL."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.node import DownloadError
from dragonfly.test.peernodes import DATA, URL, NodeMixin


class SourceFailedTests(NodeMixin, SynchronousTestCase):
    def test_schedule_502_goes_to_origin_at_once(self):
        """When schedule answers 502 (the supernode's own fetch from the
        origin failed), the node neither retries nor registers again: it goes
        back to the source at once."""
        node = self.make()
        self.supernode.schedule_answer = (502, {"error": "the supernode could not fetch the "
                                                         "file: connection lost after 10 bytes"})
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.supernode.schedules), 1)
        self.assertEqual(len(self.supernode.registrations), 1)
        self.assertEqual(len(self.origin.calls), 1)

    def test_schedule_502_without_back_source(self):
        """Without back-to-source, the download fails at once with the
        supernode's reason (the origin's fault) in its error."""
        node = self.make()
        self.supernode.schedule_answer = (502, {"error": "the supernode could not fetch the "
                                                         "file: connection lost after 10 bytes"})
        f = self.failureResultOf(node.download(URL, back_source=False), DownloadError)
        self.assertIn("connection lost after 10 bytes", str(f.value))
        self.assertEqual(len(self.supernode.schedules), 1)
        self.assertEqual(self.origin.calls, [])


class UserinfoTests(NodeMixin, SynchronousTestCase):
    def test_refused(self):
        """download() refuses a URL with userinfo before contacting anyone."""
        node = self.make()
        f = self.failureResultOf(node.download("http://u:hunter2@origin.test/f"), DownloadError)
        self.assertIn("Authorization", str(f.value))
        self.assertNotIn("hunter2", str(f.value))
        self.assertEqual(self.supernode.registrations, [])
        self.assertEqual(self.origin.calls, [])

"""The swarm session's failure reports (issue 10): fetches failing together
go to the supernode in one report, so it never hands a failed piece to a
source that is about to be reported too."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test.peerfakes import PEER_A, PEER_B
from dragonfly.test.peernodes import DATA, URL, NodeMixin


class FailureReportTests(NodeMixin, SynchronousTestCase):

    def test_failures_together_in_one_report(self):
        """When several fetches fail in the same turn of the reactor, the next
        call to the supernode reports all of them; the download then completes."""
        node = self.make(sources=(PEER_A, PEER_B))
        self.pool.manual = True
        d = node.download(URL)
        held = list(self.pool.held)
        self.assertEqual(len(held), 3)
        self.pool.held = []
        self.pool.manual = False
        before = len(self.supernode.schedules)
        for fetch, _data in held:
            fetch.errback(ConnectionError("no answer within 3s (first-byte deadline)"))
        self.assertEqual(len(self.supernode.schedules), before)
        self.clock.advance(0)
        reports = [s for s in self.supernode.schedules[before:] if s["failed"]]
        self.assertEqual(len(reports[0]["failed"]), 3)
        self.clock.advance(5)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)

"""The peer's supernode calls (registration, redirects, fail-over, verdicts) through a
PeerNode: what the client's answers and exceptions mean for a download. The client
itself is tested in test_control_client."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import sample
from dragonfly.peer.node import DownloadError
from dragonfly.test.peerfakes import SEED, FakeSupernode
from dragonfly.test.peernodes import DATA, PIECE, SN1, SN2, URL, NodeMixin, _RefusingClient


class RegistrationTests(NodeMixin, SynchronousTestCase):

    def test_follows_owner_redirect(self):
        """When a supernode answers 307 {"owner"}, the node registers at the owner and
        schedules there."""
        node = self.make(supernodes=(SN1, SN2))
        other = FakeSupernode(DATA, PIECE)
        self.supernode.register_answer = (307, {"owner": "sn2.test:8002"})
        self.hosts.by_host["sn2.test:8002"] = other
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(other.registrations), 1)
        self.assertEqual(self.supernode.schedules, [])
        self.assertTrue(other.schedules)

    def test_owner_outside_the_list_not_followed(self):
        """An owner that is not one of the node's supernodes is not asked: that
        supernode counts as unavailable, and the file comes from the origin."""
        node = self.make(supernodes=(SN1,))
        other = FakeSupernode(DATA, PIECE)
        self.supernode.register_answer = (307, {"owner": "sn2.test:8002"})
        self.hosts.by_host["sn2.test:8002"] = other
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(other.registrations, [])
        self.assertEqual(len(self.origin.calls), 1)

    def test_next_supernode_when_one_is_down(self):
        """When the first supernode is unreachable, the node registers with the next."""
        node = self.make(supernodes=(SN1, SN2))
        self.hosts.by_host = {"sn2.test:8002": self.supernode}
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(self.origin.calls, [])

    def test_other_digest_algorithm_not_used(self):
        """A supernode whose registration names another piece digest algorithm
        (or none: an older supernode, sha256) is not used: no piece is fetched,
        and the file comes from the origin."""
        for extra in ({"piece_digest": "sha256"}, {}):
            node = self.make()
            answer = {"task_id": "t", "length": len(DATA), "piece_size": PIECE,
                      "piece_count": -(-len(DATA) // PIECE), "seed": SEED.to_json(), **extra}
            self.supernode.register_answer = (200, answer)
            tf = self.successResultOf(node.download(URL))
            self.assertEqual(self.read_all(tf), DATA)
            self.assertEqual(self.supernode.schedules, [])
            self.assertEqual(self.origin.calls, [(URL, {}, 0)])

    def test_back_to_source_when_no_supernode(self):
        """When no supernode answers, the file comes straight from the origin."""
        client = _RefusingClient()
        node = self.make(client=client, supernodes=(SN1, SN2))
        tf = self.successResultOf(node.download(URL, headers={"X-A": "1"}))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(client.calls, 2)
        self.assertEqual(self.origin.calls, [(URL, {"X-A": "1"}, 0)])
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_no_back_source_fails(self):
        """When no supernode answers and back-to-source is off, the download fails with a
        clear error and the origin is never contacted."""
        node = self.make(client=_RefusingClient())
        f = self.failureResultOf(node.download(URL, back_source=False), DownloadError)
        self.assertIn("back-to-source is disabled", str(f.value))
        self.assertEqual(self.origin.calls, [])

    def test_supernode_5xx_back_to_source(self):
        """When registration answers 500, the node goes back to the source."""
        node = self.make()
        self.supernode.register_answer = (500, {"error": "boom"})
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(len(self.origin.calls), 1)

    def test_origin_404_is_final(self):
        """When the supernode reports the origin answered 404, the download fails with
        "origin answered 404" and the origin is not asked again."""
        node = self.make()
        self.supernode.register_answer = (502, {"error": "origin answered 404",
                                                "origin_status": 404})
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertEqual(str(f.value), "origin answered 404")
        self.assertEqual(self.origin.calls, [])

    def test_bad_request_is_final(self):
        """When the supernode refuses the task with a 400, the download fails with its
        reason and no back-to-source."""
        node = self.make()
        self.supernode.register_answer = (400, {"error": "bad url"})
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("bad url", str(f.value))
        self.assertEqual(self.origin.calls, [])

    def test_schedule_refusal_is_final(self):
        """When the supernode refuses a schedule call with a 4xx other than 404
        (TaskRefused), the download fails with its reason and no back-to-source."""
        node = self.make()
        self.supernode.schedule_answer = (400, {"error": "x"})
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertEqual(str(f.value), "supernode refused to schedule: x")
        self.assertEqual(self.origin.calls, [])

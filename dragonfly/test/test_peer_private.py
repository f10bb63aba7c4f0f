"""Tests of the peer's side of private content (dragonfly.privacy through
PeerNode.download): a local caller of a task the peer holds, or is
downloading, for someone else's private request is served only once the
origin accepted the caller's own request."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.peer.node import DownloadError, PeerNode
from dragonfly.peer.errors import OriginNotAllowed
from dragonfly.origin import OriginError, OriginRefused
from dragonfly.test.peernodes import DATA, ME, SN1, URL, NodeMixin

TOKEN = {"Authorization": "Bearer s3cret"}


def _needs_token(url, headers):
    return 200 if headers.get("Authorization") == TOKEN["Authorization"] else 401


class PrivateHeldTests(NodeMixin, SynchronousTestCase):

    def setUp(self):
        self.make()
        self.origin.allowed = _needs_token

    def probes(self):
        return getattr(self.origin, "probes", [])

    def test_held_private_task(self):
        """After the token holder's download, a local caller without the token
        (or with a wrong one) gets the origin's refusal; with it, the held copy
        after a probe carrying the caller's own headers."""
        self.successResultOf(self.node.download(URL, headers=TOKEN))
        self.assertEqual(self.probes(), [])
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            f = self.failureResultOf(self.node.download(URL, headers=headers), DownloadError)
            self.assertEqual(str(f.value), "origin answered 401")
        tf = self.successResultOf(self.node.download(URL, headers=TOKEN))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual([h for _, h in self.probes()],
                         [{}, {"Authorization": "Bearer wrong"}, TOKEN])
        self.assertEqual(len(self.supernode.registrations), 1)

    def test_public_task_not_checked(self):
        """A task downloaded by a public request serves later local callers
        without asking the origin."""
        self.successResultOf(self.node.download(URL))
        self.successResultOf(self.node.download(URL))
        self.successResultOf(self.node.download(URL, headers=TOKEN))
        self.assertEqual(self.probes(), [])

    def test_filtered_query_checked(self):
        """A task downloaded with a filtered-out query parameter is private."""
        self.origin.allowed = lambda url, h: 200 if "sig=good" in url else 403
        self.successResultOf(self.node.download(URL + "?sig=good", filters=("sig",)))
        f = self.failureResultOf(self.node.download(URL + "?sig=bad", filters=("sig",)),
                                 DownloadError)
        self.assertEqual(str(f.value), "origin answered 403")

    def test_held_from_before(self):
        """A task held from before this process counts as private until a public
        request was admitted for it."""
        self.successResultOf(self.node.download(URL, headers=TOKEN))
        self.origin.allowed = None      # the file became public
        node = PeerNode(self.node.deps, [SN1], ME)
        self.successResultOf(node.download(URL))
        self.assertEqual(len(self.probes()), 1)
        self.successResultOf(node.download(URL))
        self.assertEqual(len(self.probes()), 1)

    def test_joining_private_download(self):
        """A caller joining a download made for a private request is checked
        before it gets anything; the download goes on for the token holder."""
        self.pool.manual = True
        first = self.node.download(URL, headers=TOKEN)
        second = self.node.download(URL)
        f = self.failureResultOf(second, DownloadError)
        self.assertEqual(str(f.value), "origin answered 401")
        while self.pool.held:
            self.pool.release(1)
        self.assertEqual(self.read_all(self.successResultOf(first)), DATA)

    def test_origin_unreachable_refuses(self):
        """A probe that gets no answer admits nobody; an egress refusal is said
        as the egress policy's line."""
        self.successResultOf(self.node.download(URL, headers=TOKEN))
        self.origin.error = OriginError(None, "cannot reach origin: refused")
        f = self.failureResultOf(self.node.download(URL), DownloadError)
        self.assertIn("cannot check this request with the origin", str(f.value))
        self.origin.error = OriginRefused("origin not allowed: 10.0.0.1")
        f = self.failureResultOf(self.node.download(URL), OriginNotAllowed)
        self.assertIn("origin not allowed", str(f.value))

"""A ranged PeerNode.stream (what the mirror does for a Range request): its
cursor starts at the range's first piece and it completes once the pieces
covering the range are held, whatever else is still missing."""
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test.peerfakes import PEER_A
from dragonfly.test.peernodes import DATA, PIECE, URL, NodeMixin


class RangeStreamTests(NodeMixin, SynchronousTestCase):
    def ranged(self, start, end):
        node = self.make(sources=(PEER_A,))
        self.pool.manual = True
        consumer = StringTransport()
        streams = []
        started = Deferred()
        started.addCallback(lambda tf: streams.append(node.stream(tf, consumer, start, end)))
        d = node.download(URL, on_start=started)
        return d, streams[0], consumer

    def release(self, indices):
        """Deliver the held fetches of these piece indices only."""
        fetched = [i for _, _, i in self.pool.fetches]
        held, self.pool.held = self.pool.held, []
        for index, (d, data) in zip(fetched, held):
            if index in indices:
                d.callback(data)
            else:
                self.pool.held.append((d, data))

    def test_range_across_a_piece_boundary(self):
        """A range over the end of piece 9 and the start of piece 10: the first
        schedule call's cursor is 9, and the range is complete once pieces 9
        and 10 arrived, the others still held."""
        start, end = 9 * PIECE + 50, 10 * PIECE + 20
        d, sd, consumer = self.ranged(start, end)
        self.assertEqual(self.supernode.schedules[0].get("cursor"), 9)
        self.release({10})
        self.assertEqual(consumer.value(), b"")
        self.assertNoResult(sd)
        self.release({9})
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA[start:end])
        self.assertTrue(self.pool.held, "the range waited for other pieces")
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)   # the rest of the blob still downloads

    def test_suffix_range_last_piece(self):
        """The last bytes (a suffix range): only the short last piece is needed."""
        start = len(DATA) - 3
        d, sd, consumer = self.ranged(start, len(DATA))
        last = (len(DATA) - 1) // PIECE
        self.assertEqual(self.supernode.schedules[0].get("cursor"), last)
        self.release({last})
        self.successResultOf(sd)
        self.assertEqual(consumer.value(), DATA[-3:])
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)


class WantedRangeTests(NodeMixin, SynchronousTestCase):
    def test_registration_names_the_range(self):
        """A download wanting a range first names it in its registration
        (C{"range"}), so a supernode without the file asks its origin for it
        first; a plain download names none."""
        node = self.make(sources=(PEER_A,))
        self.successResultOf(node.download(URL, want=(5 * PIECE, 5 * PIECE + 99)))
        self.assertEqual(self.supernode.registrations[0]["range"], [5 * PIECE, 5 * PIECE + 99])
        other = URL + "?other"
        node.download(other)
        self.assertNotIn("range", self.supernode.registrations[-1])

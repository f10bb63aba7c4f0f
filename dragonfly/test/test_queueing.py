"""A streamed task's queue at its sources (dragonfly.supernode.queueing)."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test.scheduler_invariants import T, SchedulerMixin, peer, verify

A, B, STREAM, PLAIN = peer(1), peer(2), peer(3), peer(4)


class QueueTests(SchedulerMixin, SynchronousTestCase):
    """Peer 1 holds all 32 pieces (so does the seed, which then never serves
    them); peer 3 streams them in order, peer 4 downloads them plainly."""

    def setUp(self):
        self.make(pieces=32, max_uploads_per_peer=4)
        self.join(1, 3, 4)
        self.give(1, *range(32))

    def src(self):
        return self.s._tasks[T].peers[A.peer_id]

    def test_streaming_asker_queues_beyond_the_slots(self):
        """Asking with a queue, a streaming asker gets the source's four slots
        and four places of its queue, all in order from its cursor: the
        source's upload count stays at its limit, the queue counts apart."""
        got = self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.assertEqual(self.sources(got), [(i, A.peer_id) for i in range(8)])
        self.assertEqual((self.src().uploads, self.src().queued), (4, 4))
        self.assertEqual(self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True), [])

    def test_without_the_flag_or_a_cursor_nothing_changes(self):
        """No queue flag (an older peer), or a queue flag without a cursor (no
        stream), or a plain asker: the source's four slots only."""
        self.assertEqual(len(self.s.assign(T, STREAM.peer_id, 16, cursor=0)), 4)
        self.s.leave(T, STREAM.peer_id)
        self.join(3)
        self.assertEqual(len(self.s.assign(T, STREAM.peer_id, 16, queue=True)), 4)
        self.assertEqual(self.src().queued, 0)

    def test_other_askers_keep_the_slots(self):
        """The queue holds no upload slot: a plain asker of the same source gets
        a slot the streamer's piece freed, and a queued piece that arrives
        frees a place of the queue, not a slot."""
        self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.assertEqual(self.s.assign(T, PLAIN.peer_id, 4), [])   # the slots are taken
        self.s.report(T, STREAM.peer_id, fetched=[0])              # a slot's piece is in
        self.assertEqual(self.sources(self.s.assign(T, PLAIN.peer_id, 4))[0][1], A.peer_id)
        self.assertEqual((self.src().uploads, self.src().queued), (4, 4))
        self.s.report(T, STREAM.peer_id, fetched=[5])              # a queued piece is in
        self.assertEqual((self.src().uploads, self.src().queued), (4, 3))
        self.assertEqual(self.s.assign(T, PLAIN.peer_id, 4), [])
        [q] = self.s.assign(T, STREAM.peer_id, 16, cursor=1, queue=True)
        self.assertEqual((self.src().uploads, self.src().queued), (4, 4))

    def test_queue_places_shared_by_the_source(self):
        """Two streamers of one source share its queue's places (a peer that
        claims to stream gets at most these): four in all."""
        self.join(5)
        self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.assertEqual(self.s.assign(T, peer(5).peer_id, 16, cursor=0, queue=True), [])
        self.s.report(T, STREAM.peer_id, fetched=[6, 7])
        got = self.s.assign(T, peer(5).peer_id, 16, cursor=0, queue=True)
        self.assertEqual(len(got), 2)
        self.assertEqual((self.src().uploads, self.src().queued), (4, 4))

    def test_places_free_on_every_end(self):
        """A queued assignment's place frees when the piece is held, failed or
        timed out, as a slot does (the bookkeeping checked after each)."""
        self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.s.report(T, STREAM.peer_id, have=[4])
        self.assertEqual(self.src().queued, 3)
        verify(self.s, T)
        self.s.report(T, STREAM.peer_id, failed=[(5, A.peer_id)])
        self.assertEqual(self.src().queued, 2)
        verify(self.s, T)
        self.clock.advance(self.s.assignment_timeout)
        self.s.expire()
        self.assertEqual((self.src().uploads, self.src().queued), (0, 0))

    def test_leaving_source_and_asker(self):
        """The streamer leaving frees the places; its source leaving keeps the
        bookkeeping whole (checked after each test)."""
        self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.s.leave(T, STREAM.peer_id)
        self.assertEqual((self.src().uploads, self.src().queued), (0, 0))
        self.join(3)
        self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.s.leave(T, A.peer_id)
        verify(self.s, T)
        self.s.report(T, STREAM.peer_id, fetched=[0, 6], have=[1, 7])
        verify(self.s, T)

    def test_queue_size(self):
        """C{stream_queue} sets the places (and the extra assignments)."""
        self.make(pieces=32, max_uploads_per_peer=4, stream_queue=2)
        self.join(1, 3)
        self.give(1, *range(32))
        self.assertEqual(len(self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)), 6)
        self.assertEqual(self.src().queued, 2)

    def test_no_queue_from_the_seed(self):
        """Pieces only the seed holds are never queued (it has slots and copy
        limits of its own)."""
        self.make(pieces=32, max_uploads_per_peer=4, seed_max_uploads=2)
        self.join(3)
        got = self.s.assign(T, STREAM.peer_id, 16, cursor=0, queue=True)
        self.assertEqual(len(got), 2)
        self.assertEqual(self.s._tasks[T].seed_uploads, 2)

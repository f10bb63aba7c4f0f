"""Tests for dragonfly.storage.fdbudget: the bound on open data files."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage.fdbudget import FdBudget
from dragonfly.test.storefakes import StoreMixin, pdigest


class StoreFdTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(5000)

    def test_fd_kept_and_bounded(self):
        """When tasks are read repeatedly, each keeps one fd, and at most max_open_files stay open."""
        store = self.make_store(max_open_files=2)
        ts = [store.create(str(i), "u", 4, 4) for i in range(3)]
        for t in ts:
            self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        fd = ts[2].fileno()
        ts[2].read(0, 4)
        self.assertEqual(ts[2].fileno(), fd)
        self.assertLessEqual(len(store.fds), 2)
        for t in ts:
            t.read(0, 4)
            self.assertLessEqual(len(store.fds), 2)
        ts[0].pin()
        ts[0].fileno()
        ts[1].read(0, 4)
        ts[2].read(0, 4)
        self.assertIsNotNone(ts[0]._fd)  # pinned: never closed under its user
        ts[0].unpin()

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


class _Owner:
    def __init__(self, budget, idle=True):
        self.budget = budget
        self.idle = idle
        self.open = True

    def can_close(self):
        return self.idle

    def close_fd(self):
        self.open = False
        self.budget.closed(self)


class FdBudgetTests(SynchronousTestCase):
    def test_least_recently_used_closed_first(self):
        """When the budget is full, make_room() closes the least recently used
        idle owner, just enough for one more."""
        budget = FdBudget(2)
        a, b = _Owner(budget), _Owner(budget)
        budget.used(a)
        budget.used(b)
        budget.used(a)          # a is now the most recent
        budget.make_room()
        self.assertEqual((a.open, b.open, len(budget)), (True, False, 1))
        budget.make_room()      # room already: nothing closed
        self.assertTrue(a.open)

    def test_busy_owners_kept(self):
        """When every open owner is busy, make_room() closes none (the budget
        is exceeded rather than an fd closed under its user)."""
        budget = FdBudget(1)
        busy = _Owner(budget, idle=False)
        budget.used(busy)
        budget.make_room()
        self.assertTrue(busy.open)
        self.assertEqual(len(budget), 1)

    def test_at_least_one(self):
        """A budget of zero or less still allows one open file."""
        self.assertEqual(FdBudget(0).max_open, 1)

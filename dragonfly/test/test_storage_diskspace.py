"""Tests for the store under disk pressure: dragonfly.storage.diskspace and the
PieceStore's free-space eviction, ENOSPC retries, abandoned partials and health."""
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage import fileio
from dragonfly.storage.diskspace import DiskSpace, is_disk_full
from dragonfly.storage.errors import StoreFull
from dragonfly.storage.layout import TRASH_PREFIX
from dragonfly.test.storefakes import ManualRunner, StoreMixin, pdigest


class FakeStatvfs:
    """A statvfs() whose free bytes the test sets (block size 1)."""

    def __init__(self, free, total=1 << 30):
        self.free = free
        self.total = total
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return os.statvfs_result((1, 1, self.total, self.free, self.free, 0, 0, 0, 0, 255))


def full_disk_after(case, store, offset):
    """Make C{store}'s piece writes at C{offset} and beyond fail with ENOSPC
    (for the rest of C{case}), with room to spare as far as statvfs says."""
    store.space.statvfs = FakeStatvfs(1 << 30)

    def failing(real):
        def write(fd, views, at, *rest):
            if at >= offset:
                raise OSError(28, "No space left on device")
            return real(fd, views, at, *rest)
        return write
    for name in ("verify_and_write", "pwrite_all", "hash_and_write"):
        case.patch(fileio, name, failing(getattr(fileio, name)))


class DiskSpaceTests(SynchronousTestCase):
    def test_cached_then_refreshed(self):
        """free() asks the filesystem at most once per ttl, lowered by what was written since."""
        clock, fs = Clock(), FakeStatvfs(1000)
        space = DiskSpace("/x", clock, fs, ttl=1.0)
        self.assertEqual(space.free(), 1000)
        space.wrote(300)
        self.assertEqual(space.free(), 700)
        self.assertEqual(fs.calls, 1)
        clock.advance(1.5)
        self.assertEqual(space.free(), 1000)
        self.assertEqual(fs.calls, 2)
        space.disk_full()
        self.assertEqual(space.free(), 1000)
        self.assertEqual(fs.calls, 3)
        self.assertEqual(space.full_at, clock.seconds())
        self.assertEqual(space.total(), 1 << 30)

    def test_unknown(self):
        """When statvfs fails, free() and total() are None."""
        def broken(path):
            raise OSError(2, "gone")
        space = DiskSpace("/x", Clock(), broken)
        self.assertIsNone(space.free())
        self.assertIsNone(space.total())

    def test_is_disk_full(self):
        """ENOSPC and EDQUOT are a full disk; other errors are not."""
        self.assertTrue(is_disk_full(OSError(28, "No space left on device")))
        self.assertFalse(is_disk_full(OSError(5, "EIO")))
        self.assertFalse(is_disk_full(ValueError("x")))


class StoreDiskPressureTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)
        self.fs = FakeStatvfs(10_000)

    def store_with(self, **kw):
        kw.setdefault("statvfs", self.fs)
        kw.setdefault("min_free", 100)
        return self.make_store(**kw)

    def fill(self, store, task_id, n=4, size=100, runner=None):
        """Task C{task_id} of C{n} pieces of C{size} bytes, all written (through
        C{runner}, run at once, when the store has a manual one)."""
        t = store.create(task_id, "u", n * size, size)
        for i in range(n):
            d = t.write_trusted_piece(i, b"x" * size, pdigest(b"x" * size))
            if runner is not None:
                runner.run_all()
            self.successResultOf(d)
        return t

    def test_evicts_lru_for_free_space(self):
        """When the disk is short of room for a piece, unpinned tasks are
        evicted least recently used first (no quota set), never the one written."""
        store = self.store_with()
        self.fill(store, "old")
        self.clock.advance(10)
        self.fill(store, "new")
        self.clock.advance(10)
        self.fs.free = 150           # room for one piece, but not the min_free margin
        self.clock.advance(5)        # past the cache
        c = store.create("c", "u", 400, 100)
        self.successResultOf(c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100)))
        self.assertIsNone(store.get("old"))
        self.assertIsNotNone(store.get("new"))
        self.assertTrue(c.has(0))
        self.assertEqual(store.evictions, 1)

    def test_partials_evicted_first(self):
        """Partial tasks (kept for resume) go before complete ones, however recent."""
        store = self.store_with()
        self.fill(store, "complete")
        self.clock.advance(10)
        part = store.create("part", "u", 400, 100)
        self.successResultOf(part.write_trusted_piece(0, b"x" * 100, pdigest(b"x" * 100)))
        self.clock.advance(10)
        self.fs.free = 150
        self.clock.advance(5)
        c = store.create("c", "u", 400, 100)
        self.successResultOf(c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100)))
        self.assertIsNone(store.get("part"))
        self.assertIsNotNone(store.get("complete"))

    def test_pinned_stay(self):
        """Pinned tasks are never evicted for space; the write still goes ahead."""
        store = self.store_with()
        self.fill(store, "old").pin()
        self.fs.free = 150
        self.clock.advance(5)
        c = store.create("c", "u", 400, 100)
        self.successResultOf(c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100)))
        self.assertIsNotNone(store.get("old"))

    def test_enospc_retried_after_eviction(self):
        """When the runner's write fails with ENOSPC, the store evicts an
        unpinned task and the piece is written again, successfully; health
        stays ok."""
        runner = ManualRunner()
        store = self.store_with(runner=runner)
        self.fill(store, "old", n=1, size=100, runner=runner)
        c = store.create("c", "u", 100, 100)
        d = c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100))
        f, args, kw, rd = runner.pending.pop()
        rd.errback(OSError(28, "No space left on device"))
        self.assertIsNone(store.get("old"))
        runner.run_all()             # the deletion of "old", then the write again
        self.successResultOf(d)
        self.assertTrue(c.has(0))
        self.assertEqual(store.health(), [])   # eviction resolved it: not degraded

    def test_enospc_nothing_to_evict(self):
        """With nothing to evict, ENOSPC fails the write with StoreFull at once."""
        runner = ManualRunner()
        store = self.store_with(runner=runner)
        c = store.create("c", "u", 100, 100)
        d = c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100))
        f, args, kw, rd = runner.pending.pop()
        rd.errback(OSError(28, "No space left on device"))
        self.failureResultOf(d, StoreFull)
        self.assertFalse(c.has(0))
        self.assertTrue(any(r.startswith("store errors") for r in store.health()))

    def test_abandoned_partial_released_under_pressure(self):
        """A failed download's unpinned partial is dropped when the disk is
        short; kept for resume otherwise; never while pinned."""
        store = self.store_with()
        part = store.create("part", "u", 400, 100)
        self.successResultOf(part.write_trusted_piece(0, b"x" * 100, pdigest(b"x" * 100)))
        store.abandoned(part)
        self.assertIs(store.get("part"), part)
        self.fs.free = 50
        part.pin()
        store.abandoned(part)
        self.assertIs(store.get("part"), part)
        part.unpin()
        store.abandoned(part)
        self.assertIsNone(store.get("part"))
        self.assertEqual(store.usage(), 0)

    def test_health(self):
        """health() names a full disk and an exceeded quota; empty when all is well."""
        store = self.store_with(quota=150)
        self.assertEqual(store.health(), [])
        t = store.create("t", "u", 200, 100)
        t.pin()
        for i in range(2):
            self.successResultOf(t.write_trusted_piece(i, b"x" * 100, pdigest(b"x" * 100)))
        self.assertEqual(store.health(), ["quota exceeded"])
        self.fs.free = 10
        self.clock.advance(5)
        self.assertEqual(store.health(), ["disk full", "quota exceeded"])
        t.unpin()

    def test_fits_disk(self):
        """fits_disk() refuses a length larger than the free bytes (less
        min_free) and every held byte together, and evicts nothing."""
        store = self.store_with()
        self.fill(store, "old")                   # 400 bytes held
        self.fs.free = 1000
        self.clock.advance(5)
        self.assertTrue(store.fits_disk(1000 - 100 + 400))
        self.assertFalse(store.fits_disk(1000 - 100 + 400 + 1))
        self.assertIsNotNone(store.get("old"))
        self.assertEqual(store.evictions, 0)

    def test_fits_disk_counts_unknown_room_as_room(self):
        """Free space unknown (statvfs failing), or evicted entries still
        being deleted: fits_disk() does not refuse."""
        runner = ManualRunner()
        store = self.store_with(runner=runner)
        self.fill(store, "old", n=1, size=400, runner=runner)
        self.fs.free = 0
        self.clock.advance(5)
        self.assertFalse(store.fits_disk(1000))
        store.remove("old")                       # its deletion waits in the runner
        self.assertTrue(store.fits_disk(1000))
        runner.run_all()
        self.assertFalse(store.fits_disk(1000))

        def failing(path):
            raise OSError(5, "Input/output error")
        store.space.statvfs = failing
        self.clock.advance(5)
        self.assertTrue(store.fits_disk(1000))

    def test_create_on_full_disk(self):
        """When the metadata of a new task cannot be written on a full disk,
        create() raises StoreFull (and leaves nothing behind)."""
        store = self.store_with()
        self.fs.free = 0

        def no_room(path, data):
            raise OSError(28, "No space left on device")
        self.patch(fileio, "replace_file", no_room)
        self.assertRaises(StoreFull, store.create, "t", "u", 100, 100)
        self.assertEqual(store.count(), 0)

    def test_create_evicts_on_full_disk(self):
        """When the disk is full as a task is created, unpinned tasks are
        evicted (partial first, then LRU) until its metadata can be written."""
        store = self.store_with()
        self.fill(store, "old")
        real = fileio.replace_file
        self.fs.free = 0
        self.clock.advance(5)

        def full_until_evicted(path, data):
            if store.get("old") is not None:
                raise OSError(28, "No space left on device")
            self.fs.free = 10_000
            return real(path, data)
        self.patch(fileio, "replace_file", full_until_evicted)
        t = store.create("t", "u", 100, 100)
        self.assertIs(store.get("t"), t)
        self.assertIsNone(store.get("old"))
        self.assertEqual([n for n in os.listdir(store.root) if n.startswith(TRASH_PREFIX)], [])

    def test_create_on_full_disk_passes_through(self):
        """A store that passes pieces through creates the task even when its
        metadata cannot be written on a full disk (its pieces will go past it)."""
        store = self.store_with(pass_through=True)
        self.fs.free = 0

        def no_room(path, data):
            raise OSError(28, "No space left on device")
        self.patch(fileio, "replace_file", no_room)
        t = store.create("t", "u", 100, 100)
        self.assertIs(store.get("t"), t)

    def test_enospc_waits_for_deletions_running(self):
        """When a write fails with ENOSPC while earlier evictions are still
        being deleted (nothing left to evict), it is tried again once they are done."""
        runner = ManualRunner()
        store = self.store_with(runner=runner)
        self.fill(store, "old", n=1, size=100, runner=runner)
        store.remove("old")                      # its deletion waits in the runner
        c = store.create("c", "u", 100, 100)
        d = c.write_trusted_piece(0, b"y" * 100, pdigest(b"y" * 100))
        f, args, kw, rd = runner.pending.pop()   # the write (the deletion is first)
        rd.errback(OSError(28, "No space left on device"))
        self.assertNoResult(d)
        runner.run_all()                         # the deletion, then the write again
        self.successResultOf(d)
        self.assertTrue(c.has(0))

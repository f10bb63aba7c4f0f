"""Tests for dragonfly.storage.taskfile: one task's pieces, reads, writes and saves."""
import gc
import os
import weakref

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.runtime.threads import ThreadRunner
from dragonfly.storage import fileio
from dragonfly.storage.errors import DigestMismatch, PieceNotHeld, StoreFull, TaskRemoved
from dragonfly.storage.store import PieceStore
from dragonfly.storage.taskfile import MAX_READ
from dragonfly.test.storefakes import TID, ManualRunner, StoreMixin, blob, pdigest


class TaskFileTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.make_store()

    def test_held_counts_from_bitmap(self):
        """When a task is loaded, its held pieces and bytes (a short last piece
        included) come from the held bitmap; digests are kept by index."""
        t = self.store.create(TID, "http://o/f", 10, 4)
        self.successResultOf(t.write_trusted_piece(2, b"ab", pdigest(b"ab")))
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.store.close()
        again = self.make_store()
        again.load()
        t = again.get(TID)
        self.assertEqual((t.completed(), t.completed_bytes, again.usage()), ([0, 2], 6, 6))
        self.assertEqual([t.digest(i) for i in range(3)],
                         [pdigest(b"abcd"), None, pdigest(b"ab")])
        self.assertEqual(self.read_meta(t)["digests"][1], None)

    def test_written_piece_buffer_freed_without_gc(self):
        """When a piece has been written (the plain path and the retry after a
        full disk alike), nothing keeps its buffer alive: no reference cycle
        waits for the cyclic collector (a fast download once piled up
        hundreds of MiB of written pieces that way)."""
        class Buf(bytearray):
            pass

        t = self.store.create(TID, "http://o/f", 8, 4)
        gc.disable()
        self.addCleanup(gc.enable)
        buf = Buf(b"abcd")
        ref = weakref.ref(buf)
        self.successResultOf(t.write_trusted_piece(0, buf, pdigest(b"abcd")))
        del buf
        self.assertIsNone(ref(), "a written piece's buffer outlived its write")
        buf = Buf(b"efgh")
        ref = weakref.ref(buf)
        self.successResultOf(t.write_new_piece(1, buf))
        del buf
        self.assertIsNone(ref(), "a written piece's buffer outlived its write")

    def test_huge_task_is_cheap(self):
        """When a task of 2^40 bytes is created, nothing per piece is built
        beyond the held bitmap (no digest list, no per-piece loop)."""
        t = self.store.create(TID, "http://o/f", 1 << 40, 4 << 20)
        self.assertEqual(t.piece_count, 1 << 18)
        self.assertEqual((t.completed(), t.completed_bytes, t._digests), ([], 0, {}))
        self.assertEqual(len(t._held), (1 << 18) // 8)

    def test_geometry(self):
        """When a task is created, its pieces tile the length with a short last piece."""
        t = self.store.create(TID, "http://o/f", 10, 4)
        self.assertEqual(t.piece_count, 3)
        self.assertEqual([t.piece_range(i) for i in range(3)], [(0, 4), (4, 4), (8, 2)])
        self.assertRaises(ValueError, t.piece_range, 3)
        self.assertRaises(ValueError, t.piece_range, -1)
        self.assertRaises(ValueError, t.piece_range, True)
        self.assertFalse(t.has(3))
        self.assertFalse(t.has(-1))
        self.assertFalse(t.has("0"))

    def test_round_trip(self):
        """When every piece is written, read/read_piece return the bytes and the task is complete."""
        data = blob(10 * 1024 + 17)
        t = self.store.create(TID, "http://o/f", len(data), 1024, etag='"e"',
                              last_modified="Tue, 01 Jan 2030 00:00:00 GMT")
        self.assertEqual((t.completed(), t.completed_bytes, t.is_complete), ([], 0, False))
        self.write_all(t, data)
        self.assertTrue(t.is_complete)
        self.assertEqual(t.completed(), list(range(11)))
        self.assertEqual(t.completed_bytes, len(data))
        self.assertEqual(t.read(0, len(data)), data)
        self.assertEqual(t.read(1000, 100), data[1000:1100])
        self.assertEqual(t.read(len(data), 0), b"")
        self.assertEqual(self.successResultOf(t.read_piece(10)), data[10240:])
        self.assertEqual(t.digest(3), pdigest(data[3072:4096]))
        with open(t.path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.pread(t.fileno(), 5, 2), data[2:7])
        self.assertIs(self.store.get(TID), t)
        self.assertEqual(self.store.tasks(), [t])

    def test_chunk_list(self):
        """When a piece is given as a list of chunks (bytes, memoryviews,
        bytearrays), they are written in order, in slices of at most
        WRITE_SLICE bytes per pwrite."""
        data = blob(4096)
        t = self.store.create(TID, "u", 4096, 4096)
        self.patch(fileio, "WRITE_SLICE", 100)
        sizes = []
        real = os.pwrite

        def pwrite(fd, buf, offset):
            sizes.append(len(buf))
            return real(fd, buf, offset)
        self.patch(fileio.os, "pwrite", pwrite)
        chunks = [data[:1000], memoryview(data)[1000:1001], bytearray(data[1001:4096])]
        self.successResultOf(t.write_trusted_piece(0, chunks, pdigest(data)))
        self.assertEqual(t.read(0, 4096), data)
        self.assertTrue(sizes)
        self.assertLessEqual(max(sizes), 100)
        self.assertEqual(sum(sizes), 4096)

    def test_chunk_list_wrong_length(self):
        """When a chunk list does not add up to the piece length, a write fails
        with ValueError and nothing is held."""
        t = self.store.create(TID, "u", 8, 4)
        self.failureResultOf(t.write_trusted_piece(0, [b"ab", b"c"], pdigest(b"abc")), ValueError)
        self.failureResultOf(t.write_trusted_piece(0, [b"ab", "cd"], pdigest(b"abcd")), TypeError)
        self.assertEqual(t.completed(), [])

    def test_verify(self):
        """With write_verified_piece, data hashing to the digest is written and held; data
        that does not fails with DigestMismatch (a ValueError) and not a byte of it
        reaches the data file."""
        t = self.store.create(TID, "u", 8, 4)
        f = self.failureResultOf(t.write_verified_piece(0, [b"ab", b"cX"], pdigest(b"abcd")),
                                 DigestMismatch)
        self.assertIsInstance(f.value, ValueError)
        self.assertEqual(f.value.got, pdigest(b"abcX"))
        self.assertFalse(t.has(0))
        with open(t.path, "rb") as fh:
            self.assertEqual(fh.read(), b"\0" * 8)
        self.successResultOf(t.write_verified_piece(0, [b"ab", b"cd"], pdigest(b"abcd")))
        self.assertEqual(t.read(0, 4), b"abcd")
        self.assertEqual(t.digest(0), pdigest(b"abcd"))

    def test_write_new_piece(self):
        """write_new_piece hashes and writes a piece in one runner call and fires
        with its digest, recorded as held; a piece already held is refused."""
        runner = ManualRunner()
        store = self.make_store(root=self.mktemp(), runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_new_piece(1, [b"ef", bytearray(b"gh")])
        self.assertEqual(len(runner.pending), 1)
        self.assertNoResult(d)
        runner.run_all()
        self.assertEqual(self.successResultOf(d), pdigest(b"efgh"))
        self.assertEqual((t.completed(), t.digest(1)), ([1], pdigest(b"efgh")))
        self.failureResultOf(t.write_new_piece(1, b"efgh"), ValueError)
        self.failureResultOf(t.write_new_piece(0, b"abc"), ValueError)

    def test_out_of_order(self):
        """When pieces arrive out of order, only the written ones are held."""
        data = blob(4096)
        t = self.store.create(TID, "u", 4096, 1024)
        self.successResultOf(t.write_trusted_piece(2, data[2048:3072], pdigest(data[2048:3072])))
        self.assertEqual(t.completed(), [2])
        self.assertEqual(t.completed_bytes, 1024)
        self.assertIsNone(t.digest(0))
        self.assertEqual(t.read(2048, 1024), data[2048:3072])
        self.failureResultOf(t.read_piece(1), PieceNotHeld)
        self.assertRaises(PieceNotHeld, t.read, 2000, 100)

    def test_sparse_full_length(self):
        """When a task is created, its data file has the full length but no blocks yet."""
        t = self.store.create(TID, "u", 64 * 1024 * 1024, 4 * 1024 * 1024)
        st = os.stat(t.path)
        self.assertEqual(st.st_size, 64 * 1024 * 1024)
        self.assertLess(st.st_blocks * 512, 1024 * 1024)

    def test_zero_length(self):
        """When a task has no bytes, it is complete at once."""
        t = self.store.create(TID, "u", 0, 1024)
        self.assertEqual(t.piece_count, 0)
        self.assertTrue(t.is_complete)
        self.assertEqual(t.read(0, 0), b"")
        self.assertEqual(self.meta_held(t), [])

    def test_wrong_length_refused(self):
        """When a piece has the wrong length, a write fails and nothing is held or written."""
        t = self.store.create(TID, "u", 10, 4)
        for index, data in [(0, b"abc"), (0, b"abcde"), (2, b"abc"), (2, b"a"), (1, b"")]:
            f = self.failureResultOf(t.write_trusted_piece(index, data, pdigest(data)), ValueError)
            self.assertIn("bytes", str(f.value))
        self.assertEqual(t.completed(), [])
        with open(t.path, "rb") as fh:
            self.assertEqual(fh.read(), b"\0" * 10)

    def test_bad_index_or_digest_refused(self):
        """When the index or digest is malformed, a write fails with ValueError."""
        t = self.store.create(TID, "u", 10, 4)
        self.failureResultOf(t.write_trusted_piece(3, b"ab", pdigest(b"ab")), ValueError)
        self.failureResultOf(t.write_trusted_piece(-1, b"abcd", pdigest(b"abcd")), ValueError)
        self.failureResultOf(t.write_trusted_piece(0, b"abcd", "nothex"), ValueError)
        self.failureResultOf(t.write_trusted_piece(0, b"abcd", None), ValueError)
        self.failureResultOf(t.write_trusted_piece(0, "abcd", pdigest(b"abcd")), TypeError)
        self.assertEqual(t.completed(), [])

    def test_uppercase_digest_normalised(self):
        """When the digest is upper-case hex, it is stored lower-case."""
        t = self.store.create(TID, "u", 4, 4)
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd").upper()))
        self.assertEqual(t.digest(0), pdigest(b"abcd"))

    def test_rewrite_held_piece(self):
        """When a held piece is written again, the same digest is a no-op and another is refused."""
        t = self.store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.failureResultOf(t.write_trusted_piece(0, b"wxyz", pdigest(b"wxyz")), ValueError)
        self.assertEqual(t.read(0, 4), b"abcd")
        self.assertEqual(t.digest(0), pdigest(b"abcd"))

    def test_verified_checks_like_trusted(self):
        """write_verified_piece refuses a malformed index, digest or length
        like write_trusted_piece, and is a no-op on a piece held with the same
        digest (not verified again) but refuses another digest."""
        t = self.store.create(TID, "u", 10, 4)
        self.failureResultOf(t.write_verified_piece(3, b"ab", pdigest(b"ab")), ValueError)
        self.failureResultOf(t.write_verified_piece(0, b"abcd", "nothex"), ValueError)
        self.failureResultOf(t.write_verified_piece(0, b"abcd", None), ValueError)
        self.failureResultOf(t.write_verified_piece(0, b"abc", pdigest(b"abc")), ValueError)
        self.successResultOf(t.write_verified_piece(0, b"abcd", pdigest(b"abcd").upper()))
        self.assertEqual(t.digest(0), pdigest(b"abcd"))
        self.successResultOf(t.write_verified_piece(0, b"abcd", pdigest(b"abcd")))
        self.failureResultOf(t.write_verified_piece(0, b"wxyz", pdigest(b"wxyz")), ValueError)
        self.assertEqual(t.read(0, 4), b"abcd")

    def test_trusted_does_not_hash(self):
        """write_trusted_piece records the digest it is given without hashing
        the bytes: the caller vouches for it (one runner call, a plain write)."""
        runner = ManualRunner()
        store = self.make_store(root=self.mktemp(), runner=runner)
        t = store.create(TID, "u", 4, 4)
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"other"))
        self.assertEqual([f for f, _, _, _ in runner.pending], [fileio.pwrite_all])
        runner.run_all()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(t.digest(0), pdigest(b"other"))

    def test_new_piece_on_removed_task(self):
        """write_new_piece on a removed task fails with TaskRemoved and writes nothing."""
        t = self.store.create(TID, "u", 4, 4)
        self.store.remove(TID)
        self.failureResultOf(t.write_new_piece(0, b"abcd"), TaskRemoved)
        self.failureResultOf(t.write_verified_piece(0, b"abcd", pdigest(b"abcd")), TaskRemoved)

    def test_read_limits(self):
        """When a read is too large, negative or past the end, it is refused."""
        size = 2 * MAX_READ
        t = self.store.create(TID, "u", size, MAX_READ)
        self.write_all(t, b"\1" * size)
        self.assertEqual(len(t.read(0, MAX_READ)), MAX_READ)
        self.assertRaises(ValueError, t.read, 0, MAX_READ + 1)
        self.assertRaises(ValueError, t.read, -1, 10)
        self.assertRaises(ValueError, t.read, 0, -1)
        self.assertRaises(ValueError, t.read, size - 5, 10)
        self.failureResultOf(t.read_piece(2), ValueError)

    def test_memoryview_and_bytearray(self):
        """When data is a bytearray or memoryview, it is written like bytes."""
        t = self.store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_trusted_piece(0, bytearray(b"abcd"), pdigest(b"abcd")))
        self.successResultOf(t.write_trusted_piece(1, memoryview(b"--efgh--")[2:6], pdigest(b"efgh")))
        self.assertEqual(t.read(0, 8), b"abcdefgh")

    def test_validators(self):
        """When set_validators() is called, the new etag and date are saved at once."""
        t = self.store.create(TID, "u", 8, 4, etag='"1"')
        t.set_validators('"2"', "Wed, 01 Jan 2031 00:00:00 GMT")
        meta = self.read_meta(t)
        self.assertEqual((meta["etag"], meta["last_modified"]),
                         ('"2"', "Wed, 01 Jan 2031 00:00:00 GMT"))


class TaskFileSaveTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(5000)

    def test_debounced_by_count(self):
        """When pieces arrive, meta.json is rewritten only every persist_pieces pieces."""
        store = self.make_store(persist_pieces=4, persist_interval=60)
        t = store.create(TID, "u", 10 * 4, 4)
        writes = []
        real_save = t._saver.save

        def counting_save():
            writes.append(t._held_count)
            real_save()
        t._saver.save = counting_save
        for i in range(9):
            self.successResultOf(t.write_trusted_piece(i, b"abcd", pdigest(b"abcd")))
        self.assertEqual(writes, [4, 8])
        self.assertEqual(self.meta_held(t), list(range(8)))
        self.successResultOf(t.write_trusted_piece(9, b"abcd", pdigest(b"abcd")))
        self.assertEqual(writes, [4, 8, 10])
        self.assertEqual(self.meta_held(t), list(range(10)))

    def test_debounced_by_time(self):
        """When fewer than persist_pieces pieces arrive, meta.json is saved after persist_interval."""
        store = self.make_store(persist_pieces=100, persist_interval=2)
        t = store.create(TID, "u", 16, 4)
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.assertEqual(self.meta_held(t), [])
        self.clock.advance(1.9)
        self.assertEqual(self.meta_held(t), [])
        self.clock.advance(0.2)
        self.assertEqual(self.meta_held(t), [0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_saved_on_completion(self):
        """When the last piece arrives, meta.json is saved at once."""
        store = self.make_store(persist_pieces=100, persist_interval=60)
        t = store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_trusted_piece(1, b"efgh", pdigest(b"efgh")))
        self.assertEqual(self.meta_held(t), [])
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.assertEqual(self.meta_held(t), [0, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_saves_and_cancels(self):
        """When the store is closed, pending metadata is saved and no timer is left."""
        store = self.make_store(persist_pieces=100, persist_interval=60)
        t = store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_trusted_piece(1, b"efgh", pdigest(b"efgh")))
        store.close()
        self.assertEqual(self.meta_held(t), [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(t._fd)
        self.assertEqual(t.read(4, 4), b"efgh")  # reopens on demand

    def test_mark_after_write_completes(self):
        """When a write is in flight, the piece is not held until the pwrite finished."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
        self.assertFalse(t.has(0))
        self.assertRaises(PieceNotHeld, t.read, 0, 4)
        self.failureResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")), ValueError)
        runner.run_all()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(t.has(0))

    def test_failed_write_not_held(self):
        """When the pwrite fails with ENOSPC (and there is nothing to evict),
        the write Deferred fails with StoreFull and the piece is not held."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
        f, args, kw, rd = runner.pending.pop()
        rd.errback(OSError(28, "No space left on device"))
        self.failureResultOf(d, StoreFull)
        self.assertFalse(t.has(0))
        self.assertEqual(t._inflight, 0)
        # and it may be retried
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
        runner.run_all()
        self.successResultOf(d)
        self.assertTrue(t.has(0))

    def test_remove_during_write(self):
        """When a task is removed while a write is in flight, the fd stays open until the write ends, which then fails."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
        store.remove(TID)
        self.assertIsNotNone(t._fd)
        runner.run_all()  # the pwrite, then the trash deletion
        self.failureResultOf(d, TaskRemoved)
        self.assertIsNone(t._fd)
        self.assertFalse(os.path.exists(t.directory))
        self.assertEqual([n for n in os.listdir(self.root) if n.startswith(".trash")], [])

    def test_pinned_fd_survives_remove(self):
        """When a pinned task is removed, its fileno() stays valid until unpin()."""
        store = self.make_store()
        t = store.create(TID, "u", 4, 4)
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        t.pin()
        fd = t.fileno()
        store.remove(TID)
        self.assertEqual(os.pread(fd, 4, 0), b"abcd")
        t.unpin()
        self.assertIsNone(t._fd)
        self.assertRaises(ValueError, t.unpin)


class ThreadRunnerTests(TestCase):
    """The store with a real ThreadRunner on the real reactor."""

    def test_threaded_round_trip(self):
        """When pieces are written and read through a ThreadRunner, the bytes round-trip."""
        runner = ThreadRunner(global_reactor, max_threads=2)
        self.addCleanup(runner.stop)
        store = PieceStore(self.mktemp(), clock=Clock(), runner=runner)
        self.addCleanup(store.close)
        data = blob(3 * 65536 + 5)
        t = store.create(TID, "u", len(data), 65536)

        async def go():
            for i in range(t.piece_count):
                off, n = t.piece_range(i)
                await t.write_trusted_piece(i, data[off:off + n], pdigest(data[off:off + n]))
            got = [await t.read_piece(i) for i in range(t.piece_count)]
            self.assertEqual(b"".join(got), data)
            self.assertTrue(t.is_complete)

        return Deferred.fromCoroutine(go())


class ReadRangeTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.store = self.make_store()

    def test_read_range_in_runner(self):
        """When read_range() is used, the pread runs in the runner and the fd is busy until it ends."""
        runner = ManualRunner()
        store = self.make_store(root=self.mktemp(), runner=runner)
        t = store.create(TID, "u", 10, 4)
        for i, chunk in enumerate([b"abcd", b"efgh", b"ij"]):
            d = t.write_trusted_piece(i, chunk, pdigest(chunk))
            runner.run_all()
            self.successResultOf(d)
        d = t.read_range(2, 7)
        self.assertNoResult(d)
        self.assertEqual(t._inflight, 1)
        runner.run_all()
        self.assertEqual(self.successResultOf(d), b"cdefghi")
        self.assertEqual(t._inflight, 0)

    def test_read_range_checks(self):
        """When read_range() touches an unheld piece or goes past the end, it fails."""
        t = self.store.create(TID, "u", 10, 4)
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.assertEqual(self.successResultOf(t.read_range(1, 3)), b"bcd")
        self.assertEqual(self.successResultOf(t.read_range(4, 0)), b"")
        self.failureResultOf(t.read_range(3, 2), PieceNotHeld)
        self.failureResultOf(t.read_range(8, 3), ValueError)
        self.failureResultOf(t.read_range(0, 65 << 20), ValueError)
        self.store.remove(TID)
        self.failureResultOf(t.read_range(0, 4), TaskRemoved)

"""Tests for dragonfly.storage.store: the on-disk piece store."""
import hashlib
import json
import os

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dragonfly.digest import piece_digest
from dragonfly.interfaces import IPieceStore
from dragonfly.storage import store as store_module
from dragonfly.storage.store import (
    MAX_READ, DigestMismatch, PieceBuffer, PieceNotHeld, PieceStore, TaskRemoved, task_key)
from dragonfly.runtime.threads import SyncRunner, ThreadRunner

TID = "a" * 64


def pdigest(data):
    return piece_digest(data)


def blob(length, seed=b"x"):
    """Deterministic bytes of C{length}."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:length])


class ManualRunner:
    """An IRunner whose calls run only when the test says so (work 'in flight')."""

    def __init__(self):
        self.pending = []

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self.pending.append((f, args, kwargs, d))
        return d

    def run_next(self):
        f, args, kwargs, d = self.pending.pop(0)
        maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def run_all(self):
        while self.pending:
            self.run_next()


class StoreMixin:
    def make_store(self, root=None, runner=None, **kw):
        if root is None:
            root = self.root
        kw.setdefault("clock", self.clock)
        store = PieceStore(root, runner=runner or SyncRunner(), **kw)
        self.addCleanup(store.close)
        return store

    def write_all(self, task, data):
        for i in range(task.piece_count):
            off, n = task.piece_range(i)
            chunk = data[off:off + n]
            self.successResultOf(task.write_piece(i, chunk, pdigest(chunk)))

    def read_meta(self, task):
        with open(task.meta_path) as f:
            return json.load(f)

    def meta_held(self, task):
        held = bytes.fromhex(self.read_meta(task)["held"])
        return [i for i in range(task.piece_count) if held[i >> 3] & (0x80 >> (i & 7))]


class RoundTripTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.make_store()

    def test_interface(self):
        """PieceStore provides IPieceStore."""
        self.assertTrue(verifyObject(IPieceStore, self.store))

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
        self.patch(store_module, "WRITE_SLICE", 100)
        sizes = []
        real = os.pwrite

        def pwrite(fd, buf, offset):
            sizes.append(len(buf))
            return real(fd, buf, offset)
        self.patch(store_module.os, "pwrite", pwrite)
        chunks = [data[:1000], memoryview(data)[1000:1001], bytearray(data[1001:4096])]
        self.successResultOf(t.write_piece(0, chunks, pdigest(data)))
        self.assertEqual(t.read(0, 4096), data)
        self.assertTrue(sizes)
        self.assertLessEqual(max(sizes), 100)
        self.assertEqual(sum(sizes), 4096)

    def test_chunk_list_wrong_length(self):
        """When a chunk list does not add up to the piece length, write_piece fails
        with ValueError and nothing is held."""
        t = self.store.create(TID, "u", 8, 4)
        self.failureResultOf(t.write_piece(0, [b"ab", b"c"], pdigest(b"abc")), ValueError)
        self.failureResultOf(t.write_piece(0, [b"ab", "cd"], pdigest(b"abcd")), TypeError)
        self.assertEqual(t.completed(), [])

    def test_verify(self):
        """With verify=True, data hashing to the digest is written and held; data
        that does not fails with DigestMismatch (a ValueError) and not a byte of it
        reaches the data file."""
        t = self.store.create(TID, "u", 8, 4)
        f = self.failureResultOf(t.write_piece(0, [b"ab", b"cX"], pdigest(b"abcd"), verify=True),
                                 DigestMismatch)
        self.assertIsInstance(f.value, ValueError)
        self.assertEqual(f.value.got, pdigest(b"abcX"))
        self.assertFalse(t.has(0))
        with open(t.path, "rb") as fh:
            self.assertEqual(fh.read(), b"\0" * 8)
        self.successResultOf(t.write_piece(0, [b"ab", b"cd"], pdigest(b"abcd"), verify=True))
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
        self.successResultOf(t.write_piece(2, data[2048:3072], pdigest(data[2048:3072])))
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
        """When a piece has the wrong length, write_piece fails and nothing is held or written."""
        t = self.store.create(TID, "u", 10, 4)
        for index, data in [(0, b"abc"), (0, b"abcde"), (2, b"abc"), (2, b"a"), (1, b"")]:
            f = self.failureResultOf(t.write_piece(index, data, pdigest(data)), ValueError)
            self.assertIn("bytes", str(f.value))
        self.assertEqual(t.completed(), [])
        with open(t.path, "rb") as fh:
            self.assertEqual(fh.read(), b"\0" * 10)

    def test_bad_index_or_digest_refused(self):
        """When the index or digest is malformed, write_piece fails with ValueError."""
        t = self.store.create(TID, "u", 10, 4)
        self.failureResultOf(t.write_piece(3, b"ab", pdigest(b"ab")), ValueError)
        self.failureResultOf(t.write_piece(-1, b"abcd", pdigest(b"abcd")), ValueError)
        self.failureResultOf(t.write_piece(0, b"abcd", "nothex"), ValueError)
        self.failureResultOf(t.write_piece(0, b"abcd", None), ValueError)
        self.failureResultOf(t.write_piece(0, "abcd", pdigest(b"abcd")), TypeError)
        self.assertEqual(t.completed(), [])

    def test_uppercase_digest_normalised(self):
        """When the digest is upper-case hex, it is stored lower-case."""
        t = self.store.create(TID, "u", 4, 4)
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd").upper()))
        self.assertEqual(t.digest(0), pdigest(b"abcd"))

    def test_rewrite_held_piece(self):
        """When a held piece is written again, the same digest is a no-op and another is refused."""
        t = self.store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.failureResultOf(t.write_piece(0, b"wxyz", pdigest(b"wxyz")), ValueError)
        self.assertEqual(t.read(0, 4), b"abcd")
        self.assertEqual(t.digest(0), pdigest(b"abcd"))

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
        self.successResultOf(t.write_piece(0, bytearray(b"abcd"), pdigest(b"abcd")))
        self.successResultOf(t.write_piece(1, memoryview(b"--efgh--")[2:6], pdigest(b"efgh")))
        self.assertEqual(t.read(0, 8), b"abcdefgh")

    def test_usage_counts_allocated_lengths(self):
        """usage() counts the full length of every task; held_bytes() only what is written."""
        a = self.store.create("a", "u", 1000, 100)
        self.store.create("b", "u", 500, 100)
        self.successResultOf(a.write_piece(0, b"x" * 100, pdigest(b"x" * 100)))
        self.assertEqual(self.store.usage(), 1500)
        self.assertEqual(self.store.held_bytes(), 100)

    def test_create_validates(self):
        """When create() gets bad arguments, it raises ValueError and makes nothing."""
        for args in [("", "u", 1, 1), (5, "u", 1, 1), ("t", None, 1, 1), ("t", "u", -1, 1),
                     ("t", "u", 1, 0), ("t", "u", 1.5, 1), ("t", "u", True, 1),
                     ("x" * 2000, "u", 1, 1)]:
            self.assertRaises(ValueError, self.store.create, *args)
        self.assertRaises(ValueError, self.store.create, "t", "u", 1, 1, etag=5)
        self.assertEqual(self.store.tasks(), [])
        self.assertEqual(os.listdir(self.root), [])

    def test_create_replaces(self):
        """When create() is called for a known task, the old entry is dropped and a fresh one made."""
        old = self.store.create(TID, "http://o/old", 8, 4, etag='"1"')
        self.successResultOf(old.write_piece(0, b"abcd", pdigest(b"abcd")))
        new = self.store.create(TID, "http://o/new", 12, 4, etag='"2"')
        self.assertIsNot(old, new)
        self.assertTrue(old.removed)
        self.assertIs(self.store.get(TID), new)
        self.assertEqual(new.completed(), [])
        self.assertEqual(os.path.getsize(new.path), 12)
        with open(new.path, "rb") as f:
            self.assertEqual(f.read(), b"\0" * 12)
        self.assertEqual(self.read_meta(new)["url"], "http://o/new")
        self.failureResultOf(old.write_piece(1, b"efgh", pdigest(b"efgh")), TaskRemoved)
        self.assertRaises(TaskRemoved, old.read, 0, 4)
        self.assertEqual(self.store.usage(), 12)

    def test_create_over_leftover_directory(self):
        """When the task's directory exists on disk but is not loaded, create() starts afresh."""
        leftover = self.store.path_for(TID)
        os.makedirs(leftover)
        with open(os.path.join(leftover, "data"), "wb") as f:
            f.write(b"junk" * 10)
        t = self.store.create(TID, "u", 8, 4)
        with open(t.path, "rb") as f:
            self.assertEqual(f.read(), b"\0" * 8)

    def test_remove(self):
        """When a task is removed, its directory goes and get() forgets it."""
        t = self.store.create(TID, "u", 8, 4)
        self.store.remove(TID)
        self.assertIsNone(self.store.get(TID))
        self.assertFalse(os.path.exists(t.directory))
        self.assertTrue(t.removed)
        self.assertIsNone(t._fd)
        self.assertRaises(TaskRemoved, t.fileno)
        self.store.remove(TID)  # removing twice is fine
        self.assertEqual([n for n in os.listdir(self.root) if n.startswith(".trash")], [])

    def test_validators(self):
        """When set_validators() is called, the new etag and date are saved at once."""
        t = self.store.create(TID, "u", 8, 4, etag='"1"')
        t.set_validators('"2"', "Wed, 01 Jan 2031 00:00:00 GMT")
        meta = self.read_meta(t)
        self.assertEqual((meta["etag"], meta["last_modified"]),
                         ('"2"', "Wed, 01 Jan 2031 00:00:00 GMT"))


class PathSafetyTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        base = self.mktemp()
        os.makedirs(base)
        self.base = os.path.abspath(base)
        self.root = os.path.join(self.base, "store")
        self.clock = Clock()
        self.store = self.make_store()

    def test_hostile_task_ids(self):
        """When task ids contain '/', '..', NUL or absolute paths, every file stays under root."""
        hostile = ["../../etc/passwd", "/etc/passwd", "..", ".", "a/b", "a\0b",
                   "..\\..\\x", "~root", "sha256:" + "0" * 64, "\u00e9\u202e",
                   "meta.json", ".trash-0000", "x" * 1024]
        for tid in hostile:
            t = self.store.create(tid, "http://o/" + str(len(tid)), 5, 4)
            self.successResultOf(t.write_piece(1, b"z", pdigest(b"z")))
            key = task_key(tid)
            self.assertEqual(t.directory, os.path.join(os.path.abspath(self.root), key[:2], key))
            for p in (t.path, t.meta_path, t.directory):
                real = os.path.realpath(p)
                self.assertTrue(real.startswith(os.path.realpath(self.root) + os.sep), p)
        self.assertEqual(os.listdir(self.base), ["store"])
        for name in os.listdir(self.root):
            self.assertRegex(name, r"\A[0-9a-f]{2}\Z")
        self.assertRaises(ValueError, self.store.create, "\udcff", "u", 5, 4)
        # And they all come back after a restart, under their own ids.
        self.store.close()
        again = self.make_store()
        again.load()
        self.assertEqual(sorted(t.task_id for t in again.tasks()), sorted(hostile))
        for tid in hostile:
            self.assertEqual(again.get(tid).read(4, 1), b"z")


class PersistenceTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(5000)

    def test_persist_across_restart(self):
        """When a new PieceStore loads the same root, tasks come back with pieces, digests and validators."""
        store = self.make_store()
        data = blob(10)
        t = store.create(TID, "http://o/f", 10, 4, etag='"e"', last_modified="Mon")
        self.successResultOf(t.write_piece(0, data[:4], pdigest(data[:4])))
        self.successResultOf(t.write_piece(2, data[8:], pdigest(data[8:])))
        self.clock.advance(7)
        t.touch()
        store.close()

        again = self.make_store()
        again.load()
        u = again.get(TID)
        self.assertIsNotNone(u)
        self.assertEqual((u.url, u.length, u.piece_size, u.etag, u.last_modified),
                         ("http://o/f", 10, 4, '"e"', "Mon"))
        self.assertEqual(u.completed(), [0, 2])
        self.assertEqual(u.completed_bytes, 6)
        self.assertEqual((u.digest(0), u.digest(1), u.digest(2)), (pdigest(data[:4]), None, pdigest(data[8:])))
        self.assertEqual(u.read(0, 4), data[:4])
        self.assertEqual(self.successResultOf(u.read_piece(2)), data[8:])
        self.assertEqual((u.created, u.last_access), (5000, 5007))
        self.successResultOf(u.write_piece(1, data[4:8], pdigest(data[4:8])))
        self.assertTrue(u.is_complete)
        self.assertEqual(u.read(0, 10), data)

    def test_load_twice(self):
        """When load() runs again, tasks already known are kept as they are."""
        store = self.make_store()
        t = store.create(TID, "u", 4, 4)
        store.load()
        self.assertEqual(store.tasks(), [t])

    def test_debounced_by_count(self):
        """When pieces arrive, meta.json is rewritten only every persist_pieces pieces."""
        store = self.make_store(persist_pieces=4, persist_interval=60)
        t = store.create(TID, "u", 10 * 4, 4)
        writes = []
        real_save = t._save

        def counting_save():
            writes.append(t._held_count)
            real_save()
        t._save = counting_save
        for i in range(9):
            self.successResultOf(t.write_piece(i, b"abcd", pdigest(b"abcd")))
        self.assertEqual(writes, [4, 8])
        self.assertEqual(self.meta_held(t), list(range(8)))
        self.successResultOf(t.write_piece(9, b"abcd", pdigest(b"abcd")))
        self.assertEqual(writes, [4, 8, 10])
        self.assertEqual(self.meta_held(t), list(range(10)))

    def test_debounced_by_time(self):
        """When fewer than persist_pieces pieces arrive, meta.json is saved after persist_interval."""
        store = self.make_store(persist_pieces=100, persist_interval=2)
        t = store.create(TID, "u", 16, 4)
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
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
        self.successResultOf(t.write_piece(1, b"efgh", pdigest(b"efgh")))
        self.assertEqual(self.meta_held(t), [])
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.assertEqual(self.meta_held(t), [0, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_saves_and_cancels(self):
        """When the store is closed, pending metadata is saved and no timer is left."""
        store = self.make_store(persist_pieces=100, persist_interval=60)
        t = store.create(TID, "u", 8, 4)
        self.successResultOf(t.write_piece(1, b"efgh", pdigest(b"efgh")))
        store.close()
        self.assertEqual(self.meta_held(t), [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(t._fd)
        self.assertEqual(t.read(4, 4), b"efgh")  # reopens on demand

    def test_crash_never_claims_unwritten(self):
        """When the process dies with a write in flight, the reloaded store holds only finished, saved pieces."""
        runner = ManualRunner()
        store = self.make_store(runner=runner, persist_pieces=1)
        t = store.create(TID, "u", 12, 4)
        d0 = t.write_piece(0, b"abcd", pdigest(b"abcd"))
        runner.run_all()
        self.successResultOf(d0)
        d1 = t.write_piece(1, b"efgh", pdigest(b"efgh"))
        self.assertNoResult(d1)
        self.assertFalse(t.has(1))
        self.assertEqual(self.meta_held(t), [0])
        # Crash here: no close(), the pwrite of piece 1 never ran.
        again = self.make_store()
        again.load()
        u = again.get(TID)
        self.assertEqual(u.completed(), [0])
        self.assertEqual(u.read(0, 4), b"abcd")
        self.assertRaises(PieceNotHeld, u.read, 4, 4)

    def test_crash_loses_only_unsaved_marks(self):
        """When the process dies between debounced saves, unsaved pieces are simply missing after reload."""
        store = self.make_store(persist_pieces=2, persist_interval=60)
        t = store.create(TID, "u", 16, 4)
        for i in range(3):
            self.successResultOf(t.write_piece(i, b"abcd", pdigest(b"abcd")))
        again = self.make_store()
        again.load()
        self.assertEqual(again.get(TID).completed(), [0, 1])

    def test_mark_after_write_completes(self):
        """When a write is in flight, the piece is not held until the pwrite finished."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_piece(0, b"abcd", pdigest(b"abcd"))
        self.assertFalse(t.has(0))
        self.assertRaises(PieceNotHeld, t.read, 0, 4)
        self.failureResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")), ValueError)
        runner.run_all()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(t.has(0))

    def test_failed_write_not_held(self):
        """When the pwrite fails, the write Deferred fails and the piece is not held."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_piece(0, b"abcd", pdigest(b"abcd"))
        f, args, kw, rd = runner.pending.pop()
        rd.errback(OSError(28, "No space left on device"))
        self.failureResultOf(d, OSError)
        self.assertFalse(t.has(0))
        self.assertEqual(t._inflight, 0)
        # and it may be retried
        d = t.write_piece(0, b"abcd", pdigest(b"abcd"))
        runner.run_all()
        self.successResultOf(d)
        self.assertTrue(t.has(0))

    def test_remove_during_write(self):
        """When a task is removed while a write is in flight, the fd stays open until the write ends, which then fails."""
        runner = ManualRunner()
        store = self.make_store(runner=runner)
        t = store.create(TID, "u", 8, 4)
        d = t.write_piece(0, b"abcd", pdigest(b"abcd"))
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
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        t.pin()
        fd = t.fileno()
        store.remove(TID)
        self.assertEqual(os.pread(fd, 4, 0), b"abcd")
        t.unpin()
        self.assertIsNone(t._fd)
        self.assertRaises(ValueError, t.unpin)

    def test_fd_kept_and_bounded(self):
        """When tasks are read repeatedly, each keeps one fd, and at most max_open_files stay open."""
        store = self.make_store(max_open_files=2)
        ts = [store.create(str(i), "u", 4, 4) for i in range(3)]
        for t in ts:
            self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        fd = ts[2].fileno()
        ts[2].read(0, 4)
        self.assertEqual(ts[2].fileno(), fd)
        self.assertLessEqual(len(store._open), 2)
        for t in ts:
            t.read(0, 4)
            self.assertLessEqual(len(store._open), 2)
        ts[0].pin()
        ts[0].fileno()
        ts[1].read(0, 4)
        ts[2].read(0, 4)
        self.assertIsNotNone(ts[0]._fd)  # pinned: never closed under its user
        ts[0].unpin()


class CorruptionTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(100)
        store = self.make_store()
        self.good = store.create("good", "u", 8, 4)
        self.successResultOf(self.good.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.bad = store.create("bad", "u", 8, 4)
        self.successResultOf(self.bad.write_piece(0, b"abcd", pdigest(b"abcd")))
        store.close()

    def reload_without_bad(self):
        store = self.make_store()
        store.load()
        self.assertEqual([t.task_id for t in store.tasks()], ["good"])
        self.assertEqual(store.get("good").completed(), [0])
        self.assertFalse(os.path.exists(self.bad.directory))
        self.assertTrue(os.path.exists(self.good.directory))
        self.assertEqual([n for n in os.listdir(self.root) if n.startswith(".trash")], [])
        return store

    def edit_meta(self, **changes):
        with open(self.bad.meta_path) as f:
            meta = json.load(f)
        meta.update(changes)
        with open(self.bad.meta_path, "w") as f:
            json.dump(meta, f)

    def test_garbage_meta(self):
        """When meta.json is not JSON, the entry is logged and deleted; others stay."""
        with open(self.bad.meta_path, "wb") as f:
            f.write(b"\x00{not json")
        self.reload_without_bad()

    def test_truncated_meta(self):
        """When meta.json is cut short, the entry is dropped."""
        with open(self.bad.meta_path, "r+b") as f:
            f.truncate(20)
        self.reload_without_bad()

    def test_missing_meta(self):
        """When only the data file exists (crash during create), the entry is dropped."""
        os.unlink(self.bad.meta_path)
        self.reload_without_bad()

    def test_missing_data(self):
        """When the data file is missing, the entry is dropped."""
        os.unlink(self.bad.path)
        self.reload_without_bad()

    def test_data_wrong_size(self):
        """When the data file is not the task's length, the entry is dropped."""
        os.truncate(self.bad.path, 3)
        self.reload_without_bad()

    def test_wrong_task_id(self):
        """When meta.json names a task id that does not hash to its directory, the entry is dropped."""
        self.edit_meta(task_id="good")
        self.reload_without_bad()

    def test_held_without_digest(self):
        """When meta.json claims a piece without a digest, the entry is dropped."""
        self.edit_meta(digests=[None, None])
        self.reload_without_bad()

    def test_older_digest_algorithm(self):
        """A version 1 meta.json (sha256 piece digests) is dropped: its digests
        would never match what a supernode now sends."""
        self.edit_meta(version=1)
        self.reload_without_bad()

    def test_bad_fields(self):
        """When any field has the wrong type or size, the entry is dropped."""
        cases = [dict(version=3), dict(length="8"), dict(length=-1), dict(piece_size=0),
                 dict(digests=[pdigest(b"abcd")]), dict(digests=["zz", None]), dict(held="c0c0"),
                 dict(held="nothex"), dict(held="ff"), dict(etag=5), dict(created=None),
                 dict(last_access="now"), dict(url=None)]
        with open(self.bad.meta_path) as f:
            original = f.read()
        for change in cases:
            with open(self.bad.meta_path, "w") as f:
                f.write(original)
            self.edit_meta(**change)
            store = self.make_store()
            store.load()
            self.assertIsNone(store.get("bad"), change)
            self.assertIsNotNone(store.get("good"))
            self.assertFalse(os.path.exists(self.bad.directory))
            # restore for the next case
            self.setUp()

    def test_meta_not_an_object(self):
        """When meta.json is valid JSON but not an object, the entry is dropped."""
        with open(self.bad.meta_path, "w") as f:
            f.write("[1, 2]")
        self.reload_without_bad()

    def test_leftovers_cleaned_unknown_kept(self):
        """When root has trash dirs and temp metas they are removed; unknown files are left alone."""
        trash = os.path.join(self.root, ".trash-abc")
        os.makedirs(os.path.join(trash, "x"))
        with open(self.good.meta_path + ".tmp", "w") as f:
            f.write("{")
        stranger = os.path.join(self.root, "README")
        with open(stranger, "w") as f:
            f.write("mine")
        odd = os.path.join(self.root, self.good.key[:2], "not-a-hash")
        os.makedirs(odd)
        store = self.make_store()
        store.load()
        self.assertIsNotNone(store.get("good"))
        self.assertFalse(os.path.exists(trash))
        self.assertFalse(os.path.exists(self.good.meta_path + ".tmp"))
        self.assertTrue(os.path.exists(stranger))
        self.assertTrue(os.path.exists(odd))

    def test_future_timestamps_clamped(self):
        """When meta.json has a last access in the future, it loads as now."""
        self.edit_meta(last_access=1e12, created=1e12)
        store = self.make_store()
        store.load()
        self.assertEqual(store.get("bad").last_access, 100)


class SealTests(StoreMixin, SynchronousTestCase):
    """A complete task's data file is sealed: if it changes (dfget may hard-link
    its output to it, and users edit outputs), the task is dropped, never served."""

    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.store = self.make_store()
        self.data = blob(10)
        self.task = self.store.create(TID, "u", 10, 4)
        self.write_all(self.task, self.data)

    def edit(self, path, data=b"Z", offset=0):
        before = os.stat(path).st_mtime_ns
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        st = os.stat(path)
        if st.st_mtime_ns == before:
            # A kernel with coarse timestamps may not tick between two writes
            # this close together; a user's edit comes much later.
            os.utime(path, ns=(st.st_atime_ns, before + 10**9))

    def test_seal_saved(self):
        """Completing a task records the data file's size and mtime in meta.json."""
        st = os.stat(self.task.path)
        self.assertEqual(self.read_meta(self.task)["sealed"], [10, st.st_mtime_ns])
        self.assertTrue(self.task.intact())

    def test_unchanged_task_kept(self):
        """A hard link to the file (what dfget makes) does not break the seal."""
        os.link(self.task.path, self.mktemp())
        self.assertIs(self.store.get(TID), self.task)

    def test_edited_through_a_link_dropped(self):
        """A write through another name for the file: get() drops the task and its directory."""
        out = self.mktemp()
        os.link(self.task.path, out)
        self.edit(out)
        self.assertIsNone(self.store.get(TID))
        self.assertTrue(self.task.removed)
        self.assertFalse(os.path.exists(self.task.directory))
        with open(out, "rb") as f:   # the user's file is theirs: untouched
            self.assertEqual(f.read(), b"Z" + self.data[1:])

    def test_truncated_dropped(self):
        """Truncating the file of a complete task drops the task."""
        os.truncate(self.task.path, 3)
        self.assertIsNone(self.store.get(TID))

    def test_partial_task_not_sealed(self):
        """A task still downloading is not sealed: its own writes change the file."""
        task = self.store.create("partial", "u", 8, 4)
        self.successResultOf(task.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.edit(task.path, offset=6)
        self.assertIs(self.store.get("partial"), task)
        self.assertIsNone(self.read_meta(task)["sealed"])

    def test_edited_while_stopped_dropped_at_load(self):
        """A file changed while no daemon ran: load() drops the entry."""
        self.store.close()
        self.edit(self.task.path, offset=9)
        store = self.make_store()
        store.load()
        self.assertEqual(store.tasks(), [])
        self.assertFalse(os.path.exists(self.task.directory))

    def test_reload_keeps_seal(self):
        """After a restart the seal still guards the file."""
        self.store.close()
        store = self.make_store()
        store.load()
        task = store.get(TID)
        self.assertTrue(task.is_complete)
        self.edit(task.path)
        self.assertIsNone(store.get(TID))

    def test_old_meta_sealed_at_load(self):
        """A complete entry saved without a seal (older meta.json) is sealed at load."""
        self.store.close()
        meta = self.read_meta(self.task)
        del meta["sealed"]
        with open(self.task.meta_path, "w") as f:
            json.dump(meta, f)
        store = self.make_store()
        store.load()
        task = store.get(TID)
        self.assertTrue(task.intact())
        self.edit(task.path)
        self.assertIsNone(store.get(TID))

    def test_bad_seal_is_corrupt(self):
        """A seal that is not two integers makes the entry corrupt."""
        self.store.close()
        for bad in ("x", [1], [1, "2"], [True, 2]):
            meta = self.read_meta(self.task)
            meta["sealed"] = bad
            with open(self.task.meta_path, "w") as f:
                json.dump(meta, f)
            store = self.make_store()
            store.load()
            self.assertEqual(store.tasks(), [], bad)
            self.assertFalse(os.path.exists(self.task.directory))
            self.recreate()

    def recreate(self):
        store = self.make_store()
        store.load()
        task = store.create(TID, "u", 10, 4)
        self.write_all(task, self.data)
        store.close()


class EvictionTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)

    def test_ttl(self):
        """When a task is not accessed for ttl seconds, gc() removes it and reports its bytes."""
        store = self.make_store(ttl=100)
        a = store.create("a", "u", 300, 100)
        b = store.create("b", "u", 200, 100)
        self.clock.advance(60)
        b.touch()
        self.clock.advance(39)
        self.assertEqual(store.gc(), 0)
        self.clock.advance(1)
        self.assertEqual(store.gc(), 300)
        self.assertIsNone(store.get("a"))
        self.assertIs(store.get("b"), b)
        self.assertFalse(os.path.exists(a.directory))
        self.clock.advance(100)
        self.assertEqual(store.gc(), 200)
        self.assertEqual(store.tasks(), [])

    def test_access_resets_ttl(self):
        """When pieces are read or written, the task's last access moves forward."""
        store = self.make_store(ttl=100)
        t = store.create("a", "u", 8, 4)
        self.clock.advance(90)
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.clock.advance(90)
        t.read(0, 4)
        self.clock.advance(90)
        self.successResultOf(t.read_piece(0))
        self.clock.advance(90)
        self.assertEqual(store.gc(), 0)
        self.assertEqual(store.tasks(), [t])

    def test_ttl_survives_restart(self):
        """When the store restarts, saved last-access times still drive TTL."""
        store = self.make_store(ttl=100)
        store.create("a", "u", 8, 4)
        self.clock.advance(50)
        store.create("b", "u", 8, 4)
        store.close()
        self.clock.advance(60)
        again = self.make_store(ttl=100)
        again.load()
        self.assertEqual(again.gc(), 8)
        self.assertEqual([t.task_id for t in again.tasks()], ["b"])

    def test_lru_to_quota(self):
        """When usage is over quota, gc() removes least recently used tasks until it fits."""
        store = self.make_store(quota=1000)
        ts = {}
        for name in "abcd":
            ts[name] = store.create(name, "u", 250, 50)
            self.clock.advance(1)
        ts["a"].touch()  # a is now the most recent; b the least
        self.assertEqual(store.gc(), 0)
        store.quota = 600
        self.assertEqual(store.gc(), 500)
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "d"])
        self.assertLessEqual(store.usage(), 600)

    def test_create_makes_room(self):
        """When a new task would go over quota, creating it evicts LRU tasks first."""
        store = self.make_store(quota=1000)
        for name in "abcd":
            store.create(name, "u", 250, 50)
            self.clock.advance(1)
        store.get("a").touch()
        store.create("e", "u", 400, 50)
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "d", "e"])
        self.assertLessEqual(store.usage(), 1000)

    def test_reserve(self):
        """reserve() makes room when it can and says whether the bytes fit the quota."""
        store = self.make_store(quota=1000)
        self.assertTrue(store.reserve(1000))
        a = store.create("a", "u", 600, 100)
        a.pin()
        self.assertTrue(store.reserve(400))
        self.assertFalse(store.reserve(401))
        self.assertIs(store.get("a"), a)
        a.unpin()
        self.assertTrue(store.reserve(1000))
        self.assertIsNone(store.get("a"))
        self.assertTrue(self.make_store(root=self.mktemp()).reserve(10 ** 15))

    def test_pinned_never_evicted(self):
        """When a task is pinned, neither TTL nor quota removes it; after unpin they do."""
        store = self.make_store(quota=100, ttl=10)
        t = store.create("p", "u", 500, 100)
        t.pin()
        t.pin()
        self.clock.advance(1000)
        self.assertEqual(store.gc(), 0)
        store.create("q", "u", 50, 50)  # over quota already: still keeps p
        self.assertIs(store.get("p"), t)
        t.unpin()
        self.assertEqual(store.gc(), 50)  # q, the only unpinned task, goes
        self.assertIs(store.get("p"), t)
        t.unpin()
        self.assertEqual(store.gc(), 500)
        self.assertIsNone(store.get("p"))

    def test_busy_not_evicted(self):
        """When a task has disk I/O in flight, gc() leaves it alone."""
        runner = ManualRunner()
        store = self.make_store(runner=runner, ttl=10)
        t = store.create("busy", "u", 8, 4)
        d = t.write_piece(0, b"abcd", pdigest(b"abcd"))
        self.clock.advance(100)
        self.assertEqual(store.gc(), 0)
        runner.run_all()
        self.successResultOf(d)
        self.clock.advance(100)
        self.assertEqual(store.gc(), 8)

    def test_gc_saves_access_times(self):
        """When gc() runs, pending last-access times are written to meta.json."""
        store = self.make_store(ttl=1000)
        t = store.create("a", "u", 8, 4)
        self.clock.advance(5)
        t.touch()
        store.gc()
        self.assertEqual(self.read_meta(t)["last_access"], 1005)


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
                await t.write_piece(i, data[off:off + n], pdigest(data[off:off + n]))
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
            d = t.write_piece(i, chunk, pdigest(chunk))
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
        self.successResultOf(t.write_piece(0, b"abcd", pdigest(b"abcd")))
        self.assertEqual(self.successResultOf(t.read_range(1, 3)), b"bcd")
        self.assertEqual(self.successResultOf(t.read_range(4, 0)), b"")
        self.failureResultOf(t.read_range(3, 2), PieceNotHeld)
        self.failureResultOf(t.read_range(8, 3), ValueError)
        self.failureResultOf(t.read_range(0, 65 << 20), ValueError)
        self.store.remove(TID)
        self.failureResultOf(t.read_range(0, 4), TaskRemoved)


class PieceBufferTests(SynchronousTestCase):
    def test_collects_and_hashes(self):
        """When chunks are added, take() returns them in order (small ones
        coalesced, big ones as given) with the piece digest of all of them, and the
        buffer starts afresh."""
        big = blob(PieceBuffer.MIN_PART, b"b")
        buf = PieceBuffer()
        for part in (b"a", b"bc", big, b"", memoryview(b"xyz")):
            buf.add(part)
        self.assertEqual(buf.nbytes, 3 + len(big) + 3)
        chunks, digest = buf.take()
        body = b"abc" + big + b"xyz"
        self.assertEqual(b"".join(bytes(c) for c in chunks), body)
        self.assertEqual(digest, pdigest(body))
        self.assertIs(chunks[1], big)
        self.assertEqual(len(chunks), 3)
        self.assertEqual(buf.nbytes, 0)
        self.assertEqual(buf.take(), ([], pdigest(b"")))

    def test_small_chunks_bounded(self):
        """When many tiny chunks arrive, they are merged into chunks of at least
        MIN_PART bytes, so the list stays short."""
        buf = PieceBuffer()
        for _ in range(3 * PieceBuffer.MIN_PART // 10):
            buf.add(b"0123456789")
        chunks, digest = buf.take()
        self.assertLessEqual(len(chunks), 4)
        self.assertEqual(sum(len(c) for c in chunks), 3 * PieceBuffer.MIN_PART // 10 * 10)

"""Tests for dragonfly.storage.store: creating, finding, removing, evicting and loading tasks."""
import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dragonfly.interfaces import IPieceStore
from dragonfly.storage.errors import PieceNotHeld, TaskRemoved
from dragonfly.storage.layout import task_key
from dragonfly.test.storefakes import TID, ManualRunner, StoreMixin, blob, pdigest


class PieceStoreTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.make_store()

    def test_interface(self):
        """PieceStore provides IPieceStore."""
        self.assertTrue(verifyObject(IPieceStore, self.store))

    def test_usage_counts_held_bytes(self):
        """usage() and held_bytes() count what is written; allocated() the full lengths."""
        a = self.store.create("a", "u", 1000, 100)
        self.store.create("b", "u", 500, 100)
        self.successResultOf(a.write_trusted_piece(0, b"x" * 100, pdigest(b"x" * 100)))
        self.assertEqual(self.store.usage(), 100)
        self.assertEqual(self.store.held_bytes(), 100)
        self.assertEqual(self.store.allocated(), 1500)
        self.store.remove("a")
        self.assertEqual(self.store.usage(), 0)

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
        self.successResultOf(old.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        new = self.store.create(TID, "http://o/new", 12, 4, etag='"2"')
        self.assertIsNot(old, new)
        self.assertTrue(old.removed)
        self.assertIs(self.store.get(TID), new)
        self.assertEqual(new.completed(), [])
        self.assertEqual(os.path.getsize(new.path), 12)
        with open(new.path, "rb") as f:
            self.assertEqual(f.read(), b"\0" * 12)
        self.assertEqual(self.read_meta(new)["url"], "http://o/new")
        self.failureResultOf(old.write_trusted_piece(1, b"efgh", pdigest(b"efgh")), TaskRemoved)
        self.assertRaises(TaskRemoved, old.read, 0, 4)
        self.assertEqual(self.store.usage(), 0)
        self.assertEqual(self.store.allocated(), 12)

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
            self.successResultOf(t.write_trusted_piece(1, b"z", pdigest(b"z")))
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


class RestartTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(5000)

    def test_persist_across_restart(self):
        """When a new PieceStore loads the same root, tasks come back with pieces, digests and validators."""
        store = self.make_store()
        data = blob(10)
        t = store.create(TID, "http://o/f", 10, 4, etag='"e"', last_modified="Mon")
        self.successResultOf(t.write_trusted_piece(0, data[:4], pdigest(data[:4])))
        self.successResultOf(t.write_trusted_piece(2, data[8:], pdigest(data[8:])))
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
        self.successResultOf(u.write_trusted_piece(1, data[4:8], pdigest(data[4:8])))
        self.assertTrue(u.is_complete)
        self.assertEqual(u.read(0, 10), data)

    def test_load_twice(self):
        """When load() runs again, tasks already known are kept as they are."""
        store = self.make_store()
        t = store.create(TID, "u", 4, 4)
        store.load()
        self.assertEqual(store.tasks(), [t])

    def test_crash_never_claims_unwritten(self):
        """When the process dies with a write in flight, the reloaded store holds only finished, saved pieces."""
        runner = ManualRunner()
        store = self.make_store(runner=runner, persist_pieces=1)
        t = store.create(TID, "u", 12, 4)
        d0 = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
        runner.run_all()
        self.successResultOf(d0)
        d1 = t.write_trusted_piece(1, b"efgh", pdigest(b"efgh"))
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
            self.successResultOf(t.write_trusted_piece(i, b"abcd", pdigest(b"abcd")))
        again = self.make_store()
        again.load()
        self.assertEqual(again.get(TID).completed(), [0, 1])


class UncleanStopTests(StoreMixin, SynchronousTestCase):
    """After an unclean stop, held pieces are re-verified (in the runner) before
    they are served again; after a clean one they are taken as they are."""

    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()

    def complete_task(self, store, data):
        t = store.create(TID, "http://o/f", len(data), 4)
        self.write_all(t, data)
        self.assertTrue(t.is_complete)
        return t

    def edit_keeping_mtime(self, path, offset, data):
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def test_clean_close_marks_meta(self):
        """close() saves every task marked clean; a later change clears the mark."""
        store = self.make_store()
        t = self.complete_task(store, blob(12))
        self.assertFalse(self.read_meta(t)["clean"])
        store.close()
        self.assertTrue(self.read_meta(t)["clean"])
        u = store.create("other", "u", 8, 4)
        self.successResultOf(u.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        u.flush()
        self.assertFalse(self.read_meta(u)["clean"])

    def test_unclean_stop_reverifies(self):
        """Without a clean-shutdown mark, the pieces are re-hashed in the runner
        before they are served: none is held until then, an edited one (mtime
        kept, so the seal cannot tell) is not held again, the others are."""
        data = blob(12)
        store = self.make_store()
        t = self.complete_task(store, data)
        t.flush()   # a crash: no close()
        self.edit_keeping_mtime(t.path, 5, b"\xff")
        runner = ManualRunner()
        again = self.make_store(runner=runner)
        again.load()
        u = again.get(TID)
        self.assertEqual(u.completed(), [])
        self.assertRaises(PieceNotHeld, u.read, 0, 4)
        self.assertNoResult(again.reverified)
        runner.run_all()
        self.successResultOf(again.reverified)
        self.assertEqual(u.completed(), [0, 2])
        self.assertFalse(u.is_complete)
        self.assertEqual(u.read(0, 4), data[:4])
        d = u.write_trusted_piece(1, data[4:8], pdigest(data[4:8]))
        runner.run_all()
        self.successResultOf(d)
        self.assertTrue(u.is_complete)
        self.assertEqual(u.read(0, 12), data)

    def test_clean_stop_trusted(self):
        """After a clean close the pieces are held at once, with no re-hash."""
        store = self.make_store()
        self.complete_task(store, blob(12))
        store.close()
        runner = ManualRunner()
        again = self.make_store(runner=runner)
        again.load()
        self.assertTrue(again.get(TID).is_complete)
        self.successResultOf(again.reverified)
        self.assertEqual(runner.pending, [])


class CorruptionTests(StoreMixin, SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(100)
        store = self.make_store()
        self.good = store.create("good", "u", 8, 4)
        self.successResultOf(self.good.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
        self.bad = store.create("bad", "u", 8, 4)
        self.successResultOf(self.bad.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
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
        self.successResultOf(task.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
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
        self.successResultOf(t.write_trusted_piece(0, b"abcd", pdigest(b"abcd")))
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

    def fill(self, task):
        """Write every piece of C{task}."""
        for i in range(task.piece_count):
            if task.has(i):
                continue
            data = bytes([i % 256]) * task.piece_range(i)[1]
            self.successResultOf(task.write_trusted_piece(i, data, pdigest(data)))

    def test_lru_to_quota(self):
        """When usage is over quota, gc() removes least recently used tasks until it fits."""
        store = self.make_store(quota=1000)
        ts = {}
        for name in "abcd":
            ts[name] = store.create(name, "u", 250, 50)
            self.fill(ts[name])
            self.clock.advance(1)
        ts["a"].touch()  # a is now the most recent; b the least
        self.assertEqual(store.gc(), 0)
        store.quota = 600
        self.assertEqual(store.gc(), 500)
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "d"])
        self.assertLessEqual(store.usage(), 600)

    def test_create_evicts_nothing(self):
        """When a new task announces more than the free quota, creating it
        evicts nothing; its pieces evict LRU tasks as they are written."""
        store = self.make_store(quota=1000)
        for name in "abcd":
            self.fill(store.create(name, "u", 250, 50))
            self.clock.advance(1)
        store.get("a").touch()
        e = store.create("e", "u", 400, 50)
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "b", "c", "d", "e"])
        self.successResultOf(e.write_trusted_piece(0, b"e" * 50, pdigest(b"e" * 50)))
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "c", "d", "e"])
        self.fill(e)
        self.assertEqual(sorted(t.task_id for t in store.tasks()), ["a", "d", "e"])
        self.assertLessEqual(store.usage(), 1000)

    def test_writing_never_evicts_its_own_task(self):
        """When one task alone is over the quota, writing it evicts the others, never itself."""
        store = self.make_store(quota=100)
        self.fill(store.create("a", "u", 100, 50))
        self.clock.advance(1)
        big = store.create("big", "u", 300, 50)
        self.fill(big)
        self.assertEqual([t.task_id for t in store.tasks()], ["big"])
        self.assertTrue(big.is_complete)

    def test_fits(self):
        """fits() says whether a length could fit the quota at all, and evicts nothing."""
        store = self.make_store(quota=1000)
        self.fill(store.create("a", "u", 1000, 100))
        self.assertTrue(store.fits(1000))
        self.assertFalse(store.fits(1001))
        self.assertFalse(store.fits(1 << 40))
        self.assertIsNotNone(store.get("a"))
        self.assertTrue(self.make_store(root=self.mktemp()).fits(10 ** 15))

    def test_reserve(self):
        """reserve() makes room when it can and says whether the bytes fit the quota."""
        store = self.make_store(quota=1000)
        self.assertTrue(store.reserve(1000))
        a = store.create("a", "u", 600, 100)
        self.fill(a)
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
        self.fill(t)
        t.pin()
        t.pin()
        self.clock.advance(1000)
        self.assertEqual(store.gc(), 0)
        self.fill(store.create("q", "u", 50, 50))  # over quota already: still keeps p
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
        d = t.write_trusted_piece(0, b"abcd", pdigest(b"abcd"))
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

"""PieceStore: the tasks under one root directory, with quota, TTL, GC and loading.

Each task is a L{dragonfly.storage.taskfile.TaskFile} in its own directory
(L{dragonfly.storage.layout}); the store creates, finds and removes them,
evicts them (TTL, then least recently used down to the quota; pinned and busy
tasks stay), owns the file-descriptor budget shared by its tasks, and at
start-up loads the entries it finds, dropping those that are not usable.
Removed entries are first renamed to a trash name (atomic, so a new entry for
the same task can be made at once) and then deleted in the runner.

Quota and usage count the bytes *held*: a task is charged as its pieces are
written, never for the length its origin announced (an announcement is
unverified: a lying Content-Length must not evict the cache). When written
pieces take usage over the quota, least recently used tasks other than the
one being written are evicted.

The store also watches the real free space of its filesystem
(L{dragonfly.storage.diskspace}): before a piece is written it makes room for
it (evicting unpinned tasks, partial ones first, then least recently used),
and a write that still fails with ENOSPC is retried once after more
eviction, else fails with L{StoreFull}. L{health} says what is wrong.
"""
import os
import shutil
import time

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.interfaces import IPieceStore, IServedStore
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage import fileio
from dragonfly.storage.diskspace import DiskSpace, is_disk_full
from dragonfly.storage.errors import CorruptEntry, StoreError, StoreFull
from dragonfly.storage.fdbudget import FdBudget
from dragonfly.storage.layout import (
    DATA_NAME, META_NAME, TRASH_PREFIX, entry_dir, good_task_id, is_entry_name, is_int,
    is_prefix_dir_name, task_key, trash_path)
from dragonfly.storage import verify
from dragonfly.storage.meta import MAX_META_BYTES, is_held, parse
from dragonfly.storage.passthrough import DEFAULT_LIMIT as PASS_LIMIT
from dragonfly.storage.taskfile import TaskFile


class _WallClock:
    """Used only when no clock is injected (tap.py passes the reactor)."""

    def seconds(self):
        return time.time()


def _check_create_args(task_id, url, length, piece_size, etag, last_modified):
    if not good_task_id(task_id):
        raise ValueError(f"bad task id {task_id!r}")
    if not isinstance(url, str):
        raise ValueError(f"bad url {url!r}")
    if not is_int(length) or length < 0:
        raise ValueError(f"bad length {length!r}")
    if not is_int(piece_size) or piece_size <= 0:
        raise ValueError(f"bad piece size {piece_size!r}")
    for name, v in (("etag", etag), ("last_modified", last_modified)):
        if v is not None and not isinstance(v, str):
            raise ValueError(f"bad {name} {v!r}")


@implementer(IPieceStore, IServedStore)
class PieceStore:
    """Tasks on disk under C{root}, with a quota (bytes) and TTL (seconds); 0 = none.

    C{clock} is an IReactorTime (the reactor, or a task.Clock in tests); its
    callLater (when it has one) drives the debounced meta.json saves.
    C{runner} is an IRunner (a ThreadRunner; SyncRunner, the default, runs
    the disk work inline and is only for tests and tools).
    """

    log = Logger()

    def __init__(self, root, quota=0, ttl=0, clock=None, runner=None,
                 persist_pieces=64, persist_interval=2.0, max_open_files=256,
                 statvfs=os.statvfs, space_ttl=1.0, min_free=1 << 20, pass_through=False):
        self.root = os.path.abspath(root)
        self.quota = quota
        self.ttl = ttl
        self.clock = clock if clock is not None else _WallClock()
        self.runner = runner if runner is not None else SyncRunner()
        self.persist_pieces = max(1, persist_pieces)
        self.persist_interval = persist_interval
        self.fds = FdBudget(max_open_files)
        self.can_schedule = callable(getattr(self.clock, "callLater", None))
        self._tasks = {}
        self._used = 0          # sum of the tasks' completed_bytes
        #: task id -> digests of the pieces to re-verify (None: not held), see load()
        self._unverified = {}
        #: the filesystem's free space (cached); keep C{min_free} bytes of it free
        self.space = DiskSpace(self.root, self.clock, statvfs, space_ttl)
        self.min_free = min_free
        #: a piece it cannot hold is kept in memory for the streams (the peer)
        #: instead of failing with StoreFull (the supernode)
        self.pass_through = pass_through
        self.pass_limit = PASS_LIMIT   # bytes of such pieces waiting for a stream, per task
        self.evictions = 0      # tasks evicted (TTL, quota or disk space)
        self._deleting = set()  # Deferreds of the deletions running (their space comes back)
        self.errors = 0         # store writes that failed
        self.last_error = None  # (clock time, text) of the last one
        #: fires once the pieces left by an unclean stop are re-verified
        self.reverified = succeed(None)
        os.makedirs(self.root, exist_ok=True)

    # -- lookup ----------------------------------------------------------------

    def get(self, task_id):
        """The TaskFile of C{task_id}, or None. A complete task whose data file
        changed since it was completed is removed (and None returned)."""
        task = self._tasks.get(task_id)
        if task is not None and not task.intact():
            self.log.warn("the data file of {task_id} changed after it was complete "
                          "(edited through a hard link?); dropping the task", task_id=task_id)
            self.remove(task_id)
            return None
        return task

    def tasks(self):
        return list(self._tasks.values())

    def count(self):
        """How many tasks the store holds."""
        return len(self._tasks)

    def usage(self):
        """Bytes charged against the quota: the pieces held by every task."""
        return self._used

    def held_bytes(self):
        """Bytes of the pieces actually held."""
        return self._used

    def allocated(self):
        """The full length of every task in the store (sparse files)."""
        return sum(t.length for t in self._tasks.values())

    def path_for(self, task_id):
        """The directory a task id maps to (always directly under root/<2 hex>/)."""
        return entry_dir(self.root, task_key(task_id))

    # -- create / remove -------------------------------------------------------

    def create(self, task_id, url, length, piece_size, etag=None, last_modified=None):
        """A new, empty TaskFile; any entry for C{task_id} is removed first.

        Evicts nothing: the task is charged against the quota as its pieces
        are written (see charged()). Call fits() first to refuse a file that
        could never fit the quota.
        """
        _check_create_args(task_id, url, length, piece_size, etag, last_modified)
        if task_id in self._tasks:
            self.remove(task_id)
        directory = self.path_for(task_id)
        if os.path.lexists(directory):
            self._discard_dir(directory)
        task = TaskFile(self, task_id, url, length, piece_size, etag, last_modified)
        try:
            os.makedirs(directory)
            fd = fileio.create_data(task.path, length)
        except OSError as e:
            shutil.rmtree(directory, ignore_errors=True)
            if is_disk_full(e):
                self.failed_write(e)
                raise StoreFull(f"no room for {task_id!r} under {self.root}: {e}") from e
            raise
        task.adopt_fd(fd)
        if not task.save_now() and not self._save_after_evicting(task):
            why = f"cannot save metadata for {task_id!r} under {self.root}"
            self.failed_write(why)
            full = self.disk_full()
            if not (full and self.pass_through):
                task.close_fd()
                shutil.rmtree(directory, ignore_errors=True)
                raise StoreFull(why + ": disk full") if full else StoreError(why)
            # Its pieces will be passed through (their writes fail too); without
            # a meta.json the entry is dropped at the next start if still there.
            self.log.warn("{why}: disk full, {task_id} will be passed through",
                          why=why, task_id=task_id)
        self._tasks[task_id] = task
        self.log.debug("created {task_id} ({length} bytes, {pieces} pieces)",
                       task_id=task_id, length=length, pieces=task.piece_count)
        return task

    def remove(self, task_id, now=False):
        """Forget C{task_id} and delete its files (pinned or not); a Deferred
        fires once they are gone. C{now}: delete them before returning."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return succeed(None)
        self._used -= task.completed_bytes
        task.detach()
        return self._discard_dir(task.directory, now) or succeed(None)

    def _discard_dir(self, directory, now=False):
        """Move C{directory} out of the way at once; delete it in the runner
        (C{now}: right here)."""
        trash = trash_path(self.root)
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return
        except OSError as e:
            self.log.warn("cannot move {path} aside ({err}); deleting in place",
                          path=directory, err=e)
            shutil.rmtree(directory, ignore_errors=True)
            return
        if now:
            shutil.rmtree(trash, ignore_errors=True)
            return
        d = self.runner.run(shutil.rmtree, trash, ignore_errors=True)
        d.addErrback(lambda f: self.log.failure("deleting {path}", f, path=trash))
        if not d.called:
            self._deleting.add(d)
            d.addBoth(lambda r: self._deleting.discard(d) or r)
        return d

    # -- quota and TTL ---------------------------------------------------------

    def _evictable(self, task):
        return not task.pinned and not task.busy

    def _eviction_order(self):
        """Partial tasks first (kept only for resume), then least recently used."""
        return sorted(self._tasks.values(),
                      key=lambda t: (t.is_complete, t.last_access, t.created, t.key))

    def _evict(self, task, why, now=False):
        self.log.info("evicting {task_id}: {why}", task_id=task.task_id, why=why)
        self.evictions += 1
        return self.remove(task.task_id, now)

    def _save_after_evicting(self, task):
        """The first meta.json of new C{task} could not be written: while the
        disk is full, evict other tasks one by one (deleted at once: the disk
        is full, so this rare path blocks briefly) and try again."""
        for t in self._eviction_order():
            if not self.disk_full():
                break
            if t.task_id != task.task_id and self._evictable(t):
                self._evict(t, "disk full", now=True)
                if task.save_now():
                    return True
        return task.save_now()

    def _collect(self, target, keep=None):
        """Remove expired tasks, then LRU ones until usage <= target (if target
        is not None); never C{keep}."""
        freed = 0
        order = self._eviction_order()
        if self.ttl > 0:
            now = self.clock.seconds()
            for t in order:
                if now - t.last_access >= self.ttl and self._evictable(t):
                    freed += t.length
                    self._evict(t, f"not used for {now - t.last_access:.0f}s")
        if target is not None:
            for t in order:
                if self._used <= target:
                    break
                if t is not keep and self._tasks.get(t.task_id) is t and self._evictable(t):
                    freed += t.length
                    self._evict(t, "over quota")
        return freed

    def gc(self):
        """Evict tasks idle for ttl seconds, then least-recently-used ones
        until usage() <= quota; pinned (and busy) tasks stay. Also saves
        pending metadata. Returns the bytes freed (allocated lengths)."""
        freed = self._collect(self.quota if self.quota > 0 else None)
        self.flush()
        return freed

    def reserve(self, nbytes):
        """Make room for C{nbytes} more held bytes under the quota (GC as needed).

        Returns True if usage() + nbytes now fits the quota (always True
        without a quota). Nothing is set aside.
        """
        if self.quota <= 0:
            return True
        if self.usage() + nbytes > self.quota or self.ttl > 0:
            self._collect(max(self.quota - nbytes, 0))
        return self.usage() + nbytes <= self.quota

    def fits(self, length):
        """True if a file of C{length} bytes could fit the quota at all; evicts nothing."""
        return self.quota <= 0 or length <= self.quota

    def fits_disk(self, length):
        """False if a file of C{length} bytes could not fit on the store's
        filesystem even with every task evicted: more than its free bytes
        (less C{min_free}) and every byte the store holds together.

        Evicts and reserves nothing (a length announced by an origin is
        unverified, see fits()); room it cannot know about counts as room:
        free space unknown, or evicted entries still being deleted. Tasks
        written at the same time can still run out of room later (their
        pieces then fail with ENOSPC and StoreFull, as before)."""
        free = self.space.free()
        if free is None or self._deleting:
            return True
        return length <= free - self.min_free + self._used

    def charged(self, task, nbytes):
        """C{task} now holds C{nbytes} more (a piece was written): charge
        them, evicting other tasks (LRU) while usage is over the quota."""
        self._used += nbytes
        self.space.wrote(nbytes)
        if 0 < self.quota < self._used:
            self._collect(self.quota, keep=task)

    # -- free space --------------------------------------------------------------

    def make_room(self, nbytes, keep=None, full=False):
        """Make the filesystem hold C{nbytes} more (plus C{min_free}): evict
        unpinned tasks other than C{keep} (partial ones first, then LRU) while
        the free space is short. C{full}: a write just failed with ENOSPC (ask
        the filesystem again, and evict even if the numbers say there is room).

        A Deferred firing, once the evicted files are deleted, with True if
        there should be room now (False: nothing more can be evicted).
        """
        if full:
            self.space.refresh()   # (full_at is set only if eviction cannot help: failed_write)
        free = self.space.free()
        if free is None and not full:
            return succeed(True)
        need = nbytes + self.min_free - (free or 0)
        if need <= 0 and not full:
            return succeed(True)
        deletions = []
        for t in self._eviction_order():
            if need <= 0 and (not full or deletions):
                break
            if t is keep or not self._evictable(t):
                continue
            need -= t.completed_bytes
            deletions.append(self._evict(t, "disk space low"))
        self.space.refresh()
        if not deletions and self._deleting:
            deletions = list(self._deleting)   # earlier evictions still being deleted
        if not deletions:
            return succeed(not full and need <= 0)
        return gatherResults(deletions, consumeErrors=True).addBoth(lambda _: need <= 0 or full)

    def failed_write(self, why):
        """A store write failed (C{why}: an exception or text): count it for health."""
        self.errors += 1
        self.last_error = (self.clock.seconds(), str(why))
        if isinstance(why, BaseException) and is_disk_full(why):
            self.space.disk_full()

    def disk_full(self):
        """True if the filesystem has less than C{min_free} bytes left (asks it again)."""
        self.space.refresh()
        free = self.space.free()
        return free is not None and free <= self.min_free

    def abandoned(self, task):
        """The download of C{task} failed: when the disk or the quota is short
        (or the failure was a full store), drop what it held unless someone
        still uses it; otherwise keep it for a resume (evicted first)."""
        if task.removed or task.is_complete or task.pinned:
            return
        full_at = self.space.full_at
        pressed = (self.disk_full() or 0 < self.quota <= self._used
                   or (full_at is not None and self.clock.seconds() - full_at < 60.0))
        if pressed:
            self.log.info("releasing the partial {task_id} of a failed download",
                          task_id=task.task_id)
            self.remove(task.task_id)

    def health(self, recent=60.0):
        """What is wrong with this store now: a list of short reasons (empty: ok)."""
        reasons = []
        now = self.clock.seconds()
        free = self.space.free()
        if (free is not None and free <= self.min_free) or (
                self.space.full_at is not None and now - self.space.full_at < recent):
            reasons.append("disk full")
        if 0 < self.quota < self._used:
            reasons.append("quota exceeded")
        if self.last_error is not None and now - self.last_error[0] < recent:
            reasons.append(f"store errors: {self.last_error[1]}")
        return reasons

    def health_report(self):
        """C{{"status": "ok"}}; C{"degraded"} with C{"reasons"} while it can
        still serve; C{"unavailable"} when its directory is gone."""
        if not os.path.isdir(self.root):
            return {"status": "unavailable", "reasons": [f"store directory {self.root} is gone"]}
        reasons = self.health()
        if reasons:
            return {"status": "degraded", "reasons": reasons}
        return {"status": "ok"}

    # -- persistence -----------------------------------------------------------

    def flush(self):
        """Save every task's pending metadata now."""
        for t in list(self._tasks.values()):
            t.flush()

    def close(self):
        """Shutdown: save all metadata (marked clean), stop timers, close idle
        unpinned fds.

        The store stays usable (fds reopen on demand)."""
        for t in list(self._tasks.values()):
            if t.task_id in self._unverified:
                t.flush()   # its pieces still wait for their re-verification
            else:
                t.save_clean()
            t.cancel_timer()
            if t.can_close():
                t.close_fd()

    def load(self):
        """Scan root (at start-up): keep the valid entries, drop corrupt ones.

        A task whose meta.json a clean shutdown did not write last holds none
        of its pieces until the runner re-hashed them (L{reverified} fires
        then): a piece whose bytes no longer match its digest is not served
        again, it is fetched again."""
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if name.startswith(TRASH_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not is_prefix_dir_name(name) or not os.path.isdir(path) or os.path.islink(path):
                self.log.warn("ignoring unexpected {path} in the store", path=path)
                continue
            for sub in sorted(os.listdir(path)):
                self._load_one(name, sub)
        self.log.info("store {root}: {n} tasks, {used} bytes",
                      root=self.root, n=len(self._tasks), used=self.usage())
        total = self.space.total()
        if total is not None and self.quota > total:
            self.log.warn("--cache-size ({quota} bytes) exceeds the size of the filesystem "
                          "under {root} ({total} bytes); its free space limits the cache too",
                          quota=self.quota, root=self.root, total=total)
        self.reverified = Deferred.fromCoroutine(self._reverify())

    async def _reverify(self):
        """After an unclean stop: re-hash the pieces meta.json listed as held (in
        the runner, one task at a time) and hold again those that match."""
        while self._unverified:
            task_id = next(iter(self._unverified))
            digests = self._unverified[task_id]
            task = self._tasks.get(task_id)
            if task is None or task.removed:
                del self._unverified[task_id]
                continue
            task.pin()
            try:
                bad = await self.runner.run(
                    verify.bad_pieces, task.path, task.piece_size, task.length, digests)
            except Exception as e:
                self.log.warn("cannot re-verify {task}: {why}", task=task_id, why=str(e))
                bad = range(len(digests))
            finally:
                task.unpin()
                del self._unverified[task_id]
            bad = set(bad)
            if bad:
                self.log.warn("task {task}: {n} pieces failed their digests after an unclean "
                              "stop; fetching them again", task=task_id, n=len(bad))
            task.restore_held([None if i in bad else d for i, d in enumerate(digests)])

    def _load_one(self, prefix, sub):
        entry = os.path.join(self.root, prefix, sub)
        if not is_entry_name(prefix, sub):
            self.log.warn("ignoring unexpected {path} in the store", path=entry)
            return
        if any(t.key == sub for t in self._tasks.values()):
            return
        try:
            task = self._load_entry(entry, sub)
        except CorruptEntry as e:
            self.log.warn("dropping corrupt store entry {path}: {why}", path=entry, why=str(e))
            self._discard_dir(entry)
            return
        self._tasks[task.task_id] = task
        self._used += task.completed_bytes

    def _load_entry(self, directory, key):
        """The TaskFile saved in entry C{directory}; CorruptEntry if it is not usable."""
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise CorruptEntry("not a directory")
        meta_path = os.path.join(directory, META_NAME)
        fileio.remove_stale_temp(meta_path)
        meta = parse(fileio.read_small_file(meta_path, MAX_META_BYTES))
        if task_key(meta.task_id) != key:
            raise CorruptEntry("task id does not match the directory")
        st = fileio.data_file_stat(os.path.join(directory, DATA_NAME), meta.length)
        sealed = meta.sealed
        if sealed is not None and fileio.stamp(st) != sealed:
            raise CorruptEntry("data file changed after the task was complete")
        now = self.clock.seconds()
        held = meta.held
        if not meta.clean and any(held):
            # An unclean stop: nothing is served until re-verified (_reverify).
            self._unverified[meta.task_id] = tuple(
                d if is_held(held, i) else None for i, d in enumerate(meta.digests))
            held, sealed = None, None
        task = TaskFile(self, meta.task_id, meta.url, meta.length, meta.piece_size,
                        meta.etag, meta.last_modified, created=min(meta.created, now),
                        last_access=min(meta.last_access, now), digests=meta.digests,
                        held=held, sealed=sealed)
        if task.is_complete and sealed is None:
            task.seal_from(st)   # from an older meta.json
        return task

"""The on-disk piece store: one sparse data file and one meta.json per task.

Layout::

    root/<h[:2]>/<h>/data        the task's bytes, created sparse at full length
    root/<h[:2]>/<h>/meta.json   what we know about it (see below)

where ``h = sha256(task_id)`` in hex, so nothing that came from the network
ever becomes part of a path. Removed entries are first renamed to
``root/.trash-<random>`` (atomic, so a new entry for the same task can be made
at once) and then deleted in the runner.

``meta.json`` holds ``version`` (2: BLAKE3 piece digests; a version 1 file,
sha256 digests, counts as corrupt and its task is dropped), ``task_id``,
``url``, ``length``, ``piece_size``, the hex digest of each piece
(L{dragonfly.digest}) (``null`` until known), a bitmap of the pieces held
(hex, piece 0 is the top bit of the first byte), ``etag``, ``last_modified``,
``created`` and ``last_access`` (the clock's seconds). It is written to
``meta.json.tmp`` and renamed over ``meta.json``.

Crash safety: a piece is marked held only after its ``pwrite`` completed, and
meta.json only ever lists pieces marked held, so a restart after a crash never
claims a piece that was not fully written (the page cache survives a process
crash; surviving power loss would need fsync, which we do not do). Pieces the
saved meta.json does not list as held are simply fetched again. Saving is
debounced: at the latest after ``persist_pieces`` new pieces or
``persist_interval`` seconds (a timer on the injected clock), and at once when
the task completes, on ``flush()``/``close()``, and when validators change.
Last-access times are saved with the next save (``gc()`` saves them too).

All bookkeeping happens on the reactor thread; the runner threads only hash and
``pwrite``/``pread`` on the task's file descriptor. A task keeps one fd open
(opened lazily, at most ``max_open_files`` of them across the store: idle ones
of unpinned tasks are closed first); the fd is closed on remove, GC and
``close()``, but never while a runner call uses it or while the task is pinned,
so a ``fileno()`` user (``os.sendfile``) must ``pin()`` the task while using it.

Quota and usage count *allocated* bytes: the full length of every task in the
store, complete or not (the space the task will take once complete), so that
admitting a new task can make room for all of it up front.
"""
import hashlib
import json
import math
import os
import re
import shutil
import stat
import threading
import time

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.digest import piece_hasher
from dragonfly.interfaces import IPieceStore
from dragonfly.runtime.threads import SyncRunner

#: 2: BLAKE3 piece digests (1 had sha256; such a task is dropped at load).
META_VERSION = 2
META_NAME = "meta.json"
DATA_NAME = "data"
MAX_READ = 1 << 20          # read(): small, synchronous, bounded
MAX_RANGE = 64 << 20        # read_range()/read_piece(): in the runner
MAX_META_BYTES = 64 << 20   # a meta.json larger than this is not ours
MAX_TASK_ID = 1024

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_PREFIX = re.compile(r"\A[0-9a-f]{2}\Z")
_TRASH = ".trash-"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StoreError(Exception):
    """A piece store operation could not be done."""


class TaskRemoved(StoreError):
    """The task was removed (GC, replacement or remove()) from the store."""


class PieceNotHeld(StoreError):
    """A read touched a piece the store does not hold (yet)."""


class DigestMismatch(ValueError):
    """write_piece(verify=True): the data does not hash to the digest given."""

    def __init__(self, expected, got):
        super().__init__(f"digest {got[:12]}... is not {expected[:12]}...")
        self.expected = expected
        self.got = got


class _Corrupt(Exception):
    pass


class _WallClock:
    """Used only when no clock is injected (tap.py passes the reactor)."""

    def seconds(self):
        return time.time()


def task_key(task_id):
    """The hex sha256 of C{task_id}: the only name a task has on disk."""
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest()


def _good_task_id(task_id):
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID:
        return False
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Bytes per pwrite() call. The kernel sizes page-cache folios by the length
#: of the write: multi-MiB writes get large folios, which on this kind of VM
#: (free page reporting) cost ten times more to fill than small ones
#: (measured on fresh pages: 4 MiB pwrites ~330 MB/s, <= 256 KiB 3-5 GB/s).
#: pwritev() does not help: the folio size follows the total length.
WRITE_SLICE = 128 * 1024


def _as_views(data):
    """C{data} (a bytes-like object or a list/tuple of them) as byte memoryviews."""
    if isinstance(data, (list, tuple)):
        return [memoryview(part).cast("B") for part in data]
    return [memoryview(data).cast("B")]


def _pwrite_all(fd, data, offset, lock):
    """Write C{data} (bytes-like, or a list of bytes-like chunks, in order) at C{offset}.

    C{lock} serialises the writes to one file: buffered writes to one inode
    take its lock anyway, and threads waiting for it in the kernel spin
    (rwsem_spin_on_owner: measured 15% of a receiving peer's CPU with four
    writers); waiting on a Python lock sleeps instead and leaves the core to
    the hashing and the reactor.
    """
    with lock:
        for view in _as_views(data):
            while view:
                n = os.pwrite(fd, view[:WRITE_SLICE], offset)
                view = view[n:]
                offset += n


def _stamp(st):
    """What a complete task's seal records of its data file's stat."""
    return (st.st_size, st.st_mtime_ns)


_COMPUTE = object()   # write_piece: hash the data in the runner


def _hash_and_write(fd, views, offset, lock):
    h = piece_hasher()
    for view in views:
        h.update(view)
    _pwrite_all(fd, views, offset, lock)
    return h.hexdigest()


def _verify_and_write(fd, views, offset, expected, lock):
    h = piece_hasher()
    for view in views:
        h.update(view)
    got = h.hexdigest()
    if got != expected:
        raise DigestMismatch(expected, got)
    _pwrite_all(fd, views, offset, lock)


class PieceBuffer:
    """One piece's bytes as they arrive: chunks kept as given (small ones
    coalesced), the piece digest updated per chunk unless C{hashed=False} (then hash
    them in the runner: L{TaskFile.write_new_piece}). C{take()} hands over
    C{(chunks, digest)} for L{TaskFile.write_piece} without joining them.

    Chunks are kept by reference: give it immutable buffers (bytes, or
    memoryviews of bytes), never a buffer that will be reused.
    """

    MIN_PART = 32 * 1024

    __slots__ = ("chunks", "nbytes", "_small", "_hash", "_hashed")

    def __init__(self, hashed=True):
        self.chunks = []
        self.nbytes = 0
        self._small = None
        self._hashed = hashed
        self._hash = piece_hasher() if hashed else None

    def add(self, data):
        n = len(data)
        if not n:
            return
        if self._hash is not None:
            self._hash.update(data)
        self.nbytes += n
        if n >= self.MIN_PART:
            if self._small is not None:
                self.chunks.append(self._small)
                self._small = None
            self.chunks.append(data)
        elif self._small is None:
            self._small = bytearray(data)
        else:
            self._small += data
            if len(self._small) >= self.MIN_PART:
                self.chunks.append(self._small)
                self._small = None

    def take(self):
        """C{(chunks, hex digest)} (digest None when made with hashed=False);
        the buffer starts afresh."""
        if self._small is not None:
            self.chunks.append(self._small)
        chunks = self.chunks
        digest = self._hash.hexdigest() if self._hash is not None else None
        self.chunks = []
        self.nbytes = 0
        self._small = None
        self._hash = piece_hasher() if self._hashed else None
        return chunks, digest


def _pread_all(fd, length, offset):
    buf = os.pread(fd, length, offset)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise StoreError(f"short read at {offset + got}: data file truncated")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class TaskFile:
    """One task in the store. Made by L{PieceStore}; do not construct directly."""

    log = Logger()

    def __init__(self, store, task_id, url, length, piece_size, etag=None,
                 last_modified=None, created=None, last_access=None,
                 digests=None, held=None, sealed=None):
        self._store = store
        self.task_id = task_id
        self.url = url
        self.length = length
        self.piece_size = piece_size
        self.etag = etag
        self.last_modified = last_modified
        self.key = task_key(task_id)
        self.directory = os.path.join(store.root, self.key[:2], self.key)
        self.path = os.path.join(self.directory, DATA_NAME)
        self.meta_path = os.path.join(self.directory, META_NAME)
        self.piece_count = -(-length // piece_size)
        now = store.clock.seconds()
        self.created = now if created is None else created
        self.last_access = self.created if last_access is None else last_access
        self._digests = list(digests) if digests is not None else [None] * self.piece_count
        self._held = bytearray(held) if held is not None else bytearray(-(-self.piece_count // 8))
        self._held_count = 0
        self._held_bytes = 0
        for i in range(self.piece_count):
            if self.has(i):
                self._held_count += 1
                self._held_bytes += self._piece_len(i)
        self._pins = 0
        self._inflight = 0
        self._writing = set()
        self._fd = None
        self._removed = False
        self._dirty = False
        self._unsaved = 0
        self._last_saved = now
        self._flush_call = None
        #: (st_size, st_mtime_ns) of the data file when it became complete.
        self._sealed = sealed
        self._write_lock = threading.Lock()   # held by a runner thread while it writes

    def __repr__(self):
        return (f"<TaskFile {self.task_id!r} {self._held_count}/{self.piece_count} pieces"
                f"{' removed' if self._removed else ''}>")

    # -- geometry --------------------------------------------------------

    def _piece_len(self, index):
        if index == self.piece_count - 1:
            return self.length - index * self.piece_size
        return self.piece_size

    def _check_index(self, index):
        if not _is_int(index) or not 0 <= index < self.piece_count:
            raise ValueError(f"no piece {index!r} in task {self.task_id!r} "
                             f"({self.piece_count} pieces)")

    def piece_range(self, index):
        """(offset, length) of piece C{index}; ValueError if there is none."""
        self._check_index(index)
        return index * self.piece_size, self._piece_len(index)

    # -- state -------------------------------------------------------------

    def has(self, index):
        """True if piece C{index} is fully written and recorded (False for bad indexes)."""
        if not _is_int(index) or not 0 <= index < self.piece_count:
            return False
        return bool(self._held[index >> 3] & (0x80 >> (index & 7)))

    def completed(self):
        """Indexes of the pieces held, ascending."""
        return [i for i in range(self.piece_count) if self.has(i)]

    @property
    def completed_bytes(self):
        return self._held_bytes

    @property
    def is_complete(self):
        return self._held_count == self.piece_count

    @property
    def removed(self):
        return self._removed

    @property
    def pinned(self):
        return self._pins > 0

    def digest(self, index):
        """The hex digest of piece C{index}, or None while unknown."""
        self._check_index(index)
        return self._digests[index]

    def pin(self):
        """Keep this task from being removed by GC until the matching unpin()."""
        self._pins += 1

    def unpin(self):
        if self._pins <= 0:
            raise ValueError(f"unpin() without pin() on task {self.task_id!r}")
        self._pins -= 1
        self._maybe_close()

    def touch(self):
        """Record an access now (for TTL and LRU); saved with the next meta write."""
        self.last_access = self._store.clock.seconds()
        self._dirty = True

    def set_validators(self, etag=None, last_modified=None):
        """Record new origin validators (e.g. after a 304) and save them."""
        self.etag = etag
        self.last_modified = last_modified
        self._dirty = True
        self._save()

    # -- file descriptor -----------------------------------------------------

    def fileno(self):
        """The task's open data fd (read/write). pin() the task while using it."""
        if self._removed:
            raise TaskRemoved(self.task_id)
        return self._open_fd()

    def _open_fd(self):
        store = self._store
        if self._fd is None:
            store._make_fd_room()
            self._fd = os.open(self.path, os.O_RDWR | _O_CLOEXEC)
        store._fd_used(self)
        return self._fd

    def _acquire(self):
        fd = self._open_fd()
        self._inflight += 1
        return fd

    def _release(self, result=None):
        self._inflight -= 1
        self._maybe_close()
        return result

    def _idle(self):
        return self._inflight == 0 and self._pins == 0

    def _maybe_close(self):
        if self._removed and self._idle():
            self._close_fd()

    def _close_fd(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._store._fd_closed(self)
            try:
                os.close(fd)
            except OSError as e:
                self.log.warn("closing data file of {task_id}: {err}",
                              task_id=self.task_id, err=e)

    # -- I/O -----------------------------------------------------------------

    def write_piece(self, index, data, digest, verify=False):
        """Write piece C{index} (exactly its length) in the runner, then mark it held.

        C{data} is a bytes-like object, or a list/tuple of them (the chunks as
        received, written in order without joining them first). C{digest} is
        the piece's hex digest, verified by the caller, or, with
        C{verify=True}, by this call: the runner hashes C{data} first and
        fails with L{DigestMismatch} (a ValueError) without writing a byte
        when it differs (one thread hop for hashing and writing).
        Returns a Deferred firing with None; it fails with ValueError for a
        bad index, length or digest (also when the piece is already held with
        a different digest or is being written right now) and with
        L{TaskRemoved} if the task is gone. Rewriting a held piece with the
        same digest is a no-op (not even verified).
        """
        try:
            if self._removed:
                raise TaskRemoved(self.task_id)
            offset, length = self.piece_range(index)
            views = _as_views(data)
            nbytes = sum(v.nbytes for v in views)
            if nbytes != length:
                raise ValueError(f"piece {index} of {self.task_id!r} is {length} bytes, "
                                 f"got {nbytes}")
            if digest is _COMPUTE:
                if self.has(index):
                    raise ValueError(f"piece {index} of {self.task_id!r} is already held")
            elif not isinstance(digest, str) or not _HEX64.match(digest.lower()):
                raise ValueError(f"bad piece digest {digest!r}")
            else:
                digest = digest.lower()
            if self.has(index):
                if self._digests[index] == digest:
                    self.touch()
                    return succeed(None)
                raise ValueError(f"piece {index} of {self.task_id!r} is already held "
                                 f"with digest {self._digests[index]}")
            if index in self._writing:
                raise ValueError(f"piece {index} of {self.task_id!r} is being written")
            fd = self._acquire()
        except Exception as e:
            return fail(e)
        self._writing.add(index)

        def written(result):
            self._writing.discard(index)
            if self._removed:
                raise TaskRemoved(self.task_id)
            if digest is _COMPUTE:
                self._mark_held(index, result)
                return result
            self._mark_held(index, digest)

        def failed(f):
            self._writing.discard(index)
            return f

        if digest is _COMPUTE:
            d = self._store.runner.run(_hash_and_write, fd, views, offset, self._write_lock)
        elif verify:
            d = self._store.runner.run(_verify_and_write, fd, views, offset, digest,
                                       self._write_lock)
        else:
            d = self._store.runner.run(_pwrite_all, fd, views, offset, self._write_lock)
        d.addBoth(self._release)
        d.addCallbacks(written, failed)
        return d

    def write_new_piece(self, index, data):
        """Hash piece C{index} and write it, both in one runner call, then
        mark it held with that digest (for bytes straight from the origin,
        which come with no digest to check). Same rules as L{write_piece},
        except that a piece already held fails with ValueError. Returns a
        Deferred firing with the piece's hex digest."""
        return self.write_piece(index, data, _COMPUTE)

    def _mark_held(self, index, digest):
        if self.has(index):
            return
        self._held[index >> 3] |= 0x80 >> (index & 7)
        self._digests[index] = digest
        self._held_count += 1
        self._held_bytes += self._piece_len(index)
        self.last_access = self._store.clock.seconds()
        if self.is_complete:
            self._seal()
        self._changed(pieces=1)

    # -- the seal: a complete task's data file never changes -------------------
    #
    # The store never writes to a complete task's file again, but others can:
    # dfget hard-links its output to the store's file where it may, and a user
    # may edit that output in place. So the file's size and mtime are recorded
    # when the last piece lands (and saved in meta.json); a complete task whose
    # file no longer matches is dropped by get() and by load(), never served.

    def _seal(self):
        try:
            st = os.fstat(self._open_fd())
        except OSError as e:
            self.log.warn("cannot stat {path}: {err}", path=self.path, err=e)
            return
        self._sealed = _stamp(st)

    def intact(self):
        """False when the data file of this complete task changed since it was sealed."""
        if self._sealed is None or self._removed:
            return True
        try:
            st = os.fstat(self._fd) if self._fd is not None else os.stat(self.path)
        except OSError:
            return False
        return _stamp(st) == self._sealed

    def _check_readable(self, offset, length):
        if self._removed:
            raise TaskRemoved(self.task_id)
        if not (_is_int(offset) and _is_int(length)) or offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset!r} length={length!r}")
        if offset + length > self.length:
            raise ValueError(f"range {offset}+{length} beyond the end of "
                             f"{self.task_id!r} ({self.length} bytes)")
        if length:
            for i in range(offset // self.piece_size,
                           (offset + length - 1) // self.piece_size + 1):
                if not self.has(i):
                    raise PieceNotHeld(f"piece {i} of {self.task_id!r} is not held")

    def read(self, offset, length):
        """Read C{length} (<= 1 MiB) bytes at C{offset}, synchronously.

        Every piece the range touches must be held (else L{PieceNotHeld}).
        For bounded chunks only (pull producers); use read_piece() for more.
        """
        if _is_int(length) and length > MAX_READ:
            raise ValueError(f"read of {length} bytes is over the {MAX_READ} limit")
        self._check_readable(offset, length)
        if not length:
            return b""
        data = _pread_all(self._open_fd(), length, offset)
        self.last_access = self._store.clock.seconds()
        self._dirty = True
        return data

    def read_piece(self, index):
        """A Deferred firing with the bytes of held piece C{index} (read in the runner)."""
        try:
            offset, length = self.piece_range(index)
        except ValueError as e:
            return fail(e)
        return self._read_async(offset, length)

    def read_range(self, offset, length):
        """A Deferred firing with C{length} (<= 64 MiB) bytes at C{offset}, read in the runner.

        Like read() (every piece touched must be held) but off the reactor
        thread. Call it from the reactor thread; never call read() itself
        from a runner thread.
        """
        if _is_int(length) and length > MAX_RANGE:
            return fail(ValueError(f"read of {length} bytes is over the {MAX_RANGE} limit"))
        return self._read_async(offset, length)

    def _read_async(self, offset, length):
        try:
            self._check_readable(offset, length)
            if not length:
                return succeed(b"")
            fd = self._acquire()
        except Exception as e:
            return fail(e)
        self.touch()
        d = self._store.runner.run(_pread_all, fd, length, offset)
        d.addBoth(self._release)
        return d

    # -- meta.json -----------------------------------------------------------

    def to_meta(self):
        return {
            "version": META_VERSION,
            "task_id": self.task_id,
            "url": self.url,
            "length": self.length,
            "piece_size": self.piece_size,
            "digests": list(self._digests),
            "held": self._held.hex(),
            "etag": self.etag,
            "last_modified": self.last_modified,
            "created": self.created,
            "last_access": self.last_access,
            "sealed": list(self._sealed) if self._sealed else None,
        }

    def _changed(self, pieces=0):
        self._dirty = True
        self._unsaved += pieces
        store = self._store
        if (self.is_complete or self._unsaved >= store.persist_pieces
                or store.clock.seconds() - self._last_saved >= store.persist_interval):
            self._save()
        elif self._flush_call is None and store._can_schedule:
            self._flush_call = store.clock.callLater(store.persist_interval, self._timed_save)

    def _timed_save(self):
        self._flush_call = None
        self._save()

    def _cancel_timer(self):
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None

    def _save(self):
        """Write meta.json now (temp file + rename). Errors are logged, not raised."""
        self._cancel_timer()
        if self._removed:
            return
        body = json.dumps(self.to_meta(), separators=(",", ":")).encode("utf-8")
        tmp = self.meta_path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, self.meta_path)
        except OSError as e:
            self.log.error("cannot save metadata of {task_id} in {path}: {err}",
                           task_id=self.task_id, path=self.directory, err=e)
            return
        self._dirty = False
        self._unsaved = 0
        self._last_saved = self._store.clock.seconds()

    def _flush(self):
        if self._dirty:
            self._save()

    def _detach(self):
        """Forget this task: no more saves, fd closed once idle."""
        self._removed = True
        self._cancel_timer()
        self._maybe_close()


@implementer(IPieceStore)
class PieceStore:
    """Tasks on disk under C{root}, with a quota (bytes) and TTL (seconds); 0 = none.

    C{clock} is an IReactorTime (the reactor, or a task.Clock in tests); its
    callLater (when it has one) drives the debounced meta.json saves.
    C{runner} is an IRunner (a ThreadRunner; SyncRunner, the default, runs
    the disk work inline and is only for tests and tools).
    """

    log = Logger()

    def __init__(self, root, quota=0, ttl=0, clock=None, runner=None,
                 persist_pieces=64, persist_interval=2.0, max_open_files=256):
        self.root = os.path.abspath(root)
        self.quota = quota
        self.ttl = ttl
        self.clock = clock if clock is not None else _WallClock()
        self.runner = runner if runner is not None else SyncRunner()
        self.persist_pieces = max(1, persist_pieces)
        self.persist_interval = persist_interval
        self.max_open_files = max(1, max_open_files)
        self._can_schedule = callable(getattr(self.clock, "callLater", None))
        self._tasks = {}
        self._open = {}     # TaskFile -> None, in least-recently-used order
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

    def usage(self):
        """Bytes allocated: the full length of every task in the store."""
        return sum(t.length for t in self._tasks.values())

    def held_bytes(self):
        """Bytes of the pieces actually held."""
        return sum(t.completed_bytes for t in self._tasks.values())

    def path_for(self, task_id):
        """The directory a task id maps to (always directly under root/<2 hex>/)."""
        key = task_key(task_id)
        return os.path.join(self.root, key[:2], key)

    # -- create / remove -------------------------------------------------------

    def create(self, task_id, url, length, piece_size, etag=None, last_modified=None):
        """A new, empty TaskFile; any entry for C{task_id} is removed first.

        Makes room for C{length} bytes under the quota first (see reserve());
        the task is created even when that is not possible (everything else
        pinned, or the file alone is over the quota): call reserve() first to
        refuse such tasks instead.
        """
        if not _good_task_id(task_id):
            raise ValueError(f"bad task id {task_id!r}")
        if not isinstance(url, str):
            raise ValueError(f"bad url {url!r}")
        if not _is_int(length) or length < 0:
            raise ValueError(f"bad length {length!r}")
        if not _is_int(piece_size) or piece_size <= 0:
            raise ValueError(f"bad piece size {piece_size!r}")
        for name, v in (("etag", etag), ("last_modified", last_modified)):
            if v is not None and not isinstance(v, str):
                raise ValueError(f"bad {name} {v!r}")
        if task_id in self._tasks:
            self.remove(task_id)
        directory = self.path_for(task_id)
        if os.path.lexists(directory):
            self._discard_dir(directory)
        self.reserve(length)
        task = TaskFile(self, task_id, url, length, piece_size, etag, last_modified)
        fd = None
        try:
            os.makedirs(directory)
            fd = os.open(task.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
            os.ftruncate(fd, length)
        except OSError:
            if fd is not None:
                os.close(fd)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._make_fd_room()
        task._fd = fd
        self._fd_used(task)
        task._dirty = True
        task._save()
        if not os.path.exists(task.meta_path):
            task._close_fd()
            shutil.rmtree(directory, ignore_errors=True)
            raise StoreError(f"cannot save metadata for {task_id!r} under {self.root}")
        self._tasks[task_id] = task
        self.log.debug("created {task_id} ({length} bytes, {pieces} pieces)",
                       task_id=task_id, length=length, pieces=task.piece_count)
        return task

    def remove(self, task_id):
        """Forget C{task_id} and delete its files (pinned or not)."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        task._detach()
        self._discard_dir(task.directory)

    def _discard_dir(self, directory):
        """Move C{directory} out of the way at once; delete it in the runner."""
        trash = os.path.join(self.root, _TRASH + os.urandom(8).hex())
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return
        except OSError as e:
            self.log.warn("cannot move {path} aside ({err}); deleting in place",
                          path=directory, err=e)
            shutil.rmtree(directory, ignore_errors=True)
            return
        d = self.runner.run(shutil.rmtree, trash, ignore_errors=True)
        d.addErrback(lambda f: self.log.failure("deleting {path}", f, path=trash))

    # -- quota and TTL ---------------------------------------------------------

    def _evictable(self, task):
        return task._pins == 0 and task._inflight == 0 and not task._writing

    def _collect(self, target):
        """Remove expired tasks, then LRU ones until usage <= target (if target is not None)."""
        freed = 0
        order = sorted(self._tasks.values(), key=lambda t: (t.last_access, t.created, t.key))
        if self.ttl > 0:
            now = self.clock.seconds()
            for t in order:
                if now - t.last_access >= self.ttl and self._evictable(t):
                    self.log.info("evicting {task_id}: not used for {idle:.0f}s",
                                  task_id=t.task_id, idle=now - t.last_access)
                    freed += t.length
                    self.remove(t.task_id)
        if target is not None:
            used = self.usage()
            for t in order:
                if used <= target:
                    break
                if self._tasks.get(t.task_id) is t and self._evictable(t):
                    self.log.info("evicting {task_id}: over quota", task_id=t.task_id)
                    freed += t.length
                    used -= t.length
                    self.remove(t.task_id)
        return freed

    def gc(self):
        """Evict tasks idle for ttl seconds, then least-recently-used ones
        until usage() <= quota; pinned (and busy) tasks stay. Also saves
        pending metadata. Returns the bytes freed (allocated lengths)."""
        freed = self._collect(self.quota if self.quota > 0 else None)
        self.flush()
        return freed

    def reserve(self, nbytes):
        """Make room for C{nbytes} more under the quota (GC as needed).

        Returns True if usage() + nbytes now fits the quota (always True
        without a quota). Nothing is set aside: create() calls this itself.
        """
        if self.quota <= 0:
            return True
        if self.usage() + nbytes > self.quota or self.ttl > 0:
            self._collect(max(self.quota - nbytes, 0))
        return self.usage() + nbytes <= self.quota

    # -- persistence -----------------------------------------------------------

    def flush(self):
        """Save every task's pending metadata now."""
        for t in list(self._tasks.values()):
            t._flush()

    def close(self):
        """Shutdown: save all metadata, stop timers, close idle unpinned fds.

        The store stays usable (fds reopen on demand)."""
        for t in list(self._tasks.values()):
            t._flush()
            t._cancel_timer()
            if t._idle():
                t._close_fd()

    def load(self):
        """Scan root (at start-up): keep the valid entries, drop corrupt ones."""
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if name.startswith(_TRASH):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not _PREFIX.match(name) or not os.path.isdir(path) or os.path.islink(path):
                self.log.warn("ignoring unexpected {path} in the store", path=path)
                continue
            for sub in sorted(os.listdir(path)):
                entry = os.path.join(path, sub)
                if not _HEX64.match(sub) or sub[:2] != name:
                    self.log.warn("ignoring unexpected {path} in the store", path=entry)
                    continue
                if any(t.key == sub for t in self._tasks.values()):
                    continue
                try:
                    task = self._load_entry(entry, sub)
                except _Corrupt as e:
                    self.log.warn("dropping corrupt store entry {path}: {why}",
                                  path=entry, why=str(e))
                    self._discard_dir(entry)
                    continue
                self._tasks[task.task_id] = task
        self.log.info("store {root}: {n} tasks, {used} bytes",
                      root=self.root, n=len(self._tasks), used=self.usage())

    def _load_entry(self, directory, key):
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise _Corrupt("not a directory")
        meta_path = os.path.join(directory, META_NAME)
        tmp = meta_path + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _Corrupt(f"cannot remove {tmp}: {e.strerror}")
        try:
            st = os.lstat(meta_path)
            if not stat.S_ISREG(st.st_mode):
                raise _Corrupt("meta.json is not a regular file")
            if st.st_size > MAX_META_BYTES:
                raise _Corrupt(f"meta.json is {st.st_size} bytes")
            with open(meta_path, "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise _Corrupt(f"unreadable meta.json: {e}")
        if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
            raise _Corrupt(f"not a version {META_VERSION} meta.json (an older store's "
                           "digests are of another algorithm)")
        task_id = meta.get("task_id")
        if not _good_task_id(task_id) or task_key(task_id) != key:
            raise _Corrupt("task id does not match the directory")
        url, length, piece_size = meta.get("url"), meta.get("length"), meta.get("piece_size")
        if not isinstance(url, str) or not _is_int(length) or length < 0:
            raise _Corrupt("bad url or length")
        if not _is_int(piece_size) or piece_size <= 0:
            raise _Corrupt("bad piece size")
        count = -(-length // piece_size)
        digests = meta.get("digests")
        if not isinstance(digests, list) or len(digests) != count or not all(
                d is None or (isinstance(d, str) and _HEX64.match(d)) for d in digests):
            raise _Corrupt("bad digests")
        try:
            held = bytes.fromhex(meta.get("held"))
        except (TypeError, ValueError):
            raise _Corrupt("bad held bitmap")
        if len(held) != -(-count // 8):
            raise _Corrupt("held bitmap of the wrong size")
        if count % 8 and held and held[-1] & (0xFF >> (count % 8)):
            raise _Corrupt("held bitmap names pieces past the end")
        for i in range(count):
            if held[i >> 3] & (0x80 >> (i & 7)) and digests[i] is None:
                raise _Corrupt(f"piece {i} held without a digest")
        etag, last_modified = meta.get("etag"), meta.get("last_modified")
        if not all(v is None or isinstance(v, str) for v in (etag, last_modified)):
            raise _Corrupt("bad validators")
        created, last_access = meta.get("created"), meta.get("last_access")
        if not _is_num(created) or not _is_num(last_access):
            raise _Corrupt("bad timestamps")
        try:
            st = os.lstat(os.path.join(directory, DATA_NAME))
        except OSError as e:
            raise _Corrupt(f"data file: {e.strerror}")
        if not stat.S_ISREG(st.st_mode) or st.st_size != length:
            raise _Corrupt(f"data file is not a {length}-byte file")
        sealed = meta.get("sealed")
        if sealed is not None:
            if not (isinstance(sealed, list) and len(sealed) == 2
                    and all(_is_int(v) for v in sealed)):
                raise _Corrupt("bad seal")
            if _stamp(st) != tuple(sealed):
                raise _Corrupt("data file changed after the task was complete")
            sealed = tuple(sealed)
        now = self.clock.seconds()
        task = TaskFile(self, task_id, url, length, piece_size, etag, last_modified,
                        created=min(created, now), last_access=min(last_access, now),
                        digests=digests, held=held, sealed=sealed)
        if task.is_complete and sealed is None:
            task._sealed = _stamp(st)   # from an older meta.json
        return task

    # -- open file descriptors -------------------------------------------------

    def _fd_used(self, task):
        self._open.pop(task, None)
        self._open[task] = None

    def _fd_closed(self, task):
        self._open.pop(task, None)

    def _make_fd_room(self):
        if len(self._open) < self.max_open_files:
            return
        for t in list(self._open):
            if len(self._open) < self.max_open_files:
                break
            if t._idle():
                t._close_fd()

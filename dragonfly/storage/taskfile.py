"""TaskFile: one task in the store, its pieces on disk and its bookkeeping.

A task is one sparse data file at full length and one meta.json (see
L{dragonfly.storage.meta}). All bookkeeping happens on the reactor thread; the
runner threads only hash and ``pwrite``/``pread`` on the task's fd
(L{dragonfly.storage.fileio}).

Writes come in three kinds, one method each, by what the store is told of the
bytes: L{TaskFile.write_verified_piece} (a digest to check: the runner hashes
first and writes nothing unless it matches), L{TaskFile.write_trusted_piece}
(the caller computed the digest of these very bytes) and
L{TaskFile.write_new_piece} (no digest yet: the runner computes it).

Crash safety: a piece is marked held only after its ``pwrite`` completed, and
meta.json only ever lists pieces marked held, so a restart after a crash never
claims a piece that was not fully written (the page cache survives a process
crash; surviving power loss would need fsync, which we do not do). Saving is
debounced (L{dragonfly.storage.saver}): at the latest after ``persist_pieces``
new pieces or ``persist_interval`` seconds, and at once when the task
completes, on ``flush()``/``close()``, and when validators change.
Last-access times are saved with the next save.

The task keeps one fd open (opened lazily, within the store's
L{dragonfly.storage.fdbudget.FdBudget}); it is closed on remove, GC and
``close()``, but never while a runner call uses it or while the task is pinned,
so a ``fileno()`` user (``os.sendfile``) must ``pin()`` the task while using it.

The seal: the store never writes to a complete task's file again, but others
can (dfget hard-links its output to the store's file where it may, and a user
may edit that output in place). So the file's size and mtime are recorded
when the last piece lands (and saved in meta.json); a complete task whose file
no longer matches is dropped by the store, never served.
"""
import os
import threading

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dragonfly.interfaces import IServedTask

from dragonfly.storage import fileio
from dragonfly.storage.diskspace import is_disk_full
from dragonfly.storage.errors import PieceNotHeld, StoreFull, TaskRemoved
from dragonfly.storage.layout import (
    DATA_NAME, META_NAME, entry_dir, is_hex_digest, is_int, task_key)
from dragonfly.storage.meta import TaskMeta, is_held
from dragonfly.storage.passthrough import PassThroughPieces
from dragonfly.storage.saver import MetaSaver

MAX_READ = 1 << 20          # read(): small, synchronous, bounded
MAX_RANGE = 64 << 20        # read_range()/read_piece(): in the runner


def _checked_digest(digest):
    """C{digest} in lower case; ValueError unless it is a hex piece digest."""
    if not isinstance(digest, str) or not is_hex_digest(digest.lower()):
        raise ValueError(f"bad piece digest {digest!r}")
    return digest.lower()


@implementer(IServedTask)
class TaskFile(PassThroughPieces):
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
        self.directory = entry_dir(store.root, self.key)
        self.path = os.path.join(self.directory, DATA_NAME)
        self.meta_path = os.path.join(self.directory, META_NAME)
        self.piece_count = -(-length // piece_size)
        now = store.clock.seconds()
        self.created = now if created is None else created
        self.last_access = self.created if last_access is None else last_access
        # Memory in proportion to what is held, not to the announced length:
        # a bitmap of held pieces and the digests known, by index.
        self._digests = {} if digests is None else {
            i: d for i, d in enumerate(digests) if d is not None}
        self._held = bytearray(held) if held is not None else bytearray(-(-self.piece_count // 8))
        self._held_count = int.from_bytes(self._held, "big").bit_count()
        self._held_bytes = self._held_count * piece_size
        if self._held_count and self.has(self.piece_count - 1):
            self._held_bytes -= piece_size - self._piece_len(self.piece_count - 1)
        self._pins = 0
        self._inflight = 0
        self._writing = set()
        self._fd = None
        self._removed = False
        self._saver = MetaSaver(self.meta_path, self.to_meta, store.clock, store.persist_pieces,
                                store.persist_interval, task_id, store.can_schedule)
        #: (st_size, st_mtime_ns) of the data file when it became complete.
        self._sealed = sealed
        self._write_lock = threading.Lock()   # held by a runner thread while it writes
        self._clean = False    # saved by a clean shutdown, unchanged since (meta "clean")
        self._pass = None      # a PassThrough once the store could not hold a piece
        self._drain_waiters = []

    def __repr__(self):
        return (f"<TaskFile {self.task_id!r} {self._held_count}/{self.piece_count} pieces"
                f"{' removed' if self._removed else ''}>")

    # -- geometry --------------------------------------------------------

    def _piece_len(self, index):
        if index == self.piece_count - 1:
            return self.length - index * self.piece_size
        return self.piece_size

    def _check_index(self, index):
        if not is_int(index) or not 0 <= index < self.piece_count:
            raise ValueError(f"no piece {index!r} in task {self.task_id!r} "
                             f"({self.piece_count} pieces)")

    def piece_range(self, index):
        """(offset, length) of piece C{index}; ValueError if there is none."""
        self._check_index(index)
        return index * self.piece_size, self._piece_len(index)

    # -- state -------------------------------------------------------------

    def has(self, index):
        """True if piece C{index} is fully written and recorded (False for bad indexes)."""
        if not is_int(index) or not 0 <= index < self.piece_count:
            return False
        return is_held(self._held, index)

    def completed(self):
        """Indexes of the pieces held, ascending (time in proportion to the
        bitmap's bytes, not to the piece count)."""
        held = self._held
        return [(j << 3) + k for j in range(len(held)) if held[j]
                for k in range(8) if held[j] & (0x80 >> k)]

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

    @property
    def busy(self):
        """True while disk I/O of this task is in flight."""
        return self._inflight > 0 or bool(self._writing)

    def digest(self, index):
        """The hex digest of piece C{index}, or None while unknown."""
        self._check_index(index)
        return self._digests.get(index)

    def pin(self):
        """Keep this task from being removed by GC until the matching unpin()."""
        self._pins += 1

    def unpin(self):
        if self._pins <= 0:
            raise ValueError(f"unpin() without pin() on task {self.task_id!r}")
        self._pins -= 1
        self._maybe_close()
        self._maybe_release()

    def touch(self):
        """Record an access now (for TTL and LRU); saved with the next meta write."""
        self.last_access = self._store.clock.seconds()
        self._saver.dirty = True

    def set_validators(self, etag=None, last_modified=None):
        """Record new origin validators (e.g. after a 304) and save them."""
        self.etag = etag
        self.last_modified = last_modified
        self._saver.changed(now=True)

    # -- file descriptor -----------------------------------------------------

    def fileno(self):
        """The task's open data fd (read/write). pin() the task while using it."""
        if self._removed:
            raise TaskRemoved(self.task_id)
        return self._open_fd()

    def adopt_fd(self, fd):
        """Use C{fd} (just opened by the store on the data file) as this task's fd."""
        self._store.fds.make_room()
        self._fd = fd
        self._store.fds.used(self)

    def _open_fd(self):
        fds = self._store.fds
        if self._fd is None:
            fds.make_room()
            self._fd = fileio.open_data(self.path)
        fds.used(self)
        return self._fd

    def _acquire(self):
        fd = self._open_fd()
        self._inflight += 1
        return fd

    def _release(self, result=None):
        self._inflight -= 1
        self._maybe_close()
        return result

    def can_close(self):
        """True when no runner call uses the fd and the task is not pinned."""
        return self._inflight == 0 and self._pins == 0

    def _maybe_close(self):
        if self._removed and self.can_close():
            self.close_fd()

    def close_fd(self):
        """Close the data fd now (it reopens on demand); see can_close()."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._store.fds.closed(self)
            try:
                os.close(fd)
            except OSError as e:
                self.log.warn("closing data file of {task_id}: {err}",
                              task_id=self.task_id, err=e)

    # -- writes ----------------------------------------------------------------
    #
    # Each write method writes piece C{index} (exactly its length) in the
    # runner, then marks it held. C{data} is a bytes-like object, or a
    # list/tuple of them (the chunks as received, written in order without
    # joining them first). Each returns a Deferred; it fails with ValueError
    # for a bad index, length or digest (also when the piece is being written
    # right now) and with L{TaskRemoved} if the task is gone.

    def write_verified_piece(self, index, data, digest):
        """Write piece C{index} only if C{data} hashes to C{digest} (hex).

        The runner hashes C{data} first and, when it differs, fails with
        L{DigestMismatch} (a ValueError) without writing a byte (one thread
        hop for hashing and writing). Fires with None. A piece already held
        with the same digest is a no-op (not even verified); with another
        digest, a ValueError.
        """
        return self._write_known(index, data, digest, check=True)

    def write_trusted_piece(self, index, data, digest):
        """Write piece C{index} and record C{digest} for it without hashing C{data}.

        For a caller that computed C{digest} from these very bytes itself
        (and checked it where it had to); the store trusts it. Fires with
        None. A piece already held with the same digest is a no-op; with
        another digest, a ValueError.
        """
        return self._write_known(index, data, digest, check=False)

    def _write_known(self, index, data, digest, check):
        try:
            digest = _checked_digest(digest)
            job = self._claim(index, data, digest)
        except Exception as e:
            return fail(e)
        if job is None:
            return succeed(None)
        fd, views, offset = job
        if check:
            d = self._run_write(index, fileio.verify_and_write, fd, views, offset, digest,
                                self._write_lock, expected=digest)
        else:
            d = self._run_write(index, fileio.pwrite_all, fd, views, offset, self._write_lock,
                                expected=digest)
        return d.addCallback(lambda _: self._mark_held(index, digest))

    def write_new_piece(self, index, data):
        """Hash piece C{index} and write it, both in one runner call, then mark
        it held with that digest (for bytes straight from the origin, which
        come with no digest to check). A piece already held fails with
        ValueError. Fires with the piece's hex digest."""
        try:
            job = self._claim(index, data, None)
        except Exception as e:
            return fail(e)
        fd, views, offset = job
        d = self._run_write(index, fileio.hash_and_write, fd, views, offset, self._write_lock)
        return d.addCallback(lambda digest: self._mark_held(index, digest) or digest)

    def fill_new_piece(self, index, fill, run):
        """Write piece C{index} with C{fill(fd, offset, length, lock)}, run by
        C{run(f, *args) -> Deferred} (a thread: it blocks), then mark it held
        with the hex digest C{fill} returns, which it must have computed from
        the bytes it wrote. For bytes that never pass through Python (spliced
        from a socket, L{dragonfly.ingest.splice}): a fill that failed is not
        tried again (its bytes are gone) and nothing is passed through a full
        store: a full disk fails with L{StoreFull}. Fires with the digest."""
        if self._removed:
            return fail(TaskRemoved(self.task_id))
        if self.has(index) or index in self._writing:
            return fail(ValueError(f"piece {index} of {self.task_id!r} is held or being written"))
        offset, length = self.piece_range(index)
        fd = self._acquire()
        self._writing.add(index)
        store = self._store

        def failed(reason):
            if isinstance(reason.value, OSError):
                store.failed_write(reason.value)
                if is_disk_full(reason.value):
                    raise StoreFull(f"no room for piece {index} of {self.task_id!r}")
            return reason

        def settled(result):
            self._writing.discard(index)
            if self._removed and not isinstance(result, Failure):
                raise TaskRemoved(self.task_id)
            return result

        d = store.make_room(length, keep=self)
        d.addCallback(lambda _: run(fill, fd, offset, length, self._write_lock))
        d.addErrback(failed)
        d.addBoth(self._release)
        d.addBoth(settled)
        return d.addCallback(lambda digest: self._mark_held(index, digest) or digest)

    def _claim(self, index, data, digest):
        """Check a write of C{data} as piece C{index}: C{(fd, views, offset)}
        to write, or None when the piece is held with C{digest} already."""
        if self._removed:
            raise TaskRemoved(self.task_id)
        offset, length = self.piece_range(index)
        views = fileio.as_views(data)
        nbytes = sum(v.nbytes for v in views)
        if nbytes != length:
            raise ValueError(f"piece {index} of {self.task_id!r} is {length} bytes, "
                             f"got {nbytes}")
        if self.has(index):
            if digest is not None and self._digests.get(index) == digest:
                self.touch()
                return None
            raise ValueError(f"piece {index} of {self.task_id!r} is already held "
                             f"with digest {self._digests.get(index)}")
        if index in self._writing:
            raise ValueError(f"piece {index} of {self.task_id!r} is being written")
        return self._acquire(), views, offset

    def _run_write(self, index, f, *args, expected=None):
        """Run write job C{f(*args)} in the runner with piece C{index} marked as being written.

        The store first makes room for the piece on its disk; a write failing
        with ENOSPC is tried once more after eviction, else fails with
        L{StoreFull}."""
        self._writing.add(index)
        store = self._store
        size = self._piece_len(index)

        # No closure here may refer to itself (directly or through another):
        # a reference cycle would keep C{args} (the piece's buffers) alive
        # until Python's cyclic collector happened to run, and a fast download
        # piled up hundreds of MiB of written pieces that way.
        def write(_=None):
            return store.runner.run(f, *args)

        def full(exc):
            store.failed_write(exc)   # (an ENOSPC eviction could not resolve)
            if store.pass_through:
                return self._pass_piece(index, args[1], expected)
            raise StoreFull(f"no room for piece {index} of {self.task_id!r}")

        def other_error(reason):
            if isinstance(reason.value, OSError):
                store.failed_write(reason.value)
            return reason

        def no_room_again(reason):
            return full(reason.value) if is_disk_full(reason.value) else other_error(reason)

        def no_room(reason):
            if not is_disk_full(reason.value):
                return other_error(reason)

            def again(room):
                return write().addErrback(no_room_again) if room else full(reason.value)

            return store.make_room(size, keep=self, full=True).addCallback(again)

        def written(result):
            self._writing.discard(index)
            if self._removed:
                raise TaskRemoved(self.task_id)
            return result

        def failed(reason):
            self._writing.discard(index)
            return reason

        d = store.make_room(size, keep=self)
        d.addCallback(write)
        d.addErrback(no_room)
        d.addBoth(self._release)
        d.addCallbacks(written, failed)
        return d

    def _mark_held(self, index, digest):
        if self.has(index):
            return
        if self._pass is not None and index in self._pass.pieces:
            self._digests[index] = digest
            self._pass.delivered(index, self._piece_len(index))   # not held: not served
            return
        self._clean = False
        self._held[index >> 3] |= 0x80 >> (index & 7)
        self._digests[index] = digest
        self._held_count += 1
        size = self._piece_len(index)
        self._held_bytes += size
        self.last_access = self._store.clock.seconds()
        self._store.charged(self, size)
        if self.is_complete:
            self._seal()
        self._saver.changed(pieces=1, now=self.is_complete)

    # -- the seal (see the module docstring) -----------------------------------

    def _seal(self):
        try:
            st = os.fstat(self._open_fd())
        except OSError as e:
            self.log.warn("cannot stat {path}: {err}", path=self.path, err=e)
            return
        self.seal_from(st)

    def seal_from(self, st):
        """Seal this task with C{st}, a stat of its data file."""
        self._sealed = fileio.stamp(st)

    def intact(self):
        """False when the data file of this complete task changed since it was sealed."""
        if self._sealed is None or self._removed:
            return True
        try:
            st = os.fstat(self._fd) if self._fd is not None else os.stat(self.path)
        except OSError:
            return False
        return fileio.stamp(st) == self._sealed

    # -- reads -----------------------------------------------------------------

    def _check_readable(self, offset, length):
        if self._removed:
            raise TaskRemoved(self.task_id)
        if not (is_int(offset) and is_int(length)) or offset < 0 or length < 0:
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
        if is_int(length) and length > MAX_READ:
            raise ValueError(f"read of {length} bytes is over the {MAX_READ} limit")
        self._check_readable(offset, length)
        if not length:
            return b""
        data = fileio.pread_all(self._open_fd(), length, offset)
        self.last_access = self._store.clock.seconds()
        self._saver.dirty = True
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
        if is_int(length) and length > MAX_RANGE:
            return fail(ValueError(f"read of {length} bytes is over the {MAX_RANGE} limit"))
        return self._read_async(offset, length)

    def _read_async(self, offset, length):
        if self._pass is not None and length and not self.has(offset // self.piece_size):
            index = offset // self.piece_size
            data = self._pass.read(index, offset - index * self.piece_size, length)
            if data is not None and len(data) == length:
                return succeed(data)
        try:
            self._check_readable(offset, length)
            if not length:
                return succeed(b"")
            fd = self._acquire()
        except Exception as e:
            return fail(e)
        self.touch()
        d = self._store.runner.run(fileio.pread_all, fd, length, offset)
        d.addBoth(self._release)
        return d

    # -- meta.json -----------------------------------------------------------

    def to_meta(self):
        """What meta.json records of this task now (a L{TaskMeta})."""
        return TaskMeta(self.task_id, self.url, self.length, self.piece_size,
                        self._digest_tuple(), bytes(self._held), self.etag,
                        self.last_modified, self.created, self.last_access, self._sealed,
                        self._clean)

    def save_clean(self):
        """Shutdown: save meta.json marked clean (its pieces need no re-verify
        at the next load unless something changes before)."""
        self._clean = True
        return self._saver.save()

    def restore_held(self, digests):
        """Mark held again the pieces re-verified after an unclean stop:
        C{digests} has the verified hex digest of each such piece, None for
        the others. A piece held or being written meanwhile is left alone."""
        for index, digest in enumerate(digests):
            if digest is not None and not self._removed and index not in self._writing:
                self._mark_held(index, digest)

    def _digest_tuple(self):
        out = [None] * self.piece_count
        for i, d in self._digests.items():
            out[i] = d
        return tuple(out)

    def save_now(self):
        """Write meta.json now, changed or not; True when saved."""
        return self._saver.save()

    def flush(self):
        """Write meta.json now if anything changed since the last save."""
        self._saver.flush()

    def cancel_timer(self):
        """Drop the pending debounced save, if any."""
        self._saver.cancel()

    def abandon(self):
        """The download of this task failed: the store may give its space back now."""
        self._store.abandoned(self)

    def detach(self):
        """Forget this task: no more saves, fd closed once idle."""
        self._removed = True
        self._saver.stop()
        self._maybe_close()

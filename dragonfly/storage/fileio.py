"""Blocking file I/O of the store: what runs in the runner threads, and the
small synchronous file operations of saving and loading an entry.

Piece writes go in slices with a per-file lock; the hash-and-write and
verify-and-write helpers do the hashing and the write in one thread hop. Data
files are opened close-on-exec; meta.json is replaced atomically (temp file
and rename). Nothing here keeps state or knows about tasks.
"""
import os
import stat

from dragonfly.digest import piece_hasher
from dragonfly.storage.errors import CorruptEntry, DigestMismatch, StoreError

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: Bytes per pwrite() call. The kernel sizes page-cache folios by the length
#: of the write: multi-MiB writes get large folios, which on this kind of VM
#: (free page reporting) cost ten times more to fill than small ones
#: (measured on fresh pages: 4 MiB pwrites ~330 MB/s, <= 256 KiB 3-5 GB/s).
#: pwritev() does not help: the folio size follows the total length. Within
#: that bound, the larger the better: every pwrite() gives up the GIL and must
#: win it back from the reactor and the hashing threads before the next one,
#: and that wait, not the copy, was most of a piece's write time (a 4 MiB
#: piece: 32 slices of 128 KiB took 2.5-4.6 ms in a receiving peer, 16 of
#: 256 KiB 1.0-1.8 ms; see bench/README.md, issue 20 round three).
WRITE_SLICE = 256 * 1024


def as_views(data):
    """C{data} (a bytes-like object or a list/tuple of them) as byte memoryviews."""
    if isinstance(data, (list, tuple)):
        return [memoryview(part).cast("B") for part in data]
    return [memoryview(data).cast("B")]


def pwrite_all(fd, data, offset, lock):
    """Write C{data} (bytes-like, or a list of bytes-like chunks, in order) at C{offset}.

    C{lock} serialises the writes to one file: buffered writes to one inode
    take its lock anyway, and threads waiting for it in the kernel spin
    (rwsem_spin_on_owner: measured 15% of a receiving peer's CPU with four
    writers); waiting on a Python lock sleeps instead and leaves the core to
    the hashing and the reactor.
    """
    with lock:
        for view in as_views(data):
            while view:
                n = os.pwrite(fd, view[:WRITE_SLICE], offset)
                view = view[n:]
                offset += n


def _digest_of(views):
    h = piece_hasher()
    for view in views:
        h.update(view)
    return h.hexdigest()


def hash_and_write(fd, views, offset, lock):
    """Hash C{views} and write them at C{offset}; return their hex piece digest."""
    digest = _digest_of(views)
    pwrite_all(fd, views, offset, lock)
    return digest


def verify_and_write(fd, views, offset, expected, lock):
    """Write C{views} at C{offset} only if they hash to C{expected}, else
    raise L{DigestMismatch} without writing a byte."""
    got = _digest_of(views)
    if got != expected:
        raise DigestMismatch(expected, got)
    pwrite_all(fd, views, offset, lock)


def pread_all(fd, length, offset):
    """Exactly C{length} bytes at C{offset}; StoreError if the file is shorter."""
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


def stamp(st):
    """What a complete task's seal records of its data file's stat."""
    return (st.st_size, st.st_mtime_ns)


def open_data(path):
    """Open an existing data file for reading and writing."""
    return os.open(path, os.O_RDWR | O_CLOEXEC)


def create_data(path, length):
    """Create (or truncate) a sparse data file of C{length} bytes; its open fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, length)
    except OSError:
        os.close(fd)
        raise
    return fd


def replace_file(path, body):
    """Write C{body} to C{path}.tmp and rename it over C{path} (OSError on failure)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, path)


def remove_stale_temp(path):
    """Delete C{path}.tmp, left by a save interrupted by a crash, if it is there."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CorruptEntry(f"cannot remove {tmp}: {e.strerror}")


def read_small_file(path, max_bytes):
    """The bytes of regular file C{path}, refusing one over C{max_bytes}."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptEntry(f"{os.path.basename(path)} is not a regular file")
        if st.st_size > max_bytes:
            raise CorruptEntry(f"{os.path.basename(path)} is {st.st_size} bytes")
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise CorruptEntry(f"unreadable {os.path.basename(path)}: {e}")


def data_file_stat(path, length):
    """The lstat of data file C{path}, which must be a regular file of C{length} bytes."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise CorruptEntry(f"data file: {e.strerror}")
    if not stat.S_ISREG(st.st_mode) or st.st_size != length:
        raise CorruptEntry(f"data file is not a {length}-byte file")
    return st

"""dfget's file work: where the output goes, and the blocking steps that put it there.

Standard library only (see L{dragonfly.dfget.options}). The daemon path
(L{dragonfly.dfget.viadaemon}) calls these directly; the embedded peer
(L{dragonfly.dfget.embedded}) runs them in its runner's threads.
"""
import hashlib
import os
import shutil
import stat
import sys

from dragonfly.dfget.options import DfgetError, default_output

COPY_CHUNK = 1 << 20
#: Bytes per write() to the output: large writes make the kernel allocate
#: large page-cache folios, which are much slower to fill on some VMs
#: (see dragonfly.storage.fileio.WRITE_SLICE).
WRITE_SLICE = 128 * 1024


def output_path(opts):
    """The absolute output path for C{opts} (or "-" for stdout)."""
    out = opts["output"]
    if out == "-":
        return "-"
    if not out:
        out = default_output(opts["url"])
    elif os.path.isdir(out):
        out = os.path.join(out, default_output(opts["url"]))
    return os.path.abspath(out)


def check_output(out):
    """Raise L{DfgetError} unless a file can be created at C{out} (before any download)."""
    if out == "-":
        return
    outdir = os.path.dirname(out)
    if not os.path.isdir(outdir):
        raise DfgetError(f"output directory {outdir} does not exist")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise DfgetError(f"cannot write to {outdir}")
    if os.path.isdir(out):
        raise DfgetError(f"{out} is a directory")


def temp_name(out):
    """A fresh temporary name next to C{out}: C{out.dfget-tmp-<random>}."""
    return f"{out}.dfget-tmp-{os.urandom(4).hex()}"


def existing_mode(out):
    """The permission bits of the regular file at C{out}, or None (no such file)."""
    try:
        st = os.stat(out)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def publish(tmp, out):
    """Rename C{tmp} to C{out}, giving it the mode of the file it replaces (if any)."""
    mode = existing_mode(out)
    if mode is not None and stat.S_IMODE(os.stat(tmp).st_mode) != mode:
        os.chmod(tmp, mode)
    os.replace(tmp, out)


def place(src, dst, algo, mode=None):
    """Make the new file dst hold src's bytes; return (how, hex digest or None).

    The cheapest way that works wins, and no bytes pass through Python:
      - "reflink": a copy-on-write clone (FICLONE: btrfs, XFS, bcachefs); a
        private copy that shares the disk blocks until either side changes.
      - "link": a hard link, only to a file we own whose mode gives no more
        than a file we would create (0666 & ~umask): FILE then has the owner
        and the permissions a copy would have, and nobody else (the
        daemon's user, when dfget runs as root) can change it later.
        The store never writes to a complete task's file again and drops a
        task whose file changed (dragonfly.storage.taskfile: the seal), so a user
        editing FILE in place costs the cache that task, never other users
        their bytes (receivers verify every piece anyway).
      - "copy": the kernel copies (sendfile).
    The digest, when asked for, is computed by reading dst back, so it covers
    the bytes FILE will hold. With C{mode} (the mode of the output dst will
    replace, see L{publish}) a link is made only to a file of that mode.
    """
    with open(src, "rb") as fin:
        with open(dst, "xb") as fout:
            if _reflink(fin, fout):
                return "reflink", _digest(dst, algo)
        # Unlink + link, not link + rename over dst: ext4 (auto_da_alloc) starts
        # writing back the whole file when a rename replaces an existing one.
        os.unlink(dst)
        st = os.fstat(fin.fileno())
        if _may_share(st) and mode in (None, stat.S_IMODE(st.st_mode)):
            try:
                os.link(src, dst)
                return "link", _digest(dst, algo)
            except OSError:
                pass
        with open(dst, "xb") as fout:
            if hasattr(os, "sendfile"):
                _kernel_copy(fin, fout)
            else:
                _copy_sliced(fin, fout)
    return "copy", _digest(dst, algo)


def _may_share(st):
    """True if a hard link to the file of C{st} is as private as a new file."""
    return (st.st_uid == os.geteuid()
            and not stat.S_IMODE(st.st_mode) & ~(0o666 & ~_umask()))


def _umask():
    """The process umask, read without changing it (os.umask would, for all threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _STARTUP_UMASK


def _read_umask_once():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read at import (one thread then) for systems without /proc/self/status.
_STARTUP_UMASK = _read_umask_once()


def _digest(path, algo):
    return None if algo is None else hash_file(path, algo)


#: ioctl(dst, FICLONE, src) from linux/fs.h.
_FICLONE = 0x40049409


def _reflink(fin, fout):
    """Clone fin into the empty fout (copy-on-write); False where the filesystem can't."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl
    try:
        fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
    except OSError:
        return False
    return True


def _copy_sliced(fin, fout):
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    while True:
        n = fin.readinto(buf)
        if not n:
            break
        write_sliced(fout, view[:n])


def write_sliced(f, data):
    view = memoryview(data).cast("B")
    for i in range(0, view.nbytes, WRITE_SLICE):
        f.write(view[i:i + WRITE_SLICE])


def _kernel_copy(fin, fout):
    # What shutil.copyfile does on Linux (sendfile), for an already-open pair.
    size = os.fstat(fin.fileno()).st_size
    offset = 0
    while offset < size:
        n = os.sendfile(fout.fileno(), fin.fileno(), offset, min(size - offset, 1 << 30))
        if n == 0:
            break
        offset += n


def hash_file(path, algo):
    h = hashlib.new(algo)
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


class ContentMismatch(DfgetError):
    """The downloaded bytes do not match C{--digest} (the holder should drop them)."""


def check_digest(spec, got):
    """Raise L{ContentMismatch} unless C{got} is the hex digest C{spec} = (algo, hex) wants."""
    algo, want = spec
    if got != want:
        raise ContentMismatch(f"{algo} digest mismatch: expected {want}, got {got}")


def write_to(path, stream):
    """Copy the file at C{path} to C{stream} (a text stream's binary buffer if it has one)."""
    stream = getattr(stream, "buffer", stream)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(COPY_CHUNK)
            if not chunk:
                break
            stream.write(chunk)
    stream.flush()


def remove_temps(paths, dirs):
    """Remove the temporary files in the set C{paths} and the directories in
    C{dirs}, ignoring what is already gone; both sets end up empty."""
    for path in list(paths):
        try:
            remove(path)
        except OSError:
            pass
    paths.clear()
    for d in list(dirs):
        shutil.rmtree(d, ignore_errors=True)
    dirs.clear()


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

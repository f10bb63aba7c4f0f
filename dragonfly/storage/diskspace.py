"""DiskSpace: the free and total bytes of the filesystem under a store's root.

The store does not only trust its quota (C{--cache-size} may have been sized
for another disk): it asks the filesystem (C{os.statvfs}, injected for tests)
how much room is really left. The answer is cached for C{ttl} seconds of the
injected clock and lowered by the bytes written since, so a burst of piece
writes costs one system call; C{refresh()} forgets it (after an ENOSPC, or
after eviction freed room). It also remembers the last store error of a
disk-space kind, for health reports.
"""
import errno
import os

__all__ = ["DiskSpace", "is_disk_full"]


def is_disk_full(exc):
    """True if C{exc} (an exception) says the disk or a quota is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskSpace:
    """Free/total bytes of the filesystem holding C{path}, cached for C{ttl} seconds."""

    def __init__(self, path, clock, statvfs=os.statvfs, ttl=1.0):
        self.path = path
        self.clock = clock
        self.statvfs = statvfs
        self.ttl = ttl
        self._free = None
        self._total = None
        self._at = None
        #: clock time of the last ENOSPC seen by the store, or None
        self.full_at = None

    def _stat(self):
        now = self.clock.seconds()
        if self._at is not None and now - self._at < self.ttl:
            return
        try:
            st = self.statvfs(self.path)
        except OSError:
            # Unknown: behave as if there were room (the writes will tell).
            self._free, self._total = None, None
        else:
            self._free = st.f_bavail * st.f_frsize
            self._total = st.f_blocks * st.f_frsize
        self._at = now

    def free(self):
        """Bytes an unprivileged writer may still use there, or None if unknown."""
        self._stat()
        return self._free

    def total(self):
        """The filesystem's size in bytes, or None if unknown."""
        self._stat()
        return self._total

    def wrote(self, nbytes):
        """C{nbytes} were just written: lower the cached free bytes by as much."""
        if self._free is not None:
            self._free = max(0, self._free - nbytes)

    def refresh(self):
        """Ask the filesystem again on the next question."""
        self._at = None

    def disk_full(self):
        """A write failed for lack of room: remember when, ask again next time."""
        self.full_at = self.clock.seconds()
        self.refresh()

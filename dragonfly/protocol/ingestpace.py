"""A task's uploads paced at its own ingest rate while it is still fetched:
L{IngestPacing}.

The supernode fetches a new task from its origin and, at the same time,
uploads the pieces it already holds to the swarm. Both go through one link:
the origin body comes in on the downlink, its ACKs leave on the uplink,
behind the piece uploads. Unpaced, a few TCP uploads keep the uplink's queue
full (their probing, ACK compression), the ACKs wait there, and the origin
fetch slows with every millisecond they wait: on the swarm bench (100 Mbit
ports, a FIFO queue under each) the supernode's origin fetch takes 24-25 s
where curl alone takes 22.5 s, and everything the swarm does waits for it
(bench/README.md, issue 20 rounds three and five). C{--upload-limit} a little
under the uplink fixes that (L{dragonfly.protocol.uplink}), but only an
operator who knows the uplink's rate can set it.

Without a configured limit the supernode has one measure of its link: the
rate its own origin fetch reaches. While a task's body still arrives, the
uploads of that task share a kernel pacing cap (C{SO_MAX_PACING_RATE}) equal
to the highest rate that task's ingest reached over a whole window (two
seconds): on a symmetric link that is what the downlink carries with ACKs
that flow, a little under the link's rate because of the headers, so the
uploads leave a little room on the uplink for the ACKs. It costs the swarm
nothing it could use: the seed sends each piece about once, so its uploads
of a task being fetched average its ingest rate anyway; the cap only
flattens their bursts. Uploads of other tasks (complete ones in the cache)
are never paced by this, so a slow origin does not slow the cache; nor is a
task's upload paced once its body stopped arriving for C{idle} seconds (the
upload that starts next is uncapped; one already running keeps its cap until
its piece is sent, at most a piece time). Where the uplink is slower than the
downlink the cap is above what the uplink carries and changes nothing.

It never decides what is sent or to whom, only how evenly: every piece is
still verified before it is served, as before.
"""
import socket
import struct

from dragonfly.protocol.uplink import _MAX, pacing_option, socket_of

__all__ = ["IngestPacing"]

FORGET_AFTER = 60.0    # seconds: a task with no body byte for this long is dropped


class _Ingest:
    """One task's ingest: bytes in the current window, the best rate seen."""

    __slots__ = ("start", "nbytes", "peak", "last")

    def __init__(self, now):
        self.start = now
        self.nbytes = 0
        self.peak = 0
        self.last = now


class IngestPacing:
    """Caps the uploads of each task being ingested at that task's best
    ingest rate, shared by its running uploads.

    @param clock: IReactorTime (C{seconds()} only).
    @param window: seconds over which an ingest rate is measured (body bytes
        may be told a whole piece at a time: a window holds several).
    @param idle: seconds without a body byte after which a task no longer
        counts as ingested.
    @param fetching: C{task_id} -> False once its fetch ended (done or
        failed): its uploads are no longer paced from then on.
    @param option: the socket option (L{pacing_option}); None: the platform's.
        When the platform has none, nothing is ever paced.
    """

    def __init__(self, clock, window=2.0, idle=2.0, fetching=lambda task_id: True, option=None):
        self.clock = clock
        self.fetching = fetching
        self.window = float(window)
        self.idle = float(idle)
        self.option = pacing_option() if option is None else option
        self._tasks = {}      # task_id -> _Ingest
        self._uploads = {}    # key -> (task_id, socket), the uploads paced now
        self._capped = {}     # key -> socket, capped by us at some point

    # -- the ingest side ----------------------------------------------------------

    def received(self, task_id, nbytes):
        """C{nbytes} of C{task_id}'s origin body arrived."""
        now = self.clock.seconds()
        ing = self._tasks.get(task_id)
        if ing is None or now - ing.last > self.idle:
            # A new fetch (or one resumed after a pause): measure afresh,
            # and forget the tasks no byte came for in a while.
            peak = ing.peak if ing is not None else 0
            for tid in [t for t, i in self._tasks.items() if now - i.last > FORGET_AFTER]:
                del self._tasks[tid]
            ing = self._tasks[task_id] = _Ingest(now)
            ing.peak = peak
            return      # these bytes came over an unknown time: they open the window
        ing.last = now
        ing.nbytes += nbytes
        elapsed = now - ing.start
        if elapsed >= self.window:
            rate = int(ing.nbytes / elapsed)
            ing.start, ing.nbytes = now, 0
            if rate > ing.peak:
                ing.peak = rate
                self._balance(task_id)

    def rate(self, task_id):
        """The cap C{task_id}'s uploads share now, or 0 (not paced)."""
        ing = self._tasks.get(task_id)
        if ing is None or not ing.peak or self.clock.seconds() - ing.last > self.idle:
            return 0
        if not self.fetching(task_id):
            del self._tasks[task_id]
            return 0
        return ing.peak

    # -- the upload side ----------------------------------------------------------

    def add(self, key, task_id, transport):
        """An upload keyed C{key} of C{task_id} starts on C{transport}: True
        when it is paced (the task's other uploads share the cap anew)."""
        if self.option is None:
            return False
        if not self.rate(task_id):
            self._release(key)
            return False
        sock = socket_of(transport)
        if sock is None:
            return False
        self._uploads[key] = (task_id, sock)
        self._capped[key] = sock
        self._balance(task_id)
        return True

    def remove(self, key):
        """The upload keyed C{key} ended: the task's others share its part."""
        entry = self._uploads.pop(key, None)
        if entry is not None:
            self._balance(entry[0])

    def forget(self, key):
        """C{key}'s connection is gone."""
        self.remove(key)
        self._capped.pop(key, None)

    def paced(self, task_id=None):
        """How many uploads (of C{task_id}, or of any task) are paced now."""
        return sum(1 for t, _ in self._uploads.values() if task_id is None or t == task_id)

    def _release(self, key):
        """Lift our cap from C{key}'s socket (a later upload on the same
        connection, with its task no longer ingested)."""
        sock = self._capped.pop(key, None)
        if sock is not None:
            self._cap(sock, _MAX - 1)

    def _balance(self, task_id):
        socks = [s for t, s in self._uploads.values() if t == task_id]
        if not socks:
            return
        rate = self.rate(task_id)
        share = max(1, rate // len(socks)) if rate else _MAX - 1
        for sock in socks:
            self._cap(sock, share)

    def _cap(self, sock, rate):
        try:
            sock.setsockopt(socket.SOL_SOCKET, self.option, struct.pack("I", min(rate, _MAX - 1)))
        except (OSError, ValueError):
            return False
        return True

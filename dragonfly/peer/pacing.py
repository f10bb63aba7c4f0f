"""The rate one shared download is fetched at, from its callers' own limits.

Each caller of C{PeerNode.download} may give a limit (bytes/s, 0 = none): a
dfget run with C{--limit} through the daemon. A task is fetched once however
many callers want it, so the fetch can only have one pace, L{DownloadPace}:

  - with no limited caller (or any caller without a limit) it is unlimited;
  - otherwise it is the fastest caller's limit: the slower callers get their
    file sooner than they asked (their bytes cost the link nothing more, the
    fetch happens once), and no caller is held below the pace it asked for;
  - when a caller leaves, the pace is worked out again from those left.

The node's own C{--download-limit} applies on top, to every download.
Pieces are paced before they are requested (the swarm session) or as the
origin's body arrives (back-to-source), with a bucket that starts empty: a
download of N bytes at R bytes/s takes at least N/R seconds. (Its burst, a
quarter second of the rate, only absorbs timer lateness. A wait already
running when the pace rises keeps its length: at most one piece per fetch
slot comes at the old pace.)
"""
from twisted.internet.defer import succeed

from dragonfly.runtime.ratelimit import TokenBucket

__all__ = ["DownloadPace", "pace_rate"]


def pace_rate(limits):
    """The shared fetch's rate for callers with C{limits}: 0 (unlimited) when
    there is none or one is 0, else the largest."""
    limits = list(limits)
    if not limits or 0 in limits:
        return 0
    return max(limits)


def _burst(rate):
    return max(rate // 4, 1)


class DownloadPace:
    """A limiter (C{wait(n)}) for one download, following its callers' limits.

    @param clock: an IReactorTime.
    """

    def __init__(self, clock):
        self._clock = clock
        self._limits = {}
        self._bucket = None

    @property
    def rate(self):
        """Bytes per second now; 0 = unlimited."""
        return self._bucket.rate if self._bucket is not None else 0

    def add(self, caller, limit):
        """C{caller} (any hashable key) wants the download at most at C{limit}."""
        self._limits[caller] = int(limit or 0)
        self._update()

    def remove(self, caller):
        """C{caller} left: its limit no longer counts."""
        if self._limits.pop(caller, None) is not None:
            self._update()

    def _update(self):
        rate = pace_rate(self._limits.values())
        if rate == 0:
            self._bucket = None
        elif self._bucket is None:
            self._bucket = TokenBucket(self._clock, rate, burst=_burst(rate), initial=0)
        elif self._bucket.rate != rate:
            self._bucket.set_rate(rate)
            self._bucket.burst = _burst(rate)

    def wait(self, n):
        """A Deferred firing when C{n} more bytes may be fetched (at once when
        unlimited); cancelling it gives up the wait."""
        if self._bucket is None:
            return succeed(None)
        return self._bucket.wait(n)

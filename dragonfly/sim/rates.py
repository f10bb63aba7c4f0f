"""The simulator's fluid rate model: how the transfers of one instant share
the links (see L{dragonfly.sim.swarm}'s module docstring, "Model").

L{FluidRates} is a mixin of L{dragonfly.sim.swarm.Swarm}: it keeps each
transfer's rate and reschedules its completion event (C{self._push}) when the
rate changes; senders whose rates are due are collected in C{self._dirty}
and settled once per instant (L{FluidRates._flush}).
"""

__all__ = ["DONE", "FluidRates"]

#: The event kind of a transfer's completion on the swarm's event heap.
DONE = 0

# A transfer at or above this share of its receiver's old downlink share was
# (up to rounding) held back by it.
_CAP_SLACK = 1 - 1e-9


def _first(pair):
    return pair[0]


class FluidRates:
    """Rates of the transfers: the senders' uplinks water-filled over their
    uploads, each upload capped by its receiver's downlink share."""

    def _waterfill(self, sender, now):
        """Recompute the rates of C{sender}'s uploads; reschedule changed ones."""
        ups = sender.uploads
        n = len(ups)
        if not n:
            return
        share = sender.up / n
        caps = []
        limited = False
        for t in ups:
            r = t.dst
            cap = r.down / len(r.downloads)
            caps.append(cap)
            if cap < share:
                limited = True
        if not limited:
            # no upload is held back by its receiver: equal shares
            for t in ups:
                if t.rate != share:
                    self._set_rate(t, share, now)
            return
        left = sender.up
        for cap, t in sorted(zip(caps, ups), key=_first):
            share = left / n
            rate = cap if cap < share else share
            left -= rate
            n -= 1
            if t.rate != rate:
                self._set_rate(t, rate, now)

    def _set_rate(self, t, rate, now):
        if rate == t.rate:
            return
        if t.rate:
            t.remaining -= t.rate * (now - t.last)
            if t.remaining < 0:
                t.remaining = 0.0
        t.last = now
        t.rate = rate
        t.version += 1
        self._push(now + t.remaining / rate, DONE, t, t.version)

    def _mark(self, sender):
        """C{sender}'s upload rates are recomputed before the clock moves on."""
        if not sender.dirty:
            sender.dirty = True
            self._dirty.append(sender)

    def _flush(self, now):
        """Recompute the rates of every sender marked since the clock last moved.

        Changes at one instant (a piece ends, its receiver asks for the next
        one at once) are settled together: a rate that would hold for no time
        at all is never set, and its completion never scheduled.
        """
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.dirty = False
            self._waterfill(s, now)

    def _touch(self, src, dst):
        """A transfer from C{src} to C{dst} ended: mark the senders it affects.

        C{src}'s remaining uploads share its uplink anew. C{dst}'s other
        downloads may now take more (its downlink share grew), but only those
        that were held back by that share: a transfer below its receiver's
        old share runs at its sender's water level, which a higher cap does
        not change, so its sender is left alone.
        """
        self._mark(src)
        downloads = dst.downloads
        if not downloads:
            return
        old_cap = dst.down / (len(downloads) + 1) * _CAP_SLACK
        for t in downloads:
            if t.rate >= old_cap:
                self._mark(t.src)

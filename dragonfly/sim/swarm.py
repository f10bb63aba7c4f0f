"""A piece-level swarm simulator driving the real L{Scheduler}.

Model
=====

- One seed host (the supernode's CDN copy) and C{hosts} peer hosts, all
  joining at time 0 (a flash crowd: the hard case).
- Pieces reach the seed from the origin at C{origin_rate} bytes/s, in order;
  the scheduler learns of each through C{seed_has}, as from the real CDN.
  C{origin_rate=0} means the seed already holds the whole file (warm cache).
- Every host has an uplink and a downlink capacity (bytes/s). Data moves as a
  fluid at piece granularity: a transfer's rate is the smaller of
    * its receiver's downlink share: downlink / number of the receiver's
      active downloads, and
    * its sender's free uplink share: the sender's uplink is water-filled
      over its uploads, each upload capped by its receiver's share, so
      capacity one receiver cannot take goes to the sender's other uploads.
  Rates are recomputed, and completion events rescheduled, whenever a
  transfer starts or ends at one of the hosts involved.
- The control plane is instant: a peer reports a finished piece and asks for
  more in the same step (like one C{/schedule} round trip with no latency);
  a peer with nothing to do waits on C{LongPollScheduler.changed}, with a long-poll
  timeout like the API's, then asks again.

Time is a L{twisted.internet.task.Clock} that the scheduler reads; the
simulator advances it from its own event heap (C{Clock.callLater} keeps a
sorted list, far too slow for millions of events).
"""
import heapq
import math
import random
import statistics
import time

from twisted.internet.task import Clock

from dragonfly.interfaces import PeerInfo
from dragonfly.supernode.wakeups import LongPollScheduler

TASK = "sim-task"

# event kinds
_DONE, _POLL, _ORIGIN = 0, 1, 2


def _first(pair):
    return pair[0]


class _Host:
    __slots__ = ("hid", "up", "down", "uploads", "downloads", "info",
                 "uploaded", "downloaded",
                 "waiter", "done_at", "pieces", "is_seed", "pending_have",
                 "pending_failed", "scheduled_poll", "wait_deadline",
                 "timeout_pending")

    def __init__(self, hid, up, down, info, is_seed=False):
        self.hid = hid
        self.up = up
        self.down = down
        self.uploads = []
        self.downloads = []
        self.info = info
        self.uploaded = 0
        self.downloaded = 0
        self.waiter = None
        self.done_at = None
        self.pieces = 0
        self.is_seed = is_seed
        self.pending_have = []
        self.pending_failed = []
        self.scheduled_poll = False
        self.wait_deadline = 0.0
        self.timeout_pending = False


class _Transfer:
    __slots__ = ("src", "dst", "index", "size", "remaining", "rate", "last",
                 "version")

    def __init__(self, src, dst, index, size, now):
        self.src = src
        self.dst = dst
        self.index = index
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.last = now
        self.version = 0


class SwarmResult(dict):
    """Plain dict of the measured numbers (JSON-ready)."""


def lower_bound(size, hosts, seed_up, peer_up, peer_down):
    """max(F/u_seed, F/d, N*F/(u_seed + N*u)): no schedule finishes sooner."""
    return max(size / seed_up, size / peer_down,
               hosts * size / (seed_up + hosts * peer_up))


class Swarm:
    """One simulated download of one file by C{hosts} peers.

    @param hosts: number of peer hosts.
    @param size: file size in bytes.
    @param piece_size: bytes per piece (the last piece may be shorter).
    @param up, down: each peer's uplink/downlink in bytes/s.
    @param seed_up: the seed's uplink in bytes/s (default C{up}).
    @param origin_rate: bytes/s from origin to seed; 0 = seed starts full.
    @param concurrency: pieces a peer downloads at once (its C{want}).
    @param poll_wait: long-poll timeout in seconds.
    @param scheduler_args: keyword arguments for L{Scheduler}.
    @param seed: random seed (scheduler and simulator).
    """

    def __init__(self, hosts, size, piece_size=4 * 1024 * 1024, up=125e6,
                 down=None, seed_up=None, origin_rate=0, concurrency=4,
                 poll_wait=30.0, scheduler_args=None, seed=0, max_time=None):
        if hosts < 1 or size < 1 or piece_size < 1:
            raise ValueError("hosts, size and piece_size must be positive")
        self.n_hosts = hosts
        self.size = size
        self.piece_size = piece_size
        self.up = float(up)
        self.down = float(down if down else up)
        self.seed_up = float(seed_up if seed_up else up)
        self.origin_rate = float(origin_rate)
        self.concurrency = concurrency
        self.poll_wait = poll_wait
        self.rng = random.Random(seed)
        self.clock = Clock()
        args = {"rng": random.Random(seed + 1)}
        args.update(scheduler_args or {})
        self.scheduler = LongPollScheduler(self.clock, **args)
        n = -(-size // piece_size)
        self.piece_sizes = [piece_size] * (n - 1) + [size - piece_size * (n - 1)]
        self.max_time = max_time
        self._heap = []
        self._seq = 0
        self.events = 0
        self.transfers = 0
        self.done_count = 0
        seed_info = PeerInfo("supernode-sim:8001", "seed", 8001)
        self.seed = _Host(-1, self.seed_up, float("inf"), seed_info, is_seed=True)
        self.by_id = {seed_info.peer_id: self.seed}
        self.hosts = []
        for h in range(hosts):
            info = PeerInfo(f"peer{h}-sim", f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}", 65000)
            host = _Host(h, self.up, self.down, info)
            self.hosts.append(host)
            self.by_id[info.peer_id] = host

    # -- event heap ---------------------------------------------------------

    def _push(self, t, kind, obj, version=0):
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj, version))

    # -- rates --------------------------------------------------------------

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
        self._push(now + t.remaining / rate, _DONE, t, t.version)

    def _touch(self, src, dst, now):
        """Transfers at C{src} or C{dst} changed: recompute affected senders."""
        senders = {id(src): src}
        for t in dst.downloads:
            senders[id(t.src)] = t.src
        for s in senders.values():
            self._waterfill(s, now)

    # -- peers --------------------------------------------------------------

    def _poll(self, host):
        """Report what C{host} finished and ask for more work."""
        host.scheduled_poll = False
        if host.done_at is not None:
            return
        sched = self.scheduler
        if host.waiter is not None:
            w, host.waiter = host.waiter, None
            w.cancel()
        have, host.pending_have = host.pending_have, []
        failed, host.pending_failed = host.pending_failed, []
        if have or failed:
            sched.report(TASK, host.info.peer_id, have=have, failed=failed)
        if sched.is_done(TASK, host.info.peer_id):
            host.done_at = self.clock.seconds()
            self.done_count += 1
            return
        want = self.concurrency - len(host.downloads)
        if want <= 0:
            return
        got = sched.assign(TASK, host.info.peer_id, want)
        now = self.clock.seconds()
        for a in got:
            src = self.by_id[a.source.peer_id]
            t = _Transfer(src, host, a.index, a.size, now)
            src.uploads.append(t)
            host.downloads.append(t)
            self.transfers += 1
        if got:
            # one pass over the senders touched by this batch
            senders = {}
            for t in host.downloads:
                senders[id(t.src)] = t.src
            for s in senders.values():
                self._waterfill(s, now)
        if len(got) < want:
            self._wait(host)

    def _wait(self, host):
        d = self.scheduler.changed(TASK, host.info.peer_id)
        host.waiter = d
        host.wait_deadline = self.clock.seconds() + self.poll_wait

        def woke(_):
            if host.waiter is d:
                host.waiter = None
                self._schedule_poll(host)

        d.addCallbacks(woke, lambda f: None)
        # One pending timeout event per host at most (re-armed when it fires
        # early), so waiting does not fill the heap.
        if not host.timeout_pending:
            host.timeout_pending = True
            self._push(host.wait_deadline, _POLL, host, 0)

    def _schedule_poll(self, host):
        if not host.scheduled_poll:
            host.scheduled_poll = True
            self._push(self.clock.seconds(), _POLL, host, -1)

    def _finish(self, t, now):
        src, dst = t.src, t.dst
        src.uploads.remove(t)
        dst.downloads.remove(t)
        src.uploaded += t.size
        dst.downloaded += t.size
        dst.pieces += 1
        t.rate = 0.0
        # the sender's remaining uploads and the receiver's downloads speed up
        self._touch(src, dst, now)
        dst.pending_have.append(t.index)
        self._schedule_poll(dst)

    # -- run ----------------------------------------------------------------

    def run(self):
        wall = time.perf_counter()
        sched = self.scheduler
        sched.add_task(TASK, self.piece_sizes, self.seed.info)
        digest = "0" * 64
        if self.origin_rate > 0:
            t = 0.0
            for i, s in enumerate(self.piece_sizes):
                t += s / self.origin_rate
                self._push(t, _ORIGIN, i)
        else:
            for i in range(len(self.piece_sizes)):
                sched.seed_has(TASK, i, digest)
        for host in self.hosts:
            sched.join(TASK, host.info)
        order = list(self.hosts)
        self.rng.shuffle(order)
        for host in order:
            self._poll(host)
        heap = self._heap
        clock = self.clock
        pop = heapq.heappop
        while heap and self.done_count < self.n_hosts:
            when, _seq, kind, obj, version = pop(heap)
            if self.max_time is not None and when > self.max_time:
                break
            if when > clock.rightNow:
                clock.advance(when - clock.rightNow)
            self.events += 1
            if kind == _DONE:
                if version != obj.version:
                    continue
                self._finish(obj, when)
            elif kind == _POLL:
                if version == -1:
                    if obj.scheduled_poll:
                        self._poll(obj)
                else:
                    obj.timeout_pending = False
                    if obj.waiter is None:
                        continue
                    if when >= obj.wait_deadline:
                        # long-poll timed out: ask again
                        self._poll(obj)
                    else:
                        obj.timeout_pending = True
                        self._push(obj.wait_deadline, _POLL, obj, 0)
            else:
                sched.seed_has(TASK, obj, digest)
        return self._result(time.perf_counter() - wall)

    def _result(self, wall):
        done = [h.done_at for h in self.hosts if h.done_at is not None]
        lb = lower_bound(self.size, self.n_hosts, self.seed_up, self.up, self.down)
        st = self.scheduler.stats()
        res = SwarmResult(
            hosts=self.n_hosts, size=self.size, piece_size=self.piece_size,
            pieces=len(self.piece_sizes), up=self.up, down=self.down,
            seed_up=self.seed_up, origin_rate=self.origin_rate,
            concurrency=self.concurrency,
            completed=len(done),
            max_time=max(done) if done else math.inf,
            median_time=statistics.median(done) if done else math.inf,
            lower_bound=lb,
            seed_egress=self.seed.uploaded,
            seed_egress_x=self.seed.uploaded / self.size,
            assigned=st["assigned"],
            transfers=self.transfers, events=self.events, wall_seconds=wall,
        )
        res["ratio_max"] = res["max_time"] / lb
        res["ratio_median"] = res["median_time"] / lb
        return res


def simulate(hosts, size, **kw):
    """Run one L{Swarm} and return its L{SwarmResult}."""
    return Swarm(hosts, size, **kw).run()

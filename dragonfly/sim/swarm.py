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
  a peer with fewer pieces than it wants waits on C{LongPollScheduler.watch},
  with a long-poll timeout like the API's, then asks again. A wake-up is
  answered at once, inside the change that caused it, as the API's waiting
  coroutine resumes inside the Deferred's callback: the peers that waited
  choose before the peer whose report freed the slot.

Failure (all off by default):

- C{supernodes}: the cluster's members; the task's owner is the first of its
  rendezvous order (the highest C{sha256(member + "\\0" + task)}, as in
  L{dragonfly.supernode.cluster}). Its CDN copy is the seed.
- C{kill_owner_at}: when the hosts together hold this fraction of all the bytes
  they need, the owner dies. Every transfer in flight is lost (the new owner
  knows none of them), every live host registers at the next member of the
  order and reports the pieces it holds, and the new owner starts a new
  scheduler and fetches the whole file from the origin once more (at
  C{origin_rate}; at once when it is 0). Origin egress counts every byte
  the owners fetched (with C{origin_rate=0} the first owner's warm copy counts
  as one file).
- C{churn}: this share of the hosts leaves at a uniformly random time before
  the lower bound: its transfers fail (receivers report the failure), the
  scheduler forgets it and its pieces. A host that leaves before completing
  is not waited for.
- C{slow}: this share of the hosts has a tenth of the peer uplink and downlink.
- C{join_over}: the hosts join at uniformly random times from 0 to this many
  seconds instead of all at 0 (a staggered start); C{max_span} is the longest
  time from a host's join to its completion.

Time is a L{twisted.internet.task.Clock} that the scheduler reads; the
simulator advances it from its own event heap (C{Clock.callLater} keeps a
sorted list, far too slow for millions of events).
"""
import gc
import heapq
import math
import random
import statistics
import time

from twisted.internet.task import Clock

from dragonfly.interfaces import PeerInfo
from dragonfly.sim.bounds import hop_bound, mixed_bound, rendezvous_order
from dragonfly.sim.rates import DONE as _DONE, FluidRates
from dragonfly.supernode.wakeups import LongPollScheduler

TASK = "sim-task"

# event kinds (_DONE, 0: a transfer completes; dragonfly.sim.rates)
_POLL, _ORIGIN, _LEAVE, _JOIN = 1, 2, 3, 4
# the progress callback runs every 2**20 events
_PROGRESS_MASK = (1 << 20) - 1
DIGEST = "0" * 64


class _Host:
    __slots__ = ("hid", "up", "down", "uploads", "downloads", "info",
                 "uploaded", "downloaded",
                 "waiter", "done_at", "pieces", "is_seed", "pending_have",
                 "pending_failed", "scheduled_poll", "wait_deadline",
                 "timeout_pending", "held", "gone", "dirty", "woke", "joined_at")

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
        self.held = 0       # bitmask of the pieces this host holds
        self.gone = False
        self.dirty = False  # its uploads' rates are due for recomputation
        self.woke = None    # called when its long-poll wait ends
        self.joined_at = None


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


def _bits(mask):
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


class Swarm(FluidRates):
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
    @param supernodes: members of the supernode cluster.
    @param kill_owner_at: kill the task's owner at this share of the swarm's
        progress (0 < x < 1), or None. Needs C{supernodes >= 2}.
    @param churn: share of hosts that leave at a random time.
    @param slow: share of hosts at a tenth of the peer link.
    @param progress: None, or called with the swarm every 2**20 events.
    @param join_over: hosts join at random times in [0, join_over] seconds.
    """

    def __init__(self, hosts, size, piece_size=4 * 1024 * 1024, up=125e6,
                 down=None, seed_up=None, origin_rate=0, concurrency=4,
                 poll_wait=30.0, scheduler_args=None, seed=0, max_time=None,
                 supernodes=1, kill_owner_at=None, churn=0.0, slow=0.0, progress=None,
                 join_over=0.0):
        if hosts < 1 or size < 1 or piece_size < 1:
            raise ValueError("hosts, size and piece_size must be positive")
        if supernodes < 1 or not 0 <= churn <= 1 or not 0 <= slow <= 1 or join_over < 0:
            raise ValueError("supernodes must be positive, churn and slow in [0, 1], "
                             "join_over not negative")
        if kill_owner_at is not None and (supernodes < 2 or not 0 < kill_owner_at < 1):
            raise ValueError("kill_owner_at needs two supernodes and a share in (0, 1)")
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
        self.scheduler_args = {"rng": random.Random(seed + 1)}
        self.scheduler_args.update(scheduler_args or {})
        self.scheduler = LongPollScheduler(self.clock, **self.scheduler_args)
        n = -(-size // piece_size)
        self.piece_sizes = [piece_size] * (n - 1) + [size - piece_size * (n - 1)]
        self.max_time = max_time
        self.progress_cb = progress
        self._progress_mask = _PROGRESS_MASK
        self._heap = []
        self._dirty = []        # senders whose upload rates are due
        self._seq = 0
        self.events = 0
        self.transfers = 0
        self.done_count = 0
        self.members = rendezvous_order(
            [f"supernode{i}-sim:8001" for i in range(supernodes)], TASK)
        self.kill_owner_at = kill_owner_at
        self.killed_at = None
        self.epoch = 0          # owners so far - 1; tags origin events
        self.origin_bytes = 0
        self.progress = 0       # bytes the hosts have received
        self.left_early = 0     # hosts that left before completing
        self.seed_uploaded = 0  # bytes sent by every owner's seed
        self.seed = self._new_seed()
        self.by_id = {self.seed.info.peer_id: self.seed}
        self.hosts = []
        slow_ids = set(self.rng.sample(range(hosts), round(hosts * slow)))
        for h in range(hosts):
            info = PeerInfo(f"peer{h}-sim", f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}", 65000)
            f = 0.1 if h in slow_ids else 1.0
            host = _Host(h, self.up * f, self.down * f, info)
            self.hosts.append(host)
            self.by_id[info.peer_id] = host
        self.churned = self.rng.sample(range(hosts), round(hosts * churn))
        self.join_over = float(join_over)

    def _new_seed(self):
        name = self.members[self.epoch]
        return _Host(-1 - self.epoch, self.seed_up, float("inf"),
                     PeerInfo(name, name.split(":")[0], 8001), is_seed=True)

    # -- event heap ---------------------------------------------------------

    def _push(self, t, kind, obj, version=0):
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj, version))

    # -- peers --------------------------------------------------------------

    def _poll(self, host):
        """Report what C{host} finished and ask for more work."""
        host.scheduled_poll = False
        if host.done_at is not None or host.gone:
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
            # One pass over the senders touched by this batch: those of the
            # new transfers, and those whose transfer to this host is now
            # above the host's smaller downlink share.
            cap = host.down / len(host.downloads)
            for t in host.downloads:
                if t.rate == 0.0 or t.rate > cap:
                    self._mark(t.src)
        if len(got) < want:
            self._wait(host)

    def _wait(self, host):
        # LongPollScheduler.watch: the API's long-poll waiter and wake-up
        # rule, without a Deferred per wait (the simulator waits millions
        # of times).
        if host.woke is None:
            host.woke = lambda: self._woke(host)
        host.waiter = self.scheduler.watch(TASK, host.info.peer_id, host.woke)
        host.wait_deadline = self.clock.seconds() + self.poll_wait
        # One pending timeout event per host at most (re-armed when it fires
        # early), so waiting does not fill the heap.
        if not host.timeout_pending:
            host.timeout_pending = True
            self._push(host.wait_deadline, _POLL, host, 0)

    def _woke(self, host):
        # The API's long-poll resumes inside the change's Deferred.callback:
        # a woken waiter asks at once, before the peer whose report (or the
        # origin piece, expiry, leave) woke it asks for itself. A host with a
        # poll already due asks then.
        host.waiter = None
        if not host.scheduled_poll:
            self._poll(host)

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
        dst.held |= 1 << t.index
        self.progress += t.size
        t.rate = 0.0
        # the sender's remaining uploads and the receiver's downloads speed up
        self._touch(src, dst)
        dst.pending_have.append(t.index)
        self._schedule_poll(dst)
        if (self.kill_owner_at is not None and self.killed_at is None
                and self.progress >= self.kill_owner_at * self.n_hosts * self.size):
            self._failover(now)

    # -- failure ------------------------------------------------------------

    def _drop(self, t):
        """Transfer C{t} ends unfinished (its pending completion is void)."""
        t.src.uploads.remove(t)
        t.dst.downloads.remove(t)
        t.version += 1
        t.rate = 0.0

    def _leave(self, host, now):
        """C{host} goes away: its transfers fail and its pieces leave the swarm."""
        if host.gone:
            return
        host.gone = True
        if host.done_at is None:
            self.left_early += 1
        if host.waiter is not None:
            w, host.waiter = host.waiter, None
            w.cancel()
        senders = {}
        for t in list(host.downloads):
            self._drop(t)
            senders[id(t.src)] = t.src
        for t in list(host.uploads):
            self._drop(t)
            r = t.dst
            r.pending_failed.append((t.index, host.info.peer_id))
            self._schedule_poll(r)
            for o in r.downloads:
                senders[id(o.src)] = o.src
        self.scheduler.leave(TASK, host.info.peer_id)
        for s in senders.values():
            self._waterfill(s, now)

    def _start_origin(self, now):
        """The current owner's CDN fetches the file from the origin."""
        sched = self.scheduler
        sched.add_task(TASK, self.piece_sizes, self.seed.info)
        if self.origin_rate > 0:
            t = now
            for i, s in enumerate(self.piece_sizes):
                t += s / self.origin_rate
                self._push(t, _ORIGIN, i, self.epoch)
        else:
            self.origin_bytes += self.size
            for i in range(len(self.piece_sizes)):
                sched.seed_has(TASK, i, DIGEST)

    def _failover(self, now):
        """The owner dies; the next member takes the task over."""
        self.killed_at = now
        for h in self.hosts:
            for t in h.downloads:
                t.version += 1
                t.rate = 0.0
            h.downloads = []
            h.uploads = []
        self.seed_uploaded += self.seed.uploaded
        self.seed.uploads = []
        self.epoch += 1
        self.seed = self._new_seed()
        self.by_id[self.seed.info.peer_id] = self.seed
        self.scheduler = sched = LongPollScheduler(self.clock, **self.scheduler_args)
        self._start_origin(now)
        live = []
        for h in self.hosts:
            if h.gone or h.joined_at is None:
                continue
            if h.waiter is not None:
                w, h.waiter = h.waiter, None
                w.cancel()
            h.pending_have = []
            h.pending_failed = []
            sched.join(TASK, h.info)
            if h.held:
                sched.report(TASK, h.info.peer_id, have=list(_bits(h.held)))
            if h.done_at is None:
                live.append(h)
        self.rng.shuffle(live)
        for h in live:
            self._schedule_poll(h)

    # -- run ----------------------------------------------------------------

    def run(self):
        """Simulate until every staying host completes: the L{SwarmResult}.

        The cyclic garbage collector is off meanwhile: the run makes no
        reference cycles per event, and each full collection walked every live
        object again (a 1 GB heap at 100,000 hosts): a fifth of the CPU at
        10,000 hosts.
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if collecting:
                gc.enable()

    def _run(self):
        wall = time.perf_counter()
        sched = self.scheduler
        self._start_origin(0.0)
        if self.join_over:
            for host in self.hosts:
                self._push(self.rng.uniform(0, self.join_over), _JOIN, host)
        else:
            for host in self.hosts:
                host.joined_at = 0.0
                sched.join(TASK, host.info)
            order = list(self.hosts)
            self.rng.shuffle(order)
            for host in order:
                self._poll(host)
        if self.churned:
            horizon = self._bound()
            for h in self.churned:
                self._push(self.rng.uniform(0, horizon), _LEAVE, self.hosts[h])
        heap = self._heap
        clock = self.clock
        pop = heapq.heappop
        while self.done_count + self.left_early < self.n_hosts:
            if self._dirty and (not heap or heap[0][0] > clock.rightNow):
                self._flush(clock.rightNow)
                continue
            if not heap:
                break
            when, _seq, kind, obj, version = pop(heap)
            if self.max_time is not None and when > self.max_time:
                break
            if when > clock.rightNow:
                clock.advance(when - clock.rightNow)
            self.events += 1
            if not self.events & self._progress_mask and self.progress_cb is not None:
                self.progress_cb(self)
            if kind == _DONE:
                if version == obj.version:
                    self._finish(obj, when)
            elif kind == _POLL:
                self._poll_event(obj, when, version)
            elif kind == _ORIGIN:
                if version == self.epoch:
                    self.origin_bytes += self.piece_sizes[obj]
                    self.scheduler.seed_has(TASK, obj, DIGEST)
            elif kind == _JOIN:
                if not obj.gone:
                    obj.joined_at = when
                    self.scheduler.join(TASK, obj.info)
                    self._poll(obj)
            else:
                self._leave(obj, when)
        return self._result(time.perf_counter() - wall)

    def _poll_event(self, host, when, version):
        if version == -1:
            if host.scheduled_poll:
                self._poll(host)
            return
        host.timeout_pending = False
        if host.waiter is None:
            return
        if when >= host.wait_deadline:
            # long-poll timed out: ask again
            self._poll(host)
        else:
            host.timeout_pending = True
            self._push(host.wait_deadline, _POLL, host, 0)

    def _bound(self, fast_only=False):
        downs = [h.down for h in self.hosts if not fast_only or h.down >= self.down]
        lb = mixed_bound(self.size, self.seed_up, [h.up for h in self.hosts], downs or [self.down])
        return max(lb, self.size / self.origin_rate) if self.origin_rate > 0 else lb

    def _hop_bound(self):
        """L{hop_bound}: the bound plus the last piece's hops to every host."""
        return hop_bound(self.size, min(self.piece_sizes[0], self.piece_sizes[-1]), self.seed_up,
                         [h.up for h in self.hosts], [h.down for h in self.hosts],
                         self.origin_rate)

    def _result(self, wall):
        done = [h.done_at for h in self.hosts if h.done_at is not None]
        lb = self._bound()
        st = self.scheduler.stats()
        res = SwarmResult(
            hosts=self.n_hosts, size=self.size, piece_size=self.piece_size,
            pieces=len(self.piece_sizes), up=self.up, down=self.down,
            seed_up=self.seed_up, origin_rate=self.origin_rate,
            concurrency=self.concurrency,
            completed=len(done),
            max_time=max(done) if done else math.inf,
            max_span=max((h.done_at - h.joined_at for h in self.hosts if h.done_at is not None),
                         default=math.inf),
            join_over=self.join_over,
            median_time=statistics.median(done) if done else math.inf,
            lower_bound=lb,
            seed_egress=self.seed_uploaded + self.seed.uploaded,
            seed_egress_x=(self.seed_uploaded + self.seed.uploaded) / self.size,
            origin_egress=self.origin_bytes,
            origin_egress_x=self.origin_bytes / self.size,
            supernodes=len(self.members), killed_at=self.killed_at,
            left_early=self.left_early, expected=self.n_hosts - self.left_early,
            churned=len(self.churned), slow=sum(1 for h in self.hosts if h.up < self.up),
            max_time_fast=max((h.done_at for h in self.hosts
                               if h.done_at is not None and h.down >= self.down), default=math.inf),
            lower_bound_fast=self._bound(fast_only=True),
            assigned=st["assigned"],
            transfers=self.transfers, events=self.events, wall_seconds=wall,
        )
        res["ratio_max"] = res["max_time"] / lb
        res["ratio_median"] = res["median_time"] / lb
        res["hop_bound"] = self._hop_bound()
        res["ratio_hop"] = res["max_time"] / res["hop_bound"]
        return res


def simulate(hosts, size, **kw):
    """Run one L{Swarm} and return its L{SwarmResult}."""
    return Swarm(hosts, size, **kw).run()

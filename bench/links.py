"""Per-host link counters of the netns swarm: how busy each uplink and downlink was.

Every host of the lab has one interface, ``eth0``, whose transmit bytes are
its uplink and receive bytes its downlink (the tbf of each direction sits on
that port). ``/proc/PID/net/dev`` shows the interfaces of PID's network
namespace, so reading it for one process per host (the origin's nginx, the
supernode, each peer) samples every link with no subprocess and no
namespace switch: cheap enough for a 0.1 s interval.

The counters are frame bytes (TCP/IP and Ethernet headers included), the
unit the tbf limits: a full link moves 12.5 MB/s of frames at 100 Mbit, of
which ~95.6% is payload with a 1500-byte MTU (1448 of 1514 bytes); curl alone
gets 11.9 MB/s. So a link fraction here is of the wire, and the swarm's
``link_fractions`` (payload) cannot pass ~0.956.
"""
import os
import threading
import time

__all__ = ["LinkSampler", "account", "cpu_table", "link_summary", "rate_table", "read_dev", "read_schedstat"]

#: A sampling interval below this fraction of the link's rate counts as idle.
IDLE_FRACTION = 0.1


def read_dev(pid, dev="eth0"):
    """(tx_bytes, rx_bytes) of C{dev} in PID's network namespace, or None."""
    try:
        with open("/proc/%d/net/dev" % pid) as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == dev:
                    fields = rest.split()
                    return int(fields[8]), int(fields[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_schedstat(pid):
    """(on-CPU ns, run-queue wait ns) of every thread of PID together, or None.

    ``/proc/PID/task/TID/schedstat``: time spent running and time spent
    runnable but waiting for a CPU. The wait is what a CPU-starved process
    looks like: a link idle while its process waits here is the machine,
    not the protocol."""
    run = wait = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                fields = f.read().split()
            run += int(fields[0])
            wait += int(fields[1])
        except (OSError, ValueError, IndexError):
            continue   # (a thread that ended between the listing and the read)
    return run, wait


class LinkSampler:
    """Samples (tx, rx) of every host's eth0 about every C{interval} seconds
    while the block runs: C{samples}, [t, [[tx, rx] or None per pid]] from t0;
    and each pid's scheduler times (L{read_schedstat}): C{cpu_samples},
    [t, [[run_ns, wait_ns] or None per pid]]."""

    def __init__(self, pids, t0, interval=0.1):
        self.pids = list(pids)
        self.t0 = t0
        self.interval = interval
        self.samples = []
        self.cpu_samples = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, name="links", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        self._sample()

    def _sample(self):
        row = []
        for pid in self.pids:
            v = read_dev(pid)
            row.append(list(v) if v is not None else None)
        t = round(time.monotonic() - self.t0, 3)
        self.samples.append([t, row])
        cpu = []
        for pid in self.pids:
            v = read_schedstat(pid)
            cpu.append(list(v) if v is not None else None)
        self.cpu_samples.append([t, cpu])

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()


def _series(samples, k, col):
    return [(t, row[k][col]) for t, row in samples if row[k] is not None]


def _busy(series, start, end, link):
    """Over [start, end]: (wire bytes / (link * seconds), idle seconds): the
    sampled intervals inside it in which the link moved under IDLE_FRACTION
    of its rate."""
    moved = 0
    span = 0.0
    idle = 0.0
    for (t0, b0), (t1, b1) in zip(series, series[1:]):
        if t0 < start or t1 > end or t1 <= t0:
            continue
        moved += b1 - b0
        span += t1 - t0
        if b1 - b0 < IDLE_FRACTION * link * (t1 - t0):
            idle += t1 - t0
    return (moved / (link * span) if span else None), round(idle, 2)


def link_summary(samples, names, done, link):
    """Per host (C{names}, in the samplers' pid order): its uplink's and
    downlink's use, from C{samples} of L{LinkSampler}.

    C{done}: per host, when it finished (None: the origin and the supernode,
    or unknown). A peer's downlink is judged from its first received byte to
    its own end; every uplink from the first peer byte anywhere to the last
    peer's end (the window in which it could have served what it held).
    ``up_use`` / ``down_use``: wire bytes over the link's capacity in that
    window; ``up_idle_s`` / ``down_idle_s``: sampled seconds under
    IDLE_FRACTION of the link in it. ``swarm``: every uplink's bytes together
    over (hosts x window), the supernode's included, the origin's not.
    """
    if len(samples) < 2:
        return None
    ends = [d for d in done if d is not None]
    end = max(ends) if ends else samples[-1][0]
    firsts = []
    out = []
    for k, name in enumerate(names):
        down = _series(samples, k, 1)
        first = next((t for (t, b), (_, b0) in zip(down[1:], down) if b > b0 + 65536), None)
        if done[k] is not None and first is not None:
            firsts.append(first)
        out.append({"host": name, "first_rx_s": first})
    start = min(firsts) if firsts else samples[0][0]
    up_bytes = 0
    up_links = 0
    for k, row in enumerate(out):
        up = _series(samples, k, 0)
        row["up_use"], row["up_idle_s"] = _busy(up, start, end, link)
        if row["host"] != "origin":
            up_bytes += _moved(up, start, end)
            up_links += 1
        if done[k] is not None and row["first_rx_s"] is not None:
            down = _series(samples, k, 1)
            row["down_use"], row["down_idle_s"] = _busy(down, row["first_rx_s"], done[k], link)
    span = end - start
    return {"window_s": [round(start, 2), round(end, 2)],
            "swarm_up_use": up_bytes / (link * span * up_links) if span > 0 and up_links else None,
            "hosts": out}


def _moved(series, start, end):
    inside = [b for t, b in series if start <= t <= end]
    return inside[-1] - inside[0] if len(inside) > 1 else 0


def _intervals(samples, step):
    """(earlier, later) pairs of consecutive kept samples, at least C{step}
    seconds apart, in order."""
    prev = None
    for s in samples:
        if prev is None:
            prev = s
            continue
        if s[0] - prev[0] < step:
            continue
        yield prev, s
        prev = s


def _deltas(prev, s, col, per):
    """Each process's counter C{col} moved from sample C{prev} to C{s},
    divided by C{per} (None where either sample lacks it)."""
    return [None if a is None or b is None else (b[col] - a[col]) / per
            for a, b in zip(prev[1], s[1])]


def _known(values):
    return [v for v in values if v is not None]


def rate_table(run, step=1.0, link=None):
    """Lines: every C{step} seconds of a swarm run's C{link_timeline}, the
    origin's uplink, the supernode's uplink and downlink, and the peers'
    uplinks and downlinks (mean and lowest), as fractions of the link."""
    samples = run.get("link_timeline") or []
    link = link or run.get("link_bytes_s") or 12.5e6
    lines = ["   t   origin  sn up  sn down | peers up mean  min | down mean  min"]
    for prev, s in _intervals(samples, step):
        per = (s[0] - prev[0]) * link
        up, down = _deltas(prev, s, 0, per), _deltas(prev, s, 1, per)
        ups, downs = _known(up[2:]), _known(down[2:])
        if ups and downs:
            lines.append("%5.1f  %5.2f  %5.2f  %5.2f   |     %5.2f  %5.2f |     %5.2f  %5.2f" % (
                s[0], up[0] or 0, up[1] or 0, down[1] or 0,
                sum(ups) / len(ups), min(ups), sum(downs) / len(downs), min(downs)))
    return lines


def cpu_table(run, step=1.0):
    """Lines: every C{step} seconds of a swarm run's C{cpu_timeline}, the
    share of a core the supernode ran and waited runnable for a CPU, and the
    peers' (mean and highest): a process starved of CPU shows as wait."""
    samples = run.get("cpu_timeline") or []
    lines = ["   t   sn run  sn wait | peers run mean  max | wait mean  max"]
    for prev, s in _intervals(samples, step):
        per = (s[0] - prev[0]) * 1e9
        run_, wait = _deltas(prev, s, 0, per), _deltas(prev, s, 1, per)
        runs, waits = _known(run_[2:]), _known(wait[2:])
        if runs and waits:
            lines.append("%5.1f  %5.2f   %5.2f   |     %5.2f  %5.2f |     %5.2f  %5.2f" % (
                s[0], run_[1] or 0, wait[1] or 0, sum(runs) / len(runs), max(runs),
                sum(waits) / len(waits), max(waits)))
    return lines


#: A peer's link counts as full in a sample at this fraction of the link.
FULL_FRACTION = 0.8


def account(run, file_bytes, link):
    """Lines: where a p2p run stood when its origin fetch ended, and how the
    peers' uplinks and downlinks were used together until then.

    The origin fetch: its first body byte at the supernode, its end, its
    rate; the seed's backlog (file bytes it had not yet uploaded) and the
    peers' mean lag (bytes behind the origin) at that end. Then every 0.1 s
    sample of every peer from the moment every peer had its first byte to
    the origin's end, counted by which of its two directions ran at least
    L{FULL_FRACTION} of the link: both, only the uplink, only the downlink,
    neither. Under a FIFO queue on each port a node's uploads delay its own
    downloads' ACKs and the other way round, which shows as "only one"."""
    tl = run.get("supernode_timeline") or []
    done = run.get("origin_done_s")
    first = next((t for t, got, _ in tl if got > 0), None)
    if first is None or done is None or done <= first:
        return []
    sent = max((up for t, _, up in tl if t <= done), default=0)
    lags = [p["lag_at_origin_done"] for p in run.get("peer_progress") or [] if p.get("lag_at_origin_done") is not None]
    mib = float(1 << 20)
    lines = ["origin: first byte %.2f s, done %.2f s, %.2f MiB/s; at its end the seed's backlog %.0f MiB, "
             "the peers' mean lag %.0f MiB" % (first, done, file_bytes / mib / (done - first),
                                               (file_bytes - sent) / mib, sum(lags) / mib / max(1, len(lags)))]
    starts = [h.get("first_rx_s") for h in (run.get("links") or {}).get("hosts", [])[2:]]
    start = max([t for t in starts if t is not None], default=None)
    counts = {"both": 0, "up only": 0, "down only": 0, "neither": 0}
    for prev, s in _intervals(run.get("link_timeline") or [], 0.0):
        if start is None or prev[0] < start or s[0] > done:
            continue
        per = (s[0] - prev[0]) * link
        up, down = _deltas(prev, s, 0, per), _deltas(prev, s, 1, per)
        for u, d in zip(up[2:], down[2:]):
            if u is None or d is None:
                continue
            key = ("both" if d >= FULL_FRACTION else "up only") if u >= FULL_FRACTION else \
                ("down only" if d >= FULL_FRACTION else "neither")
            counts[key] += 1
    total = sum(counts.values())
    if total:
        lines.append("peer samples %.1f-%.1f s, link >= %.0f%%: " % (start, done, 100 * FULL_FRACTION) +
                     ", ".join("%s %.0f%%" % (k, 100.0 * v / total) for k, v in counts.items()))
    return lines


def main(argv):
    """python -m bench.links RESULTS/swarm.json [STEP]: each p2p run's link table
    and, when recorded, its CPU table (run and run-queue wait per process)."""
    import json
    with open(argv[0]) as f:
        result = json.load(f)
    step = float(argv[1]) if len(argv) > 1 else 1.0
    for run in result.get("runs", []):
        if not run.get("link_timeline"):
            continue
        summary = run.get("links") or {}
        print("%s N=%d: mean %.0f%% of link; uplinks busy %.0f%% of %s s (swarm_up_use)" % (
            run["kind"], run["n"], 100 * run["mean_link_fraction"],
            100 * (summary.get("swarm_up_use") or 0), summary.get("window_s")))
        print("\n".join(rate_table(run, step, result.get("link_bytes_s"))))
        for line in account(run, result.get("file_bytes") or 0, result.get("link_bytes_s") or 12.5e6):
            print(line)
        if run.get("cpu_timeline"):
            print("CPU (share of one core; wait = runnable, no CPU free):")
            print("\n".join(cpu_table(run, step)))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))

"""Bench 2: N hosts fetch one file at once, P2P vs straight from the origin.

netns mode (default when we may create namespaces): origin, supernode and
every peer host each sit in their own network namespace on one bridge, every
link a full-duplex 100 Mbit/s port (tbf on both directions). Each host runs
a `twistd peer` plus `dfget --daemon` (P2P) or `curl` (direct). *p2p-tls* is
P2P with mutual TLS between the nodes (supernode API, piece ports; the
certificates from ``dragonfly-pki``, one per node for its address).

loopback mode (fallback): everything on 127.0.0.1; links emulated with the
product's own limits (supernode --upload-limit/--origin-limit, peer
--upload-limit/--download-limit) and, for direct, nginx `limit_rate` set to
link/N per connection (a fair share of the origin's uplink).
"""
import os
import statistics
import threading
import time

from bench import netns
from bench.links import LinkSampler, link_summary
from bench.cluster import Peer, Supernode, curl
from bench.nginx import Nginx
from bench.procs import BenchError, Profiler, cpu_times, cpu_usage, drop_file, make_file, metric, sha256_file

MB = 1e6


KINDS = ("direct", "p2p", "p2p-tls")


def run(ctx, mode=None, counts=None, size=None, kinds=KINDS, rate_mbit=100, upload_fraction=0.0,
        qdisc=""):
    """``upload_fraction``: in netns mode, every node (supernode and peers)
    runs with ``--upload-limit`` at this fraction of its link (0: none), as
    an operator sets it a little under a known uplink. ``qdisc``: in netns
    mode, the qdisc under each link's tbf (default its FIFO)."""
    if mode is None:
        ok, why = netns.available()
        mode = "netns" if ok else "loopback"
        if not ok:
            ctx.log("swarm: namespaces unavailable (%s); loopback fallback" % why)
    counts = counts or ([1, 2, 4] if ctx.quick else [1, 2, 4, 8, 16])
    size = size or ((32 << 20) if ctx.quick else (256 << 20))
    src = make_file(os.path.join(ctx.files, "swarm-%d.bin" % size), size, seed=2)
    digest = ctx.digest(src)
    link = rate_mbit * 1e6 / 8
    result = {"mode": mode, "file_bytes": size,
              "supernode_args": ctx.supernode_args, "peer_args": ctx.peer_args,
              "link_mbit": rate_mbit, "link_bytes_s": link,
              "lower_bound_s": size / link, "runs": []}
    work = ctx.tempdir("swarm")
    swarm = (_NetnsSwarm if mode == "netns" else _LoopSwarm)(ctx, work, max(counts), rate_mbit)
    swarm.qdisc = qdisc
    result["qdisc"] = qdisc or "fifo"
    if mode == "netns" and upload_fraction > 0:
        swarm.upload_limit = int(upload_fraction * link)
    result["upload_limit_bytes_s"] = getattr(swarm, "upload_limit", 0)
    ctx.on_close(swarm.close)
    try:
        swarm.setup(src)
        for n in counts:
            for kind in kinds:
                if kind not in KINDS:
                    raise BenchError("unknown swarm kind %r (have %s)" % (kind, ", ".join(KINDS)))
                r = swarm.direct(n, size) if kind == "direct" else swarm.p2p(n, size, kind)
                _verify(r, size, digest)
                _derive(r, size, link)
                result["runs"].append(r)
                ctx.log("swarm %s N=%d %s: max %.1fs median %.1fs, %.0f%% of link, origin %.2fx%s" % (
                    mode, n, kind, r["max_s"], r["median_s"], 100 * r["mean_link_fraction"],
                    r["origin_bytes"] / size,
                    "" if kind == "direct" else ", supernode upload %.2fx, p2p share %.0f%%" % (
                        r["supernode_upload_bytes"] / size, 100 * r["p2p_share"])))
                ctx.save_partial("swarm", result)
    finally:
        swarm.close()
    return result


def _verify(r, size, digest):
    bad = []
    for out in r.pop("outputs"):
        if not os.path.exists(out) or os.path.getsize(out) != size or sha256_file(out) != digest:
            bad.append(out)
        drop_file(out)
    r["outputs_ok"] = not bad
    if bad:
        raise BenchError("%s N=%d: %d outputs differ from the origin file" % (r["kind"], r["n"], len(bad)))


def _derive(r, size, link):
    t = r["seconds"]
    r["max_s"] = max(t)
    r["median_s"] = statistics.median(t)
    fr = [size / x / link for x in t]
    r["link_fractions"] = fr
    r["mean_link_fraction"] = sum(fr) / len(fr)
    r["origin_ratio"] = r["origin_bytes"] / size


def _wait_all(procs, timeout, what):
    """Seconds from the common start to each process's exit; raises on a failure."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(procs)))
    while pending:
        for i in list(pending):
            rc = procs[i].poll()
            if rc is not None:
                pending.discard(i)
                if rc != 0:
                    raise BenchError("%s #%d exited %s:\n%s" % (what, i, rc, procs[i].tail()))
        if time.monotonic() > deadline:
            raise BenchError("%s: %d of %d not done after %.0fs" % (what, len(pending), len(procs), timeout))
        time.sleep(0.02)
    return [p.elapsed for p in procs]


class _Swarm:
    def __init__(self, ctx, work, max_n, rate_mbit):
        self.ctx = ctx
        self.work = work
        self.max_n = max_n
        self.rate_mbit = rate_mbit
        self.link = rate_mbit * 1e6 / 8
        self.nginx = None

    def timeout(self, n, size):
        return 120 + 3 * n * size / self.link

    def close(self):
        if self.nginx:
            self.nginx.close()
            self.nginx = None

    # Topology hooks
    def host(self, role, i=0):             # -> (ns, address)
        raise NotImplementedError

    def direct(self, n, size):
        nginx = self.origin_for(n)
        off = nginx.log_offset()
        outs = [os.path.join(self.work, "direct-%d.bin" % i) for i in range(n)]
        procs = []
        box0 = cpu_times()
        for i in range(n):
            ns, _addr = self.host("peer", i)
            procs.append(curl(self.url, outs[i], ns=ns, log=os.path.join(self.work, "curl-%d.log" % i)))
        secs = _wait_all(procs, self.timeout(n, size), "curl")
        return {"kind": "direct", "n": n, "seconds": secs, "outputs": outs,
                "machine_cpu": cpu_usage(box0, cpu_times()),
                "origin_bytes": nginx.bytes_sent(since=off),
                "supernode_upload_bytes": 0, "p2p_share": 0.0}

    def pki(self):
        """The CA of the p2p-tls runs (made on first use, one per swarm bench)."""
        if getattr(self, "_pki", None) is None:
            from bench.tlsfiles import BenchPKI
            self._pki = BenchPKI(os.path.join(self.work, "pki"))
        return self._pki

    def p2p(self, n, size, kind="p2p"):
        nginx = self.origin_for(None)
        off = nginx.log_offset()
        ns, addr = self.host("supernode")
        tls = self.pki() if kind == "p2p-tls" else None
        sn = Supernode(self.work, host=addr, ns=ns, extra=self.supernode_limits() + self.ctx.supernode_args,
                       tls=tls)
        peers = []
        try:
            sn.start()
            for i in range(n):
                pns, paddr = self.host("peer", i)
                peers.append(Peer(self.work, sn.address, host=paddr, ns=pns,
                                  extra=self.peer_limits() + self.ctx.peer_args, name="peer%d" % i,
                                  tls=tls).start())
            for p in peers:
                p.wait_ready()
            before = sn.metrics()
            cpu0 = sn.proc.cpu_seconds()
            peer_cpu0 = [p.proc.cpu_seconds() for p in peers]
            box0 = cpu_times()
            t0 = time.monotonic()
            outs = [os.path.join(self.work, "p2p-%d.bin" % i) for i in range(n)]
            prof = Profiler(self.work, {"supernode": sn.proc, "peer0": peers[0].proc},
                            enabled=self.ctx.profile and n == self.max_n)
            timeline = _Timeline(sn, t0, peers=[p.proc for p in peers])
            links = self.link_sampler(sn, peers, t0)
            with prof, timeline, links:
                procs = [p.dfget(self.url, outs[i], log=os.path.join(self.work, "dfget-%d.log" % i))
                         for i, p in enumerate(peers)]
                secs = _wait_all(procs, self.timeout(n, size), "dfget")
            wall = time.monotonic() - t0
            box = cpu_usage(box0, cpu_times())
            cpu1 = sn.proc.cpu_seconds()
            after = sn.metrics()
            peer_cpu = [p.proc.cpu_seconds() - c for p, c in zip(peers, peer_cpu0)]
            by_src = {"peer": 0.0, "supernode": 0.0, "origin": 0.0}
            uploads = []
            for p in peers:
                m = p.metrics()
                for s in by_src:
                    by_src[s] += metric(m, "dragonfly_peer_download_bytes_total", source=s)
                uploads.append(metric(m, "dragonfly_peer_upload_bytes_total"))
            total = sum(by_src.values()) or 1.0
            reqs = _api_requests(after, before)
            return {
                "kind": kind, "n": n, "seconds": secs, "outputs": outs,
                "origin_bytes": nginx.bytes_sent(since=off),
                "supernode_origin_bytes": metric(after, "dragonfly_supernode_origin_bytes_total"),
                "supernode_upload_bytes": metric(after, "dragonfly_supernode_upload_bytes_total"),
                "peer_download_bytes": by_src,
                "peer_upload_bytes": uploads,
                "p2p_share": by_src["peer"] / total,
                "supernode_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
                "supernode_rss_bytes": sn.proc.hwm_bytes(),
                "wall_s": wall,
                "t0_monotonic": t0,
                "api_requests": reqs,
                "api_requests_per_s": sum(reqs.values()) / wall if wall else None,
                "profiles": prof.summary or None,
                "machine_cpu": box,
                "peer_cpu_s": peer_cpu,
                "supernode_timeline": timeline.samples,
                "origin_done_s": timeline.first_at(0, size),
                "peer_timeline": timeline.peer_samples,
                "peer_progress": _progress(timeline, size, link=self.link),
                "link_timeline": links.samples or None,
                "cpu_timeline": getattr(links, "cpu_samples", None) or None,
                "links": link_summary(links.samples, ["origin", "supernode"]
                                      + ["peer%d" % i for i in range(n)],
                                      [None, None] + [t + s - t0 for t, s in zip(
                                          [pr.started for pr in procs], secs)],
                                      self.link) if links.samples else None,
            }
        finally:
            for p in peers:
                p.close()
            sn.close()


class _NoLinks:
    samples = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _Timeline:
    """Samples the supernode's origin and upload byte counters about every
    0.5 s while the block runs (a thread: scrapes inside a namespace are
    subprocesses): [t, origin_bytes, upload_bytes] from t0. Shows when the
    origin fetch ended and how busy the seed's uplink was.

    With C{peers} (their Procs) also each peer's bytes written to storage
    (``write_bytes`` of /proc/PID/io: the pieces it stored, read from this
    namespace with no subprocess): C{peer_samples}, [t, [bytes per peer]]."""

    def __init__(self, sn, t0, interval=0.5, peers=()):
        self.sn = sn
        self.t0 = t0
        self.interval = interval
        self.peers = list(peers)
        self.samples = []
        self.peer_samples = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def _run(self):
        while not self._stop.is_set():
            m = self.sn.metrics()
            if m:
                self.samples.append([round(time.monotonic() - self.t0, 2),
                                     metric(m, "dragonfly_supernode_origin_bytes_total"),
                                     metric(m, "dragonfly_supernode_upload_bytes_total")])
            if self.peers:
                self.peer_samples.append([round(time.monotonic() - self.t0, 2),
                                          [_written(p.pid) for p in self.peers]])
            self._stop.wait(self.interval)

    def first_at(self, column, value):
        """Time of the first sample whose column (0 origin, 1 upload) reached value."""
        for t, *vals in self.samples:
            if vals[column] >= value:
                return t
        return None


def _written(pid):
    """Bytes process C{pid} has written to storage (None when unreadable)."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _progress(timeline, size, link):
    """Per peer, from C{timeline.peer_samples}: when it had stored half and
    all of the file (``half_s``, ``done_s``, None if never seen), its lag
    behind the supernode's origin fetch when that ended (``lag_at_origin_done``,
    bytes), and ``slow_s``: sampled seconds before ``done_s`` in which it
    stored less than half its link's rate (idle or starved), after its first
    byte. A summary of where a peer's time went; the raw samples are in
    ``peer_timeline``."""
    samples = timeline.peer_samples
    if not samples:
        return None
    origin_done = timeline.first_at(0, size)
    out = []
    for k in range(len(samples[0][1])):
        series = [(t, row[k]) for t, row in samples if row[k] is not None]
        half = next((t for t, b in series if b >= size / 2), None)
        done = next((t for t, b in series if b >= size), None)
        lag = None
        if origin_done is not None:
            at = [b for t, b in series if t <= origin_done]
            lag = size - at[-1] if at else None
        slow = 0.0
        started = False
        for (t0, b0), (t1, b1) in zip(series, series[1:]):
            started = started or b1 > 0
            if not started or (done is not None and t1 > done):
                continue
            if (b1 - b0) < 0.5 * link * (t1 - t0):
                slow += t1 - t0
        out.append({"half_s": half, "done_s": done, "lag_at_origin_done": lag,
                    "slow_s": round(slow, 2)})
    return out


def _api_requests(after, before):
    out = {}
    for (name, labels), v in after.items():
        if name == "dragonfly_supernode_api_requests_total":
            ep = dict(labels).get("endpoint", "")
            out[ep] = v - before.get((name, labels), 0.0)
    return out


class _NetnsSwarm(_Swarm):
    """h0 origin, h1 supernode, h2.. peers; every link tbf-limited both ways."""

    def setup(self, src):
        self.lab = netns.NetLab(2 + self.max_n, rate_mbit=self.rate_mbit,
                                child=getattr(self, "qdisc", "")).create()
        self.ctx.on_close(self.lab.close)
        self.nginx = Nginx(os.path.dirname(src), host=self.lab.addr(0), ns=self.lab.hosts[0],
                           workdir=self.work).start()
        self.url = self.nginx.url(os.path.basename(src))

    def origin_for(self, n):
        return self.nginx

    def host(self, role, i=0):
        k = 1 if role == "supernode" else 2 + i
        return self.lab.hosts[k], self.lab.addr(k)

    upload_limit = 0

    def link_sampler(self, sn, peers, t0):
        """Every host's eth0 counters (bench.links), origin and supernode first."""
        return LinkSampler([self.nginx.proc.pid, sn.proc.pid] + [p.proc.pid for p in peers], t0)

    def supernode_limits(self):
        return self._upload_limit()

    def peer_limits(self):
        return self._upload_limit()

    def _upload_limit(self):
        return ["--upload-limit", str(self.upload_limit)] if self.upload_limit else []

    def close(self):
        super().close()
        lab = getattr(self, "lab", None)
        if lab:
            lab.close()


class _LoopSwarm(_Swarm):
    """Everything on 127.0.0.1; links emulated with the product's rate limits."""

    def setup(self, src):
        self.root = os.path.dirname(src)
        self.name = os.path.basename(src)
        self._limit = None

    def origin_for(self, n):
        # direct: each of n connections gets link/n (the origin's uplink, shared);
        # p2p: the supernode's one origin connection gets the whole link.
        limit = int(self.link / n) if n else int(self.link)
        if self.nginx is None or self._limit != limit:
            if self.nginx:
                self.nginx.close()
            self.nginx = Nginx(self.root, workdir=self.work, limit_rate=limit).start()
            self._limit = limit
            self.url = self.nginx.url(self.name)
        return self.nginx

    def host(self, role, i=0):
        return None, "127.0.0.1"

    def link_sampler(self, sn, peers, t0):
        return _NoLinks()     # one namespace: no per-host link

    def supernode_limits(self):
        return ["--upload-limit", str(int(self.link)), "--origin-limit", str(int(self.link))]

    def peer_limits(self):
        return ["--upload-limit", str(int(self.link)), "--download-limit", str(int(self.link))]

"""Bench 1: one stream of one big file on loopback.

curl <- nginx (to a file) is the baseline. dfget *cold*: a fresh supernode
fetches the file from nginx while peer A takes pieces from it. dfget *warm*:
peer B (empty store) takes the pieces from peer A. *cached*: peer A again,
the task already in its store (copy out only). Every figure is the wall time
of the client process, start to exit, output verified afterwards.
"""
import os
import statistics
import time

from bench.cluster import Peer, Supernode, curl
from bench.nginx import Nginx
from bench.procs import BenchError, Profiler, drop_file, make_file, metric, sha256_file, tool
from bench.tlsfiles import BenchPKI

MB = 1e6


def _timed(proc, timeout, cpu=None, daemon=None, cpu_sys=None):
    """Wall time of C{proc}; with C{daemon} (a Proc) its CPU seconds
    (user+sys) while C{proc} ran go to the list C{cpu}, and its system
    seconds alone to C{cpu_sys} when given."""
    before = daemon.cpu_times() if daemon is not None else None
    rc = proc.wait(timeout)
    if rc != 0:
        raise BenchError("%s exited %s:\n%s" % (proc.name, rc, proc.tail()))
    if daemon is not None:
        after = daemon.cpu_times()
        gone = after is None or before is None
        cpu.append(None if gone else sum(after) - sum(before))
        if cpu_sys is not None:
            cpu_sys.append(None if gone else after[1] - before[1])
    return proc.elapsed


def _settle():
    os.sync()        # flush the previous run's dirty pages outside the timed part
    time.sleep(0.5)


def run(ctx):
    size = getattr(ctx, "single_size", None) or ((128 << 20) if ctx.quick else (1 << 30))
    repeats = 1 if ctx.quick else 3
    src = make_file(os.path.join(ctx.files, "single-%d.bin" % size), size, seed=1)
    digest = ctx.digest(src)
    timeout = 60 + size / (20 * MB)       # generous: 20 MB/s floor
    work = ctx.tempdir("single")
    out = os.path.join(work, "out.bin")
    result = {"file_bytes": size, "repeats": repeats, "runs": {}}

    nginx = Nginx(ctx.files, workdir=work).start()
    ctx.on_close(nginx.close)
    url = nginx.url(os.path.basename(src))

    def check(name):
        if os.path.getsize(out) != size or sha256_file(out) != digest:
            raise BenchError("%s: output differs from the origin file" % name)
        drop_file(out)

    # curl baseline
    times = []
    for _ in range(repeats):
        _settle()
        t = _timed(curl(url, out, log=os.path.join(work, "curl.log")), timeout)
        check("curl")
        times.append(t)
    result["runs"]["curl"] = _summ(times, size)
    ctx.log("single: curl %.0f MB/s" % result["runs"]["curl"]["mb_s"])
    ctx.save_partial("single", result)

    rounds = _Rounds(ctx, work, nginx, url, out, check, timeout, repeats)
    cold, warm, cached, sources, warmup, profiles = rounds.run()
    if profiles:
        result["profiles"] = profiles
    _add_runs(ctx, result, size, (("dfget_cold", cold), ("dfget_warm", warm),
                                  ("dfget_cached", cached)), rounds.cpu, warmup)
    result["warmup_round_cpu_s"] = rounds.warmup_cpu
    ctx.save_partial("single", result)
    if getattr(ctx, "tls", True):
        # the same rounds with mutual TLS on the supernode API and piece ports
        # (certificates from dragonfly-pki); cached moves no bytes over TLS
        rounds.tls = BenchPKI(os.path.join(work, "pki"))
        cold_t, warm_t, _, sources_t, warmup_t, _ = rounds.run()
        _add_runs(ctx, result, size, (("dfget_cold_tls", cold_t), ("dfget_warm_tls", warm_t)),
                  rounds.cpu, warmup_t)
        for kind in ("cold", "warm"):
            result["runs"]["dfget_%s_tls" % kind]["ratio_to_plain"] = (
                result["runs"]["dfget_%s_tls" % kind]["mb_s"] / result["runs"]["dfget_%s" % kind]["mb_s"])
        result["bytes_tls"] = sources_t
        result["warmup_round_tls_s"] = warmup_t
    result["bytes"] = sources
    result["warmup_round_s"] = warmup
    result["dfget_startup_s"] = _startup()
    nginx.close()
    return result


class _Rounds:
    """dfget cold / warm / cached, a fresh cluster per repeat so cold is cold.

    Round 0 is an untimed warm-up (fresh processes, caches, allocator arenas,
    first-touch memory on a VM): its figures are kept aside. ``tls``: a
    BenchPKI for mutual TLS between the nodes, or None.
    """

    def __init__(self, ctx, work, nginx, url, out, check, timeout, repeats):
        self.ctx, self.work, self.nginx, self.url, self.out = ctx, work, nginx, url, out
        self.check, self.timeout, self.repeats = check, timeout, repeats
        self.tls = None
        self.cpu = self.warmup_cpu = None

    def run(self):
        cold, warm, cached, sources, profiles = [], [], [], [], None
        warmup = {}
        self.cpu = {"cold": [], "warm": [], "cached": []}   # the receiving peer's CPU-s
        self.cpu["warm_sys"] = []   # ... peer B's system seconds alone in the warm run
        self.cpu["cold_supernode"] = []   # the supernode's CPU-s in the cold run
        tag = "-tls" if self.tls is not None else ""
        for i in range(self.repeats + 1):
            if i == 1:
                warmup = {"cold": cold.pop(), "warm": warm.pop(), "cached": cached.pop()}
                self.warmup_cpu = {k: v.pop() for k, v in self.cpu.items()}
                sources.pop()
            sn = Supernode(self.work, name="supernode%d%s" % (i, tag),
                           extra=self.ctx.supernode_args, tls=self.tls).start()
            a = Peer(self.work, sn.address, name="peerA%d%s" % (i, tag),
                     extra=self.ctx.peer_args, tls=self.tls).start()
            b = Peer(self.work, sn.address, name="peerB%d%s" % (i, tag),
                     extra=self.ctx.peer_args, tls=self.tls).start()
            try:
                got = self.one(sn, a, b, profile=self.ctx.profile and i == 1 and not tag)
            finally:
                for p in (b, a, sn):
                    p.close()
            cold.append(got["cold"])
            warm.append(got["warm"])
            cached.append(got["cached"])
            sources.append(got["sources"])
            profiles = got.get("profiles") or profiles
        return cold, warm, cached, sources, warmup, profiles

    def one(self, sn, a, b, profile):
        a.wait_ready()
        b.wait_ready()
        got = {}
        off = self.nginx.log_offset()
        _settle()
        sn_before = sn.proc.cpu_seconds()
        with Profiler(self.work, {"supernode": sn.proc, "peerA": a.proc}, enabled=profile) as p1:
            got["cold"] = _timed(a.dfget(self.url, self.out), self.timeout, self.cpu["cold"], a.proc)
        sn_after = sn.proc.cpu_seconds()
        self.cpu["cold_supernode"].append(
            None if sn_before is None or sn_after is None else sn_after - sn_before)
        self.check("dfget cold")
        origin = self.nginx.bytes_sent(since=off)
        _settle()
        with Profiler(self.work, {"peerA_serving": a.proc, "peerB": b.proc}, enabled=profile) as p2:
            got["warm"] = _timed(b.dfget(self.url, self.out), self.timeout, self.cpu["warm"], b.proc,
                                 self.cpu["warm_sys"])
        self.check("dfget warm")
        if profile:
            got["profiles"] = {"cold": p1.summary, "warm": p2.summary}
        _settle()
        got["cached"] = _timed(a.dfget(self.url, self.out), self.timeout, self.cpu["cached"], a.proc)
        self.check("dfget cached")
        mb = b.metrics()
        got["sources"] = {
            "origin_bytes": origin,
            "supernode_origin_bytes": metric(sn.metrics(), "dragonfly_supernode_origin_bytes_total"),
            "warm_from": {s: metric(mb, "dragonfly_peer_download_bytes_total", source=s)
                          for s in ("peer", "supernode", "origin")},
        }
        return got


def _add_runs(ctx, result, size, named, cpu, warmup):
    for name, ts in named:
        result["runs"][name] = _summ(ts, size)
        kind = name.split("_")[1]
        peer_cpu = [c for c in cpu[kind] if c is not None]
        if peer_cpu:
            result["runs"][name]["peer_cpu_s"] = peer_cpu
            result["runs"][name]["peer_cpu_s_per_gib"] = statistics.median(peer_cpu) * (1 << 30) / size
        peer_sys = [c for c in cpu.get(kind + "_sys", ()) if c is not None]
        if peer_sys:   # (the receiving peer's system share: issue 20, round five)
            result["runs"][name]["peer_cpu_sys_s"] = peer_sys
            result["runs"][name]["peer_cpu_sys_s_per_gib"] = (
                statistics.median(peer_sys) * (1 << 30) / size)
        sn_cpu = [c for c in cpu.get(kind + "_supernode", ()) if c is not None]
        if sn_cpu:
            result["runs"][name]["supernode_cpu_s"] = sn_cpu
            result["runs"][name]["supernode_cpu_s_per_gib"] = (
                statistics.median(sn_cpu) * (1 << 30) / size)
        if warmup.get(kind):
            # The first download after the bench started (fresh daemons, no warm-up).
            result["runs"][name]["first_round_mb_s"] = size / warmup[kind] / MB
            result["runs"][name]["first_round_ratio_to_curl"] = (
                result["runs"][name]["first_round_mb_s"] / result["runs"]["curl"]["mb_s"])
        result["runs"][name]["ratio_to_curl"] = result["runs"][name]["mb_s"] / result["runs"]["curl"]["mb_s"]
        ctx.log("single: %s %.0f MB/s (%.2fx curl)" % (
            name, result["runs"][name]["mb_s"], result["runs"][name]["ratio_to_curl"]))


def _summ(times, size):
    t = statistics.median(times)
    return {"seconds": times, "median_s": t, "mb_s": size / t / MB}


def _startup():
    """Wall time of `dfget --help`: interpreter + imports, part of every dfget figure."""
    from bench.procs import Proc
    import tempfile
    with tempfile.NamedTemporaryFile() as log:
        p = Proc([tool("dfget"), "--help"], log.name, name="dfget")
        p.wait(60)
        return p.elapsed

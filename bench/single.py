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

MB = 1e6


def _timed(proc, timeout, cpu=None, daemon=None):
    """Wall time of C{proc}; with C{daemon} (a Proc) its CPU seconds
    (user+sys) while C{proc} ran go to the list C{cpu}."""
    before = daemon.cpu_seconds() if daemon is not None else None
    rc = proc.wait(timeout)
    if rc != 0:
        raise BenchError("%s exited %s:\n%s" % (proc.name, rc, proc.tail()))
    if daemon is not None:
        after = daemon.cpu_seconds()
        cpu.append(None if after is None or before is None else after - before)
    return proc.elapsed


def _settle():
    os.sync()        # flush the previous run's dirty pages outside the timed part
    time.sleep(0.5)


def run(ctx):
    size = (128 << 20) if ctx.quick else (1 << 30)
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

    # dfget cold / warm / cached; a fresh cluster per repeat so cold is cold.
    # Round 0 is an untimed warm-up (fresh processes, caches, allocator
    # arenas, first-touch memory on a VM): its figures are kept aside.
    cold, warm, cached = [], [], []
    cpu = {"cold": [], "warm": [], "cached": []}   # the receiving peer's CPU-s
    sources = []
    warmup = {}
    for i in range(repeats + 1):
        if i == 1:
            warmup = {"cold": cold.pop(), "warm": warm.pop(), "cached": cached.pop()}
            result["warmup_round_cpu_s"] = {k: v.pop() for k, v in cpu.items()}
            sources.pop()
        sn = Supernode(work, name="supernode%d" % i, extra=ctx.supernode_args).start()
        a = Peer(work, sn.address, name="peerA%d" % i, extra=ctx.peer_args).start()
        b = Peer(work, sn.address, name="peerB%d" % i, extra=ctx.peer_args).start()
        try:
            a.wait_ready()
            b.wait_ready()
            off = nginx.log_offset()
            _settle()
            prof = ctx.profile and i == 1
            with Profiler(work, {"supernode": sn.proc, "peerA": a.proc}, enabled=prof) as p1:
                cold.append(_timed(a.dfget(url, out), timeout, cpu["cold"], a.proc))
            check("dfget cold")
            origin = nginx.bytes_sent(since=off)
            _settle()
            with Profiler(work, {"peerA_serving": a.proc, "peerB": b.proc}, enabled=prof) as p2:
                warm.append(_timed(b.dfget(url, out), timeout, cpu["warm"], b.proc))
            check("dfget warm")
            if prof:
                result["profiles"] = {"cold": p1.summary, "warm": p2.summary}
            _settle()
            cached.append(_timed(a.dfget(url, out), timeout, cpu["cached"], a.proc))
            check("dfget cached")
            mb = b.metrics()
            sources.append({
                "origin_bytes": origin,
                "supernode_origin_bytes": metric(sn.metrics(), "dragonfly_supernode_origin_bytes_total"),
                "warm_from": {s: metric(mb, "dragonfly_peer_download_bytes_total", source=s)
                              for s in ("peer", "supernode", "origin")},
            })
        finally:
            for p in (b, a, sn):
                p.close()
    for name, ts in (("dfget_cold", cold), ("dfget_warm", warm), ("dfget_cached", cached)):
        result["runs"][name] = _summ(ts, size)
        peer_cpu = [c for c in cpu[name[6:]] if c is not None]
        if peer_cpu:
            result["runs"][name]["peer_cpu_s"] = peer_cpu
            result["runs"][name]["peer_cpu_s_per_gib"] = statistics.median(peer_cpu) * (1 << 30) / size
        if warmup.get(name[6:]):
            # The first download after the bench started (fresh daemons, no warm-up).
            result["runs"][name]["first_round_mb_s"] = size / warmup[name[6:]] / MB
            result["runs"][name]["first_round_ratio_to_curl"] = (
                result["runs"][name]["first_round_mb_s"] / result["runs"]["curl"]["mb_s"])
        result["runs"][name]["ratio_to_curl"] = result["runs"][name]["mb_s"] / result["runs"]["curl"]["mb_s"]
        ctx.log("single: %s %.0f MB/s (%.2fx curl)" % (
            name, result["runs"][name]["mb_s"], result["runs"][name]["ratio_to_curl"]))
    result["bytes"] = sources
    result["warmup_round_s"] = warmup
    result["dfget_startup_s"] = _startup()
    nginx.close()
    return result


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

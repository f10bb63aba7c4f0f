"""Bench 3: peak RSS while one big file (4 GiB) goes through a peer and dfget.

Peak RSS is the kernel's own high-water mark: VmHWM from /proc/<pid>/status for
the long-lived daemons (read before they stop), and for dfget GNU time's %M
(its ru_maxrss, exact even though it exits; see procs.peak_rss_argv for why
not the bench's own wait4()). Runs on loopback, no rate limits.

Cases: dfget through a peer daemon (cold: the supernode fetches the origin),
and dfget alone with its embedded peer (no daemon answering).
"""
import os
import time

from bench.cluster import Peer, Supernode, dfget
from bench.nginx import Nginx, free_port
from bench.procs import BenchError, drop_file, make_file, read_peak_rss

MiB = 1 << 20


def _dfget_rss(proc, rss_file):
    """dfget's own peak RSS; without GNU time, wait4's figure (an upper bound)."""
    own = read_peak_rss(rss_file)
    return own if own is not None else proc.rusage.ru_maxrss * 1024


def _watch(proc, others, timeout):
    """Wait for ``proc``; meanwhile track VmHWM of ``others`` (name -> Proc)."""
    peaks = {k: 0 for k in others}
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        for k, p in others.items():
            peaks[k] = max(peaks[k], p.hwm_bytes() or 0)
        if time.monotonic() > deadline:
            raise BenchError("dfget not done after %.0fs" % timeout)
        time.sleep(0.2)
    for k, p in others.items():
        peaks[k] = max(peaks[k], p.hwm_bytes() or 0)
    if proc.poll() != 0:
        raise BenchError("dfget exited %s:\n%s" % (proc.poll(), proc.tail()))
    return peaks


def run(ctx):
    size = (256 << 20) if ctx.quick else (4 << 30)
    src = make_file(os.path.join(ctx.files, "memory-%d.bin" % size), size, seed=3)
    work = ctx.tempdir("memory")
    out = os.path.join(work, "out.bin")
    timeout = 120 + size / 20e6
    nginx = Nginx(ctx.files, workdir=work).start()
    ctx.on_close(nginx.close)
    url = nginx.url(os.path.basename(src))
    result = {"file_bytes": size, "cases": {}}

    # 1. dfget -> peer daemon -> supernode -> origin
    sn = Supernode(work, extra=ctx.supernode_args).start()
    peer = Peer(work, sn.address, extra=ctx.peer_args).start().wait_ready()
    try:
        idle = {"supernode": sn.proc.hwm_bytes(), "peer": peer.proc.hwm_bytes()}
        t0 = time.monotonic()
        rss = os.path.join(work, "dfget-daemon.rss")
        p = peer.dfget(url, out, log=os.path.join(work, "dfget-daemon.log"), rss_file=rss)
        peaks = _watch(p, {"supernode": sn.proc, "peer": peer.proc}, timeout)
        ok = os.path.getsize(out) == size
        drop_file(out)
        result["cases"]["daemon"] = {
            "seconds": time.monotonic() - t0,
            "output_ok": ok,
            "idle_rss_bytes": idle,
            "peak_rss_bytes": {"supernode": peaks["supernode"], "peer": peaks["peer"],
                               "dfget": _dfget_rss(p, rss)},
        }
        # 2. dfget with no daemon answering: embedded peer for the download
        dead = "http://127.0.0.1:%d" % free_port()
        t0 = time.monotonic()
        rss = os.path.join(work, "dfget-embedded.rss")
        p = dfget(url, out, sn.address, daemon=dead, log=os.path.join(work, "dfget-embedded.log"),
                  rss_file=rss)
        peaks = _watch(p, {"supernode": sn.proc}, timeout)
        ok = os.path.getsize(out) == size
        drop_file(out)
        result["cases"]["embedded"] = {
            "seconds": time.monotonic() - t0,
            "output_ok": ok,
            "peak_rss_bytes": {"dfget": _dfget_rss(p, rss), "supernode": peaks["supernode"]},
        }
    finally:
        peer.close()
        sn.close()
        nginx.close()
    for case, r in result["cases"].items():
        ctx.log("memory %s: " % case + ", ".join(
            "%s %.0f MiB" % (k, v / MiB) for k, v in r["peak_rss_bytes"].items()))
    return result

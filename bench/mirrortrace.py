"""Where the warm mirror's time goes: a timeline of every process and piece.

The mirror bench's warm case (``curl -o FILE`` of a blob through dfdaemon 2,
every piece from the swarm that holds it: dfdaemon 1 and the supernode),
rounds alternating two trees (``--tree-a`` / ``--tree-b``, dfdaemon 2 runs
from each; everything else from this one). While curl runs, every
C{--interval} seconds (default 0.02) the on-CPU time of curl, dfdaemon 2,
dfdaemon 1 and the supernode (``/proc/PID/task/*/schedstat``); inside
dfdaemon 2, through ``bench/tracehook`` (a sitecustomize loaded only by this
tool), per piece: assigned, requested, its bytes in (every read), hashed and
written (queued for the runner, job start and end), landed; the stream's
waits (for a piece, for the client's socket) and each sendfile range; the
schedule calls. Per round it prints CPU-s per GiB of each process, the
machine's idle fraction while curl ran (1 - busy CPU / (cores x wall)), the
piece connection's idle time (gaps between reads while pieces are owed),
and where the stream waited, all in the processes' own clocks.

    python -m bench.mirrortrace --size 256M --rounds 2 --tree-a /work/main
    python -m bench.mirrortrace --size 1G --supernode-args '--piece-size 2M'
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

from bench.links import read_schedstat
from bench.mirror import DfDaemon
from bench.mirrorcpu import _size, close_lab, run_and_save, warm_lab
from bench.procs import BenchError, drop_file, sha256_file

GiB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)


class Sampler:
    """[t, [on-CPU ns or None per pid]] every ``interval`` s while the block runs."""

    def __init__(self, pids, interval):
        self.pids = pids
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()

    def __enter__(self):
        self.t0 = time.monotonic()
        self._take()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self._take()

    def _take(self):
        row = []
        for pid in self.pids:
            v = read_schedstat(pid) if pid else None
            row.append(v[0] if v else None)
        self.samples.append([time.monotonic(), row])

    def _run(self):
        while not self._stop.wait(self.interval):
            self._take()


def load_trace(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def analyse_trace(events, t0, t1, piece_size):
    """Counts and gaps from dfdaemon 2's trace within [t0, t1] (its monotonic clock)."""
    ev = [e for e in events if t0 - 5 <= e[0] <= t1 + 1]
    out = {}
    rx = [e[0] for e in ev if e[1] == "rx"]
    req = {}
    arrived, landed, w0, w1, wq = {}, {}, {}, {}, {}
    for t, k, v in ev:
        if k == "req":
            req.setdefault(v, t)
        elif k == "arrived":
            arrived[v] = t
        elif k == "landed":
            landed[v] = t
        elif k == "wq":
            wq[v] = t
        elif k == "w0":
            w0[v // piece_size] = t
        elif k == "w1":
            w1[v // piece_size] = t
    if rx:
        first, last = rx[0], rx[-1]
        gaps = [b - a for a, b in zip(rx, rx[1:])]
        out["rx_span_s"] = round(last - first, 3)
        out["rx_reads"] = len(rx)
        out["rx_gaps_over_5ms_s"] = round(sum(g for g in gaps if g > 0.005), 3)
        out["rx_gaps_over_20ms"] = sum(1 for g in gaps if g > 0.02)
        out["first_rx_after_request_s"] = round(first - t0, 3)
    if req:
        out["first_request_after_curl_s"] = round(min(req.values()) - t0, 3)
    # Per piece: request -> bytes in -> runner queue -> written -> landed.
    def med(xs):
        xs = sorted(xs)
        return round(xs[len(xs) // 2], 4) if xs else None
    common = [i for i in arrived if i in req and i in landed]
    out["pieces"] = len(common)
    out["median_request_to_arrived_s"] = med([arrived[i] - req[i] for i in common])
    out["median_arrived_to_runner_start_s"] = med([w0[i] - arrived[i] for i in common if i in w0])
    out["median_runner_job_s"] = med([w1[i] - w0[i] for i in common if i in w0 and i in w1])
    out["median_written_to_landed_s"] = med([landed[i] - w1[i] for i in common if i in w1])
    # Pieces owed on the wire (requested, bytes not all in) over time, and
    # pieces checking (bytes in, not landed).
    marks = sorted([(t, +1, "wire") for t in req.values()] + [(t, -1, "wire") for t in arrived.values()]
                   + [(t, +1, "chk") for t in arrived.values()] + [(t, -1, "chk") for t in landed.values()])
    wire = chk = 0
    acc = {"wire0": 0.0, "wire1": 0.0, "wire2+": 0.0, "chk_mean": 0.0, "wire_mean": 0.0}
    last_t = None
    span_start = min(req.values()) if req else None
    span_end = max(landed.values()) if landed else None
    for t, d, what in marks:
        if last_t is not None and span_start is not None and span_start <= last_t and t <= span_end:
            dt = t - last_t
            acc["wire0" if wire == 0 else "wire1" if wire == 1 else "wire2+"] += dt
            acc["chk_mean"] += chk * dt
            acc["wire_mean"] += wire * dt
        if what == "wire":
            wire += d
        else:
            chk += d
        last_t = t
    if span_start is not None and span_end is not None and span_end > span_start:
        total = span_end - span_start
        out["p2p_span_s"] = round(total, 3)
        out["time_with_0_1_2+_on_wire"] = [round(acc["wire0"] / total, 3), round(acc["wire1"] / total, 3),
                                           round(acc["wire2+"] / total, 3)]
        out["mean_on_wire"] = round(acc["wire_mean"] / total, 2)
        out["mean_checking"] = round(acc["chk_mean"] / total, 2)
    # The stream: waits for a piece / the socket, sendfile ranges.
    sw = [e for e in ev if e[1] in ("swait", "swait_end", "sf", "sf_end", "paused", "resumed", "sfcall")]
    waiting = 0.0     # for a piece (not readable at the cursor)
    other = 0.0       # for a send_file or the client's resume
    opened = None
    for t, k, v in sw:
        if k == "swait":
            opened = (t, v[1])
        elif k == "swait_end" and opened is not None:
            if opened[1]:
                other += t - opened[0]
            else:
                waiting += t - opened[0]
            opened = None
    sf, sf_open, sf_time = [], None, 0.0
    for t, k, v in sw:
        if k == "sf":
            sf_open = t
            sf.append(v[1])
        elif k == "sf_end" and sf_open is not None:
            sf_time += t - sf_open
            sf_open = None
    out["stream_waits_for_piece_s"] = round(waiting, 3)
    out["stream_waits_for_send_s"] = round(other, 3)
    out["sendfile_ranges"] = len(sf)
    out["sendfile_median_range_mib"] = med([n / (1 << 20) for n in sf])
    out["sendfile_in_progress_s"] = round(sf_time, 3)
    calls = [v for t, k, v in sw if k == "sfcall"]
    out["sendfile_calls"] = len(calls)
    out["sendfile_zero_calls"] = sum(1 for n in calls if not n)
    out["paused"] = sum(1 for e in sw if e[1] == "paused")
    sched = [e for e in ev if e[1] == "sched"]
    out["schedule_calls"] = len(sched)
    if landed:
        out["last_landed_after_curl_s"] = round(max(landed.values()) - t0, 3)
    return out


def cpu_account(samples, names, cores, size):
    """CPU-s per GiB of each process and the machine's idle fraction."""
    (ta, ra), (tb, rb) = samples[0], samples[-1]
    wall = tb - ta
    # A process that ended keeps its last value (curl: the rusage of its end).
    last = list(ra)
    filled = []
    for t, row in samples:
        last = [v if v is not None else last[i] for i, v in enumerate(row)]
        filled.append((t, last))
    samples = filled
    rb = samples[-1][1]
    per = {}
    for i, name in enumerate(names):
        if ra[i] is not None and rb[i] is not None:
            per[name] = round((rb[i] - ra[i]) / 1e9 * GiB / size, 3)
    busy = 0.0
    lows = 0
    for (t0, r0), (t1, r1) in zip(samples, samples[1:]):
        b = sum((r1[i] - r0[i]) for i in range(len(names)) if r0[i] is not None and r1[i] is not None) / 1e9
        busy += b
        if t1 > t0 and b / ((t1 - t0) * cores) < 0.5:
            lows += 1
    return {"wall_s": round(wall, 3), "cpu_s_per_gib": per,
            "busy_fraction": round(busy / (cores * wall), 3) if wall > 0 else None,
            "samples": len(samples) - 1, "samples_under_half_busy": lows}


def run(args):
    lab, registry, sn, d1, blob, digest, out, size = warm_lab(args, "mirrortrace", "bench/trace")
    piece = _size(args.piece_size)
    trees = {"a": args.tree_a, "b": args.tree_b, "c": args.tree_c}
    results = []
    for r in range(args.rounds):
        for kind in args.kinds.split(","):
            name = "%s%d" % (kind, r)
            res = one_round(args, lab, sn, d1, registry, blob, digest, out, trees[kind], name, size, piece)
            res["tree"] = trees[kind]
            results.append(res)
            print(json.dumps(res), flush=True)
    close_lab(registry, sn, d1)
    return results


def one_round(args, lab, sn, d1, registry, blob, digest, out, tree, name, size, piece):
    os.sync()
    trace = os.path.join(lab, "trace-%s.jsonl" % name)
    env = (["DFTRACE_OUT=%s" % trace] + list(getattr(args, "env_" + name[0], None) or [])
           + ["PYTHONPATH=%s:%s" % (os.path.join(HERE, "tracehook"), tree)])
    extra = args.peer_args.split() if args.peer_args else []
    d2 = DfDaemon(lab, sn.address, registry, extra=extra, name="d2-" + name)
    spawn = d2._spawn
    d2._spawn = lambda argv: spawn(["env"] + env + argv)
    d2.start()
    d2.wait_ready()
    time.sleep(0.3)
    argv = ["curl", "-sS", "-f", "-o", out, d2.base_url + blob]
    names = ["curl", "dfdaemon2", "dfdaemon1", "supernode"]
    c0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    with Sampler([p.pid, d2.proc.pid, d1.proc.pid, sn.proc.pid], args.interval) as s:
        _, status, ru = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        c1 = time.monotonic()
        s.samples.append([c1, [int((ru.ru_utime + ru.ru_stime) * 1e9)] + [None] * 3])
    p.returncode = rc
    if rc != 0:
        raise BenchError("curl exited %s" % rc)
    if sha256_file(out) != digest.partition(":")[2]:
        raise BenchError("%s: output does not match" % name)
    drop_file(out)
    d2.close()
    res = {"round": name, "wall_s": round(c1 - c0, 3)}
    res.update(cpu_account(s.samples, names, os.cpu_count(), size))
    deadline = time.monotonic() + 10
    while not os.path.exists(trace) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists(trace):
        res["trace"] = analyse_trace(load_trace(trace), c0, c1, piece)
    if args.keep:
        with open(os.path.join(lab, "cpu-%s.json" % name), "w") as f:
            json.dump({"names": names, "samples": s.samples}, f)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", default="a,b")
    ap.add_argument("--tree-a", default=TREE)
    ap.add_argument("--tree-b", default=TREE)
    ap.add_argument("--tree-c", default=TREE)
    ap.add_argument("--env-a", action="append", metavar="K=V", help="dfdaemon 2's environment in rounds a")
    ap.add_argument("--env-b", action="append", metavar="K=V", help="... in rounds b")
    ap.add_argument("--env-c", action="append", metavar="K=V", help="... in rounds c")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--piece-size", default="4M", help="the supernode's piece size (for the trace)")
    ap.add_argument("--workdir", default="/var/tmp/dfb-mirrortrace")
    ap.add_argument("--supernode-args", default="")
    ap.add_argument("--peer-args", default="")
    ap.add_argument("--keep", action="store_true", help="keep the CPU samples and traces")
    ap.add_argument("--results", metavar="FILE")
    args = ap.parse_args(argv)
    return run_and_save(run, args)


if __name__ == "__main__":
    sys.exit(main())

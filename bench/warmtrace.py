"""Where a warm single stream's time goes, in the processes' own clocks (issue 20, round six).

    python -m bench.warmtrace --size 1G --rounds 3
    python -m bench.warmtrace --size 64M --rounds 1                  # smoke run
    python -m bench.warmtrace --tree /work/main --tree . --rounds 2  # A/B, alternating

Per round, as bench.single's warm case: nginx, a fresh supernode and peers A
and B, A takes the file cold, then ``dfget --daemon B`` takes it warm (every
piece from A). B and that dfget run with ``bench/warmtrace_site`` first on
PYTHONPATH, which timestamps (CLOCK_MONOTONIC, one clock for all processes)
dfget's interpreter start, its imports and daemon calls, B's API call,
registration, every schedule call, every piece (requested, header, last byte,
handed to the runner, written, reported) and the end. Printed per round:

- start-up: ms from dfget's spawn to its interpreter, its imports, B's API
  call, the registration, the first schedule answer, the first piece header;
- end: last byte to the API's last line, dfget's exit to being reaped;
- the connection B -> A: span, time receiving bodies, and the time with no
  request outstanding at A, by what came just before the next request (``s1``:
  a schedule answer, i.e. B had a free slot but no assignment; ``held``: a
  piece written, i.e. all of B's slots held pieces being hashed and written);
- per piece medians, schedule calls and their round trip, B's CPU and dfget's.

``--tree DIR`` (repeatable): the dragonfly tree the processes import (default
this one; the tree's ``twisted/plugins`` too), alternated per round, each
byte-compiled first as bench.run does. The
traced processes pay the tracer (~1 µs an event); compare trees with it on
both sides. ``--json FILE`` keeps every figure.
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time

from bench import cluster
from bench.cluster import Peer, Supernode
from bench.nginx import Nginx
from bench.procs import compile_bytecode, drop_file, make_file

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = os.path.join(HERE, "warmtrace_site")
PIECE_EVENTS = ("submit", "hdr", "last", "arr", "wv0", "wv1", "held")


def load(path):
    events = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                events.append((float(parts[0]), int(parts[1]), parts[2], parts[3:]))
    return events


def analyse(events):
    """The figures of one traced round (see the module docstring)."""
    first, per, sched, s0 = {}, collections.defaultdict(dict), [], None
    subs = {}
    for i, (t, pid, e, a) in enumerate(events):
        first.setdefault(e, t)
        if e in PIECE_EVENTS and a:
            per[int(a[0])].setdefault(e, t)
            if e == "submit":
                subs.setdefault(int(a[0]), i)
        elif e == "s0":
            s0 = t
        elif e == "s1" and s0 is not None:
            sched.append((t - s0, float(a[1]) > 0, int(a[2])))
    spawn = first["dfget_spawn"]
    dpid = next(pid for t, pid, e, a in events if e == "dl0")
    start = {"pystart": next(t for t, pid, e, a in events if e == "pystart" and pid == dpid)}
    out = {"startup_ms": {}, "end_ms": {}}
    for e in ("pystart", "cli_imported", "alive0", "api0", "reg1", "s1", "hdr"):
        t = start.get(e, first.get(e))
        out["startup_ms"][e] = None if t is None else round(1000 * (t - spawn), 1)
    pieces = sorted((v for v in per.values() if "hdr" in v and "last" in v), key=lambda v: v["hdr"])
    last = max(v["last"] for v in pieces)
    out["end_ms"] = {"last_byte_to_api_end": round(1000 * (first["api1"] - last), 1),
                     "dfget_done_to_reaped": round(1000 * (first["dfget_reaped"] - first["dl1"]), 1)}
    idle, causes = 0.0, collections.defaultdict(lambda: [0, 0.0])
    for a, b in zip(pieces, pieces[1:]):
        if b["submit"] > a["last"]:
            gap = b["hdr"] - a["last"]
            idle += gap
            j = subs[[k for k, v in per.items() if v is b][0]] - 1
            while events[j][2] in ("f0", "submit", "send"):
                j -= 1
            causes[events[j][2]][0] += 1
            causes[events[j][2]][1] += 1000 * gap
    out["connection_ms"] = {
        "pieces": len(pieces),
        "span": round(1000 * (pieces[-1]["last"] - pieces[0]["hdr"]), 1),
        "receiving": round(1000 * sum(v["last"] - v["hdr"] for v in pieces), 1),
        "no_request": round(1000 * idle, 1),
        "no_request_by_cause": {k: [n, round(ms, 1)] for k, (n, ms) in causes.items()},
    }

    def med(k0, k1):
        xs = [v[k1] - v[k0] for v in pieces if k0 in v and k1 in v]
        return round(1000 * statistics.median(xs), 2) if xs else None
    out["piece_median_ms"] = {"request_to_header": med("submit", "hdr"),
                              "header_to_last_byte": med("hdr", "last"),
                              "last_byte_to_runner": med("last", "wv0"),
                              "hash_and_write": med("wv0", "wv1")}
    out["schedule"] = {"calls": len(sched), "long_polls": sum(1 for s in sched if s[1]),
                       "round_trip_median_ms": round(1000 * statistics.median(s[0] for s in sched), 2)
                       if sched else None}
    cpu = {e: a for t, pid, e, a in events if e in ("cpu_api0", "cpu_api1")}
    if len(cpu) == 2:
        (u0, s0_), (u1, s1_) = (map(float, cpu["cpu_api0"]), map(float, cpu["cpu_api1"]))
        out["peer_b_cpu_s"] = {"user": round(u1 - u0, 3), "sys": round(s1_ - s0_, 3)}
    new = [a for t, pid, e, a in events if e == "newmods"]
    if new:
        out["peer_b_modules_imported_during_download"] = " ".join(new[0])
    return out


def one_round(tree, size_path, url, work, tag, sn_args, base_env):
    env = cluster.ENV
    plain = dict(base_env, PYTHONPATH=tree)
    trace = os.path.join(work, "%s.trace" % tag)
    if os.path.exists(trace):
        os.unlink(trace)   # (an earlier run's)
    out = os.path.join(work, "out.bin")
    env.clear()
    env.update(plain)
    sn = Supernode(work, name="sn-" + tag, extra=sn_args).start()
    a = Peer(work, sn.address, name="A-" + tag).start()
    env.update(PYTHONPATH=SITE + os.pathsep + tree, DFTRACE=trace)
    b = Peer(work, sn.address, name="B-" + tag).start()
    env.clear()
    env.update(plain)
    try:
        a.wait_ready()
        b.wait_ready()
        p = a.dfget(url, out)
        if p.wait(600) != 0:
            raise SystemExit("cold dfget failed:\n" + p.tail())
        drop_file(out)
        os.sync()
        time.sleep(0.5)
        env.update(PYTHONPATH=SITE + os.pathsep + tree, DFTRACE=trace)
        c0 = b.proc.cpu_times()
        p = b.dfget(url, out)
        with open(trace, "a") as f:
            f.write("%.6f 0 dfget_spawn %d\n" % (p.started, p.pid))
        rc = p.wait(600)
        with open(trace, "a") as f:
            f.write("%.6f 0 dfget_reaped\n" % (p.ended,))
        c1 = b.proc.cpu_times()
        env.clear()
        env.update(plain)
        if rc != 0:
            raise SystemExit("warm dfget failed:\n" + p.tail())
        if os.path.getsize(out) != os.path.getsize(size_path):
            raise SystemExit("warm dfget: output differs in size")
        drop_file(out)
        got = analyse(load(trace))
        got.update(tree=tree, wall_s=round(p.elapsed, 3),
                   peer_b_cpu_s_whole=round(sum(c1) - sum(c0), 3),
                   dfget_cpu_s=round(p.rusage.ru_utime + p.rusage.ru_stime, 3))
        return got
    finally:
        env.clear()
        env.update(base_env)
        for node in (b, a, sn):
            node.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", default=None)
    ap.add_argument("--supernode-args", default="")
    ap.add_argument("--workdir", default="/var/tmp/dragonfly-bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from dragonfly.units import parse_size
    size = parse_size(args.size)
    trees = [os.path.abspath(t) for t in (args.tree or [os.path.dirname(HERE)])]
    files = os.path.join(args.workdir, "files")
    work = os.path.join(args.workdir, "warmtrace")
    os.makedirs(files, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    src = make_file(os.path.join(files, "single-%d.bin" % size), size, seed=1)
    nginx = Nginx(files, workdir=work).start()
    base_env = dict(cluster.ENV)
    for tree in trees:   # (as bench.run does: an installed dfget has its bytecode)
        compile_bytecode(env=dict(base_env, PYTHONPATH=tree))
    results = []
    try:
        url = nginx.url(os.path.basename(src))
        for r in range(args.rounds):
            for k, tree in enumerate(trees):
                got = one_round(tree, src, url, work, "r%d-t%d" % (r, k),
                                args.supernode_args.split(), base_env)
                got["round"] = r
                results.append(got)
                print(json.dumps(got), flush=True)
    finally:
        nginx.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

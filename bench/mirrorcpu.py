"""Where the warm dfdaemon's CPU goes: its mirror stream against a plain receive.

One registry, one supernode and dfdaemon 1 (which takes the blob cold once,
through its mirror); then rounds, each with a fresh dfdaemon 2 (empty
store) taking every piece of the blob from dfdaemon 1, alternating how its
bytes leave:

- *mirror*: ``curl -o FILE`` of the blob through dfdaemon 2's mirror port
  (the mirror bench's warm case: P2P in, sendfile out as pieces land);
- *peer*: ``dfget --daemon`` dfdaemon 2's peer API with ``--digest`` (the
  same task id, the same receive, verify and store; no stream to a client:
  dfget links the finished file);
- *plain*: the same dfget through a fresh ``twistd peer`` instead of a
  dfdaemon (no mirror in the process at all);
- *a*, *b*: *mirror* with dfdaemon 2's environment from ``--env-a`` /
  ``--env-b`` (an A/B of two trees: ``--env-a PYTHONPATH=/work/main``).

Per round, dfdaemon 2's CPU (user and sys apart, minor faults, context
switches) for the whole process and per thread (``/proc/PID/task/*/stat``:
the reactor's thread, the others busiest first), dfdaemon 1's, and the
supernode API calls the round cost (by endpoint); with ``--strace DIR`` the
syscall counts (``strace -c -f``) of dfdaemon 2 too (strace slows it: its
CPU figures are not the plain ones then), with ``--pyspy DIR`` a py-spy
record (``--gil``, ``--native``), with ``--perf DIR`` a ``perf record -g``,
with ``--cprofile DIR`` twistd's cProfile of its reactor thread (function
call counts). CPU and counts only, never wall time (issue 20, round five,
branch dfcpu, in bench/README.md).

    python -m bench.mirrorcpu --size 256M --rounds 3 --workdir /var/tmp/dfb-x
    python -m bench.mirrorcpu --size 1G --kinds a,b --env-a PYTHONPATH=/work/main \
        --supernode-args '--piece-size 2M' --results /tmp/ab.json
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from bench.cluster import Peer, Supernode, dfget
from bench.mirror import DfDaemon, Registry, curl_get, make_layer
from bench.procs import BenchError, cleanup, drop_file, sha256_file, tool

GiB = 1 << 30
MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def _size(text):
    units = {"K": 1 << 10, "M": MiB, "G": GiB}
    text = text.strip().upper()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def proc_stat(pid, tid=None):
    """(utime, stime, minflt, comm) of a process or one of its threads."""
    path = "/proc/%d/stat" % pid if tid is None else "/proc/%d/task/%d/stat" % (pid, tid)
    with open(path) as f:
        text = f.read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7]), comm


def threads(pid):
    """{tid: (utime, stime, minflt, comm)} of the live threads of ``pid``."""
    out = {}
    for name in os.listdir("/proc/%d/task" % pid):
        try:
            out[int(name)] = proc_stat(pid, int(name))
        except OSError:
            pass
    return out


def switches(pid):
    """(voluntary, involuntary) context switches of every live thread of ``pid``, summed."""
    vol = inv = 0
    for name in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, name)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        inv += int(line.split()[1])
        except OSError:
            pass
    return vol, inv


def thread_delta(pid, before, after, per_gib):
    """{"main": [user, sys], "others": [[user, sys], ...]}: CPU-s per GiB each
    thread spent between two snapshots (the reactor's thread is the main one;
    a thread born meanwhile counts from 0; the others busiest first)."""
    main, others = None, []
    for tid, (u, s, _, comm) in after.items():
        u0, s0 = before.get(tid, (0, 0, 0, comm))[:2]
        cpu = [round((u - u0) * per_gib, 3), round((s - s0) * per_gib, 3)]
        if tid == pid:
            main = cpu
        elif sum(cpu):
            others.append(cpu)
    others.sort(key=sum, reverse=True)
    return {"main": main, "others": others,
            "others_sum": [round(sum(c[0] for c in others), 3), round(sum(c[1] for c in others), 3)]}


def warm_lab(args, name, repo):
    """A registry holding a layer of C{args.size} in C{repo}, a supernode and
    dfdaemon 1 that pulled it once (cold) through its mirror, in a fresh
    directory C{name} under C{args.workdir}: (lab, registry, sn, d1, blob
    path, digest, the output file, size). Close with L{close_lab}."""
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    size = _size(args.size)
    layer, digest = make_layer(os.path.join(work, "files", "mirror-layer-%d.tar" % size), size)
    lab = os.path.join(work, name)
    shutil.rmtree(lab, ignore_errors=True)
    os.makedirs(lab)
    out = os.path.join(lab, "out.bin")
    registry = Registry(os.path.join(lab, "registry"))
    registry.start()
    registry.push_image(repo, layer, digest)
    blob_path = "/v2/%s/blobs/%s" % (repo, digest)
    extra_sn = args.supernode_args.split() if args.supernode_args else []
    extra_peer = args.peer_args.split() if args.peer_args else []
    sn = Supernode(lab, extra=extra_sn).start()
    d1 = DfDaemon(lab, sn.address, registry, extra=extra_peer, name="dfdaemon1").start()
    d1.wait_ready()
    curl_get(d1.base_url + blob_path, out, os.path.join(lab, "curl-cold.log"), 600)
    if sha256_file(out) != digest.partition(":")[2]:
        raise BenchError("cold output does not match")
    drop_file(out)
    return lab, registry, sn, d1, blob_path, digest, out, size


def close_lab(registry, sn, d1):
    """Stop what L{warm_lab} started."""
    for p in (d1, sn):
        p.close()
    registry.close()


def run(args):
    lab, registry, sn, d1, blob_path, digest, out, size = warm_lab(args, "mirrorcpu", "bench/cpu")
    per_gib = GiB / size
    results = []
    kinds = args.kinds.split(",")
    for r in range(args.rounds):
        for kind in kinds:
            results.append(one_round(args, lab, sn, d1, registry, blob_path, digest, out, kind,
                                     "%s%d" % (kind, r), per_gib))
            print(json.dumps(results[-1]), flush=True)
    close_lab(registry, sn, d1)
    return results


def one_round(args, lab, sn, d1, registry, blob_path, digest, out, kind, name, per_gib):
    os.sync()
    extra = args.peer_args.split() if args.peer_args else []
    _twistd_options.opts = []
    if args.cprofile:
        _twistd_options.opts = ["--profile=%s" % os.path.join(args.cprofile, name + ".prof"),
                                "--profiler=cprofile", "--savestats"]
    if kind == "plain":
        d2 = Peer(lab, sn.address, extra=extra, name="d2-" + name)
    else:
        d2 = DfDaemon(lab, sn.address, registry, extra=extra, name="d2-" + name)
    spawn = d2._spawn
    env = [e for e in (kind_env(args, kind)) if e]
    d2._spawn = lambda argv: spawn((["env"] + env if env else []) + _twistd_options(argv))
    d2.start()
    d2.wait_ready()
    time.sleep(0.3)
    pid = d2.proc.pid
    tracer = None
    if args.strace:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-p", str(pid), "-o",
                                   os.path.join(args.strace, name + ".strace")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    elif args.pyspy:
        extra = (["--native"] if args.native else []) + (["--gil"] if args.gil else [])
        tracer = subprocess.Popen([tool("py-spy"), "record", "-r", "200", "-f", "raw", "-p", str(pid),
                                   "-o", os.path.join(args.pyspy, name + ".txt")] + extra,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    elif args.perf:
        tracer = subprocess.Popen(["perf", "record", "-g", "-o", os.path.join(args.perf, name + ".data"),
                                   "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    api0 = _api_calls(sn)
    c0 = switches(pid)
    t0 = threads(pid)
    p0 = proc_stat(pid)
    s1 = proc_stat(d1.proc.pid)
    w0 = time.monotonic()
    if kind in ("mirror", "a", "b"):
        curl_get(d2.base_url + blob_path, out, os.path.join(lab, "curl-%s.log" % name), 600)
    else:
        p = dfget(registry.url + blob_path, out, sn.address, daemon="http://127.0.0.1:%d" % d2.api,
                  extra=["--digest", digest, "-q"], log=os.path.join(lab, "dfget-%s.log" % name))
        if p.wait(600) != 0:
            raise BenchError("dfget %s failed: %s" % (name, p.tail()))
    wall = time.monotonic() - w0
    t1 = threads(pid)
    p1 = proc_stat(pid)
    c1 = switches(pid)
    s2 = proc_stat(d1.proc.pid)
    api1 = _api_calls(sn)
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(60)
        except subprocess.TimeoutExpired:
            tracer.kill()
    if sha256_file(out) != digest.partition(":")[2]:
        raise BenchError("%s: output does not match" % name)
    drop_file(out)
    d2.close()
    return {
        "round": name, "kind": kind, "wall_s": round(wall, 3),
        "d2_cpu_s_per_gib": round((p1[0] + p1[1] - p0[0] - p0[1]) * per_gib, 3),
        "d2_user": round((p1[0] - p0[0]) * per_gib, 3), "d2_sys": round((p1[1] - p0[1]) * per_gib, 3),
        "d2_minflt_per_gib": int((p1[2] - p0[2]) * per_gib),
        "d2_switches_per_gib": [int((c1[0] - c0[0]) * per_gib), int((c1[1] - c0[1]) * per_gib)],
        "d1_cpu_s_per_gib": round((s2[0] + s2[1] - s1[0] - s1[1]) * per_gib, 3),
        "d2_threads": thread_delta(pid, t0, t1, per_gib),
        "supernode_calls_per_gib": {k: round((v - api0.get(k, 0)) * per_gib)
                                    for k, v in api1.items() if v != api0.get(k, 0)},
    }


def kind_env(args, kind):
    """Environment settings (K=V) for dfdaemon 2 in rounds of C{kind}: --env
    for every round, --env-KIND (mirror, peer, plain, or any name) for its own."""
    return list(args.env or []) + list(getattr(args, "env_" + kind, None) or [])


def _twistd_options(argv):
    """argv of a twistd node with _twistd_options.opts inserted after ``twistd``."""
    return argv[:1] + _twistd_options.opts + argv[1:]


_twistd_options.opts = []


def _api_calls(sn):
    """{endpoint: requests} the supernode has answered so far."""
    out = {}
    for (name, labels), v in sn.metrics().items():
        if name in ("dragonfly_supernode_api_requests_total", "dragonfly_supernode_api_requests"):
            out[dict(labels).get("endpoint", "?")] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="mirror,peer,plain")
    ap.add_argument("--workdir", default="/var/tmp/dfb-mirrorcpu")
    ap.add_argument("--supernode-args", default="")
    ap.add_argument("--peer-args", default="")
    ap.add_argument("--strace", metavar="DIR")
    ap.add_argument("--pyspy", metavar="DIR")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--gil", action="store_true", help="py-spy: only the thread holding the GIL")
    ap.add_argument("--perf", metavar="DIR")
    ap.add_argument("--env", action="append", metavar="K=V", help="dfdaemon 2's environment")
    ap.add_argument("--env-a", action="append", metavar="K=V", help="... in rounds of kind a")
    ap.add_argument("--env-b", action="append", metavar="K=V", help="... in rounds of kind b")
    ap.add_argument("--cprofile", metavar="DIR", help="run dfdaemon 2 under twistd's cProfile")
    ap.add_argument("--results", metavar="FILE")
    args = ap.parse_args(argv)
    for d in (args.strace, args.pyspy, args.perf, args.cprofile):
        if d:
            os.makedirs(d, exist_ok=True)
    return run_and_save(run, args)


def run_and_save(run, args):
    """C{run(args)} with every process it started stopped afterwards, its
    results written as JSON to C{args.results} when given: exit status 0."""
    try:
        results = run(args)
    finally:
        cleanup()
    if args.results:
        with open(args.results, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

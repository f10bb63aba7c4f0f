"""Swarm simulator results, when dragonfly.sim exists in the checkout.

The simulator drives the real scheduler on a simulated clock. Each run's
result dict is recorded as-is under "raw" and normalised to: n,
completion_s (last host done), lower_bound_s, bound_ratio,
supernode_egress_ratio (seed egress / file size), origin_egress_ratio.

Issue 20's swarm (SMALL_SWARM): 8 and 16 hosts, 256 MiB at 100 Mbit, the
setting of the shaped swarm bench (target: within 1.08x of the bound at 16).

Failure scenarios (SCENARIOS) run once each at SCENARIO_HOSTS hosts: the
owner of three supernodes killed at a quarter of the swarm's progress, a
fifth of the hosts leaving at random times, a fifth at a tenth of the link.
"""
import importlib.util
import json
import subprocess
import sys

COUNTS = (100, 1000, 10000)
SCENARIO_HOSTS = 1000
SMALL_SWARM = {"hosts": (8, 16), "file_bytes": 256 << 20, "link": 12.5e6}
# The same swarm with the supernode's --swarm-uploads 1 (pipelined whole pieces).
PIPELINE = {"scheduler_args": {"max_uploads_per_peer": 1, "seed_swarm_uploads": 1}}
SCENARIOS = {
    "kill_owner": {"supernodes": 3, "kill_owner_at": 0.25},
    "churn": {"churn": 0.2},
    "slow": {"slow": 0.2},
}


def _available():
    try:
        return importlib.util.find_spec("dragonfly.sim") is not None
    except ImportError:
        return False


def _first(doc, *keys):
    for k in keys:
        if isinstance(doc, dict) and doc.get(k) is not None:
            return doc[k]
    return None


def normalise(n, doc, file_bytes):
    completion = _first(doc, "max_time", "completion_s", "completion", "max_completion_s", "time_s", "makespan_s")
    bound = _first(doc, "lower_bound", "lower_bound_s", "bound_s")
    egress = _first(doc, "seed_egress", "supernode_egress_bytes", "seed_upload_bytes", "supernode_upload_bytes",
                    "supernode_egress")
    ratio = _first(doc, "ratio_max", "bound_ratio", "ratio_to_bound")
    if ratio is None and completion and bound:
        ratio = completion / bound
    eg_ratio = _first(doc, "seed_egress_x", "supernode_egress_ratio", "egress_ratio")
    if eg_ratio is None and egress is not None and file_bytes:
        eg_ratio = egress / file_bytes
    return {"n": n, "completion_s": completion, "lower_bound_s": bound, "bound_ratio": ratio,
            "supernode_egress_ratio": eg_ratio, "origin_egress_ratio": doc.get("origin_egress_x"),
            "completed": doc.get("completed"), "expected": doc.get("expected", n)}


SCRIPT = (
    "import json, sys\n"
    "from dragonfly.sim import simulate\n"
    "kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}\n"
    "r = simulate(int(sys.argv[1]), int(sys.argv[2]), up=float(sys.argv[3]), **kw)\n"
    "print(json.dumps(dict(r), default=str))\n"
)


def _simulate(ctx, n, file_bytes, link, kw=None):
    # The simulator's Python API (dragonfly.sim.simulate), in a child process
    # so a slow or crashing run cannot take the bench down.
    argv = [sys.executable, "-c", SCRIPT, str(n), str(file_bytes), str(link)]
    if kw:
        argv.append(json.dumps(kw))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError("dragonfly.sim N=%d %s exited %d: %s" % (
            n, kw or "", out.returncode, out.stderr.strip()[-800:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(ctx):
    if not _available():
        return {"skipped": "dragonfly.sim not present in this checkout; simulator not run.", "runs": []}
    counts = (100, 1000) if ctx.quick else COUNTS
    file_bytes = 1 << 30
    link = 125e6                      # 1 Gbit/s up and down, seed included
    runs, raw = [], {}
    for n in counts:
        ctx.log("sim: simulate(%d hosts, 1 GiB, 1 Gbit/s)" % n)
        doc = raw[str(n)] = _simulate(ctx, n, file_bytes, link)
        r = normalise(n, doc, doc.get("size") or file_bytes)
        runs.append(r)
        ctx.log("sim N=%d: completion %.1fs, bound %.1fs (%.2fx), supernode egress %.2fx file" % (
            n, r["completion_s"] or 0, r["lower_bound_s"] or 0, r["bound_ratio"] or 0,
            r["supernode_egress_ratio"] or 0))
    small = []
    for n in SMALL_SWARM["hosts"]:
        ctx.log("sim: simulate(%d hosts, 256 MiB, 100 Mbit/s)" % n)
        doc = raw["small-%d" % n] = _simulate(ctx, n, SMALL_SWARM["file_bytes"], SMALL_SWARM["link"])
        r = normalise(n, doc, SMALL_SWARM["file_bytes"])
        small.append(r)
        ctx.log("sim N=%d, 256 MiB at 100 Mbit/s: %.2fx the bound" % (n, r["bound_ratio"] or 0))
    pipelined = []
    for n in SMALL_SWARM["hosts"]:
        doc = raw["pipeline-%d" % n] = _simulate(ctx, n, SMALL_SWARM["file_bytes"], SMALL_SWARM["link"],
                                                 PIPELINE)
        r = normalise(n, doc, SMALL_SWARM["file_bytes"])
        pipelined.append(r)
        ctx.log("sim N=%d, 256 MiB at 100 Mbit/s, --swarm-uploads 1: %.2fx the bound"
                % (n, r["bound_ratio"] or 0))
    scenarios = {}
    for name, kw in SCENARIOS.items():
        ctx.log("sim scenario %s: %d hosts %s" % (name, SCENARIO_HOSTS, kw))
        doc = raw[name] = _simulate(ctx, SCENARIO_HOSTS, file_bytes, link, kw)
        r = scenarios[name] = normalise(SCENARIO_HOSTS, doc, file_bytes)
        ctx.log("sim %s: completion %.1fs (%.2fx bound), %s/%s hosts, origin egress %.2fx file" % (
            name, r["completion_s"] or 0, r["bound_ratio"] or 0, r["completed"], r["expected"],
            r["origin_egress_ratio"] or 0))
    return {"runs": runs, "small_swarm": small, "small_swarm_pipeline": pipelined,
            "scenarios": scenarios, "raw": raw,
            "file_bytes": file_bytes, "link_bytes_s": link}

"""Run the dragonfly benchmarks: ``python -m bench.run [--only a,b] [--quick]``.

Benches: single, swarm, memory, control, sim, mirror, lazy, bound. Results go to bench/results/
(bench/results/quick/ for --quick): <name>.json per bench, summary.md, PNG
plots. Every process and network namespace the run creates is removed on
every exit path, Ctrl-C and SIGTERM included.
"""
import argparse
import atexit
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from bench import netns, procs, report

BENCHES = ("single", "swarm", "memory", "control", "sim", "mirror", "lazy", "bound")
HERE = os.path.dirname(os.path.abspath(__file__))


class Context:
    """What every bench gets: sizes mode, directories, logging, cleanup hooks."""

    def __init__(self, quick, workdir, results_dir, keep=False, profile=False):
        self.quick = quick
        self.profile = profile
        self.workdir = workdir
        self.files = os.path.join(workdir, "files")      # origin files, reused across runs
        os.makedirs(self.files, exist_ok=True)
        os.chmod(self.files, 0o755)
        os.chmod(workdir, 0o755)
        self.results_dir = results_dir
        os.makedirs(results_dir, exist_ok=True)
        self.results = {}
        self.keep = keep
        self._closers = []
        self._tmp = tempfile.mkdtemp(prefix="run-", dir=workdir)
        os.chmod(self._tmp, 0o755)
        self._digests = {}
        self.supernode_args = []      # extra flags (experiments: --supernode-args)
        self.peer_args = []
        self.tls = True               # also the mutual-TLS runs (--no-tls: not)
        self.single_size = None       # --single-size

    def log(self, msg):
        print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)

    def tempdir(self, name):
        d = tempfile.mkdtemp(prefix=name + "-", dir=self._tmp)
        os.chmod(d, 0o755)
        return d

    def digest(self, path):
        key = (path, os.path.getsize(path), os.path.getmtime(path))
        if key not in self._digests:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for b in iter(lambda: f.read(8 << 20), b""):
                    h.update(b)
            self._digests[key] = h.hexdigest()
        return self._digests[key]

    def on_close(self, fn):
        self._closers.append(fn)

    def load_result(self, name):
        try:
            with open(os.path.join(self.results_dir, name + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save(self, name, result):
        result = dict(result, bench=name, quick=self.quick, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      host={"cpus": os.cpu_count(), "kernel": platform.release(),
                            "python": platform.python_version()})
        self.results[name] = result
        path = os.path.join(self.results_dir, name + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
        partial = os.path.join(self.results_dir, name + ".partial.json")
        if os.path.exists(partial):
            os.unlink(partial)

    def save_partial(self, name, result):
        """Progress of a long bench, kept if the run dies half way."""
        path = os.path.join(self.results_dir, name + ".partial.json")
        with open(path, "w") as f:
            json.dump(dict(result, bench=name, quick=self.quick, partial=True), f, indent=2)

    def close(self):
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except Exception:   # noqa: BLE001
                traceback.print_exc()
        procs.cleanup()
        netns.cleanup()
        if not self.keep:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES),
                    help="comma-separated benches to run (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="small files and N for a smoke run")
    ap.add_argument("--workdir", default=os.environ.get("DFBENCH_WORKDIR", "/var/tmp/dragonfly-bench"),
                    help="scratch space; origin files are cached here (default: %(default)s)")
    ap.add_argument("--results", default=None, help="results directory (default bench/results[/quick])")
    ap.add_argument("--swarm-mode", choices=("auto", "netns", "loopback"), default="auto")
    ap.add_argument("--swarm-n", default=None, help="comma-separated host counts, e.g. 1,2,4,8,16")
    ap.add_argument("--link-mbit", type=int, default=100, help="swarm link rate in Mbit/s (default 100)")
    ap.add_argument("--single-size", default=None,
                    help="single's file size, e.g. 16M (default 1G, quick 128M; small = a correctness check)")
    ap.add_argument("--swarm-size", default=None, help="swarm file size, e.g. 64M (default 256M, quick 32M)")
    ap.add_argument("--swarm-upload-limit", type=float, default=0.0, metavar="FRACTION",
                    help="netns swarm: every node's --upload-limit at this fraction of its link, "
                         "e.g. 0.92 (default 0: none)")
    ap.add_argument("--swarm-qdisc", default="", metavar="QDISC",
                    help="netns swarm: a qdisc under each link's tbf instead of its FIFO, e.g. "
                         "fq_codel (every flow its own queue: ACKs no longer wait behind "
                         "uploads); a network model, not a product setting (default: FIFO)")
    ap.add_argument("--swarm-kinds", default="direct,p2p,p2p-tls",
                    help="direct,p2p,p2p-tls (default: all three; p2p-tls = P2P with mutual TLS)")
    ap.add_argument("--no-tls", action="store_true",
                    help="skip the mutual-TLS runs (single's dfget_*_tls, swarm's p2p-tls)")
    ap.add_argument("--profile", action="store_true",
                    help="sample the dragonfly processes with py-spy (if installed) during single and swarm")
    ap.add_argument("--supernode-args", default="",
                    help="extra flags for every supernode, e.g. '--piece-size 1M' (experiments)")
    ap.add_argument("--peer-args", default="", help="extra flags for every peer (experiments)")
    ap.add_argument("--keep", action="store_true", help="keep the run's temp dir (logs) for debugging")
    ap.add_argument("--report-only", action="store_true", help="only rebuild summary.md and plots")
    ap.add_argument("--no-warm-memory", action="store_true",
                    help="skip writing (then deleting) a scratch file as big as free memory "
                         "before the first bench (see bench/README.md)")
    ap.add_argument("--no-hold-memory", action="store_true",
                    help="leave the VM's free page reporting as it is while the benches run "
                         "(see bench/README.md)")
    args = ap.parse_args(argv)

    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHES)
    if unknown:
        ap.error("unknown bench: %s (have %s)" % (", ".join(sorted(unknown)), ", ".join(BENCHES)))
    results_dir = args.results or os.path.join(HERE, "results", "quick" if args.quick else "")
    results_dir = os.path.normpath(results_dir)
    if args.report_only:
        report.write(results_dir)
        return 0

    _ensure_extras()
    os.makedirs(args.workdir, exist_ok=True)
    ctx = Context(args.quick, args.workdir, results_dir, keep=args.keep, profile=args.profile)
    ctx.supernode_args = shlex.split(args.supernode_args)
    ctx.peer_args = shlex.split(args.peer_args)
    ctx.tls = not args.no_tls
    if args.single_size:
        from dragonfly.config import parse_size
        ctx.single_size = parse_size(args.single_size)
    atexit.register(ctx.close)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    failed = []
    held = procs.HeldMemory(log=ctx.log)
    if not args.no_hold_memory:
        held.enter()
    ctx.warm_memory = None
    try:
        from bench.cluster import ENV
        ctx.bytecode = procs.compile_bytecode(env=ENV, log=ctx.log)
        if not args.no_warm_memory:
            ctx.warm_memory = procs.warm_page_cache(args.workdir, log=ctx.log)
        for name in only:
            ctx.log("=== %s%s ===" % (name, " (quick)" if args.quick else ""))
            t0 = time.monotonic()
            load0 = os.getloadavg()
            try:
                result = _run_one(name, ctx, args)
            except KeyboardInterrupt:
                raise
            except Exception as e:   # noqa: BLE001 - record the failure, go on with the others
                traceback.print_exc()
                failed.append(name)
                result = ctx.load_result(name + ".partial") or {}
                result.pop("partial", None)
                result["error"] = "%s: %s" % (type(e).__name__, e)
                ctx.log("%s FAILED: %s" % (name, result["error"].splitlines()[0]))
            result["bench_wall_s"] = time.monotonic() - t0
            result["loadavg_before"] = load0
            result["loadavg_after"] = os.getloadavg()
            result["warm_memory"] = ctx.warm_memory
            result["held_memory"] = held.record
            result["bytecode"] = ctx.bytecode
            ctx.save(name, result)
            procs.cleanup()
            netns.cleanup()
    except KeyboardInterrupt:
        ctx.log("interrupted; cleaning up")
        return 130
    finally:
        held.exit()
        ctx.close()
        try:
            report.write(results_dir)
            ctx.log("results: %s" % os.path.join(results_dir, "summary.md"))
        except Exception:   # noqa: BLE001
            traceback.print_exc()
    return 1 if failed else 0


def _ensure_extras():
    """Install bench/requirements.txt (matplotlib for the plots) when missing; plots are optional."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    req = os.path.join(HERE, "requirements.txt")
    print("installing bench extras from %s" % req, flush=True)
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", "-r", req])
    if rc != 0:
        print("could not install bench extras; PNG plots will be skipped", flush=True)


def _run_one(name, ctx, args):
    if name == "single":
        from bench import single
        return single.run(ctx)
    if name == "swarm":
        from bench import swarm
        mode = None if args.swarm_mode == "auto" else args.swarm_mode
        counts = [int(x) for x in args.swarm_n.split(",")] if args.swarm_n else None
        kinds = tuple(k.strip() for k in args.swarm_kinds.split(",") if k.strip())
        if args.no_tls:
            kinds = tuple(k for k in kinds if k != "p2p-tls")
        size = None
        if args.swarm_size:
            from dragonfly.config import parse_size
            size = parse_size(args.swarm_size)
        return swarm.run(ctx, mode=mode, counts=counts, kinds=kinds, size=size, rate_mbit=args.link_mbit,
                         upload_fraction=args.swarm_upload_limit, qdisc=args.swarm_qdisc)
    if name == "memory":
        from bench import memory
        return memory.run(ctx)
    if name == "control":
        from bench import control
        return control.run(ctx)
    if name == "sim":
        from bench import sim
        return sim.run(ctx)
    if name == "mirror":
        from bench import mirror
        return mirror.run(ctx)
    if name == "lazy":
        from bench import lazy
        return lazy.run(ctx)
    if name == "bound":
        from bench import bound
        return bound.run(ctx)
    raise ValueError(name)


if __name__ == "__main__":
    sys.exit(main())

"""Bench: the ceiling of each issue-20 speed target on this machine under the issue's Rules.

Issue 20 compares dfget and the mirror with a client of the origin alone
(``curl`` <- nginx, ``curl`` <- the registry), which moves each byte once.
The Rules ask more of us: every piece verified (its BLAKE3) before it is
served or written out, every output verified (a blob's sha256, by someone
trusted). This bench runs, side by side in one run, each reference and the
least work that obeys the Rules, written as tight as it goes without our
architecture (``bench/boundroles.py``: no Twisted, blocking sockets, one
process per role as in the product), with the same origins, client and
file sizes as bench/single.py and bench/mirror.py:

- *single_warm* (peer A -> peer B): nginx's sendfile of the file stands for
  peer A (it serves from its store by sendfile too); a ``peer`` process takes
  the body, checks each piece against the supernode's digests, stores it. The
  output is the stored file (dfget links it). Reference: ``curl -o`` <- nginx.
- *single_cold* (origin -> supernode -> peer A): a ``seed`` process fetches
  nginx, cuts, hashes and stores the pieces, and sends each on (digest +
  sendfile) as it lands; a ``peer`` checks and stores. Reference: the same curl.
- *mirror_warm* (dfdaemon 1 -> dfdaemon 2 -> curl): nginx's sendfile of the
  layer stands for dfdaemon 1; a ``peer --serve`` checks and stores the pieces
  and sends them to ``curl -o`` in order by sendfile. The blob's sha256 is
  not computed: the supernode attested it (docs/design.md, "The mirror's
  trust chain"). Reference: ``curl -o`` <- the registry.
- *mirror_cold* (registry -> supernode -> dfdaemon -> curl): a ``seed
  --sha256`` (BLAKE3 per piece and the blob's sha256 in order; the last piece
  waits for the match), then ``peer --serve``, then curl. Reference: the same.

Each receiving role runs every ``--take`` variant (``recv``, ``recv2``,
``splice``, ``splice2``: see boundroles); the best one is the ceiling.
Rounds alternate: per round the reference, then every variant (order rotated
each round), for the nginx pair then the registry pair; ``sync`` and a short
pause before each. Figures per run: wall time (curl's process from its start
to its exit, seen at once through a pidfd; for the single stream, whose
client dfget only asks and then links the stored file, from the start of a
client process that writes the start byte into the peer's FIFO to the
peer's last byte checked and stored), and CPU seconds (user+sys) of every
process (the roles' own getrusage from set-up to done; nginx's and the
registry's from /proc while the run lasted; curl's from wait4). Every output
is checked (BLAKE3 of the whole file, outside the timed part). Also, from
CPU alone (``cpu_ceiling``, an estimate that load hardly moves): the
reference's busiest process's CPU-s (its wall time when that process is busy
throughout, as curl is on an idle machine: branch cached measured 0.56-0.58
CPU-s in a 0.586 s run) over the larger of the pipeline's CPU-s spread over
every core and its busiest thread's CPU-s (each a lower bound of the
pipeline's wall time; ``cpu_floor_s_per_gib``): the pipeline cannot beat it
unless the reference was waiting rather than working.

Environment: ``DFBENCH_BOUND_BYTES`` (file size, default 1 GiB; ``--quick``
128 MiB; ``--single-size`` too; a multiple of 512), ``DFBENCH_BOUND_PIECE``
(default 4M), ``DFBENCH_BOUND_ROUNDS`` (default 3, quick 1),
``DFBENCH_BOUND_VARIANTS`` (default recv,recv2,splice,splice2),
``DFBENCH_BOUND_PIPELINES`` (default all four), ``DFBENCH_BOUND_OUT``
(``sendfile``, the default, or ``copy``: how the dfdaemon sends to curl).
"""
import os
import select
import statistics
import sys
import time

from blake3 import blake3

from bench import boundroles
from bench.cluster import curl
from bench.mirror import BIG_REPO, Registry, make_layer
from bench.nginx import Nginx
from bench.procs import BenchError, Proc, drop_file, make_file, wait_for_file

MB = 1e6
MiB = 1 << 20
GiB = 1 << 30
PIPELINES = ("single_warm", "single_cold", "mirror_warm", "mirror_cold")
#: Issue 20's targets, x the reference.
TARGETS = {"single_warm": 0.9, "single_cold": 0.7, "mirror_warm": 0.8, "mirror_cold": 0.6}
REFERENCE = {"single": "curl <- nginx", "mirror": "curl <- registry"}
CORES = os.cpu_count() or 1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_list(name, default, allowed):
    raw = os.environ.get(name)
    got = tuple(x.strip() for x in raw.split(",") if x.strip()) if raw else default
    bad = set(got) - set(allowed)
    if bad:
        raise BenchError("%s: unknown %s (have %s)" % (name, ", ".join(sorted(bad)), ", ".join(allowed)))
    return got


def _settings(ctx):
    from dragonfly.config import parse_size
    size = os.environ.get("DFBENCH_BOUND_BYTES")
    size = parse_size(size) if size else (getattr(ctx, "single_size", None)
                                          or ((128 * MiB) if ctx.quick else GiB))
    if size % 512 or size < 4096:
        raise BenchError("bound: the size must be a multiple of 512, >= 4 KiB (a tar layer)")
    piece = parse_size(os.environ.get("DFBENCH_BOUND_PIECE") or "4M")
    rounds = int(os.environ.get("DFBENCH_BOUND_ROUNDS") or (1 if ctx.quick else 3))
    variants = _env_list("DFBENCH_BOUND_VARIANTS", boundroles.TAKES, boundroles.TAKES)
    pipelines = _env_list("DFBENCH_BOUND_PIPELINES", PIPELINES, PIPELINES)
    return size, piece, rounds, variants, pipelines


def _piece_digests(path, piece, out):
    """The supernode's list: BLAKE3 of every piece, 32 bytes each, into ``out``; and the whole file's."""
    whole = blake3(max_threads=blake3.AUTO)
    with open(path, "rb") as f, open(out, "wb") as d:
        while True:
            b = f.read(piece)
            if not b:
                break
            d.write(blake3(b).digest())
            whole.update(b)
    return whole.hexdigest()


def _whole(path):
    h = blake3(max_threads=blake3.AUTO)
    with open(path, "rb") as f:
        while True:
            b = f.read(16 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def _settle():
    os.sync()        # the previous run's dirty pages are flushed outside the timed part
    time.sleep(0.3)


class _Lab:
    """The origins, the files and one run of each pipeline or reference."""

    def __init__(self, ctx, size, piece):
        self.ctx, self.size, self.piece = ctx, size, piece
        self.work = ctx.tempdir("bound")
        self.timeout = 60 + size / (20 * MB)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.seq = 0
        self.out = os.environ.get("DFBENCH_BOUND_OUT") or "sendfile"
        if self.out not in ("sendfile", "copy"):
            raise BenchError("DFBENCH_BOUND_OUT: sendfile or copy, not %r" % self.out)

    def start(self, pipelines):
        ctx, size = self.ctx, self.size
        self.single_path = make_file(os.path.join(ctx.files, "single-%d.bin" % size), size, seed=1)
        self.single_digests = os.path.join(self.work, "single.digests")
        self.single_whole = _piece_digests(self.single_path, self.piece, self.single_digests)
        self.nginx = Nginx(ctx.files, workdir=self.work).start()
        ctx.on_close(self.nginx.close)
        self.single_url = self.nginx.url(os.path.basename(self.single_path))
        if any(p.startswith("mirror") for p in pipelines):
            self.layer_path, self.layer_digest = make_layer(
                os.path.join(ctx.files, "mirror-layer-%d.tar" % size), size)
            self.layer_digests = os.path.join(self.work, "layer.digests")
            self.layer_whole = _piece_digests(self.layer_path, self.piece, self.layer_digests)
            self.layer_url = self.nginx.url(os.path.basename(self.layer_path))
            self.registry = Registry(os.path.join(self.work, "registry"))
            ctx.on_close(self.registry.close)
            self.registry.start()
            t = time.monotonic()
            self.registry.push_blob(BIG_REPO, self.layer_digest, path=self.layer_path)
            ctx.log("bound: pushed %d MiB to the registry in %.1fs" % (size // MiB, time.monotonic() - t))
            self.blob_url = "%s/v2/%s/blobs/%s" % (self.registry.url, BIG_REPO, self.layer_digest)
        return self

    def close(self):
        if getattr(self, "registry", None) is not None:
            self.registry.close()
        self.nginx.close()

    # -- pieces of a run ------------------------------------------------
    def _path(self, name):
        self.seq += 1
        return os.path.join(self.work, "%s-%d" % (name, self.seq))

    def _role(self, role, take, extra):
        store, ports, result = self._path(role + ".store"), self._path(role + ".port"), self._path(role + ".json")
        argv = [sys.executable, "-m", "bench.boundroles", role, "--take", take, "--store", store,
                "--piece", str(self.piece), "--port-file", ports, "--result", result] + extra
        proc = Proc(argv, self._path(role + ".log"), env=self.env, cwd=ROOT, name="bound-" + role)
        port = wait_for_file(ports, 30, proc)["port"]
        return {"proc": proc, "store": store, "result": result, "port": port}

    def _finish(self, role, name):
        rc = role["proc"].wait(self.timeout)
        if rc != 0:
            raise BenchError("bound: %s exited %s:\n%s" % (name, rc, role["proc"].tail()))
        return wait_for_file(role["result"], 10)

    def _check(self, path, whole, what):
        try:
            if os.path.getsize(path) != self.size or _whole(path) != whole:
                raise BenchError("bound: %s: the output differs from the origin's file" % what)
        finally:
            drop_file(path)

    @staticmethod
    def _cpu(proc):
        t = proc.cpu_times()
        return None if t is None else (t[0] + t[1], t[1])

    @staticmethod
    def _delta(after, before):
        if after is None or before is None:
            return None, None
        return after[0] - before[0], after[1] - before[1]

    def _curl(self, url, origin_proc, origin_name, cpu, sys_):
        out = self._path("curl.out")
        before = self._cpu(origin_proc)
        p = curl(url, out, log=self._path("curl.log"))
        wall = _wait_exact(p, self.timeout)
        after = self._cpu(origin_proc)
        if p.popen.returncode != 0:
            raise BenchError("bound: curl %s exited %s:\n%s" % (url, p.popen.returncode, p.tail()))
        cpu[origin_name], sys_[origin_name] = self._delta(after, before)
        if p.rusage is not None:
            cpu["curl"] = p.rusage.ru_utime + p.rusage.ru_stime
            sys_["curl"] = p.rusage.ru_stime
        return wall, out

    @staticmethod
    def _role_cpu(name, res, cpu, sys_, threads):
        cpu[name], sys_[name] = res["cpu_s"], res["cpu_sys_s"]
        threads.update(("%s.%s" % (name, t), v) for t, v in res["thread_cpu_s"].items())

    # -- the runs -------------------------------------------------------
    def reference(self, kind):
        cpu, sys_ = {}, {}
        if kind == "single":
            wall, out = self._curl(self.single_url, self.nginx.proc, "nginx", cpu, sys_)
            self._check(out, self.single_whole, "curl <- nginx")
        else:
            wall, out = self._curl(self.blob_url, self.registry.proc, "registry", cpu, sys_)
            self._check(out, self.layer_whole, "curl <- registry")
        return {"wall_s": wall, "cpu_s": cpu, "cpu_sys_s": sys_}

    def pipeline(self, name, take):
        return getattr(self, "_" + name)(take)

    def _single(self, take, upstream, extra, seed=None):
        cpu, sys_, threads = {}, {}, {}
        go = self._path("go")
        os.mkfifo(go)
        peer = self._role("peer", take, ["--upstream", upstream, "--size", str(self.size), "--go", go] + extra)
        before = self._cpu(self.nginx.proc)
        # The client: a process that asks (writes the start byte), started like curl.
        client = Proc(["/bin/sh", "-c", 'printf g > "$0"', go], self._path("client.log"), name="client")
        t_go = client.started
        res = self._finish(peer, "peer")
        client.wait(10)
        if seed is not None:
            self._role_cpu("seed", self._finish(seed, "seed"), cpu, sys_, threads)
            drop_file(seed["store"])
        cpu["nginx"], sys_["nginx"] = self._delta(self._cpu(self.nginx.proc), before)
        self._role_cpu("peer", res, cpu, sys_, threads)
        drop_file(go)
        self._check(peer["store"], self.single_whole, "peer's stored file")
        return {"wall_s": res["t_done"] - t_go, "cpu_s": cpu, "cpu_sys_s": sys_, "thread_cpu_s": threads,
                "first_request_s": res["t_request"] - t_go}

    def _single_warm(self, take):
        return self._single(take, self.single_url, ["--digests", self.single_digests])

    def _single_cold(self, take):
        seed = self._role("seed", take, ["--origin", self.single_url])
        return self._single(take, "seed:127.0.0.1:%d" % seed["port"], [], seed=seed)

    def _mirror(self, take, upstream, extra, origin_proc, origin_name, seed=None):
        cpu, sys_, threads = {}, {}, {}
        dfd = self._role("peer", take, ["--upstream", upstream, "--size", str(self.size), "--serve",
                                        "--out", self.out] + extra)
        wall, out = self._curl("http://127.0.0.1:%d/v2/blob" % dfd["port"], origin_proc, origin_name, cpu, sys_)
        res = self._finish(dfd, "dfdaemon")
        if seed is not None:
            self._role_cpu("seed", self._finish(seed, "seed"), cpu, sys_, threads)
            drop_file(seed["store"])
        self._role_cpu("dfdaemon", res, cpu, sys_, threads)
        drop_file(dfd["store"])
        self._check(out, self.layer_whole, "curl's file from the dfdaemon")
        return {"wall_s": wall, "cpu_s": cpu, "cpu_sys_s": sys_, "thread_cpu_s": threads}

    def _mirror_warm(self, take):
        return self._mirror(take, self.layer_url, ["--digests", self.layer_digests], self.nginx.proc, "nginx")

    def _mirror_cold(self, take):
        seed = self._role("seed", take, ["--origin", self.blob_url, "--sha256",
                                         self.layer_digest.split(":", 1)[1]])
        return self._mirror(take, "seed:127.0.0.1:%d" % seed["port"], [], self.registry.proc, "registry",
                            seed=seed)


def _wait_exact(proc, timeout):
    """Wall seconds of ``proc`` from its start to its exit, the exit seen at once (a
    pidfd, not polling: C{Proc.wait} polls every 20 ms); reaps it (rusage, returncode)."""
    fd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    end = time.monotonic()
    if not ready:
        proc.stop()
        raise BenchError("bound: %s did not finish within %ss" % (proc.name, timeout))
    proc.wait(10)
    return end - proc.started


def _rotate(seq, k):
    k %= len(seq) or 1
    return list(seq[k:]) + list(seq[:k])


def run(ctx):
    size, piece, rounds, variants, pipelines = _settings(ctx)
    result = {"file_bytes": size, "piece_bytes": piece, "rounds": rounds, "variants": list(variants),
              "mirror_out": os.environ.get("DFBENCH_BOUND_OUT") or "sendfile",
              "targets": {p: TARGETS[p] for p in pipelines}, "references": {}, "pipelines": {}}
    ctx.log("bound: %d MiB, %d KiB pieces, %d rounds, variants %s" % (
        size // MiB, piece // 1024, rounds, ",".join(variants)))
    lab = _Lab(ctx, size, piece).start(pipelines)
    raw = {"references": {}, "pipelines": {}}
    try:
        for r in range(rounds):
            for kind in ("single", "mirror"):
                mine = [p for p in pipelines if p.startswith(kind)]
                if not mine:
                    continue
                _settle()
                got = lab.reference(kind)
                raw["references"].setdefault(kind, []).append(got)
                ctx.log("bound[%d]: %s %.3f s" % (r, REFERENCE[kind], got["wall_s"]))
                for take in _rotate(variants, r):
                    for name in mine:
                        _settle()
                        got = dict(lab.pipeline(name, take), round=r)
                        raw["pipelines"].setdefault(name, {}).setdefault(take, []).append(got)
                        ctx.log("bound[%d]: %s %s %.3f s, CPU-s %s" % (
                            r, name, take, got["wall_s"], _fmt_cpu(got["cpu_s"])))
            result.update(_summarise(raw, size, pipelines))
            ctx.save_partial("bound", result)
    finally:
        lab.close()
    for name in pipelines:
        c = result["pipelines"][name]["ceiling"]
        ctx.log("bound: %s ceiling %.2fx %s (%s; target %.1fx)" % (
            name, c["ratio"], REFERENCE[name.split("_")[0]], c["variant"], TARGETS[name]))
    return result


def _fmt_cpu(cpu):
    return ", ".join("%s %.2f" % (k, v) for k, v in sorted(cpu.items()) if v is not None)


def _per_gib(runs, key, size):
    """{process: median CPU-s per GiB} over ``runs``."""
    by = {}
    for run in runs:
        for k, v in run[key].items():
            if v is not None:
                by.setdefault(k, []).append(v)
    return {k: round(statistics.median(v) * GiB / size, 3) for k, v in by.items()}


def _summ(runs, size):
    t = statistics.median(r["wall_s"] for r in runs)
    return {"seconds": [round(r["wall_s"], 4) for r in runs], "median_s": t, "mb_s": size / t / MB,
            "rounds": [r.get("round") for r in runs],
            "cpu_s_per_gib": _per_gib(runs, "cpu_s", size),
            "cpu_sys_s_per_gib": _per_gib(runs, "cpu_sys_s", size),
            "thread_cpu_s_per_gib": _per_gib([r for r in runs if "thread_cpu_s" in r], "thread_cpu_s", size),
            "cpu_s_all": [r["cpu_s"] for r in runs]}


def _summarise(raw, size, pipelines):
    refs = {k: _summ(v, size) for k, v in raw["references"].items()}
    out = {"references": refs, "pipelines": {}}
    for name in pipelines:
        kind = name.split("_")[0]
        by_take = raw["pipelines"].get(name)
        if not by_take or kind not in refs:
            continue
        ref_runs = raw["references"][kind]
        entry = {"reference": REFERENCE[kind], "target": TARGETS[name], "variants": {}}
        ref_cpu = refs[kind]["cpu_s_per_gib"]
        for take, runs in by_take.items():
            s = _summ(runs, size)
            s["ratio_to_reference"] = refs[kind]["median_s"] / s["median_s"]
            s["cpu_total_s_per_gib"] = round(sum(s["cpu_s_per_gib"].values()), 3)
            # From CPU alone: the reference's wall time taken as its busiest process's CPU
            # (busy throughout on an idle machine); the pipeline's is at least its processes'
            # CPU spread over every core, and at least its busiest thread's CPU.
            floor = max([s["cpu_total_s_per_gib"] / CORES] + list(s["thread_cpu_s_per_gib"].values()))
            if ref_cpu and floor:
                s["cpu_floor_s_per_gib"] = round(floor, 3)
                s["cpu_ceiling"] = round(max(ref_cpu.values()) / floor, 3)
            # the same round's reference against each run
            s["ratios_per_round"] = [round(ref_runs[r["round"]]["wall_s"] / r["wall_s"], 3) for r in runs
                                     if r["round"] < len(ref_runs)]
            entry["variants"][take] = s
        best = max(entry["variants"], key=lambda t: entry["variants"][t]["ratio_to_reference"])
        ratio = entry["variants"][best]["ratio_to_reference"]
        entry["ceiling"] = {"variant": best, "ratio": ratio, "meets_target": ratio >= TARGETS[name],
                            "cpu_ceiling": max(v.get("cpu_ceiling") or 0 for v in entry["variants"].values())}
        out["pipelines"][name] = entry
    return out

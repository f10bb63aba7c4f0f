#!/usr/bin/env python3
"""make demo: one file, four hosts, one origin fetch.

What it does, all on 127.0.0.1 with ephemeral ports, under a temp directory:

1. writes a 256 MiB random file and serves it from a local origin
   (``python -m dragonfly.test.integration.origin_server``, which counts the
   body bytes it sends);
2. starts one ``twistd -n supernode`` and four ``twistd -n peer`` processes,
   each writing its bound ports to a port file, and waits for ``/healthz``;
3. runs four ``dfget URL -O FILE --daemon <peer API>`` at once, one per peer;
4. prints a table: wall time, bytes the origin sent, bytes the supernode
   served, bytes that went peer to peer, and whether every copy's sha256
   matches the origin's;
5. with ``--stay SECONDS`` (``make demo KEEP=1``) keeps the swarm up that
   long (Ctrl-C ends it sooner) to look at the supernode's dashboard, whose
   URL it prints as soon as the supernode is up;
6. stops everything (SIGTERM, then SIGKILL) and removes the temp directory,
   also on Ctrl-C or failure (``--keep`` keeps it for inspection).

Exit status 0 when every check passes: every dfget exited 0, every sha256
matches, the origin sent the file exactly once, and some bytes went peer to
peer. Run by ``make demo`` with the venv's bin first on PATH; runs standalone
as ``python demo/demo.py [--size 64M] [--peers 4] [--keep] [--stay 600]``.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

MiB = 1024 * 1024
HOST = "127.0.0.1"


def parse_size(text):
    units = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = text[-1] if text and text[-1] in units else ""
    return int(float(text[: len(text) - len(suffix)]) * units[suffix])


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def find_exe(name):
    """The console script next to this Python (the venv), else on PATH."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if not found:
        sys.exit(f"demo: cannot find {name!r} (run `make demo`, or put the venv's bin on PATH)")
    return found


class Fleet:
    """Child processes with logs under one directory; stopped in reverse order."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def spawn(self, name, argv, stderr_apart=False):
        out = open(os.path.join(self.workdir, name + ".log"), "wb")
        err = open(os.path.join(self.workdir, name + ".err"), "wb") if stderr_apart else subprocess.STDOUT
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 cwd=self.workdir, start_new_session=True)
        finally:
            out.close()
            if stderr_apart:
                err.close()
        p.name = name
        self.procs.append(p)
        return p

    def log_tail(self, p, lines=25):
        out = []
        for ext in (".log", ".err"):
            path = os.path.join(self.workdir, p.name + ext)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    out += f.read().decode("utf-8", "replace").splitlines()[-lines:]
        return "\n".join("    " + line for line in out)

    def stop(self, grace=10.0):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def wait_for(what, predicate, timeout, procs=(), fleet=None, interval=0.05):
    """Poll ``predicate`` until it returns a true value; die if a process in
    ``procs`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                tail = fleet.log_tail(p) if fleet else ""
                raise RuntimeError(f"{p.name} exited ({p.returncode}) while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_ports(path, keys):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if all(isinstance(data.get(k), int) for k in keys) else None


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def healthy(base):
    try:
        return http_get(base + "/healthz")[0] == 200
    except OSError:
        return False


def scrape(base):
    """{(name, frozenset(labels)): value} from a Prometheus /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families
    _, body = http_get(base + "/metrics")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(metrics, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


def make_file(path, size):
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def start_node(fleet, twistd, role, name, args, timeout=60):
    data = os.path.join(fleet.workdir, name + "-data")
    os.makedirs(data)
    port_file = os.path.join(fleet.workdir, name + ".ports")
    p = fleet.spawn(name, [twistd, "-n", "--pidfile=", role, "--data-dir", data,
                           "--port-file", port_file, "--advertise", HOST] + args)
    ports = wait_for(f"{name} to bind", lambda: read_ports(port_file, ("api", "piece")),
                     timeout, [p], fleet)
    base = f"http://{HOST}:{ports['api']}"
    wait_for(f"{name} /healthz", lambda: healthy(base), timeout, [p], fleet)
    return base, ports


def run(args, workdir, fleet):
    twistd, dfget = find_exe("twistd"), find_exe("dfget")
    listen = f"tcp:0:interface={HOST}"

    root = os.path.join(workdir, "origin")
    os.makedirs(root)
    src = os.path.join(root, "big.bin")
    print(f"writing a {human(args.size)} random file ...", flush=True)
    digest = make_file(src, args.size)

    port_file = os.path.join(workdir, "origin.ports")
    origin = fleet.spawn("origin", [sys.executable, "-m", "dragonfly.test.integration.origin_server",
                                    "--root", root, "--port-file", port_file])
    oport = wait_for("the origin to bind", lambda: read_ports(port_file, ("port",)), 30,
                     [origin], fleet)["port"]
    origin_base = f"http://{HOST}:{oport}"
    url = origin_base + "/big.bin"
    # The origin is on loopback, which the egress policy denies by default:
    # allow exactly this one (HOST:PORT), as an operator would.
    allow = ["--allow-origin", f"{HOST}:{oport}"]

    print("starting 1 supernode and %d peers ..." % args.peers, flush=True)
    sn_base, sn_ports = start_node(fleet, twistd, "supernode", "supernode",
                                   ["--listen", listen, "--piece-listen", listen,
                                    "--piece-size", args.piece_size] + allow)
    supernodes = f"{HOST}:{sn_ports['api']}"
    fleet.dashboard = f"{sn_base}/ui"
    print(f"dashboard: {fleet.dashboard}", flush=True)
    peers = [start_node(fleet, twistd, "peer", f"peer{i + 1}", [
        "--supernodes", supernodes, "--piece-listen", listen, "--api-listen", listen] + allow)[0]
        for i in range(args.peers)]

    print(f"running {args.peers} dfget at once: {url}", flush=True)
    outdir = os.path.join(workdir, "out")
    os.makedirs(outdir)
    started = time.monotonic()
    runs = []
    for i, base in enumerate(peers):
        out = os.path.join(outdir, f"host{i + 1}.bin")
        p = fleet.spawn(f"dfget{i + 1}", [dfget, url, "-O", out, "--daemon", base,
                                          "--supernodes", supernodes] + allow, stderr_apart=True)
        runs.append((p, out))
    finish = {}

    def all_done():
        for p, _ in runs:
            if p.name not in finish and p.poll() is not None:
                finish[p.name] = time.monotonic() - started
        return len(finish) == len(runs)
    wait_for("the downloads", all_done, args.timeout)
    elapsed = time.monotonic() - started

    sn = scrape(sn_base)
    pm = [scrape(b) for b in peers]
    stats = json.loads(http_get(origin_base + "/__stats")[1])
    origin_sent = stats["paths"].get("/big.bin", {}).get("body_bytes", 0)
    sn_origin = total(sn, "dragonfly_supernode_origin_bytes_total")
    sn_served = total(sn, "dragonfly_supernode_upload_bytes_total")
    p2p = sum(total(m, "dragonfly_peer_download_bytes_total", source="peer") for m in pm)
    from_origin = sum(total(m, "dragonfly_peer_download_bytes_total", source="origin") for m in pm)

    rows = []
    ok = True
    for i, (p, out) in enumerate(runs):
        good = p.returncode == 0 and os.path.exists(out) and sha256_file(out) == digest
        ok &= good
        rows.append((f"host{i + 1}", f"{finish[p.name]:.2f} s",
                     f"exit {p.returncode}", "ok" if good else "MISMATCH"))
        if not good:
            print(f"\n{p.name} failed:\n{fleet.log_tail(p)}", file=sys.stderr)

    print()
    print(f"{'copy':<8}{'time':>10}{'status':>10}{'sha256':>10}")
    for r in rows:
        print(f"{r[0]:<8}{r[1]:>10}{r[2]:>10}{r[3]:>10}")
    print()
    checks = [
        ("file size", human(args.size), True),
        (f"wall time ({len(runs)} dfget at once)", f"{elapsed:.2f} s", True),
        ("aggregate throughput", f"{human(args.size * len(runs) / elapsed)}/s", True),
        ("origin bytes sent", human(origin_sent), origin_sent == args.size),
        ("supernode bytes from origin", human(sn_origin), sn_origin == args.size),
        ("supernode bytes served", human(sn_served), True),
        ("peer-to-peer bytes", human(p2p), p2p > 0),
        ("peers' back-to-source bytes", human(from_origin), from_origin == 0),
        ("sha256 of every copy", "ok" if ok else "MISMATCH", ok),
    ]
    width = max(len(c[0]) for c in checks)
    for label, value, good in checks:
        print(f"  {label:<{width}}  {value:>14}  {'' if good else '<-- FAILED'}")
    failed = [c[0] for c in checks if not c[2]]
    print()
    if failed:
        print("demo FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    print("demo ok: the origin sent the file once; the hosts shared the rest.")
    return 0


def stay_up(seconds, url):
    """Keep the swarm up for C{seconds} (Ctrl-C ends it sooner)."""
    print(f"\nthe swarm stays up for {seconds:g} s: open {url} (Ctrl-C to stop)", flush=True)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        print("\nstopping the swarm", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description="dragonfly P2P demo on loopback")
    ap.add_argument("--size", type=parse_size, default=256 * MiB, help="file size (default 256M)")
    ap.add_argument("--peers", type=int, default=4, help="peers, one dfget each (default 4)")
    ap.add_argument("--piece-size", default="4M", help="supernode --piece-size (default 4M)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for the downloads")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory and logs")
    ap.add_argument("--stay", type=float, default=0, metavar="SECONDS",
                    help="keep the swarm up this long at the end, to look at the dashboard")
    args = ap.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="dragonfly-demo-")
    fleet = Fleet(workdir)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 1
    try:
        status = run(args, workdir, fleet)
        if args.stay > 0 and getattr(fleet, "dashboard", None):
            stay_up(args.stay, fleet.dashboard)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        status = 130
    except RuntimeError as e:
        print(f"demo FAILED: {e}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        fleet.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep:
            print(f"logs and data kept in {workdir}")
        elif status not in (0, 130):
            # keep the logs (small) for the post-mortem, drop the big data
            for name in os.listdir(workdir):
                path = os.path.join(workdir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

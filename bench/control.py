"""Bench 4: the control plane.

(a) Supernode CPU time (utime+stime from /proc/<pid>/stat) and API request
    rate while 16 peers download: taken from the swarm bench's P2P run at
    N=16 when it ran; otherwise measured here with a loopback swarm.
(b) Load run of the peer-facing API: a real supernode (origin = nginx) and
    one asyncio client process simulating many peers (10,000; 200 with
    --quick; DRAGONFLY_CONTROL_PEERS overrides). Every simulated peer comes
    from 127.0.0.1, so the supernode runs with --max-peers-per-address 0. Each simulated peer
    registers (POST /api/v1/tasks), then calls /schedule (want=4, wait=0)
    reporting the pieces it was assigned in the previous call as held, until
    the supernode says done, then leaves. No piece bytes move: this measures
    the tracker/scheduler alone. Reports requests/s and latency percentiles.
"""
import asyncio
import json
import os
import random
import time

from bench.cluster import Supernode
from bench.nginx import Nginx
from bench.procs import make_file

MiB = 1 << 20


def run(ctx):
    result = {}
    result["during_swarm"] = _during_swarm(ctx)
    peers = int(os.environ.get("DRAGONFLY_CONTROL_PEERS") or (200 if ctx.quick else 10000))
    result["load"] = load_run(ctx, peers=peers, connections=32)
    lr = result["load"]
    ctx.log("control load: %d simulated peers, %d requests, %.0f req/s, p50 %.1f ms p99 %.1f ms, "
            "supernode CPU %.1fs (%.2f ms/request)" % (
                lr["simulated_peers"], lr["requests"], lr["requests_per_s"],
                lr["latency_ms"]["all"]["p50"], lr["latency_ms"]["all"]["p99"],
                lr["supernode_cpu_s"], 1000 * lr["supernode_cpu_s"] / max(lr["requests"], 1)))
    return result


def _during_swarm(ctx):
    sw = ctx.results.get("swarm") or ctx.load_result("swarm")
    if sw:
        runs = [r for r in sw.get("runs", []) if r["kind"] == "p2p"]
        if runs:
            r = max(runs, key=lambda r: r["n"])
            return _cpu_summary(r, sw.get("mode"), "swarm bench")
    from bench import swarm
    ctx.log("control: no swarm results; running a loopback P2P swarm of 16 peers")
    size = (16 << 20) if ctx.quick else (64 << 20)
    sw = swarm.run(ctx, mode="loopback", counts=[16], size=size, kinds=("p2p",))
    return _cpu_summary(sw["runs"][0], "loopback", "own loopback run")


def _cpu_summary(r, mode, origin):
    return {"source": origin, "mode": mode, "n": r["n"], "file_bytes": None,
            "wall_s": r.get("wall_s"), "supernode_cpu_s": r.get("supernode_cpu_s"),
            "supernode_cpu_fraction": (r["supernode_cpu_s"] / r["wall_s"])
            if r.get("supernode_cpu_s") is not None and r.get("wall_s") else None,
            "api_requests": r.get("api_requests"),
            "api_requests_per_s": r.get("api_requests_per_s"),
            "supernode_rss_bytes": r.get("supernode_rss_bytes")}


# -- load run ----------------------------------------------------------

class HTTPConn:
    """Minimal keep-alive HTTP/1.1 JSON client over asyncio streams."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method, path, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.writer.write(("%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                           "Content-Length: %d\r\n\r\n" % (method, path, self.host, self.port, len(data))
                           ).encode() + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                n = int((await self.reader.readline()).split(b";")[0], 16)
                if n == 0:
                    await self.reader.readline()
                    break
                chunks.append(await self.reader.readexactly(n))
                await self.reader.readline()
            payload = b"".join(chunks)
        else:
            payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


class SimPeer:
    def __init__(self, i, task_id, url):
        self.peer_id = "simpeer-%d-%08x" % (i, random.getrandbits(32))
        self.info = {"peer_id": self.peer_id, "host": "10.%d.%d.%d" % (100 + i // 65536, (i // 256) % 256, i % 256),
                     "port": 65000}
        self.secret = "simsecret-%016x" % random.getrandbits(64)   # sent with every call
        self.task_id = task_id
        self.url = url
        self.registered = False
        self.pending = []
        self.done = False
        self.left = False
        self.empty = 0


async def _simulate(host, port, url, task_id, peers, connections, deadline_s):
    lat = {"register": [], "schedule": [], "leave": []}
    errors = {}
    queue = asyncio.Queue()
    sims = [SimPeer(i, task_id, url) for i in range(peers)]
    for s in sims:
        queue.put_nowait(s)
    deadline = time.monotonic() + deadline_s
    counts = {"assignments": 0, "empty_schedules": 0}

    async def worker():
        conn = HTTPConn(host, port)
        try:
            while time.monotonic() < deadline:
                try:
                    s = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if not s.registered:
                    ep, path, body = "register", "/api/v1/tasks", {
                        "task_id": task_id, "url": url, "headers": {}, "peer": s.info,
                        "secret": s.secret}
                elif not s.done:
                    ep, path, body = "schedule", "/api/v1/tasks/%s/schedule" % task_id, {
                        "peer_id": s.peer_id, "have": s.pending, "failed": [], "want": 4, "wait": 0,
                        "secret": s.secret}
                else:
                    ep, path, body = "leave", "/api/v1/tasks/%s/leave" % task_id, {
                        "peer_id": s.peer_id, "secret": s.secret}
                t0 = time.perf_counter()
                try:
                    status, payload = await conn.request("POST", path, body)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                    conn.close()
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    queue.put_nowait(s)
                    continue
                lat[ep].append(time.perf_counter() - t0)
                if status != 200:
                    key = "%s %d" % (ep, status)
                    errors[key] = errors.get(key, 0) + 1
                    if status == 404 and ep == "schedule":
                        s.registered = False            # supernode forgot us: register again
                        queue.put_nowait(s)
                    continue
                if ep == "register":
                    s.registered = True
                elif ep == "schedule":
                    doc = json.loads(payload)
                    s.pending = [a["index"] for a in doc.get("assignments", [])]
                    counts["assignments"] += len(s.pending)
                    if not s.pending:
                        counts["empty_schedules"] += 1
                    s.done = bool(doc.get("done"))
                else:
                    s.left = True
                    continue
                queue.put_nowait(s)
        finally:
            conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(connections)])
    wall = time.monotonic() - t0
    return lat, errors, wall, sims, counts


def _pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def load_run(ctx, peers=1000, connections=32, size=64 * MiB, deadline_s=300):
    from dragonfly.taskid import task_id_for_url
    work = ctx.tempdir("control")
    src = make_file(os.path.join(ctx.files, "control-%d.bin" % size), size, seed=4)
    nginx = Nginx(ctx.files, workdir=work).start()
    ctx.on_close(nginx.close)
    # One source address for every simulated peer: no per-address cap.
    sn = Supernode(work, extra=["--max-peers-per-address", "0"]).start()
    try:
        url = nginx.url(os.path.basename(src))
        task_id = task_id_for_url(url)
        cpu0 = sn.proc.cpu_seconds()
        lat, errors, wall, sims, counts = asyncio.run(
            _simulate("127.0.0.1", sn.api, url, task_id, peers, connections, deadline_s))
        cpu1 = sn.proc.cpu_seconds()
        rss = sn.proc.hwm_bytes()
        every = [x for v in lat.values() for x in v]
        n = len(every)
        return {
            "simulated_peers": peers, "connections": connections, "file_bytes": size,
            "piece_count_expected": -(-size // (4 * MiB)),
            "requests": n, "wall_s": wall, "requests_per_s": n / wall if wall else None,
            "by_endpoint": {k: len(v) for k, v in lat.items()},
            "latency_ms": {k: {"p50": _pct(v, .5), "p90": _pct(v, .9), "p99": _pct(v, .99),
                               "max": _pct(v, 1.0)} for k, v in dict(lat, all=every).items()},
            "errors": errors,
            "peers_done": sum(1 for s in sims if s.done),
            "peers_left": sum(1 for s in sims if s.left),
            "assignments": counts["assignments"], "empty_schedules": counts["empty_schedules"],
            "supernode_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "supernode_rss_bytes": rss,
            "supernode_cpu_ms_per_request": (1000 * (cpu1 - cpu0) / n)
            if cpu0 is not None and cpu1 is not None and n else None,
            "origin_bytes": nginx.bytes_sent(),
        }
    finally:
        sn.close()
        nginx.close()

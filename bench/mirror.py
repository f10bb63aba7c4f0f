"""Bench: image layers through the dfdaemon registry mirror, on loopback (issue 3).

A real registry (Debian ``docker-registry``, filesystem storage in a temp dir)
holds two single-layer images pushed with its HTTP API: a *big* layer (1 GiB,
``--quick`` 128 MiB) and a *small* one (32 MiB, quick 8 MiB), each an
uncompressed tar of random bytes. Per repeat a fresh supernode and two
dfdaemons (``twistd dfdaemon``, ``--registry http://127.0.0.1:PORT
--insecure-registry 127.0.0.1:PORT``) start, then:

- *registry* (baseline): ``curl -o FILE`` of ``/v2/<name>/blobs/<digest>``
  straight from the registry;
- *mirror cold*: the same URL on dfdaemon 1's mirror port; the supernode
  fetches the blob from the registry while dfdaemon 1 takes pieces from it;
- *mirror warm*: the same on dfdaemon 2 (empty store), pieces from dfdaemon 1;
- *mirror cached*: dfdaemon 1 again, the task in its store.

Figures: wall time of the curl process (MB/s), curl's
``%{time_starttransfer}`` (TTFB: response headers) and, for the small layer,
a raw-socket client's time to the first *body* byte as well (the mirror could
send headers before it has any data). Every output is checked against the
digest; the registry's own log counts the bytes it sent for the blob, and the
dfdaemons' metrics say where their bytes came from, so a mirror quietly
relaying from the registry shows up (such a cycle is kept in the JSON with
its ``problems`` and left out of the medians). While curl runs, the
supernode's and dfdaemon's metrics are polled to record when the swarm had
the whole blob, apart from when the client had it.
"""
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

from bench.cluster import ALLOW_LOOPBACK, Node, Supernode
from bench.nginx import free_port
from bench.procs import (BenchError, Proc, Profiler, drop_file, metric, parse_prometheus, sha256_file,
                         tool)

MB = 1e6
MiB = 1 << 20
REGISTRY = "/usr/bin/docker-registry"
BIG_REPO, SMALL_REPO = "bench/big", "bench/small"
TTFB_TARGET_S = 0.5       # "well under a second"
SPEED_TARGET = 0.5        # x registry
HASHED = "dragonfly_mirror_blob_hash_bytes_total"


# ---------------------------------------------------------------- layers

def make_layer(path, size):
    """An uncompressed tar of one random file, exactly ``size`` bytes (a multiple
    of 512); reused when it exists. Returns (path, "sha256:HEX")."""
    if size % 512 or size < 4096:
        raise ValueError("layer size must be a multiple of 512, >= 4 KiB")
    side = path + ".sha256"
    if os.path.exists(path) and os.path.getsize(path) == size and os.path.exists(side):
        with open(side) as f:
            digest = f.read().strip()
        if digest.startswith("sha256:") and os.path.getmtime(side) >= os.path.getmtime(path):
            return path, digest
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = size - 512 - 1024          # header + data + two zero blocks = size
    info = tarfile.TarInfo("data/random.bin")
    info.size = payload
    info.mode = 0o644
    info.mtime = 0
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(header) == 512
    h = hashlib.sha256()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        h.update(header)
        left = payload
        while left:
            chunk = os.urandom(min(MiB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
        tail = b"\0" * 1024
        f.write(tail)
        h.update(tail)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    digest = "sha256:" + h.hexdigest()
    with open(side, "w") as f:
        f.write(digest + "\n")
    return path, digest


# ---------------------------------------------------------------- the registry

REGISTRY_CONF = """\
version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: dragonfly-bench-secret
"""


class Registry:
    """``docker-registry serve`` on 127.0.0.1, storage and JSON log in ``directory``."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.port = None
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=30):
        binary = REGISTRY if os.access(REGISTRY, os.X_OK) else shutil.which("docker-registry")
        if not binary:
            raise BenchError("docker-registry not found (apt-get install docker-registry)")
        self.port = free_port()
        conf = os.path.join(self.dir, "registry.yml")
        with open(conf, "w") as f:
            f.write(REGISTRY_CONF.format(storage=os.path.join(self.dir, "storage"), port=self.port))
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = Proc([binary, "serve", conf], self.log_path, name="docker-registry")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("docker-registry exited %s:\n%s" % (self.proc.popen.returncode, self.proc.tail()))
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise BenchError("docker-registry did not answer /v2/ within %ss:\n%s" % (timeout, self.proc.tail()))

    # -- pushing (the distribution API, monolithic uploads) ------------
    def push_blob(self, repo, digest, data=None, path=None):
        """Upload one blob: POST an upload session, PUT its bytes with ?digest=."""
        req = urllib.request.Request("%s/v2/%s/blobs/uploads/" % (self.url, repo), data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            location = r.headers["Location"]
        location = urllib.parse.urljoin(self.url + "/", location)
        sep = "&" if "?" in location else "?"
        put_url = location + sep + "digest=" + urllib.parse.quote(digest)
        if path is not None:
            size = os.path.getsize(path)
            with open(path, "rb") as body:
                self._put(put_url, body, size)
        else:
            self._put(put_url, data, len(data))

    def _put(self, url, body, size, content_type="application/octet-stream"):
        req = urllib.request.Request(url, data=body, method="PUT", headers={
            "Content-Type": content_type, "Content-Length": str(size)})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                if r.status not in (201, 202):
                    raise BenchError("PUT %s: HTTP %d" % (url, r.status))
        except urllib.error.HTTPError as e:
            raise BenchError("PUT %s: HTTP %d %s" % (url, e.code, e.read()[:500]))

    def push_image(self, repo, layer_path, layer_digest, tag="latest"):
        """A single-layer OCI image: the layer, its config, the manifest under ``tag``."""
        self.push_blob(repo, layer_digest, path=layer_path)
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "dragonfly bench layer"}]}, sort_keys=True).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.push_blob(repo, config_digest, data=config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": os.path.getsize(layer_path)}]},
            sort_keys=True).encode()
        self._put("%s/v2/%s/manifests/%s" % (self.url, repo, tag), manifest, len(manifest),
                  content_type="application/vnd.oci.image.manifest.v1+json")

    # -- its log ------------------------------------------------------
    def log_offset(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def blob_gets(self, digest, since=0):
        """[(user agent, bytes written, status)] of GETs of blob ``digest`` logged after ``since``."""
        out = []
        suffix = "/blobs/" + digest
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("msg") != "response completed" or e.get("http.request.method") != "GET":
                continue
            if (e.get("http.request.uri") or "").split("?", 1)[0].endswith(suffix):
                out.append((e.get("http.request.useragent", ""), int(e.get("http.response.written") or 0),
                            e.get("http.response.status")))
        return out

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- dfdaemon

class DfDaemon(Node):
    """``twistd -n --pidfile= dfdaemon`` on 127.0.0.1 with every port ephemeral."""

    def __init__(self, workdir, supernodes, registry, extra=(), name="dfdaemon"):
        Node.__init__(self, workdir, "127.0.0.1", None, extra, name)
        self.supernodes = supernodes
        self.registry = registry
        self.mirror = None

    def start(self):
        ep = "tcp:0:interface=127.0.0.1"
        self._spawn([tool("twistd"), "-n", "--pidfile=", "dfdaemon",
                     "--supernodes", self.supernodes,
                     "--listen", ep, "--piece-listen", ep, "--api-listen", ep,
                     "--advertise", "127.0.0.1", "--data-dir", self.data, "--port-file", self.port_file,
                     "--registry", self.registry.url,
                     "--insecure-registry", self.registry.hostport] + ALLOW_LOOPBACK + self.extra)
        return self

    def wait_ready(self, timeout=60):
        self.mirror = int(self._read_ports(timeout)["mirror"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("%s exited:\n%s" % (self.name, self.proc.tail()))
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise BenchError("%s mirror /healthz not 200 within %ss:\n%s" % (self.name, timeout, self.proc.tail()))

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.mirror

    def metrics(self):
        try:
            with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as r:
                return parse_prometheus(r.read())
        except Exception:   # noqa: BLE001 - a missing metric must not abort the bench
            return {}



def _from(samples):
    return {s: metric(samples, "dragonfly_peer_download_bytes_total", source=s)
            for s in ("peer", "supernode", "origin")}


def _mirror_kinds(samples):
    """{kind: requests} of dragonfly_mirror_requests (blob, blob-direct, passthrough, ...)."""
    out = {}
    for (name, labels), v in samples.items():
        if name in ("dragonfly_mirror_requests_total", "dragonfly_mirror_requests"):
            kind = dict(labels).get("kind", "?")
            out[kind] = out.get(kind, 0) + v
    return out


# ---------------------------------------------------------------- clients

def curl_get(url, out, log, timeout, watch=None):
    """``curl -o out URL``; {wall_s, ttfb_s, total_s, bytes}. Raises on failure.

    ``watch``: {name: (counter, target)} -- ``counter()`` is polled (every
    0.1 s) while curl runs; the result's ``reached`` says when, in seconds
    from curl's start, each counter first reached its target (curl's own
    time when that was after the last poll; None: not while curl ran). Used to tell the swarm's download time from the time the
    mirror took to hand the bytes to the client.
    """
    argv = ["curl", "-sS", "-f", "-o", out, "-w",
            "\nCURLW %{http_code} %{time_starttransfer} %{time_total} %{size_download}\n", url]
    p = Proc(argv, log, name="curl")
    reached = {k: None for k in (watch or {})}
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.stop()
            raise BenchError("curl %s did not finish within %ss" % (url, timeout))
        for k, (counter, target) in (watch or {}).items():
            if reached[k] is None and counter() >= target:
                reached[k] = time.monotonic() - p.started
        time.sleep(0.1 if watch else 0.02)
    for k, (counter, target) in (watch or {}).items():
        if reached[k] is None and counter() >= target:
            # Reached after the last poll: no later than the client's end.
            reached[k] = p.elapsed
    rc = p.popen.returncode
    if rc != 0:
        raise BenchError("curl %s exited %s:\n%s" % (url, rc, p.tail()))
    fields = None
    for line in p.tail(5).splitlines():
        if line.startswith("CURLW "):
            fields = line.split()[1:]
    if not fields:
        raise BenchError("curl %s: no -w output:\n%s" % (url, p.tail()))
    return {"wall_s": p.elapsed, "http_code": int(fields[0]), "ttfb_s": float(fields[1]),
            "total_s": float(fields[2]), "bytes": int(fields[3]), "reached_s": reached}


def first_byte_get(url, out, timeout=120, byte_range=None):
    """GET with a raw socket: time to connect, to the end of the response headers
    and to the first body byte; the body goes to the file ``out``, or is
    returned as ``body`` when ``out`` is None. ``byte_range`` (first, last)
    asks for those bytes (the answer must be a 206 of exactly them; otherwise
    a 200). Returns a dict with connect_s, headers_s, first_body_s, total_s,
    bytes, sha256 (and body)."""
    u = urllib.parse.urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    extra = "Range: bytes=%d-%d\r\n" % byte_range if byte_range else ""
    t0 = time.monotonic()
    s = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
    try:
        t_conn = time.monotonic()
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: dragonfly-bench\r\n"
                   "Accept: */*\r\n%sConnection: close\r\n\r\n" % (path, u.netloc, extra)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError("GET %s: connection closed in the headers" % url)
            buf += chunk
        t_head = time.monotonic()
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != (206 if byte_range else 200):
            raise BenchError("GET %s%s: HTTP %d" % (
                url, " bytes=%d-%d" % byte_range if byte_range else "", status))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise BenchError("GET %s: chunked response (expected Content-Length)" % url)
        length = int(headers["content-length"]) if "content-length" in headers else None
        h = hashlib.sha256()
        got = 0
        t_body = None
        parts = []
        with (open(out, "wb") if out is not None else _Memory(parts)) as f:
            while True:
                if body:
                    if t_body is None:
                        t_body = time.monotonic()
                    f.write(body)
                    h.update(body)
                    got += len(body)
                if length is not None and got >= length:
                    break
                body = s.recv(1 << 20)
                if not body:
                    break
        t_end = time.monotonic()
    finally:
        s.close()
    if length is not None and got != length:
        raise BenchError("GET %s: %d of %d bytes" % (url, got, length))
    result = {"connect_s": t_conn - t0, "headers_s": t_head - t0,
              "first_body_s": (t_body - t0) if t_body else None, "total_s": t_end - t0,
              "bytes": got, "sha256": "sha256:" + h.hexdigest(),
              "docker_content_digest": headers.get("docker-content-digest")}
    if out is None:
        result["body"] = b"".join(parts)
    return result


class _Memory:
    """A write-only "file" collecting the body in a list."""

    def __init__(self, parts):
        self.write = parts.append

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _settle():
    os.sync()        # the previous run's dirty pages are flushed outside the timed part
    time.sleep(0.5)


# ---------------------------------------------------------------- the bench

def run(ctx):
    # DFBENCH_MIRROR_BYTES: the big layer's size (e.g. 1 GiB with --quick's single cycle)
    big = int(os.environ.get("DFBENCH_MIRROR_BYTES") or ((128 * MiB) if ctx.quick else (1 << 30)))
    small = (8 * MiB) if ctx.quick else (32 * MiB)
    repeats = 1 if ctx.quick else 3
    timeout = 60 + big / (20 * MB)          # generous: 20 MB/s floor
    result = {"layer_bytes": big, "small_layer_bytes": small, "repeats": repeats,
              "targets": {"ttfb_s": TTFB_TARGET_S, "speed_ratio": SPEED_TARGET}, "runs": {}, "small": {},
              "cycles": []}

    ctx.log("mirror: layers %d MiB + %d MiB" % (big // MiB, small // MiB))
    big_path, big_digest = make_layer(os.path.join(ctx.files, "mirror-layer-%d.tar" % big), big)
    small_path, small_digest = make_layer(os.path.join(ctx.files, "mirror-layer-%d.tar" % small), small)
    result["digests"] = {"big": big_digest, "small": small_digest}

    work = ctx.tempdir("mirror")
    out = os.path.join(work, "out.bin")
    registry = Registry(os.path.join(work, "registry"))
    ctx.on_close(registry.stop if ctx.keep else registry.close)
    started = []
    try:
        registry.start()
        t = time.monotonic()
        registry.push_image(BIG_REPO, big_path, big_digest)
        registry.push_image(SMALL_REPO, small_path, small_digest)
        result["push_s"] = time.monotonic() - t
        ctx.log("mirror: pushed to the registry in %.1fs" % result["push_s"])
        path_big = "/v2/%s/blobs/%s" % (BIG_REPO, big_digest)
        path_small = "/v2/%s/blobs/%s" % (SMALL_REPO, small_digest)

        def check(name, digest, size, info=None):
            if os.path.getsize(out) != size:
                raise BenchError("%s: %d bytes, expected %d" % (name, os.path.getsize(out), size))
            got = info["sha256"] if info and "sha256" in info else "sha256:" + sha256_file(out)
            if got != digest:
                raise BenchError("%s: output does not match %s" % (name, digest))
            drop_file(out)

        def fetch_big(name, base, watch=None, cpu=None):
            _settle()
            watch = {k: (_counter(fn), target) for k, (fn, target) in (watch or {}).items()}
            before = {k: proc.cpu_times() for k, proc in (cpu or {}).items()}
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = curl_get(base + path_big, out, os.path.join(work, "curl-%s.log" % name), timeout, watch)
            # CPU seconds (user+sys, and sys alone) each process spent while the client ran;
            # "curl": the client's own (the only child reaped meanwhile).
            after = {k: proc.cpu_times() for k, proc in (cpu or {}).items()}
            kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            before["curl"] = (kids.ru_utime, kids.ru_stime)
            after["curl"] = (kids_after.ru_utime, kids_after.ru_stime)
            r["cpu_s"] = {k: _minus(after[k] and sum(after[k]), before[k] and sum(before[k]))
                          for k in after}
            r["cpu_sys_s"] = {k: _minus(after[k] and after[k][1], before[k] and before[k][1])
                              for k in after}
            check(name, big_digest, big)
            return r

        def fetch_small(name, base):
            _settle()
            r = first_byte_get(base + path_small, out, timeout=120)
            check(name, small_digest, small, r)
            return r

        # Baseline: straight from the registry.
        base_runs, base_small = [], []
        for i in range(repeats):
            base_runs.append(fetch_big("registry", registry.url, cpu={"registry": registry.proc}))
            base_small.append(fetch_small("registry-small", registry.url))
        result["runs"]["registry"] = _summ(base_runs, big)
        result["small"]["registry"] = _summ_small(base_small)
        ctx.log("mirror: registry %.0f MB/s, TTFB %.3fs" % (
            result["runs"]["registry"]["mb_s"], result["runs"]["registry"]["ttfb_median_s"]))
        ctx.save_partial("mirror", result)

        runs = {"mirror_cold": [], "mirror_warm": [], "mirror_cached": []}
        smalls = {"cold": [], "warm": [], "cached": []}
        for i in range(repeats):
            sn = Supernode(work, name="supernode%d" % i, extra=ctx.supernode_args).start()
            started.append(sn)
            d1 = DfDaemon(work, sn.address, registry, extra=ctx.peer_args, name="dfdaemon1-%d" % i).start()
            started.append(d1)
            d2 = DfDaemon(work, sn.address, registry, extra=ctx.peer_args, name="dfdaemon2-%d" % i).start()
            started.append(d2)
            d1.wait_ready()
            d2.wait_ready()
            off = registry.log_offset()
            prof = ctx.profile and i == 0
            # When did the supernode finish its origin fetch / the dfdaemon its
            # P2P download, against when the client had every byte?
            with Profiler(work, {"supernode": sn.proc, "dfdaemon1": d1.proc}, enabled=prof) as p1:
                cold = fetch_big("cold", d1.base_url, watch={
                    "supernode_fetched": (lambda: metric(sn.metrics(), "dragonfly_supernode_origin_bytes_total"),
                                          big),
                    "dfdaemon_downloaded": (lambda: sum(_from(d1.metrics()).values()), big)},
                    cpu={"supernode": sn.proc, "dfdaemon": d1.proc})
            runs["mirror_cold"].append(cold)
            hashed_cold = metric(d1.metrics(), HASHED)
            with Profiler(work, {"dfdaemon1_serving": d1.proc, "dfdaemon2": d2.proc}, enabled=prof) as p2:
                warm = fetch_big("warm", d2.base_url, watch={
                    "dfdaemon_downloaded": (lambda: sum(_from(d2.metrics()).values()), big)},
                    cpu={"dfdaemon": d2.proc, "dfdaemon1_serving": d1.proc})
            runs["mirror_warm"].append(warm)
            with Profiler(work, {"dfdaemon1": d1.proc}, enabled=prof) as p3:
                cached = fetch_big("cached", d1.base_url, cpu={"dfdaemon": d1.proc})
            runs["mirror_cached"].append(cached)
            if prof:
                result["profiles"] = {"cold": p1.summary, "warm": p2.summary, "cached": p3.summary}
            big_gets = registry.blob_gets(big_digest, since=off)
            m2_big = d2.metrics()
            # Bytes each dfdaemon hashed itself (0: the supernode attested the blob).
            big_hashed = {"cold": hashed_cold, "warm": metric(m2_big, HASHED)}
            # The small layer on the same swarm: cold on 1, warm on 2, cached on 1.
            off_small = registry.log_offset()
            smalls["cold"].append(fetch_small("small-cold", d1.base_url))
            smalls["warm"].append(fetch_small("small-warm", d2.base_url))
            smalls["cached"].append(fetch_small("small-cached", d1.base_url))
            small_gets = registry.blob_gets(small_digest, since=off_small)
            m1, m2 = d1.metrics(), d2.metrics()
            cycle = {
                "registry_big_gets": len(big_gets),
                "registry_big_bytes": sum(b for _, b, _ in big_gets),
                "registry_big_user_agents": sorted({ua for ua, _, _ in big_gets}),
                "registry_small_gets": len(small_gets),
                "registry_small_bytes": sum(b for _, b, _ in small_gets),
                "supernode_origin_bytes": metric(sn.metrics(), "dragonfly_supernode_origin_bytes_total"),
                "dfdaemon1_from": _from(m1),
                "dfdaemon2_big_from": _from(m2_big),
                "big_hashed_bytes": big_hashed,
                "dfdaemon2_from": _from(m2),
                "dfdaemon1_mirror_requests": _mirror_kinds(m1),
                "dfdaemon2_mirror_requests": _mirror_kinds(m2),
                "dfdaemon_rss_bytes": {d.name: d.proc.hwm_bytes() for d in (d1, d2)},
                "supernode_rss_bytes": sn.proc.hwm_bytes(),
            }
            cycle["problems"] = _problems(cycle, big, small)
            result["cycles"].append(cycle)
            if cycle["problems"]:
                # Not a P2P figure (e.g. the supernode failed and the dfdaemons went to the
                # registry themselves): kept in the JSON, left out of the medians.
                ctx.log("mirror[%d]: NOT COUNTED: %s" % (i, "; ".join(cycle["problems"])))
                for v in list(runs.values()) + list(smalls.values()):
                    v.pop()
            ctx.log("mirror[%d]: cold %.0f MB/s ttfb %.3fs (supernode fetched at %s s) | warm %.0f MB/s "
                    "ttfb %.3fs (P2P done at %s s, client at %.1f s) | cached %.0f MB/s | small warm ttfb %.3fs "
                    "(body %.3fs) | registry sent the big blob %.2fx"
                    % (i, big / cold["wall_s"] / MB, cold["ttfb_s"], _f(cold["reached_s"]["supernode_fetched"]),
                       big / warm["wall_s"] / MB, warm["ttfb_s"], _f(warm["reached_s"]["dfdaemon_downloaded"]),
                       warm["wall_s"], big / cached["wall_s"] / MB, smalls["warm"][-1]["headers_s"],
                       smalls["warm"][-1]["first_body_s"], cycle["registry_big_bytes"] / big))
            for p in (d2, d1, sn):
                p.stop() if ctx.keep else p.close()     # --keep: logs stay for a look
                started.remove(p)
            result["runs"].update({k: _summ(v, big) for k, v in runs.items() if v})
            result["small"].update({k: _summ_small(v) for k, v in smalls.items() if v})
            ctx.save_partial("mirror", result)

        if not runs["mirror_warm"]:
            raise BenchError("no cycle went through P2P: %s" % "; ".join(
                p for c in result["cycles"] for p in c["problems"]))
        base = result["runs"]["registry"]["mb_s"]
        for k in runs:
            result["runs"][k]["ratio_to_registry"] = result["runs"][k]["mb_s"] / base
        warm_small = result["small"]["warm"]
        result["warm_ttfb_s"] = {
            "small_headers": warm_small["headers_median_s"],
            "small_first_body": warm_small["first_body_median_s"],
            "big_headers": result["runs"]["mirror_warm"]["ttfb_median_s"],
        }
        ctx.log("mirror: cold %.2fx, warm %.2fx, cached %.2fx registry; warm TTFB small %.3fs, big %.3fs" % (
            result["runs"]["mirror_cold"]["ratio_to_registry"], result["runs"]["mirror_warm"]["ratio_to_registry"],
            result["runs"]["mirror_cached"]["ratio_to_registry"], warm_small["first_body_median_s"],
            result["runs"]["mirror_warm"]["ttfb_median_s"]))
    finally:
        for p in reversed(started):
            p.stop() if ctx.keep else p.close()
        registry.stop() if ctx.keep else registry.close()
        drop_file(out)
    return result


def _counter(fn):
    def read():
        try:
            return fn()
        except Exception:   # noqa: BLE001 - a scrape that fails is just "not yet"
            return 0
    return read


def _f(x):
    return "-" if x is None else "%.1f" % x


def _problems(cycle, big, small):
    """Why a cycle's figures are not the P2P path's (empty when they are)."""
    out = []
    if cycle["registry_big_gets"] != 1 or cycle["registry_big_bytes"] != big:
        out.append("the registry sent the big blob %d times (%.2fx), expected once"
                   % (cycle["registry_big_gets"], cycle["registry_big_bytes"] / big))
    if cycle["registry_small_gets"] != 1 or cycle["registry_small_bytes"] != small:
        out.append("the registry sent the small blob %d times (%.2fx), expected once"
                   % (cycle["registry_small_gets"], cycle["registry_small_bytes"] / small))
    if cycle["registry_big_user_agents"] != ["dragonfly-supernode"]:
        out.append("big blob fetched by %s" % ", ".join(cycle["registry_big_user_agents"]))
    if cycle["dfdaemon2_big_from"].get("peer", 0) < big:
        out.append("dfdaemon 2 took %s from peers, expected the whole blob" % (
            ", ".join("%s %d" % kv for kv in sorted(cycle["dfdaemon2_big_from"].items()))))
    for who in ("dfdaemon1_from", "dfdaemon2_from"):
        if cycle[who].get("origin"):
            out.append("%s fetched %d bytes from the registry itself" % (who.split("_")[0], cycle[who]["origin"]))
    return out


def _summ(runs, size):
    t = statistics.median(r["wall_s"] for r in runs)
    reached = {}
    for r in runs:
        for k, v in (r.get("reached_s") or {}).items():
            reached.setdefault(k, []).append(v)
    cpu, sys_ = {}, {}
    for r in runs:
        for k, v in (r.get("cpu_s") or {}).items():
            if v is not None:
                cpu.setdefault(k, []).append(v)
        for k, v in (r.get("cpu_sys_s") or {}).items():
            if v is not None:
                sys_.setdefault(k, []).append(v)
    return {"seconds": [r["wall_s"] for r in runs], "median_s": t, "mb_s": size / t / MB,
            "cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
            "cpu_s_per_gib": {k: statistics.median(v) * (1 << 30) / size for k, v in cpu.items()},
            "cpu_s_all": cpu,
            "cpu_sys_s_per_gib": {k: statistics.median(v) * (1 << 30) / size for k, v in sys_.items()},
            "curl_total_s": [r["total_s"] for r in runs], "reached_s": reached,
            "ttfb_s": [r["ttfb_s"] for r in runs], "ttfb_median_s": statistics.median(r["ttfb_s"] for r in runs)}


def _minus(after, before):
    return None if after is None or before is None else after - before


def _summ_small(runs):
    out = {}
    for k in ("headers_s", "first_body_s", "total_s"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = vals
        out[k[:-2] + "_median_s"] = statistics.median(vals) if vals else None
    return out

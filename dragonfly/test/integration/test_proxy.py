"""The dfdaemon's HTTP proxy with real clients: curl -x and pip download through two dfdaemons.

nginx (Debian's nginx-light, unprivileged, under the test's temp dir) serves a
small package index on one loopback port (the only origin allowed) -- two
tiny wheels built here, a ``/simple/`` page per package, a 3 MiB file, a file
under its own sha256 and a text file no rule matches -- and a second server
on another loopback port that is not allowed. Each server has its own access
log: what the origin sent, and proof that the other one saw nothing.
"""
import base64
import hashlib
import os
import shutil
import sys
import zipfile

from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    LOOPBACK, MiB, Proc, SwarmMixin, child_env, free_port, make_random_file, metric,
    poll_until, sha256_file, with_logs)

CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    log_format counted '"$request" $status $body_bytes_sent';
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        access_log {tmp}/access.log counted;
        root {root};
    }}
    server {{
        listen 127.0.0.1:{other};
        access_log {tmp}/other.log counted;
        root {root};
    }}
}}
"""

RULES = [r"\.whl$", r"/by-hash/(?P<sha256>[0-9a-f]{64})$", r"\.bin$"]
PACKAGES = ("tinya", "tinyb")


def _b64_sha256(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory, name, version="1.0"):
    """A minimal valid pure-Python wheel in C{directory}; returns its file name."""
    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"DATA = %r\n" % os.urandom(30000),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 .encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: dragonfly-test\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={_b64_sha256(data)},{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(os.path.join(directory, filename), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return filename


class Nginx:
    """Two servers on one nginx: C{port} (allowed origin) and C{other} (not allowed)."""

    def __init__(self, workdir, root):
        self.tmp = os.path.join(workdir, "nginx")
        os.makedirs(self.tmp)
        os.chmod(self.tmp, 0o755)
        self.port, self.other = free_port(), free_port()
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(tmp=self.tmp, port=self.port, other=self.other, root=root,
                                user=user))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = Proc("nginx", [nginx, "-p", self.tmp, "-c", conf, "-e",
                                   os.path.join(self.tmp, "error.log")], workdir)
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.other_base = f"http://{LOOPBACK}:{self.other}"

    def log(self, name="access.log"):
        """[(path, status, body bytes)] from one server's access log."""
        try:
            with open(os.path.join(self.tmp, name)) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            request, _, tail = line[1:].partition('" ')
            status, sent = tail.split()
            parts = request.split()
            out.append((parts[1] if len(parts) > 1 else request, int(status), int(sent)))
        return out

    def sent(self, path):
        """The body bytes of each 200/206 answer for C{path}."""
        return [n for p, status, n in self.log() if p == path and status in (200, 206)]


class ProxyTests(SwarmMixin, unittest.TestCase):
    timeout = 300

    async def start(self):
        if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            raise unittest.SkipTest("nginx is not installed")
        if not shutil.which("curl"):
            raise unittest.SkipTest("curl is not installed")
        swarm = self.swarm
        root = self.root = swarm.path("www")
        os.makedirs(os.path.join(root, "files"))
        self.wheels = {}
        for name in PACKAGES:
            filename = make_wheel(os.path.join(root, "files"), name)
            digest = sha256_file(os.path.join(root, "files", filename))
            self.wheels[name] = (filename, digest)
            os.makedirs(os.path.join(root, "simple", name))
            with open(os.path.join(root, "simple", name, "index.html"), "w") as f:
                f.write(f'<html><body><a href="../../files/{filename}#sha256={digest}">'
                        f'{filename}</a></body></html>\n')
        self.big = make_random_file(os.path.join(root, "big.bin"), 3 * MiB + 12345)
        os.makedirs(os.path.join(root, "by-hash"))
        data = os.urandom(200_000)
        self.hashed = hashlib.sha256(data).hexdigest()
        with open(os.path.join(root, "by-hash", self.hashed), "wb") as f:
            f.write(data)
        with open(os.path.join(root, "plain.txt"), "w") as f:
            f.write("no rule matches me\n")
        for d, _, names in os.walk(root):
            os.chmod(d, 0o755)
            for n in names:
                os.chmod(os.path.join(d, n), 0o644)
        self.nginx = nginx = Nginx(swarm.workdir, root)
        swarm.dfgets.append(nginx.proc)    # stopped with the swarm
        await poll_until(swarm.clock, lambda: self.http.request("GET", nginx.base + "/plain.txt"),
                         15, "nginx to answer", check=nginx.proc.check_alive)
        # Only the first server is an allowed origin; the other port is loopback,
        # which the default policy denies.
        self.egress = ("--allow-origin", f"{LOOPBACK}:{nginx.port}")
        await swarm.start_supernode(piece_size="1M", egress=self.egress)
        return [await self.start_dfdaemon() for _ in range(2)]

    async def start_dfdaemon(self):
        swarm = self.swarm
        args = ["--supernodes", swarm.supernode_list(),
                "--listen", f"tcp:0:interface={LOOPBACK}",
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--api-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK,
                "--proxy-listen", f"tcp:0:interface={LOOPBACK}"]
        for rule in RULES:
            args += ["--proxy-rule", rule]
        node = await swarm._start_node(swarm._name("dfdaemon"), "dfdaemon", args, self.egress)
        swarm.peers.append(node)
        await node.wait_ports(swarm.clock, ["api", "piece", "proxy"])
        node.proxy = f"http://{LOOPBACK}:{node.ports['proxy']}"
        return node

    def env(self):
        env = child_env({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"})
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy",
                     "NO_PROXY", "ALL_PROXY", "all_proxy"):
            env.pop(name, None)
        return env

    async def run_tool(self, name, argv):
        proc = Proc(name, argv, self.swarm.workdir, env=self.env(), separate_stderr=True)
        self.swarm.dfgets.append(proc)
        code = await proc.wait(self.swarm.clock, 120)
        return code, proc.read_log(), proc.read_log(err=True)

    async def curl(self, node, url, out, *extra):
        """curl through C{node}'s proxy; (exit code, HTTP status, stderr)."""
        code, stdout, stderr = await self.run_tool(
            f"curl-{os.path.basename(out)}",
            ["curl", "-sS", "-x", node.proxy, "-o", out, "-w", "%{http_code}", *extra, url])
        return code, stdout.strip(), stderr

    async def pip(self, node, outdir):
        return await self.run_tool(f"pip-{os.path.basename(outdir)}", [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
            "--disable-pip-version-check", "--index-url", self.nginx.base + "/simple/",
            "--proxy", node.proxy, "-d", outdir, *PACKAGES])

    @with_logs()
    async def test_curl_and_pip_through_two_dfdaemons(self):
        """Through two dfdaemons in proxy mode: files the rules match go through P2P
        (nginx sends each once, the second dfdaemon gets pieces from the first),
        pip's index pages and an unmatched file pass through, a host the egress
        policy does not allow gets 403 -- for GET and CONNECT -- and never
        receives a request, and an allowed CONNECT tunnels."""
        d1, d2 = await self.start()
        nginx, swarm = self.nginx, self.swarm

        # curl: a 3 MiB file and a file named by its digest, through both.
        for node in (d1, d2):
            for path, digest in (("/big.bin", self.big), ("/by-hash/" + self.hashed, self.hashed)):
                out = swarm.path(f"{node.name}-{os.path.basename(path)}")
                code, status, err = await self.curl(node, nginx.base + path, out)
                self.assertEqual((code, status), (0, "200"), err)
                self.assertEqual(sha256_file(out), digest)
        self.assertEqual(nginx.sent("/big.bin"), [os.path.getsize(os.path.join(self.root,
                                                                               "big.bin"))])
        self.assertEqual(nginx.sent("/by-hash/" + self.hashed), [200_000])

        # pip download through both: each wheel sent once, the index pages twice.
        for node in (d1, d2):
            outdir = swarm.path(f"pip-{node.name}")
            code, out, err = await self.pip(node, outdir)
            self.assertEqual(code, 0, out + err)
            for name, (filename, digest) in self.wheels.items():
                self.assertEqual(sha256_file(os.path.join(outdir, filename)), digest)
        for name, (filename, _) in self.wheels.items():
            self.assertEqual(len(nginx.sent("/files/" + filename)), 1, nginx.log())
            self.assertEqual(len(nginx.sent(f"/simple/{name}/")), 2, nginx.log())

        # No rule matches: passed through, each time.
        for node in (d1, d2):
            out = swarm.path(f"{node.name}-plain.txt")
            code, status, err = await self.curl(node, nginx.base + "/plain.txt", out)
            self.assertEqual((code, status), (0, "200"), err)
        self.assertEqual(len(nginx.sent("/plain.txt")), 2 + 1)   # + the readiness probe

        # Not allowed: 403 for a GET (rule match or not) and for CONNECT; never contacted.
        for path in ("/big.bin", "/plain.txt"):
            out = swarm.path("denied-" + path.strip("/"))
            code, status, err = await self.curl(d1, nginx.other_base + path, out)
            self.assertEqual(status, "403", err)
            with open(out) as f:
                self.assertIn("origin not allowed", f.read())
        code, status, err = await self.curl(d1, nginx.other_base + "/plain.txt",
                                            swarm.path("denied-tunnel"), "-p")
        self.assertNotEqual(code, 0)
        self.assertIn("403", err)
        self.assertEqual(nginx.log("other.log"), [])

        # An allowed CONNECT is a raw tunnel (HTTP inside it, still no P2P).
        out = swarm.path("tunnel-plain.txt")
        code, status, err = await self.curl(d2, nginx.base + "/plain.txt", out, "-p")
        self.assertEqual((code, status), (0, "200"), err)

        m1, m2 = await swarm.peer_metrics([d1, d2])
        self.assertGreater(metric(m2, "dragonfly_peer_download_bytes_total", source="peer"), 0,
                           "the second dfdaemon got nothing from the first")
        for m in (m1, m2):
            self.assertEqual(metric(m, "dragonfly_proxy_requests_total", outcome="p2p"), 4)
            self.assertGreaterEqual(
                metric(m, "dragonfly_proxy_requests_total", outcome="passthrough"), 3)
        self.assertEqual(metric(m1, "dragonfly_proxy_requests_total", outcome="denied"), 3)
        self.assertEqual(metric(m2, "dragonfly_proxy_requests_total", outcome="tunnel"), 1)

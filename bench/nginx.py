"""A private nginx (Debian nginx-light) serving the bench's origin files.

Runs in the foreground with its pid, logs and every temp path in a temp dir;
the configuration and the access log (one JSON object per request, with
``bytes`` = ``$body_bytes_sent``, so the bench counts origin egress exactly)
are the integration tests' (``dragonfly.test.integration.nginx``).
"""
import os
import shutil
import socket
import tempfile
import time

from bench.procs import BenchError, Proc
from dragonfly.test.integration import nginx as nginx_conf


def free_port(host="127.0.0.1"):
    """An ephemeral TCP port free right now on ``host`` (nginx needs a number)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving ``root`` on ``host:port``; ``limit_rate`` per connection (0 = none)."""

    def __init__(self, root, host="127.0.0.1", port=None, ns=None, limit_rate=0, workdir=None):
        self.root = os.path.abspath(root)
        self.host = host
        self.port = port
        self.ns = ns
        self.limit_rate = int(limit_rate)
        self.tmp = tempfile.mkdtemp(prefix="nginx-", dir=workdir)
        self.proc = None

    @property
    def base_url(self):
        return "http://%s:%d" % (self.host, self.port)

    def url(self, name):
        return "%s/%s" % (self.base_url, name)

    def start(self, timeout=10):
        if self.port is None:
            if self.ns:
                self.port = 8080          # our own namespace: nothing else listens there
            else:
                self.port = free_port(self.host)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf.config(self.tmp, self.host, self.port, self.root,
                                      limit_rate=self.limit_rate))
        self.proc = Proc(["nginx", "-p", self.tmp, "-c", conf, "-e", os.path.join(self.tmp, "error.log")],
                         os.path.join(self.tmp, "stdout.log"), ns=self.ns, name="nginx")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("nginx exited: %s\n%s" % (self.proc.tail(), self._errors()))
            if os.path.exists(os.path.join(self.tmp, "nginx.pid")) and self._listening():
                return self
            time.sleep(0.05)
        raise BenchError("nginx did not start within %ss: %s" % (timeout, self._errors()))

    def _listening(self):
        if self.ns:
            import subprocess
            out = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-s", "-o", "/dev/null",
                                  "-w", "%{http_code}", self.base_url + "/"], capture_output=True)
            return out.stdout.strip() not in (b"", b"000")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _errors(self):
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def log_offset(self):
        """Current size of the access log: pass to ``bytes_sent(since=...)``."""
        try:
            return os.path.getsize(os.path.join(self.tmp, "access.log"))
        except OSError:
            return 0

    def requests(self, since=0):
        """[(client, "METHOD URI", status, bytes)] logged after offset ``since``."""
        return [(r["client"], f"{r['method']} {r['uri']}", r["status"], r["bytes"])
                for r in nginx_conf.read_access_log(os.path.join(self.tmp, "access.log"), since)]

    def bytes_sent(self, since=0):
        """Body bytes the origin sent after log offset ``since``."""
        return sum(r[3] for r in self.requests(since))

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

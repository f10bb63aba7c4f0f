"""Real processes on 127.0.0.1 for the integration tests.

Every service (origin, supernode, peer) and every dfget is a separate OS
process started with ``subprocess.Popen``, its output captured to a log file
in the test's temporary directory. Nothing here ever blocks the reactor:
waiting (for a port file, ``/healthz``, a process to exit) polls with a
deadline through ``task.deferLater``. Popen (not ``reactor.spawnProcess``) is
used so that a swarm may outlive one test without trial reporting its pipes as
a dirty reactor; the reactor never sees these children.

Typical use in a trial ``TestCase`` (``SwarmMixin`` sets up ``self.http``
and ``self.swarm`` this way, and cleans both up)::

    async def test_x(self):
        http = HTTP(reactor); self.addCleanup(http.close)
        swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        await swarm.start_origin({"f.bin": 4 * MiB})
        sn = await swarm.start_supernode(piece_size="1M")
        peer = await swarm.start_peer()
        r = await swarm.dfget(swarm.origin_url("f.bin"), peer=peer)

``with_logs`` wraps a test so that a failure carries the tail of every
process's log.

The harness fails loudly. Stopping a service (a role, an origin) that does not
exit within its grace period of SIGTERM, or exits with anything but status 0,
is an error of the test that stops it, carrying its log tail; so is a
service that died on its own during the test (``Swarm.stop`` and
``Swarm.check_alive``). Every child runs in its own session (a process-group
kill takes what it spawned) under ``setpriv --pdeathsig KILL`` (it dies with
the test process, even when that is SIGKILLed), and an ``atexit`` hook stops
whatever is left. Ports are taken by the children themselves (``tcp:0``, read
back from their port files); ``free_port`` only where a child must be told
its port before it starts (see there).
"""
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

import dragonfly
from dragonfly.test.integration import nginx

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"
#: The egress flags every node and dfget gets unless a test says otherwise: the
#: origins here live on loopback, which the default policy denies.
ALLOW_LOOPBACK = ("--allow-origin", LOOPBACK)
BIN = os.path.dirname(os.path.abspath(sys.executable))
# The directory that holds the ``dragonfly`` package the tests import: children
# get it first on PYTHONPATH so they run the same code as the test process.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dragonfly.__file__)))

log = Logger()


class HarnessError(Exception):
    """A process did not start, answer or stop in time."""


def executable(name):
    """The venv's console script ``name`` (next to sys.executable), else PATH's."""
    candidate = os.path.join(BIN, name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise HarnessError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def child_env(extra=None):
    env = dict(os.environ)
    parts = [SOURCE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------------------
# polling


async def poll_until(clock, predicate, timeout, what, interval=0.05, check=None):
    """Call ``predicate()`` (may return a Deferred/coroutine) until it returns a
    true value; return that value. Raise HarnessError after ``timeout`` seconds.
    ``check()`` runs before each attempt and may raise to give up early (e.g.
    "the process died")."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        if check is not None:
            check()
        try:
            value = predicate()
            if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
                value = await value
        except Exception as e:  # keep polling; report the last reason
            value, last_error = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            reason = f" (last error: {last_error!r})" if last_error is not None else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{reason}")
        await task.deferLater(clock, interval, lambda: None)


def read_json_file(path):
    """The JSON object in ``path``, or None while it is missing or incomplete."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def free_port(host=LOOPBACK):
    """A port of ``host`` nobody listens on right now, for a child that must be
    told its port before it starts: cluster members naming each other in
    --cluster, nginx (it cannot listen on port 0). Another process may take it
    before the child binds: callers start again on a new port when the child
    says so (see L{Swarm.start_cluster}, L{start_nginx})."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


_refusing = []


def refused_port():
    """A loopback port where every connection is refused for as long as this
    process runs ("nothing answers here"): a socket of ours is bound there
    without listening, so no other process can take the number meanwhile."""
    if not _refusing:
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        _refusing.append(s)
    return _refusing[0].getsockname()[1]


def refused_url():
    """C{http://127.0.0.1:<refused_port()>}: e.g. a --daemon no peer answers."""
    return f"http://{LOOPBACK}:{refused_port()}"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def make_random_file(path, size, randbytes=os.urandom):
    """Write ``size`` random bytes (from ``randbytes(n)``) to ``path``; return
    their sha256 hex. No ``<`` among them: the origin's ``/chunked/`` sends the
    file as it is (L{nginx.ssi_verbatim})."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = nginx.ssi_verbatim(randbytes(min(left, MiB)))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# HTTP


class HTTP:
    """A treq client with its own connection pool (closed in cleanup);
    ``context_factory``: the Agent's HTTPS policy (a mutual TLS client)."""

    def __init__(self, reactor, context_factory=None):
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.pool.cachedConnectionTimeout = 5
        kw = {} if context_factory is None else {"contextFactory": context_factory}
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=5, **kw))

    def close(self):
        return self.pool.closeCachedConnections()

    async def request(self, method, url, timeout=10, **kw):
        resp = await self.client.request(method, url, timeout=timeout, **kw)
        body = await resp.content()
        return resp.code, resp.headers, body

    async def get_json(self, url, timeout=10):
        code, _, body = await self.request("GET", url, timeout=timeout)
        if code != 200:
            raise HarnessError(f"GET {url} -> {code}: {body[:200]!r}")
        return json.loads(body)

    async def healthy(self, base):
        """True when ``base``/healthz answers 200."""
        try:
            code, _, _ = await self.request("GET", base + "/healthz", timeout=5)
        except Exception:
            return False
        return code == 200

    async def metrics(self, base):
        code, _, body = await self.request("GET", base + "/metrics", timeout=10)
        if code != 200:
            raise HarnessError(f"GET {base}/metrics -> {code}")
        return parse_metrics(body.decode("utf-8"))


def parse_metrics(text):
    """Prometheus text -> {sample name: [(labels dict, value), ...]}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def metric(metrics, name, missing=None, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``. KeyError
    if ``name`` has no sample (a renamed metric must not read as 0), or if none
    has those labels, unless ``missing`` says what that counts as (a labelled
    counter has no sample for a label value not seen yet)."""
    if name not in metrics:
        raise KeyError(f"no metric {name} (have: {sorted(metrics)})")
    found = [value for sample_labels, value in metrics[name]
             if all(sample_labels.get(k) == v for k, v in labels.items())]
    if not found:
        if missing is None:
            raise KeyError(f"no sample {name}{labels}")
        return missing
    return sum(found)


# ---------------------------------------------------------------------------
# processes


_live = []  # every Proc started by this process: stopped at exit if still running
#: Children get SIGKILL when the process that started them dies, however it dies.
SETPRIV = shutil.which("setpriv")


def _register_for_exit(proc):
    if not _live:
        import atexit
        atexit.register(_stop_live)
    _live[:] = [p for p in _live if p.alive()]
    _live.append(proc)


def _stop_live(grace=10):
    """At exit (the last shared swarms, an interrupted run, a failed cleanup):
    SIGTERM what still runs, SIGKILL its process group after ``grace``
    seconds, and say on stderr which service did not stop cleanly. The
    reactor is gone by now: this waits by polling the processes."""
    live = [p for p in _live if p.alive()]
    for p in live:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.alive() for p in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    problems = []
    for p in live:
        if p.alive():
            p.kill_now()
            problems.append(f"{p.name} (pid {p.pid}) ignored SIGTERM for {grace}s; killed")
        elif p.strict and not p.clean_exit(p.returncode):
            problems.append(f"{p.name} (pid {p.pid}) exited with {describe_status(p.returncode)}")
    for p in live:
        try:
            p.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if problems:
        sys.stderr.write("\nharness: services still running at exit did not stop cleanly:\n  "
                         + "\n  ".join(problems) + "\n")


def describe_status(code):
    """An exit status in words: C{exit 1}, C{signal SIGTERM}."""
    if code is None:
        return "no exit yet"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


class Proc:
    """One child process with its output in ``<logdir>/<name>.log``.

    ``strict`` (default False; True for L{Service}): L{stop} raises
    L{HarnessError} with the log tail when the process does not exit within
    its grace period of SIGTERM, exits with a status L{clean_exit} does not
    accept, or had died before without the test ending it (L{signal},
    L{kill_now} or L{wait} by the test count as the test ending it)."""

    strict = False

    def __init__(self, name, argv, logdir, cwd=None, env=None, separate_stderr=False,
                 strict=None):
        self.name = name
        self.argv = list(argv)
        if strict is not None:
            self.strict = strict
        self.ended_by_test = False
        self.log_path = os.path.join(logdir, name + ".log")
        self.err_path = os.path.join(logdir, name + ".stderr") if separate_stderr else None
        out = open(self.log_path, "wb")
        err = open(self.err_path, "wb") if separate_stderr else subprocess.STDOUT
        run = self.argv if SETPRIV is None else [SETPRIV, "--pdeathsig", "KILL", "--"] + self.argv
        try:
            self.popen = subprocess.Popen(
                run, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=cwd or logdir, env=env or child_env(), start_new_session=True)
        finally:
            out.close()
            if separate_stderr:
                err.close()
        self.pid = self.popen.pid
        _register_for_exit(self)

    def __repr__(self):
        return f"<Proc {self.name} pid={self.pid} rc={self.popen.returncode}>"

    @property
    def returncode(self):
        return self.popen.poll()

    def alive(self):
        return self.popen.poll() is None

    def clean_exit(self, code):
        """True when ``code`` is how this process ends after SIGTERM."""
        return code == 0

    def read_log(self, err=False):
        path = self.err_path if err else self.log_path
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def tail(self, lines=40):
        text = self.read_log()
        if self.err_path:
            text += "\n[stderr]\n" + self.read_log(err=True)
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self):
        if not self.alive():
            raise HarnessError(
                f"{self.name} exited with {self.returncode}; log tail:\n{self.tail()}")

    def died(self):
        """True when a strict process is gone and the test did not end it."""
        return self.strict and not self.ended_by_test and not self.alive()

    def signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            self.ended_by_test = True
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def wait(self, clock, timeout):
        """The exit status once the process ends; HarnessError after ``timeout``.
        An exit the test waited for is the test's business, not a death."""
        await poll_until(clock, lambda: not self.alive(), timeout,
                         f"{self.name} (pid {self.pid}) to exit", interval=0.05)
        self.ended_by_test = True
        return self.returncode

    async def stop(self, clock, grace=10):
        """SIGTERM, then SIGKILL after ``grace`` seconds; reap; the exit status.
        A strict process raises L{HarnessError} (see the class doc)."""
        if not self.alive():
            if self.died():
                raise HarnessError(f"{self.name} (pid {self.pid}) died during the test with "
                                   f"{describe_status(self.returncode)}; log tail:\n{self.tail()}")
            return self.returncode
        self.signal(signal.SIGTERM)
        try:
            code = await self.wait(clock, grace)
        except HarnessError:
            log.warn("{name} ignored SIGTERM for {grace}s; killing", name=self.name, grace=grace)
            self.kill_now()
            code = await self.wait(clock, 10)
            if self.strict:
                raise HarnessError(f"{self.name} (pid {self.pid}) did not exit within {grace}s "
                                   f"of SIGTERM (killed); log tail:\n{self.tail()}")
            return code
        if self.strict and not self.clean_exit(code):
            raise HarnessError(f"{self.name} (pid {self.pid}) stopped with "
                               f"{describe_status(code)} on SIGTERM; log tail:\n{self.tail()}")
        return code

    def kill_now(self):
        """SIGKILL the process and its session (any children it spawned)."""
        self.ended_by_test = True
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.signal(signal.SIGKILL)


class Service(Proc):
    """A long-running process that reports its bound ports in a port file
    (strict: see L{Proc})."""

    strict = True

    def __init__(self, name, argv, logdir, port_file, **kw):
        Proc.__init__(self, name, argv, logdir, **kw)
        self.port_file = port_file
        self.ports = None

    async def wait_ports(self, clock, keys, timeout=30):
        def ready():
            data = read_json_file(self.port_file)
            if data and all(isinstance(data.get(k), int) and data[k] > 0 for k in keys):
                return data
            return None
        self.ports = await poll_until(clock, ready, timeout, f"{self.name} to write its port file",
                                      check=self.check_alive)
        return self.ports


class Origin(Service):
    def __init__(self, logdir, root, rate=0, auth_token="x"):
        port_file = os.path.join(logdir, "origin.port")
        argv = [sys.executable, "-m", "dragonfly.test.integration.origin_server",
                "--root", root, "--port-file", port_file, "--auth-token", auth_token]
        if rate:
            argv += ["--rate", str(int(rate))]
        Service.__init__(self, "origin", argv, logdir, port_file)
        self.root = root

    @property
    def base(self):
        return f"http://{LOOPBACK}:{self.ports['port']}"

    def url(self, path):
        return f"{self.base}/{path.lstrip('/')}"

    async def stats(self, http):
        return await http.get_json(self.base + "/__stats")

    async def body_bytes(self, http, path):
        st = await self.stats(http)
        return st["paths"].get("/" + path.lstrip("/"), {}).get("body_bytes", 0)


class NginxOrigin(Proc):
    """nginx serving ``root`` as the test origin (L{nginx.origin_locations}:
    ``/NAME``, ``/auth/NAME``, ``/chunked/NAME``; ``locations`` replaces them),
    with the Twisted L{Origin}'s C{base}, C{url}, C{stats} and C{body_bytes}
    read from its access log. ``rate``: bytes per second per response."""

    strict = True

    def __init__(self, logdir, root, rate=0, auth_token="x", name="origin", locations=None,
                 host=LOOPBACK):
        self.root = os.path.abspath(root)
        self.host = host
        self.tmp = os.path.join(logdir, name + "-nginx")
        os.makedirs(self.tmp, exist_ok=True)
        self.port = free_port(host)
        if locations is None:
            locations = nginx.origin_locations(self.root, auth_token)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx.config(self.tmp, f"[{host}]" if ":" in host else host, self.port,
                                 self.root, locations, rate))
        binary = nginx.binary()
        if binary is None:
            from twisted.trial.unittest import SkipTest
            raise SkipTest("nginx is not installed (apt-get install nginx-light; .ci/run does)")
        self.error_log = os.path.join(self.tmp, "error.log")
        self.access_log = os.path.join(self.tmp, "access.log")
        Proc.__init__(self, name, [binary, "-p", self.tmp, "-c", conf, "-e", self.error_log],
                      logdir)
        self.ports = {"port": self.port}

    @property
    def base(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path):
        return f"{self.base}/{path.lstrip('/')}"

    def tail(self, lines=40):
        try:
            with open(self.error_log, "rb") as f:
                errors = f.read().decode("utf-8", "replace")
        except OSError:
            errors = ""
        return Proc.tail(self, lines) + "\n[error.log]\n" + "\n".join(
            errors.splitlines()[-lines:])

    def requests(self):
        """Every request nginx logged: dicts (see L{nginx})."""
        return nginx.read_access_log(self.access_log)

    async def stats(self, http=None):
        """The Twisted origin's C{/__stats} shape: C{{"total_body_bytes": n,
        "paths": {"/x": {"requests", "body_bytes", "ranges", "statuses",
        "user_agents"}}}}, from the access log (a request is logged once it ended)."""
        paths, total = {}, 0
        for r in self.requests():
            e = paths.setdefault(r["uri"].split("?", 1)[0], {
                "requests": 0, "body_bytes": 0, "ranges": [], "statuses": {},
                "user_agents": []})
            e["requests"] += 1
            e["body_bytes"] += r["bytes"]
            total += r["bytes"]
            e["statuses"][str(r["status"])] = e["statuses"].get(str(r["status"]), 0) + 1
            if r["range"]:
                e["ranges"].append(r["range"])
            if r["ua"] and r["ua"] not in e["user_agents"]:
                e["user_agents"].append(r["ua"])
        return {"total_body_bytes": total, "paths": paths}

    async def body_bytes(self, http, path):
        st = await self.stats(http)
        return st["paths"].get("/" + path.lstrip("/"), {}).get("body_bytes", 0)


async def start_nginx(clock, logdir, root, attempts=3, **kw):
    """An L{NginxOrigin} (``kw``: its arguments) accepting connections; started again
    on another port when its port was taken before nginx bound it."""
    for attempt in range(attempts):
        origin = NginxOrigin(logdir, root, **kw)

        async def answers():
            from twisted.internet.endpoints import (
                TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol)
            from twisted.internet.protocol import Protocol
            endpoint = TCP6ClientEndpoint if ":" in origin.host else TCP4ClientEndpoint
            proto = await connectProtocol(endpoint(clock, origin.host, origin.port, timeout=5),
                                          Protocol())
            proto.transport.loseConnection()
            return True
        try:
            await poll_until(clock, answers, 15, "nginx to answer", check=origin.check_alive)
            return origin
        except HarnessError:
            origin.kill_now()
            if nginx.BIND_FAILED not in origin.tail() or attempt == attempts - 1:
                raise
    raise AssertionError("not reached")


class Node(Service):
    """A supernode or a peer: ``api`` and ``piece`` ports (``scheme``: the API's)."""

    scheme = "http"

    @property
    def api(self):
        return f"{self.scheme}://{LOOPBACK}:{self.ports['api']}"

    @property
    def api_hostport(self):
        return f"{LOOPBACK}:{self.ports['api']}"

    @property
    def piece_port(self):
        return self.ports["piece"]

    @property
    def api_port(self):
        return self.ports["api"]

    async def metrics(self, http):
        return await http.metrics(self.api)


# ---------------------------------------------------------------------------
# dfget


class DfgetResult:
    def __init__(self, proc, output):
        self.proc = proc
        self.code = proc.returncode
        self.output = output
        self.stdout = proc.read_log()
        self.stderr = proc.read_log(err=True)

    def __repr__(self):
        return (f"<dfget exit={self.code} output={self.output!r}\n"
                f"  stderr: {self.stderr.strip()[-2000:]!r}>")


# ---------------------------------------------------------------------------
# a swarm



class SwarmMixin:
    """For a trial TestCase: C{self.http} (an L{HTTP} client) and C{self.swarm}
    (an empty L{Swarm} in the test's temporary directory), both stopped at cleanup."""

    def setUp(self):
        from twisted.internet import reactor
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.mktemp(), self.http)
        self.addCleanup(self.swarm.stop)

class Swarm:
    """An origin, supernodes and peers under one directory."""

    def __init__(self, clock, workdir, http):
        self.clock = clock
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.http = http
        self.origin = None
        self.supernodes = []
        self.peers = []
        self.dfgets = []
        self.retired = []   # stopped by the harness: in the logs, never stopped again
        self.files = {}  # name -> (size, sha256)
        self._n = {}

    def _name(self, prefix):
        self._n[prefix] = self._n.get(prefix, 0) + 1
        return f"{prefix}{self._n[prefix]}"

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    # -- origin ------------------------------------------------------------

    def add_file(self, name, size):
        root = self.path("origin-root")
        full = os.path.join(root, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        digest = make_random_file(full, size)
        self.files[name] = (size, digest)
        return digest

    def new_file(self, stem, size, ext=".bin"):
        """A file no test of this swarm used yet (C{STEM-N.bin}) added to the
        origin's root: tests sharing a swarm stay repeatable (``trial -u``)
        when each fetches fresh names. Returns the name."""
        n = self._n.get("file:" + stem, 0)
        while True:
            n += 1
            name = f"{stem}-{n}{ext}"
            if name not in self.files:
                break
        self._n["file:" + stem] = n
        self.add_file(name, size)
        return name

    async def start_origin(self, files=None, rate=0, server="nginx"):
        """The swarm's origin serving ``files`` ({name: size}, random bytes):
        nginx (L{NginxOrigin}: Range, ETag/304, ``/auth/``, ``/chunked/``), or
        with ``server="twisted"`` our own L{Origin} (for a test that needs what
        only it has: C{/__headers}). ``rate``: bytes per second per response."""
        os.makedirs(self.path("origin-root"), exist_ok=True)
        for name, size in (files or {}).items():
            self.add_file(name, size)
        if server == "nginx":
            self.origin = await start_nginx(self.clock, self.workdir, self.path("origin-root"),
                                            rate=rate)
            return self.origin
        self.origin = Origin(self.workdir, self.path("origin-root"), rate=rate)
        await self.origin.wait_ports(self.clock, ["port"])
        await poll_until(self.clock, lambda: self.http.get_json(self.origin.base + "/__stats"),
                         15, "the origin to answer", check=self.origin.check_alive)
        return self.origin

    def origin_url(self, name):
        return self.origin.url(name)

    # -- nodes ---------------------------------------------------------------

    async def _start_node(self, name, role, args, egress=ALLOW_LOOPBACK, http=None,
                          data_dir=None, ports=("api", "piece")):
        """``data_dir``: an existing one (e.g. a stopped node's, to restart it)."""
        data_dir = data_dir or self.path(name + "-data")
        os.makedirs(data_dir, exist_ok=True)
        port_file = self.path(name + ".ports")
        argv = [executable("twistd"), "-n", "--pidfile=", role,
                "--data-dir", data_dir, "--port-file", port_file] + list(egress) + list(args)
        node = Node(name, argv, self.workdir, port_file)
        node.data_dir = data_dir
        if http is not None:    # a mutual TLS API
            node.scheme, node.http = "https", http
        http = http or self.http
        try:
            await node.wait_ports(self.clock, list(ports))
            await poll_until(self.clock, lambda: http.healthy(node.api), 30,
                             f"{name} /healthz", check=node.check_alive)
        except BaseException:
            node.kill_now()
            self.retired.append(node)
            raise
        return node

    async def start_supernode(self, piece_size="1M", extra=(), egress=ALLOW_LOOPBACK,
                              tls_http=None, data_dir=None):
        """``tls_http``: an L{HTTP} with a client certificate when ``extra``
        turns mutual TLS on (the API is then https, polled through it);
        ``data_dir``: an existing one (a restart)."""
        name = self._name("supernode")
        args = ["--listen", f"tcp:0:interface={LOOPBACK}",
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK]
        if piece_size:
            args += ["--piece-size", str(piece_size)]
        node = await self._start_node(name, "supernode", args + list(extra), egress, tls_http,
                                      data_dir=data_dir)
        self.supernodes.append(node)
        return node

    async def start_cluster(self, extra=(), piece_size="1M", attempts=3):
        """Two supernodes naming each other in ``--cluster`` (health checks
        every 0.5 s), returned once each sees the other alive.

        Each must be told the other's API port before either starts, so these
        two ports come from L{free_port}; when another process took one
        meanwhile ("cannot listen on ..."), both start again on new ports."""
        common = ["--cluster-check-interval", "0.5"] + list(extra)
        for attempt in range(attempts):
            pa, pb = free_port(), free_port()
            while pb == pa:
                pb = free_port()
            started = []
            try:
                for port, other in ((pa, pb), (pb, pa)):
                    started.append(await self.start_supernode(piece_size, extra=[
                        "--listen", f"tcp:{port}:interface={LOOPBACK}",
                        "--cluster", f"{LOOPBACK}:{other}"] + common))
                break
            except HarnessError as e:
                for node in started:
                    node.kill_now()
                    self.supernodes.remove(node)
                    self.retired.append(node)
                if "cannot listen" not in str(e) or attempt == attempts - 1:
                    raise
        a, b = started

        async def both_alive():
            # Each node marks the other dead while it was still starting up:
            # wait until both see the whole cluster alive.
            for node in (a, b):
                code, _, raw = await self.http.request("GET", node.api + "/healthz")
                members = json.loads(raw).get("cluster", {}).get("members", {})
                if code != 200 or set(members.values()) != {"alive"}:
                    return None
            return True
        await poll_until(self.clock, both_alive, 30, "both supernodes to see each other alive")
        return a, b

    def supernode_list(self, supernodes=None):
        nodes = self.supernodes if supernodes is None else supernodes
        return ",".join(n.api_hostport for n in nodes)

    async def start_peer(self, supernodes=None, extra=(), egress=ALLOW_LOOPBACK, data_dir=None):
        """A peer of ``supernodes`` (default: every supernode of the swarm; a
        string is passed through as the --supernodes value). ``egress``: its
        --allow-origin/--deny-origin flags (default: loopback allowed);
        ``data_dir``: an existing one (a restart)."""
        name = self._name("peer")
        sn = supernodes if isinstance(supernodes, str) else self.supernode_list(supernodes)
        args = ["--supernodes", sn,
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--api-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK]
        node = await self._start_node(name, "peer", args + list(extra), egress, data_dir=data_dir)
        self.peers.append(node)
        return node

    async def start_dfdaemon(self, registry=None, extra=(), egress=ALLOW_LOOPBACK, data_dir=None):
        """A dfdaemon (a peer of every supernode plus a registry mirror on
        C{.mirror_port}); ``registry``: its plain-HTTP upstream (default: the
        swarm's origin, enough when no test pulls an image). In C{peers}."""
        name = self._name("dfdaemon")
        registry = registry or self.origin.base
        args = ["--supernodes", self.supernode_list(),
                "--listen", f"tcp:0:interface={LOOPBACK}",
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--api-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK,
                "--registry", registry, "--insecure-registry", registry.split("//", 1)[1]]
        node = await self._start_node(name, "dfdaemon", args + list(extra), egress,
                                      data_dir=data_dir, ports=("api", "piece", "mirror"))
        node.mirror_port = node.ports["mirror"]
        self.peers.append(node)
        return node

    # -- dfget ---------------------------------------------------------------

    def start_dfget(self, url, output=None, peer=None, daemon=None, supernodes=None,
                    args=(), name=None, egress=ALLOW_LOOPBACK):
        """Start one dfget (not waiting). ``peer`` sets --daemon to that peer's
        API; ``daemon`` overrides it (e.g. a dead address for the embedded
        peer). Returns the Proc, with ``.output`` set."""
        name = name or self._name("dfget")
        if output is None:
            outdir = self.path(name + "-out")
            os.makedirs(outdir, exist_ok=True)
            output = os.path.join(outdir, os.path.basename(url.split("?")[0]) or "index")
        if daemon is None:
            daemon = peer.api if peer is not None else refused_url()
        sn = supernodes if isinstance(supernodes, str) else self.supernode_list(supernodes)
        argv = [executable("dfget"), url, "-O", output, "--daemon", daemon]
        if sn:
            argv += ["--supernodes", sn]
        argv += list(egress) + list(args)
        proc = Proc(name, argv, self.workdir, separate_stderr=True)
        proc.output = output
        self.dfgets.append(proc)
        return proc

    async def wait_dfget(self, proc, timeout=120):
        try:
            await proc.wait(self.clock, timeout)
        except HarnessError:
            proc.kill_now()
            await proc.wait(self.clock, 10)
            raise HarnessError(f"{proc.name} did not finish in {timeout}s; stderr:\n"
                               f"{proc.tail()}")
        return DfgetResult(proc, proc.output)

    async def dfget(self, url, timeout=120, **kw):
        return await self.wait_dfget(self.start_dfget(url, **kw), timeout)

    # -- metrics -------------------------------------------------------------

    async def peer_metrics(self, peers=None):
        out = []
        for p in (self.peers if peers is None else peers):
            out.append(await p.metrics(self.http))
        return out

    # -- teardown ------------------------------------------------------------

    def processes(self):
        procs = list(self.dfgets) + list(self.peers) + list(self.supernodes)
        if self.origin is not None:
            procs.append(self.origin)
        return procs + [p for p in self.retired if p not in procs]

    def check_alive(self):
        """Raise L{HarnessError} with their log tails when services of this
        swarm died that the test did not end (see L{Proc.died})."""
        dead = [p for p in self.processes() if p.died()]
        if dead:
            raise HarnessError("died during the test:\n" + "\n".join(
                f"----- {p.name} (pid {p.pid}) {describe_status(p.returncode)}\n{p.tail()}"
                for p in dead))

    async def stop(self):
        """Stop everything (SIGTERM, then SIGKILL after the grace period); raise
        L{HarnessError} naming each service that died during the test, ignored
        SIGTERM or stopped with an unclean status, with its log tail."""
        procs = self.processes()
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(p.stop(self.clock)) for p in procs],
            consumeErrors=True)
        problems = []
        for ok, value in results:
            if not ok:
                problems.append(value.getErrorMessage() if value.check(HarnessError)
                                else f"{value.type.__name__}: {value.getErrorMessage()}")
        if problems:
            raise HarnessError("processes did not stop cleanly:\n" + "\n\n".join(problems))

    def kill_now(self):
        for p in self.processes():
            p.kill_now()

    def logs(self, lines=40):
        out = []
        for p in self.processes():
            out.append(f"----- {p.name} (pid {p.pid}, exit {p.returncode}) {p.log_path}\n"
                       f"{p.tail(lines)}")
        return "\n".join(out)


def with_logs(swarm_attr="swarm"):
    """Decorate an ``async def test_*``: on failure, append every process's log
    tail of ``self.<swarm_attr>`` (a Swarm or list of Swarms) to the error."""
    def decorate(f):
        @functools.wraps(f)
        def wrapper(self, *a, **kw):
            d = defer.ensureDeferred(f(self, *a, **kw))

            def explain(failure):
                swarms = getattr(self, swarm_attr, None)
                if swarms is None:
                    return failure
                if not isinstance(swarms, (list, tuple)):
                    swarms = [swarms]
                text = "\n".join(s.logs() for s in swarms)
                log.error("process logs after failure of {test}:\n{text}", test=self.id(), text=text)
                if failure.check(AssertionError, HarnessError):
                    # keep the original traceback; extend the message
                    exc = failure.value
                    exc.args = (f"{exc}\n\n=== process logs ===\n{text}",) + tuple(exc.args[1:])
                return failure
            return d.addErrback(explain)
        return wrapper
    return decorate


# ---------------------------------------------------------------------------
# a swarm shared by the tests of one class

_shared = {}


async def shared_swarm(key, clock, http, setup, test=None):
    """The Swarm registered under ``key``, started by ``await setup(swarm)`` the
    first time. Tests sharing it must not disturb each other: fresh file names
    (L{Swarm.new_file}), counters compared as before/after deltas.

    With ``test`` (what L{SharedSwarmMixin} passes: ``key`` is then its class),
    the swarm fails loudly: shared swarms of other keys are stopped first (this
    process moved on to another class), and their unclean stop fails this test;
    a service of the swarm that died since the last test fails this test; at
    this test's cleanup a service that died during it fails it (and the swarm
    is dropped, the next test starts a new one), and after the class's last
    test (by name: trial's order) the swarm is stopped, its unclean stop
    failing that test. A swarm still running at exit (``trial -j``: the
    worker that did not run the last test; a single test run) is stopped by
    the atexit hook, which reports an unclean stop on stderr."""
    problems = []
    if test is not None:
        for other in [k for k in _shared if k != key]:
            try:
                await _shared.pop(other).stop()
            except HarnessError as e:
                problems.append(f"the shared swarm of {other}: {e}")
    swarm = _shared.get(key)
    if swarm is not None and not os.path.isdir(swarm.workdir):
        # trial -u empties _trial_temp before each pass: a swarm whose files
        # are gone cannot be used (nor its logs read); start a new one.
        del _shared[key]
        try:
            await swarm.stop()
        except HarnessError as e:
            problems.append(f"the shared swarm {key}, stopped after a pass of trial -u: {e}")
        swarm = None
    if swarm is not None:
        try:
            swarm.check_alive()
        except HarnessError as e:
            del _shared[key]
            swarm.kill_now()
            problems.append(f"the shared swarm {key}, since its last test: {e}")
            swarm = None
    if problems:
        raise HarnessError("\n\n".join(problems))
    if swarm is None:
        workdir = os.path.join(os.getcwd(), f"shared-swarm-{key}-{os.getpid()}")
        if os.path.exists(workdir):
            shutil.rmtree(workdir)
        swarm = Swarm(clock, workdir, http)
        _shared[key] = swarm
        try:
            await setup(swarm)
        except BaseException:
            swarm.kill_now()
            del _shared[key]
            raise
    swarm.http = http
    if test is not None:
        test.addCleanup(lambda: defer.Deferred.fromCoroutine(_after_test(key, swarm, test)))
    return swarm


def _last_test_name(cls):
    return max(n for n in dir(cls) if n.startswith("test") and callable(getattr(cls, n)))


async def _after_test(key, swarm, test):
    if _shared.get(key) is not swarm:
        return
    try:
        swarm.check_alive()
    except HarnessError:
        del _shared[key]
        swarm.kill_now()
        raise
    if test._testMethodName == _last_test_name(type(test)):
        del _shared[key]
        await swarm.stop()


class SharedSwarmMixin:
    """For a trial TestCase whose tests share one swarm: the class defines
    ``async def setUpSwarm(self, swarm)`` (start its processes); a test calls
    ``swarm = await self.shared()``, which also sets C{self.swarm} and
    C{self.http} (a new client, closed at the test's cleanup). See L{shared_swarm} for how it fails loudly."""

    async def setUpSwarm(self, swarm):
        raise NotImplementedError

    async def shared(self):
        from twisted.internet import reactor
        # A new client each test: trial -u runs the same TestCase instances again.
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        key = f"{type(self).__module__}.{type(self).__qualname__}"
        self.swarm = await shared_swarm(key, reactor, self.http, self.setUpSwarm, test=self)
        return self.swarm

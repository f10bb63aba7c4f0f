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


def free_port():
    """A loopback port nobody listens on right now (for "nothing answers here")."""
    s = socket.socket()
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def make_random_file(path, size):
    """Write ``size`` random bytes to ``path``; return their sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, MiB))
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


_live = []  # every Proc started by this process: killed at exit if still running


def _register_for_exit(proc):
    if not _live:
        import atexit
        atexit.register(_kill_live)
    _live[:] = [p for p in _live if p.alive()]
    _live.append(proc)


def _kill_live():
    """Last resort (interrupted run, failed cleanup): no child outlives us."""
    for p in _live:
        p.kill_now()
    for p in _live:
        try:
            p.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Proc:
    """One child process with its output in ``<logdir>/<name>.log``."""

    def __init__(self, name, argv, logdir, cwd=None, env=None, separate_stderr=False):
        self.name = name
        self.argv = list(argv)
        self.log_path = os.path.join(logdir, name + ".log")
        self.err_path = os.path.join(logdir, name + ".stderr") if separate_stderr else None
        out = open(self.log_path, "wb")
        err = open(self.err_path, "wb") if separate_stderr else subprocess.STDOUT
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
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

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def wait(self, clock, timeout):
        """The exit status once the process ends; HarnessError after ``timeout``."""
        await poll_until(clock, lambda: not self.alive(), timeout,
                         f"{self.name} (pid {self.pid}) to exit", interval=0.05)
        return self.returncode

    async def stop(self, clock, grace=10):
        """SIGTERM, then SIGKILL after ``grace`` seconds; reap."""
        if not self.alive():
            return self.returncode
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(clock, grace)
        except HarnessError:
            log.warn("{name} ignored SIGTERM for {grace}s; killing", name=self.name, grace=grace)
            self.kill_now()
            return await self.wait(clock, 10)

    def kill_now(self):
        """SIGKILL the process and its session (any children it spawned)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.signal(signal.SIGKILL)


class Service(Proc):
    """A long-running process that reports its bound ports in a port file."""

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

    async def start_origin(self, files=None, rate=0):
        os.makedirs(self.path("origin-root"), exist_ok=True)
        for name, size in (files or {}).items():
            self.add_file(name, size)
        self.origin = Origin(self.workdir, self.path("origin-root"), rate=rate)
        await self.origin.wait_ports(self.clock, ["port"])
        await poll_until(self.clock, lambda: self.http.get_json(self.origin.base + "/__stats"),
                         15, "the origin to answer", check=self.origin.check_alive)
        return self.origin

    def origin_url(self, name):
        return self.origin.url(name)

    # -- nodes ---------------------------------------------------------------

    async def _start_node(self, name, role, args, egress=ALLOW_LOOPBACK, http=None):
        data_dir = self.path(name + "-data")
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
            await node.wait_ports(self.clock, ["api", "piece"])
            await poll_until(self.clock, lambda: http.healthy(node.api), 30,
                             f"{name} /healthz", check=node.check_alive)
        except BaseException:
            node.kill_now()
            raise
        return node

    async def start_supernode(self, piece_size="1M", extra=(), egress=ALLOW_LOOPBACK,
                              tls_http=None):
        """``tls_http``: an L{HTTP} with a client certificate when ``extra``
        turns mutual TLS on (the API is then https, polled through it)."""
        name = self._name("supernode")
        args = ["--listen", f"tcp:0:interface={LOOPBACK}",
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK]
        if piece_size:
            args += ["--piece-size", str(piece_size)]
        node = await self._start_node(name, "supernode", args + list(extra), egress, tls_http)
        self.supernodes.append(node)
        return node

    async def start_cluster(self, extra=(), piece_size="1M"):
        """Two supernodes naming each other in ``--cluster`` (health checks
        every 0.5 s), returned once each sees the other alive."""
        pa, pb = free_port(), free_port()
        common = ["--cluster-check-interval", "0.5"] + list(extra)
        a = await self.start_supernode(piece_size, extra=[
            "--listen", f"tcp:{pa}:interface={LOOPBACK}", "--cluster", f"{LOOPBACK}:{pb}"] + common)
        b = await self.start_supernode(piece_size, extra=[
            "--listen", f"tcp:{pb}:interface={LOOPBACK}", "--cluster", f"{LOOPBACK}:{pa}"] + common)

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

    async def start_peer(self, supernodes=None, extra=(), egress=ALLOW_LOOPBACK):
        """A peer of ``supernodes`` (default: every supernode of the swarm; a
        string is passed through as the --supernodes value). ``egress``: its
        --allow-origin/--deny-origin flags (default: loopback allowed)."""
        name = self._name("peer")
        sn = supernodes if isinstance(supernodes, str) else self.supernode_list(supernodes)
        args = ["--supernodes", sn,
                "--piece-listen", f"tcp:0:interface={LOOPBACK}",
                "--api-listen", f"tcp:0:interface={LOOPBACK}",
                "--advertise", LOOPBACK]
        node = await self._start_node(name, "peer", args + list(extra), egress)
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
            daemon = peer.api if peer is not None else f"http://{LOOPBACK}:{free_port()}"
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
        return procs

    async def stop(self):
        """Stop everything (SIGTERM, then SIGKILL); report which exited badly."""
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(p.stop(self.clock)) for p in self.processes()],
            consumeErrors=True)
        for ok, value in results:
            if not ok:
                log.failure("stopping a process", value)

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
# a swarm shared by the tests of one module (started lazily, killed at exit)

_shared = {}


async def shared_swarm(key, clock, http, setup):
    """The Swarm registered under ``key``, started by ``await setup(swarm)`` the
    first time (or again, if a process of it died). Its processes are killed
    when the test process exits (like every Proc still running then). Tests
    sharing it must not disturb each other: distinct file names, counters
    compared as before/after deltas."""
    swarm = _shared.get(key)
    if swarm is not None:
        if all(p.alive() for p in swarm.processes() if p not in swarm.dfgets):
            swarm.http = http
            return swarm
        swarm.kill_now()
        del _shared[key]
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
    return swarm


"""Process plumbing for the benchmarks: start, watch and always stop real processes.

Every process the bench starts is registered here and killed (its whole
process group) by ``cleanup()``, which ``bench.run`` calls on every exit path
(normal end, exception, Ctrl-C, SIGTERM). Nothing here runs inside the
dragonfly services; this is a driver script, so plain ``subprocess`` and
``time.sleep`` polling are fine.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

_LIVE = []          # Proc objects not yet reaped


class BenchError(Exception):
    """A benchmark step could not run; the message says why."""


def tool(name):
    """Path of a console script from the running virtualenv, else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(here):
        return here
    found = shutil.which(name)
    if not found:
        raise BenchError("%s not found (install the package: make install)" % (name,))
    return found


def netns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


class Proc:
    """One child process in its own process group, output to a log file."""

    def __init__(self, argv, log_path, ns=None, env=None, cwd=None, name=None):
        self.name = name or os.path.basename(argv[0])
        self.argv = netns_prefix(ns) + list(argv)
        self.ns = ns
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.started = time.monotonic()
        self.ended = None
        self.rusage = None
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env=env, cwd=cwd)
        # `ip netns exec` execs the command in place: the pid is the command's.
        self.pid = self.popen.pid
        _LIVE.append(self)

    # -- observation -------------------------------------------------
    def poll(self):
        """Exit status if the process ended (reaping it with wait4), else None."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            return self.popen.poll()
        if pid == 0:
            return None
        self.ended = time.monotonic()
        self.rusage = rusage
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self._close()
        return self.popen.returncode

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            if time.monotonic() > deadline:
                raise BenchError("%s did not finish within %ss (log: %s)"
                                 % (self.name, timeout, self.log_path))
            time.sleep(0.02)

    @property
    def elapsed(self):
        return (self.ended or time.monotonic()) - self.started

    def status(self):
        """Fields of /proc/<pid>/status as a dict of strings (empty once gone)."""
        try:
            with open("/proc/%d/status" % self.pid) as f:
                return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            return {}

    def hwm_bytes(self):
        """Peak resident set (VmHWM) in bytes, or None once the process is gone."""
        v = self.status().get("VmHWM")
        return int(v.split()[0]) * 1024 if v else None

    def cpu_seconds(self):
        """utime + stime of the live process from /proc/<pid>/stat."""
        times = self.cpu_times()
        return None if times is None else times[0] + times[1]

    def cpu_times(self):
        """(utime, stime) of the live process from /proc/<pid>/stat, or None."""
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    # -- stopping ----------------------------------------------------
    def stop(self, timeout=10):
        """SIGTERM the process group, SIGKILL after ``timeout``; always reaps."""
        if self.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.poll() is None:
                self._signal(signal.SIGKILL)
                try:
                    self.wait(10)
                except BenchError:
                    pass
        else:
            # The leader is gone; make sure nothing else of its group lingers.
            self._signal(signal.SIGKILL)
        self._close()

    def _signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close(self):
        if self in _LIVE and self.popen.returncode is not None:
            _LIVE.remove(self)
        if not self._log.closed:
            self._log.close()


def cleanup():
    """Stop every process the bench started and has not reaped yet."""
    for p in list(reversed(_LIVE)):
        try:
            p.stop(timeout=5)
        except Exception:   # noqa: BLE001 - best effort on the way out
            pass
        if p in _LIVE:
            _LIVE.remove(p)


def wait_for_file(path, timeout, proc=None):
    """Parsed JSON of ``path`` once it exists and parses (port files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s exited with %s before writing %s:\n%s"
                             % (proc.name, proc.popen.returncode, path, proc.tail()))
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.05)
    raise BenchError("%s not written within %ss%s" % (
        path, timeout, (":\n" + proc.tail()) if proc else ""))


def http_get(url, ns=None, timeout=10, tls=None):
    """Body of a small GET; inside a namespace it goes through curl there.
    ``tls``: (cert, key, ca) for an https URL of a mutual-TLS API."""
    if ns:
        extra = ["--cert", tls[0], "--key", tls[1], "--cacert", tls[2]] if tls else []
        out = subprocess.run(netns_prefix(ns) + ["curl", "-sS", "-f", "--max-time", str(timeout)]
                             + extra + [url], capture_output=True, timeout=timeout + 5)
        if out.returncode != 0:
            raise BenchError("GET %s in %s failed: %s" % (url, ns, out.stderr.decode().strip()))
        return out.stdout
    context = None
    if tls:
        import ssl
        context = ssl.create_default_context(cafile=tls[2])
        context.load_cert_chain(tls[0], tls[1])
    with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
        return r.read()


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} from Prometheus text format."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            value = float(value)
        except ValueError:
            continue
        labels = {}
        if "{" in key:
            name, rest = key.split("{", 1)
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k.strip()] = v.strip().strip('"')
        else:
            name = key
        out[(name, frozenset(labels.items()))] = value
    return out


GNU_TIME = "/usr/bin/time"


def peak_rss_argv(argv, out_path):
    """``argv`` under GNU time, which writes the command's peak RSS (KiB) to ``out_path``.

    ru_maxrss from wait4() cannot measure a short-lived child of the bench:
    exec records the replaced address space's high-water mark, and the child
    was forked (vfork: shared) from the bench runner, so a child's ru_maxrss
    is at least the runner's own RSS (measured: `dfget --help` "210 MiB"
    under a 200 MiB parent, 16 MiB under GNU time). GNU time is a small
    process; the command it forks inherits only that. Without GNU time
    the command runs as is and ``read_peak_rss`` returns None.
    """
    if not os.access(GNU_TIME, os.X_OK):
        return list(argv)
    return [GNU_TIME, "-f", "%M", "-o", out_path] + list(argv)


def read_peak_rss(out_path):
    """Bytes written by ``peak_rss_argv``'s GNU time, or None."""
    try:
        with open(out_path) as f:
            return int(f.read().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def metric(samples, name, **labels):
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scrape(host, port, ns=None, tls=None):
    """Parsed /metrics of a service ({} when it does not answer); over https
    with the client certificate ``tls`` (cert, key, ca) when given."""
    scheme = "https" if tls else "http"
    try:
        return parse_prometheus(http_get("%s://%s:%d/metrics" % (scheme, host, port), ns=ns, tls=tls))
    except Exception:   # noqa: BLE001 - a missing metric must not abort the bench
        return {}


def make_file(path, size, seed=0):
    """Create (or reuse) a file of ``size`` bytes whose every MiB is distinct."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = os.urandom(8 << 20)
    tmp = path + ".tmp"
    mib = 1 << 20
    with open(tmp, "wb") as f:
        written = 0
        i = 0
        while written < size:
            off = (i * 4099 * 4096) % (len(block) - mib)
            chunk = bytearray(block[off:off + mib])
            chunk[:16] = (b"%016x" % (i + (seed << 40)))
            n = min(mib, size - written)
            f.write(chunk[:n])
            written += n
            i += 1
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def sha256_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def drop_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Profiler:
    """py-spy sampling of some live processes while a block runs (``--profile``).

    ``with Profiler(ctx_dir, {"peer": proc}) as prof: ...`` then ``prof.summary``
    = {name: {"samples", "self": [(pct, frame)], "total": [(pct, frame)]}}.
    Without py-spy it does nothing and the summary stays empty.
    """

    def __init__(self, outdir, procs, enabled=True, rate=100):
        self.outdir = outdir
        self.procs = procs
        self.enabled = enabled and _which_pyspy() is not None
        self.rate = rate
        self.running = {}
        self.summary = {}

    def __enter__(self):
        if not self.enabled:
            return self
        for name, p in self.procs.items():
            out = os.path.join(self.outdir, "profile-%s-%d.raw" % (name, p.pid))
            argv = [_which_pyspy(), "record", "--pid", str(p.pid), "--format", "raw", "-o", out,
                    "--nonblocking", "--rate", str(self.rate)]
            self.running[name] = (Proc(argv, out + ".log", name="py-spy"), out)
        return self

    def __exit__(self, *exc):
        for name, (proc, out) in self.running.items():
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGINT)      # py-spy writes its output on SIGINT
                except ProcessLookupError:
                    pass
            try:
                proc.wait(30)
            except BenchError:
                proc.stop()
            self.summary[name] = summarise_raw(out)
        self.running = {}


def _which_pyspy():
    try:
        return tool("py-spy")
    except BenchError:
        return None


def summarise_raw(path, top=15):
    """Self and inclusive time per frame from a py-spy raw (collapsed) file."""
    import collections
    own, incl, n = collections.Counter(), collections.Counter(), 0
    try:
        with open(path) as f:
            for line in f:
                try:
                    stack, c = line.rstrip("\n").rsplit(" ", 1)
                    c = int(c)
                except ValueError:
                    continue
                n += c
                frames = stack.split(";")
                own[frames[-1]] += c
                for fr in set(frames):
                    incl[fr] += c
    except OSError:
        return {"samples": 0}
    if not n:
        return {"samples": 0}
    skip = ("twisted/python/context.py", "twisted/python/log.py", "twisted/application/", "twistd",
            "twisted/scripts/", "twisted/internet/base.py", "epollreactor.py:", "<module>",
            "posixbase.py", "_twistd_unix")
    return {
        "samples": n,
        "self": [(round(100.0 * c / n, 1), fr) for fr, c in own.most_common(top)],
        "total": [(round(100.0 * c / n, 1), fr) for fr, c in incl.most_common(top * 4)
                  if not any(s in fr for s in skip)][:top * 2],
    }


def cpu_times():
    """Machine-wide CPU jiffies from /proc/stat: dict of user/nice/system/idle/iowait/irq/softirq."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")
    return dict(zip(names, (int(x) for x in fields)))


def cpu_usage(before, after):
    """Share of all CPUs' time per state between two cpu_times() readings."""
    d = {k: after[k] - before[k] for k in before}
    total = sum(d.values()) or 1
    return {k: round(v / total, 3) for k, v in d.items()}


#: Linux free page reporting (virtio-balloon): how long a free page stays in
#: the guest before it is reported, that is handed back, to the host.
PAGE_REPORTING_DELAY = "/sys/module/page_reporting/parameters/min_free_ms"


class HeldMemory:
    """While the benches run, keep the memory the guest frees in the guest.

    With free page reporting, every page the guest frees (a deleted output
    file's page cache, an exited process) goes back to the host at once
    (C{min_free_ms} 0 on these VMs), and the next write into it is slow again
    (~300 MB/s instead of ~4 GB/s). That undid the memory warm-up within a
    minute and made each run's speed depend on how much memory the previous
    one freed. C{enter()} raises the delay to the first of C{hold_ms} the
    kernel takes (it caps it; 300000 is accepted here) where the knob exists
    and is writable (root), C{exit()} restores it; C{record} says what happened.
    """

    def __init__(self, hold_ms=(3_600_000, 300_000, 60_000), path=PAGE_REPORTING_DELAY,
                 log=print):
        self.hold_ms = hold_ms
        self.path = path
        self.log = log
        self.previous = None
        self.record = {"knob": path, "held_ms": None, "was_ms": None}

    def enter(self):
        try:
            with open(self.path) as f:
                previous = f.read().strip()
        except OSError as e:
            self.record["error"] = e.strerror or str(e)
            return self
        for ms in self.hold_ms:
            try:
                with open(self.path, "w") as f:
                    f.write(str(ms))
            except OSError as e:
                self.record["error"] = e.strerror or str(e)
                continue
            self.previous = previous
            self.record.pop("error", None)
            self.record.update(held_ms=ms, was_ms=int(previous))
            self.log("holding freed memory in the guest: %s %s -> %d" % (
                self.path, previous, ms))
            break
        return self

    def exit(self):
        if self.previous is None:
            return
        try:
            with open(self.path, "w") as f:
                f.write(self.previous)
        except OSError as e:
            self.log("could not restore %s to %s: %s" % (self.path, self.previous, e))
        self.previous = None


def compile_bytecode(env=None, log=print):
    """Byte-compile the dragonfly package that the processes started with
    C{env} import (whichever their interpreter finds: a tree on PYTHONPATH or
    the installed copy), as installing it does. A source tree never run before,
    or run with PYTHONDONTWRITEBYTECODE=1 (set in some environments), has no
    bytecode, and then every dfget compiles each module it imports from source:
    ~20-30 ms of each one's start-up that no installed dfget pays (issue 20,
    round six). Returns that package's directory, or None when it could not
    be done (logged; the benches run anyway)."""
    # (sys.path[0] of "-c" is the current directory: not where the started
    # processes, console scripts, look)
    code = ("import sys; sys.path.pop(0); "
            "import compileall, os, dragonfly; d = os.path.dirname(dragonfly.__file__); "
            "print(d if compileall.compile_dir(d, quiet=2) else '')")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        log("bytecode: not compiled (%s)" % (e,))
        return None
    where = out.stdout.strip() or None
    log("bytecode: %s" % (where or "not (all) compiled: %s" % out.stderr.strip()[-300:]))
    return where


def warm_page_cache(workdir, reserve=4 << 30, cap=32 << 30, log=print):
    """Write, then delete, one big scratch file so the guest's free memory has
    been used once before anything is timed.

    On this kind of VM, memory the guest never touched since boot is slow to
    use the first time (measured: fresh page cache filled at ~250-400 MB/s,
    the same pages ~4 GB/s once used and freed). Whichever client first
    writes into such memory pays for it, so without this step the order of
    the runs decided the results (curl, writing its output over and over,
    always got recycled pages). Returns what it did, for the results.
    """
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    st = os.statvfs(workdir)
    free_disk = st.f_bavail * st.f_frsize
    target = max(0, min(avail - reserve, free_disk - reserve, cap))
    target -= target % (1 << 30)
    out = {"bytes": target, "seconds": 0.0, "gib_s": []}
    if target <= 0:
        return out
    path = os.path.join(workdir, "warm-page-cache.tmp")
    block = os.urandom(1 << 20)
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for gib in range(target >> 30):
            t = time.monotonic()
            for _ in range(1024):
                os.write(fd, block)
            out["gib_s"].append(round(time.monotonic() - t, 2))
    finally:
        os.close(fd)
        os.unlink(path)
    out["seconds"] = round(time.monotonic() - t0, 1)
    log("warmed %d GiB of page cache in %.1f s (first GiB %.2f s, last %.2f s)" % (
        target >> 30, out["seconds"], out["gib_s"][0], out["gib_s"][-1]))
    return out

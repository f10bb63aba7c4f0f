"""dfget: a wget-like client that downloads through the dragonfly P2P network.

    dfget [options] URL            (or Dragonfly 1.x style: dfget -u URL -o FILE)

It asks the local peer daemon (C{--daemon}, default http://127.0.0.1:65002)
when its C{/healthz} answers within about a second; otherwise it runs an
embedded peer for the length of the download (pieces in a temporary directory
next to the output file, a piece server on an ephemeral loopback port so other
peers can fetch from it while it runs).

The output appears only complete and verified: it is written under
C{FILE.dfget-tmp-<random>} in the output directory, checked against
C{--digest}, then renamed. Through a daemon, that temporary file is a reflink
or a hard link to the daemon's copy where the filesystem and the file's owner
and mode allow it (see L{_place}), else a copy. A failure prints one line, C{dfget: error: ...},
on stderr, exits non-zero and leaves nothing under FILE.
"""
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from dragonfly.config import parse_hostports, parse_rate
from dragonfly.taskid import task_id_for_url, validate_task_id

__all__ = ["DfgetOptions", "Dfget", "DfgetError", "main", "run"]

DIGEST_ALGOS = {"sha256": 64, "sha512": 128, "md5": 32}
HEALTH_TIMEOUT = 1.0
COPY_CHUNK = 1 << 20
#: Bytes per write() to the output: large writes make the kernel allocate
#: large page-cache folios, which are much slower to fill on some VMs
#: (see dragonfly.storage.store.WRITE_SLICE).
WRITE_SLICE = 128 * 1024
NDJSON_LINE_MAX = 64 * 1024

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class DfgetError(Exception):
    """A failure to report as C{dfget: error: <message>}."""

    def __init__(self, message, code=EXIT_FAILED):
        Exception.__init__(self, message)
        self.code = code


class DfgetOptions(usage.Options):
    synopsis = "Usage: dfget [options] URL  (or: dfget -u URL -o FILE)"
    longdesc = ("Download URL through the dragonfly P2P network (the local peer daemon, "
                "or an embedded peer when none answers). The output file appears only "
                "complete and verified.")

    optFlags = [
        ["quiet", "q", "No progress bar."],
        ["verbose", "v", "Log what happens on stderr."],
        ["no-back-source", None, "Fail rather than fetch from the origin directly."],
    ]
    optParameters = [
        ["url", "u", None, "The URL (Dragonfly 1.x style; same as the argument)."],
        ["output", "O", None, "Output file (default: the URL's basename; - = stdout). "
                              "-o is an alias."],
        ["supernodes", None, None, "Supernodes HOST:PORT,... for the embedded peer "
                                   "(default 127.0.0.1:8002)."],
        ["daemon", None, "http://127.0.0.1:65002",
         "The local peer daemon's API; 'none' = always use an embedded peer."],
        ["digest", None, None, "Expected digest ALGO:HEX (sha256, sha512, md5)."],
        ["md5", None, None, "Expected MD5 (same as --digest md5:HEX)."],
        ["filter", None, None,
         "Query parameters NAME,... ignored when deriving the task id."],
        ["tag", None, "", "Text added to the task id (different tag = different task)."],
        ["limit", None, "0", "Download rate limit, bytes/s with K/M/G (embedded peer)."],
        ["timeout", None, "0", "Give up after this many seconds (0 = never)."],
        ["pattern", None, "p2p", "p2p, or source (fetch from the origin directly)."],
        ["advertise", None, None,
         "Address other peers use to reach the embedded peer (default 127.0.0.1)."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["headers"] = []

    def parseOptions(self, options=None):
        # GNU style, like wget: options may follow the URL.
        import getopt

        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(list(options), self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        ordered = []
        for opt, arg in opts:
            if opt.startswith("--"):
                takes = opt[2:] + "=" in self.longOpt
            else:
                i = self.shortOpt.find(opt[1])
                takes = i >= 0 and self.shortOpt[i + 1:i + 2] == ":"
            ordered.extend([opt, arg] if takes else [opt])
        usage.Options.parseOptions(self, ordered + ["--"] + args)

    def opt_header(self, value):
        """'Name: value' header passed to the origin (repeatable)."""
        name, sep, val = value.partition(":")
        name, val = name.strip(), val.strip()
        if not sep or not re.match(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z", name) \
                or any(c in val for c in "\r\n\0"):
            raise usage.UsageError(f"bad header {value!r} (want 'Name: value')")
        self["headers"].append((name, val))

    opt_H = opt_header

    def opt_o(self, value):
        """Output file (Dragonfly 1.x style; same as -O)."""
        self["output"] = value

    def parseArgs(self, *args):
        if len(args) > 1:
            raise usage.UsageError("one URL at a time")
        if args:
            if self["url"] is not None and self["url"] != args[0]:
                raise usage.UsageError("give the URL once (either -u URL or as the argument)")
            self["url"] = args[0]

    def postOptions(self):
        url = self["url"]
        if not url:
            raise usage.UsageError("no URL given")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc \
                or any(c in url for c in " \r\n\0"):
            raise usage.UsageError(f"not an http(s) URL: {url!r}")
        headers = {}
        for name, val in self["headers"]:
            key = next((k for k in headers if k.lower() == name.lower()), name)
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        self["header_map"] = headers
        digest = self["digest"]
        if self["md5"]:
            if digest:
                raise usage.UsageError("give --digest or --md5, not both")
            digest = f"md5:{self['md5']}"
        self["digest_spec"] = parse_digest(digest) if digest else None
        self["filters"] = [f.strip() for f in (self["filter"] or "").split(",") if f.strip()]
        if self["pattern"] not in ("p2p", "source"):
            raise usage.UsageError("--pattern must be p2p or source")
        try:
            self["limit_bps"] = parse_rate(self["limit"])
        except usage.UsageError as e:
            raise usage.UsageError(f"--limit: {e}")
        try:
            self["timeout_s"] = float(self["timeout"])
        except ValueError:
            raise usage.UsageError(f"--timeout must be a number of seconds, not {self['timeout']!r}")
        if not 0 <= self["timeout_s"] < float("inf"):
            raise usage.UsageError("--timeout must be a non-negative number of seconds")
        self["supernode_list"] = parse_hostports(self["supernodes"] or "127.0.0.1:8002")
        if not self["supernode_list"]:
            raise usage.UsageError("--supernodes: no address given")
        daemon = (self["daemon"] or "").strip()
        if daemon.lower() in ("", "none", "off"):
            self["daemon_url"] = None
        else:
            d = urlsplit(daemon)
            if d.scheme not in ("http", "https") or not d.netloc:
                raise usage.UsageError(f"--daemon must be an http URL, not {daemon!r}")
            self["daemon_url"] = daemon.rstrip("/")
        if self["advertise"] is not None and not re.match(r"\A[A-Za-z0-9_.:-]+\Z",
                                                          self["advertise"]):
            raise usage.UsageError(f"--advertise: not a host: {self['advertise']!r}")
        self["task_id"] = task_id_for_url(url, self["filters"], self["tag"] or "")


def parse_digest(spec):
    algo, sep, hexpart = spec.partition(":")
    algo = algo.strip().lower()
    hexpart = hexpart.strip().lower()
    if not sep:
        raise usage.UsageError(f"--digest must be ALGO:HEX, not {spec!r}")
    if algo not in DIGEST_ALGOS:
        raise usage.UsageError(f"--digest: unknown algorithm {algo!r} (sha256, sha512, md5)")
    if len(hexpart) != DIGEST_ALGOS[algo] or not re.match(r"\A[0-9a-f]+\Z", hexpart):
        raise usage.UsageError(f"--digest: {algo} wants {DIGEST_ALGOS[algo]} hex digits")
    return algo, hexpart


def default_output(url):
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "\0" in name:
        name = "index.html"
    return name


# ---------------------------------------------------------------------------
# Blocking helpers (they run in the runner's threads).

def _place(src, dst, algo):
    """Make the new file dst hold src's bytes; return (how, hex digest or None).

    The cheapest way that works wins, and no bytes pass through Python:
      - "reflink": a copy-on-write clone (FICLONE: btrfs, XFS, bcachefs); a
        private copy that shares the disk blocks until either side changes.
      - "link": a hard link, only to a file we own whose mode gives no more
        than a file we would create (0666 & ~umask): FILE then has the owner
        and the permissions a copy would have, and nobody else (the
        daemon's user, when dfget runs as root) can change it later.
        The store never writes to a complete task's file again and drops a
        task whose file changed (dragonfly.storage.store: the seal), so a user
        editing FILE in place costs the cache that task, never other users
        their bytes (receivers verify every piece anyway).
      - "copy": the kernel copies (sendfile).
    The digest, when asked for, is computed by reading dst back, so it covers
    the bytes FILE will hold.
    """
    with open(src, "rb") as fin:
        with open(dst, "xb") as fout:
            if _reflink(fin, fout):
                return "reflink", _digest(dst, algo)
        # Unlink + link, not link + rename over dst: ext4 (auto_da_alloc) starts
        # writing back the whole file when a rename replaces an existing one.
        os.unlink(dst)
        if _may_share(os.fstat(fin.fileno())):
            try:
                os.link(src, dst)
                return "link", _digest(dst, algo)
            except OSError:
                pass
        with open(dst, "xb") as fout:
            if hasattr(os, "sendfile"):
                _kernel_copy(fin, fout)
            else:
                _copy_sliced(fin, fout)
    return "copy", _digest(dst, algo)


def _may_share(st):
    """True if a hard link to the file of C{st} is as private as a new file."""
    return (st.st_uid == os.geteuid()
            and not stat.S_IMODE(st.st_mode) & ~(0o666 & ~_umask()))


def _umask():
    """The process umask, read without changing it (os.umask would, for all threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _STARTUP_UMASK


def _read_umask_once():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read at import (one thread then) for systems without /proc/self/status.
_STARTUP_UMASK = _read_umask_once()


def _digest(path, algo):
    return None if algo is None else _hash_file(path, algo)


#: ioctl(dst, FICLONE, src) from linux/fs.h.
_FICLONE = 0x40049409


def _reflink(fin, fout):
    """Clone fin into the empty fout (copy-on-write); False where the filesystem can't."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl
    try:
        fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
    except OSError:
        return False
    return True


def _copy_sliced(fin, fout):
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    while True:
        n = fin.readinto(buf)
        if not n:
            break
        _write_sliced(fout, view[:n])


def _write_sliced(f, data):
    view = memoryview(data).cast("B")
    for i in range(0, view.nbytes, WRITE_SLICE):
        f.write(view[i:i + WRITE_SLICE])


def _kernel_copy(fin, fout):
    # What shutil.copyfile does on Linux (sendfile), for an already-open pair.
    size = os.fstat(fin.fileno()).st_size
    offset = 0
    while offset < size:
        n = os.sendfile(fout.fileno(), fin.fileno(), offset, min(size - offset, 1 << 30))
        if n == 0:
            break
        offset += n


def _hash_file(path, algo):
    h = hashlib.new(algo)
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def _write_to(path, stream):
    with open(path, "rb") as f:
        while True:
            chunk = f.read(COPY_CHUNK)
            if not chunk:
                break
            stream.write(chunk)
    stream.flush()


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _FileSink(Protocol):
    """Writes a response body to an open file through the runner, one chunk at a time,
    pausing the transport while a write is pending; hashes as it goes."""

    def __init__(self, f, runner, algo=None, on_bytes=None):
        self._f = f
        self._runner = runner
        self._hash = hashlib.new(algo) if algo else None
        self._on_bytes = on_bytes
        self._pending = []
        self._writing = False
        self._lost = None
        self.received = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += len(data)
        if self._hash is not None:
            self._hash.update(data)
        self._pending.append(data)
        if self._on_bytes is not None:
            self._on_bytes(self.received)
        self._pump()

    def _pump(self):
        if self._writing or self.done.called:
            return
        if not self._pending:
            if self._lost is not None:
                self._finish()
            return
        data = b"".join(self._pending)
        self._pending = []
        self._writing = True
        if self._lost is None:
            self.transport.pauseProducing()
        d = self._runner.run(_write_sliced, self._f, data)

        def ok(_):
            self._writing = False
            if self._lost is None:
                self.transport.resumeProducing()
            self._pump()

        def bad(f):
            self._writing = False
            if self._lost is None:
                self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(f)
        d.addCallbacks(ok, bad)

    def connectionLost(self, reason):
        self._lost = reason
        self._pump()

    def _finish(self):
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if self._lost.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self._hash.hexdigest() if self._hash is not None else None)
        else:
            self.done.errback(self._lost)


class _LineReader(Protocol):
    """Splits an NDJSON body into parsed lines for C{on_line}."""

    def __init__(self, on_line):
        self._on_line = on_line
        self._buf = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = {"state": "failed", "error": "the peer daemon sent garbage"}
                self._on_line(obj)
        if len(self._buf) > NDJSON_LINE_MAX:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self._buf.strip():
            try:
                self._on_line(json.loads(self._buf))
            except ValueError:
                pass
        self.done.callback(None)


# ---------------------------------------------------------------------------

class Dfget:
    """One dfget run. Everything it touches is injected (tests pass fakes)."""

    log = Logger()

    def __init__(self, reactor, options, stdout=None, stderr=None, environ=None,
                 http_client=None, runner=None, isatty=None, embedded_factory=None):
        self.reactor = reactor
        self.opts = options
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.environ = environ if environ is not None else os.environ
        self._http = http_client
        self._runner = runner
        self._isatty = isatty
        self._embedded_factory = embedded_factory or self._make_embedded
        self._cleanups = []       # (callable) run at the end, in reverse
        self._temp_paths = set()  # removed on failure / interruption
        self._temp_dirs = set()
        self.bar = None
        self.result_path = None

    # -- plumbing --------------------------------------------------------------

    @property
    def runner(self):
        if self._runner is None:
            from dragonfly.threads import ThreadRunner

            self._runner = ThreadRunner(self.reactor, max_threads=2, name="dfget-io")
        return self._runner

    @property
    def http(self):
        if self._http is None:
            from twisted.web.client import HTTPConnectionPool

            from dragonfly.origin import make_http_client

            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.retryAutomatically = False
            self._cleanups.append(pool.closeCachedConnections)
            self._http = make_http_client(self.reactor, pool)
        return self._http

    def _progress(self, completed, length):
        if self.bar is not None:
            self.bar.update(completed, length)

    def _want_bar(self):
        if self.opts["quiet"]:
            return False
        if self._isatty is not None:
            return self._isatty
        try:
            return self.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def output_path(self):
        out = self.opts["output"]
        if out == "-":
            return "-"
        if not out:
            out = default_output(self.opts["url"])
        elif os.path.isdir(out):
            out = os.path.join(out, default_output(self.opts["url"]))
        return os.path.abspath(out)

    # -- the run ---------------------------------------------------------------

    async def run(self):
        out = self.output_path()
        if out != "-":
            outdir = os.path.dirname(out)
            if not os.path.isdir(outdir):
                raise DfgetError(f"output directory {outdir} does not exist")
            if not os.access(outdir, os.W_OK | os.X_OK):
                raise DfgetError(f"cannot write to {outdir}")
            if os.path.isdir(out):
                raise DfgetError(f"{out} is a directory")
        if self._want_bar():
            from dragonfly.dfget.progress import ProgressBar

            name = os.path.basename(out) if out != "-" else default_output(self.opts["url"])
            self.bar = ProgressBar(self.stderr, self.reactor, label=name[:30])
        try:
            daemon = self.opts["daemon_url"]
            if daemon is not None and await self._daemon_alive(daemon):
                self.log.info("using the peer daemon at {url}", url=daemon)
                await self._via_daemon(daemon, out)
            else:
                self.log.info("no peer daemon answered; using an embedded peer")
                await self._via_embedded(out)
            if self.bar is not None:
                self.bar.finish()
        except BaseException:
            if self.bar is not None:
                self.bar.abort()
            raise
        finally:
            await self._cleanup()
        return out

    async def _cleanup(self):
        for path in list(self._temp_paths):
            try:
                await self.runner.run(_remove, path)
            except OSError:
                pass
            self._temp_paths.discard(path)
        cleanups, self._cleanups = self._cleanups, []
        for c in reversed(cleanups):
            try:
                r = c()
                if isinstance(r, Deferred):
                    await r
            except Exception:
                self.log.failure("cleanup")
        for d in list(self._temp_dirs):
            await self.runner.run(shutil.rmtree, d, True)
            self._temp_dirs.discard(d)

    def cleanup_now(self):
        """Synchronous last-resort cleanup (reactor shutting down: Ctrl-C)."""
        for path in list(self._temp_paths):
            try:
                _remove(path)
            except OSError:
                pass
        for d in list(self._temp_dirs):
            shutil.rmtree(d, ignore_errors=True)
        self._temp_paths.clear()
        self._temp_dirs.clear()

    async def _daemon_alive(self, daemon):
        d = self.http.get(daemon + "/healthz", unbuffered=True, reactor=self.reactor)
        d.addTimeout(HEALTH_TIMEOUT, self.reactor)
        try:
            response = await d
        except Exception as e:
            self.log.debug("no daemon at {url}: {e}", url=daemon, e=e)
            return False
        try:
            body = await _limited_body(response, 64 * 1024, self.reactor, HEALTH_TIMEOUT)
        except Exception:
            return False
        if response.code != 200:
            return False
        try:
            obj = json.loads(body)
        except ValueError:
            return False
        return isinstance(obj, dict) and obj.get("status") == "ok"

    # -- through the daemon ------------------------------------------------------

    async def _via_daemon(self, daemon, out):
        o = self.opts
        body = {"url": o["url"], "headers": o["header_map"], "task_id": o["task_id"],
                "pattern": o["pattern"], "back_source": not o["no-back-source"]}
        response = await self.http.post(daemon + "/api/v1/download", json=body,
                                        unbuffered=True, reactor=self.reactor)
        if response.code != 200:
            raw = await _limited_body(response, 64 * 1024, self.reactor, 10)
            try:
                err = json.loads(raw).get("error")
            except (ValueError, AttributeError):
                err = None
            raise DfgetError(f"the peer daemon refused the download: {err or response.code}")
        final = {}

        def on_line(obj):
            if not isinstance(obj, dict):
                return
            if "state" in obj:
                final.update(obj)
            elif isinstance(obj.get("completed"), int):
                self._progress(obj["completed"], obj.get("length"))
        reader = _LineReader(on_line)
        response.deliverBody(reader)
        await reader.done
        state = final.get("state")
        if state == "failed":
            raise DfgetError(str(final.get("error") or "download failed"))
        if state != "done" or not isinstance(final.get("path"), str):
            raise DfgetError("the peer daemon hung up before the download finished")
        length = final.get("length")
        path = final["path"]
        if await self.runner.run(os.access, path, os.R_OK):
            await self._deliver_copy(path, out, length)
        else:
            self.log.info("cannot read {path}; streaming from the daemon", path=path)
            await self._deliver_stream(daemon, final.get("task_id") or o["task_id"], out, length)

    async def _deliver_copy(self, src, out, length):
        spec = self.opts["digest_spec"]
        algo = spec[0] if spec else None
        if out == "-":
            if spec:
                self._check_digest(await self.runner.run(_hash_file, src, algo))
            await self.runner.run(_write_to, src, self._stdout_binary())
            return
        tmp = self._temp_name(out)
        self._temp_paths.add(tmp)
        how, got = await self.runner.run(_place, src, tmp, algo)
        self.log.debug("{how} {src} -> {out}", how=how, src=src, out=out)
        size = await self.runner.run(os.path.getsize, tmp)
        if isinstance(length, int) and size != length:
            raise DfgetError(f"copied {size} bytes, expected {length}")
        if spec:
            self._check_digest(got)
        await self._publish(tmp, out)

    async def _deliver_stream(self, daemon, task_id, out, length):
        spec = self.opts["digest_spec"]
        algo = spec[0] if spec else None
        validate_task_id(task_id)
        response = await self.http.get(f"{daemon}/api/v1/tasks/{task_id}/data",
                                       unbuffered=True, reactor=self.reactor)
        if response.code != 200:
            raise DfgetError(f"the peer daemon would not send the data (HTTP {response.code})")
        if out == "-":
            tmpdir = await self.runner.run(tempfile.mkdtemp, prefix="dfget-",
                                           dir=self.environ.get("TMPDIR"))
            self._temp_dirs.add(tmpdir)
            tmp = os.path.join(tmpdir, "data")
        else:
            tmp = self._temp_name(out)
        self._temp_paths.add(tmp)
        f = await self.runner.run(open, tmp, "xb")
        try:
            sink = _FileSink(f, self.runner, algo)
            response.deliverBody(sink)
            got = await sink.done
        finally:
            await self.runner.run(f.close)
        if isinstance(length, int) and sink.received != length:
            raise DfgetError(f"got {sink.received} bytes from the daemon, expected {length}")
        if spec:
            self._check_digest(got)
        if out == "-":
            await self.runner.run(_write_to, tmp, self._stdout_binary())
        else:
            await self._publish(tmp, out)

    # -- embedded peer -----------------------------------------------------------

    def _make_embedded(self, data_dir):
        """(node, stop) for an embedded peer keeping its pieces in C{data_dir}."""
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        from dragonfly.interfaces import PeerInfo
        from dragonfly.metrics import PeerMetrics
        from dragonfly.origin import OriginClient
        from dragonfly.peer.node import PeerNode
        from dragonfly.protocol.client import PieceClientPool
        from dragonfly.protocol.server import PieceServerFactory
        from dragonfly.ratelimit import TokenBucket
        from dragonfly.storage.store import PieceStore
        from dragonfly.taskid import new_peer_id

        o = self.opts
        reactor = self.reactor
        advertise = o["advertise"] or self.environ.get("DFGET_ADVERTISE") or "127.0.0.1"
        limiter = TokenBucket(reactor, o["limit_bps"]) if o["limit_bps"] > 0 else None
        store = PieceStore(data_dir, clock=reactor, runner=self.runner)
        peer_id = new_peer_id()
        pool = PieceClientPool(reactor, peer_id, download_limiter=limiter)
        metrics = PeerMetrics()
        factory = PieceServerFactory(store, reactor, on_upload=metrics.upload_bytes.inc)
        interface = advertise if _is_ip(advertise) else "0.0.0.0"
        endpoint = (TCP6ServerEndpoint(reactor, 0, interface=interface) if ":" in interface
                    else TCP4ServerEndpoint(reactor, 0, interface=interface))
        origin = OriginClient(reactor, self.http, limiter, user_agent="dfget")
        node = PeerNode(reactor, store, o["supernode_list"], self.http, pool,
                        PeerInfo(peer_id, advertise, 0), metrics, self.runner,
                        origin=origin, spool_dir=data_dir)
        state = {}

        async def start():
            port = await endpoint.listen(factory)
            state["port"] = port
            node.peer_info = PeerInfo(peer_id, advertise, port.getHost().port)
            self.log.info("embedded peer {peer} serving pieces on {host}:{port}",
                          peer=peer_id, host=interface, port=port.getHost().port)

        async def stop():
            await node.shutdown()
            await factory.close(grace=1.0)
            port = state.pop("port", None)
            if port is not None:
                await port.stopListening()
            await pool.close()
            store.close()

        return node, start, stop

    async def _via_embedded(self, out):
        o = self.opts
        base = os.path.dirname(out) if out != "-" else self.environ.get("TMPDIR") or None
        data_dir = await self.runner.run(tempfile.mkdtemp, prefix=".dfget-", dir=base)
        self._temp_dirs.add(data_dir)
        node, start, stop = self._embedded_factory(data_dir)
        stopped = []

        async def stop_once():
            if not stopped:
                stopped.append(True)
                await stop()
        self._cleanups.append(lambda: Deferred.fromCoroutine(stop_once()))
        await start()
        from dragonfly.peer.node import DownloadError
        try:
            tf = await node.download(o["url"], headers=o["header_map"], task_id=o["task_id"],
                                     pattern=o["pattern"], back_source=not o["no-back-source"],
                                     on_progress=self._progress)
        except DownloadError as e:
            raise DfgetError(str(e))
        path, length = tf.path, tf.length
        # Leave the swarm and stop serving: the data file is ours to take.
        await stop_once()
        if not await self.runner.run(os.path.exists, path) and length == 0:
            await self.runner.run(lambda: open(path, "wb").close())
        spec = self.opts["digest_spec"]
        if out == "-":
            if spec:
                self._check_digest(await self.runner.run(_hash_file, path, spec[0]))
            await self.runner.run(_write_to, path, self._stdout_binary())
            return
        tmp = self._temp_name(out)
        self._temp_paths.add(tmp)
        try:
            await self.runner.run(os.rename, path, tmp)
        except OSError:
            self._temp_paths.discard(tmp)
            await self._deliver_copy(path, out, length)
            return
        size = await self.runner.run(os.path.getsize, tmp)
        if size != length:
            raise DfgetError(f"downloaded {size} bytes, expected {length}")
        if spec:
            self._check_digest(await self.runner.run(_hash_file, tmp, spec[0]))
        await self._publish(tmp, out)

    # -- output ------------------------------------------------------------------

    def _temp_name(self, out):
        return f"{out}.dfget-tmp-{os.urandom(4).hex()}"

    def _check_digest(self, got):
        algo, want = self.opts["digest_spec"]
        if got != want:
            raise DfgetError(f"{algo} digest mismatch: expected {want}, got {got}")

    async def _publish(self, tmp, out):
        await self.runner.run(os.replace, tmp, out)
        self._temp_paths.discard(tmp)
        self.result_path = out

    def _stdout_binary(self):
        return getattr(self.stdout, "buffer", self.stdout)


def _is_ip(text):
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


async def _limited_body(response, cap, clock, timeout):
    from dragonfly.origin import collect_capped

    d = collect_capped(response, cap)
    d.addTimeout(timeout, clock)
    return await d


def _one_line(text):
    text = " ".join(str(text).split())
    return text[:500]


def describe(failure):
    v = failure.value
    if isinstance(v, DfgetError):
        return str(v)
    if isinstance(v, (TimeoutError, CancelledError)):
        return "timed out"
    reasons = getattr(v, "reasons", None)
    if reasons:
        return "; ".join(describe(r) if isinstance(r, Failure) else str(r) for r in reasons)
    text = str(v)
    return f"{type(v).__name__}: {text}" if text else type(v).__name__


async def _main(reactor, argv, stdout, stderr, environ, **kw):
    opts = DfgetOptions()
    try:
        opts.parseOptions(argv)
    except BrokenPipeError:
        raise SystemExit(EXIT_OK)  # --help piped into head
    except usage.UsageError as e:
        stderr.write(f"dfget: error: {_one_line(e)}\n")
        stderr.write("Try 'dfget --help' for more information.\n")
        raise SystemExit(EXIT_USAGE)
    if opts["verbose"] and kw.pop("setup_logging", True):
        from twisted.logger import globalLogBeginner

        from dragonfly.logsetup import make_observer
        globalLogBeginner.beginLoggingTo([make_observer("text", stderr, "debug")],
                                         redirectStandardIO=False)
    else:
        kw.pop("setup_logging", None)
    job = Dfget(reactor, opts, stdout=stdout, stderr=stderr, environ=environ, **kw)
    interrupted = []

    def on_shutdown():
        if not done.called:
            interrupted.append(True)
            _interrupted.append(True)
            job.cleanup_now()
            done.cancel()
    done = Deferred.fromCoroutine(job.run())
    timeout = opts["timeout_s"]
    if timeout:
        done.addTimeout(timeout, reactor)
    trigger = None
    if hasattr(reactor, "addSystemEventTrigger"):
        trigger = reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        await done
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        f = Failure()
        if interrupted:
            msg, code = "interrupted", EXIT_INTERRUPTED
        elif f.check(TimeoutError, CancelledError) and timeout:
            msg, code = f"timed out after {timeout:g} seconds", EXIT_FAILED
        else:
            msg = describe(f)
            code = e.code if isinstance(e, DfgetError) else EXIT_FAILED
            if not isinstance(e, (DfgetError,)):
                Logger().failure("dfget failed", f)
        try:
            stderr.write(f"dfget: error: {_one_line(msg)}\n")
            stderr.flush()
        except Exception:
            pass
        raise SystemExit(code)
    finally:
        if trigger is not None:
            reactor.removeSystemEventTrigger(trigger)
    return EXIT_OK


def main(reactor, argv, stdout=None, stderr=None, environ=None, **kw):
    """dfget as a react() main: C{main(reactor, argv)} -> Deferred."""
    return Deferred.fromCoroutine(_main(
        reactor, list(argv), stdout if stdout is not None else sys.stdout,
        stderr if stderr is not None else sys.stderr,
        environ if environ is not None else os.environ, **kw))


_interrupted = []


def run():
    """Console entry point."""
    from twisted.internet.task import react

    try:
        react(main, [sys.argv[1:]])
    except SystemExit as e:
        if _interrupted and not e.code:
            sys.exit(EXIT_INTERRUPTED)
        raise


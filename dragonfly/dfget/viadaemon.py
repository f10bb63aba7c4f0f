"""dfget through the local peer daemon, on the standard library only.

The daemon does the download; dfget asks for it, shows progress and puts the
result in place. That is three loopback HTTP calls and some file work, so
this path uses blocking C{http.client} in a process that has no reactor:
importing Twisted would cost more (~0.25 s) than the rest of a warm 1 GiB
run's client side. When no daemon answers, L{dragonfly.dfget.cli} falls
back to the embedded peer (L{dragonfly.dfget.embedded}), which is Twisted.

  1. C{GET /healthz} (about a second at most): is a daemon there?
  2. C{POST /api/v1/download} (with C{"limit"} for C{--limit}: the daemon
     paces the download): NDJSON progress lines, then
     C{{"state": "done", "path", "length", "task_id"}} or C{{"state": "failed", "error"}}.
  3. The daemon's file becomes FILE (L{files.place}: reflink, hard link, or
     copy) when L{daemontrust} vouches for it (inside the daemon's data
     directory, a regular file owned by the user behind the daemon's socket:
     the owner of its end of a loopback TCP connection, or the peer
     credentials of a unix socket, C{--daemon-socket});
     otherwise, or where dfget cannot read that file,
     C{GET /api/v1/tasks/<id>/data} streams it instead. An existing FILE
     keeps its mode. When the daemon's cache is full it says
     C{{"uncached": true, "task_id", "length", "grant"}} during the download:
     dfget then streams C{/data} at once (the daemon keeps no copy), and the
     final line is C{{"state": "done", "uncached": true, ...}} without a path.
"""
import hashlib
import http.client
import json
import os
import socket
import tempfile
import time
from urllib.parse import urlsplit

from dragonfly.dfget import daemontrust, files
from dragonfly.dfget.options import DfgetError, default_output
from dragonfly.dfget.progress import ProgressBar
from dragonfly.taskid import validate_task_id

__all__ = ["DaemonClient", "download", "HEALTH_TIMEOUT"]

HEALTH_TIMEOUT = 1.0
#: Longest NDJSON line or error body read from the daemon.
LINE_MAX = 64 * 1024
#: Seconds to wait for the daemon while it is not downloading (connect, answer).
CALL_TIMEOUT = 30.0
READ_CHUNK = 1 << 20


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the unix socket C{path}; the Host header says C{localhost}
    (the local API serves loopback names only, on a socket too)."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    """The peer daemon's API at C{url} (http or https), or on the unix socket
    C{socket_path} when given; one connection per call."""

    def __init__(self, url, socket_path=None):
        self.socket_path = socket_path
        if socket_path is not None:
            self.https = False
            self.host, self.port, self.prefix = "localhost", None, ""
            self.url = f"unix:{socket_path}"
            self.daemon_uid = None
            return
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        try:
            port = parts.port
        except ValueError:
            raise DfgetError(f"--daemon: bad port in {url!r}")
        self.host = parts.hostname or ""
        self.port = port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.url = url
        #: The uid behind the last download call's connection (None: unknown).
        self.daemon_uid = None

    def _connect(self, timeout):
        if self.socket_path is not None:
            return _UnixHTTPConnection(self.socket_path, timeout)
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _request(self, method, path, body=None, timeout=CALL_TIMEOUT, grant=None):
        """(connection, socket, response) once the status line and headers are in."""
        conn = self._connect(timeout)
        headers = {"User-Agent": "dfget"}
        if isinstance(grant, str) and grant.isprintable() and len(grant) < 200:
            headers["X-Dragonfly-Grant"] = grant
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()
            sock = conn.sock  # the response reads from it even after conn lets go
            conn.request(method, self.prefix + path, body=data, headers=headers)
            return conn, sock, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def alive(self, timeout=None):
        """True if C{GET /healthz} says C{{"status": "ok"}} (or C{"degraded"}) within
        about C{timeout} (default L{HEALTH_TIMEOUT}) seconds."""
        if timeout is None:
            timeout = HEALTH_TIMEOUT
        try:
            conn, _, response = self._request("GET", "/healthz", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return False
        try:
            body = response.read(LINE_MAX)
            obj = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()
        return (response.status == 200 and isinstance(obj, dict)
                and obj.get("status") in ("ok", "degraded"))

    def download(self, body, on_progress, on_uncached=lambda obj: None):
        """Run C{POST /api/v1/download}; return its final line (a dict with "state").
        C{on_uncached(line)} runs when the daemon passes the file through."""
        try:
            conn, sock, response = self._request("POST", "/api/v1/download", body)
        except (OSError, http.client.HTTPException) as e:
            raise DfgetError(f"cannot reach the peer daemon at {self.url}: {_reason(e)}")
        self.daemon_uid = daemontrust.connection_uid(sock)
        try:
            if response.status != 200:
                error = _error_of(response)
                if response.status == 403 and error and _egress_refusal(error):
                    raise DfgetError(error)   # the egress policy's own line
                raise DfgetError("the peer daemon refused the download: "
                                 f"{error or response.status}")
            # The download may take any time; --timeout bounds the whole run.
            sock.settimeout(None)
            return _final_line(response, on_progress, on_uncached)
        finally:
            conn.close()

    def corrupt(self, task_id, reason):
        """Tell the daemon its copy of C{task_id} failed our digest check (best effort)."""
        try:
            validate_task_id(task_id)
            conn, _, response = self._request("POST", f"/api/v1/tasks/{task_id}/corrupt",
                                              {"reason": reason})
        except (ValueError, OSError, http.client.HTTPException):
            return
        conn.close()

    def data(self, task_id, grant=None):
        """(connection, response) streaming the bytes of a task the daemon holds
        (C{grant}: from the download answer, for a private task)."""
        try:
            validate_task_id(task_id)
        except ValueError:
            raise DfgetError(f"the peer daemon named a malformed task id {task_id!r}")
        try:
            conn, _, response = self._request("GET", f"/api/v1/tasks/{task_id}/data",
                                              grant=grant)
        except (OSError, http.client.HTTPException) as e:
            raise DfgetError(f"cannot reach the peer daemon at {self.url}: {_reason(e)}")
        if response.status != 200:
            conn.close()
            raise DfgetError(f"the peer daemon would not send the data (HTTP {response.status})")
        return conn, response


def _final_line(response, on_progress, on_uncached=lambda obj: None):
    final = {}
    while "state" not in final:
        try:
            line = response.readline(LINE_MAX + 1)
        except (OSError, http.client.HTTPException):
            line = b""
        if not line:
            break
        if len(line) > LINE_MAX:
            raise DfgetError("the peer daemon sent a line over 64 KiB")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = {"state": "failed", "error": "the peer daemon sent garbage"}
        if not isinstance(obj, dict):
            continue
        if "state" in obj:
            final = obj
        elif isinstance(obj.get("completed"), int):
            on_progress(obj["completed"], obj.get("length"))
        elif obj.get("uncached") is True:
            on_uncached(obj)
    return final


def _egress_refusal(error):
    """Is C{error} the daemon's egress policy refusing the origin? (The egress
    module, with its dataclass, is imported only then: dfget's start-up.)"""
    from dragonfly.egress import REFUSAL_PREFIX
    return error.startswith(REFUSAL_PREFIX)


def _error_of(response):
    try:
        err = json.loads(response.read(LINE_MAX)).get("error")
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    return str(err) if err else None


def _reason(e):
    text = getattr(e, "strerror", None) or str(e)
    return text or type(e).__name__


class _Monotonic:
    """The clock L{ProgressBar} wants, without a reactor."""

    @staticmethod
    def seconds():
        return time.monotonic()


def download(opts, out, client, stdout, stderr, isatty, log=lambda msg: None):
    """Download C{opts["url"]} through the daemon behind C{client} into C{out}.

    Raises L{DfgetError} (or anything else) on failure, having removed every
    temporary file; FILE then is as it was before.
    """
    job = _Job(opts, client, stdout, log)
    bar = None
    if not opts["quiet"] and isatty:
        name = os.path.basename(out) if out != "-" else default_output(opts["url"])
        bar = ProgressBar(stderr, _Monotonic, label=name[:30])
        job.on_progress = bar.update
    try:
        job.run(out)
        if bar is not None:
            bar.finish()
    except BaseException:
        if bar is not None:
            bar.abort()
        raise
    finally:
        job.cleanup()


class _Job:

    def __init__(self, opts, client, stdout, log):
        self.opts = opts
        self.client = client
        self.stdout = stdout
        self.log = log
        self.on_progress = lambda completed, length: None
        self.temp_paths = set()
        self.temp_dirs = set()
        self.spec = opts["digest_spec"]
        self.algo = self.spec[0] if self.spec else None
        self.streamed = False   # delivered through /data while the daemon passed it through

    def run(self, out):
        try:
            self.run_once(out)
        except files.ContentMismatch as e:
            # The daemon dropped its wrong copy (see run_once): one more pull
            # fetches the file again through the swarm.
            self.log(f"the peer daemon's copy failed the digest check ({e}); downloading again")
            files.remove_temps(self.temp_paths, self.temp_dirs)
            self.run_once(out)

    def run_once(self, out):
        o = self.opts
        body = {"url": o["url"], "headers": o["header_map"], "task_id": o["task_id"],
                "pattern": o["pattern"], "back_source": not o["no-back-source"]}
        if o.get("limit_bps"):
            body["limit"] = o["limit_bps"]      # the daemon paces this download
        for key, value in (("filter", o["filters"]), ("tag", o["tag"]),
                           ("digest", o["content_digest"])):
            if value:
                body[key] = value
        self.log(f"asking the peer daemon at {self.client.url} for {o['url']}")
        self.streamed = False
        final = self.client.download(body, self.on_progress,
                                     lambda obj: self.pass_through(obj, out))
        state = final.get("state")
        if state == "failed":
            raise DfgetError(str(final.get("error") or "download failed"))
        if state == "done" and final.get("uncached") is True:
            if not self.streamed:
                self.pass_through(final, out)
            return
        if state != "done" or not isinstance(final.get("path"), str):
            raise DfgetError("the peer daemon hung up before the download finished")
        length = final.get("length")
        task_id = final.get("task_id") or o["task_id"]
        path, why = daemontrust.trusted_file(final["path"], final.get("data_dir"),
                                             self.client.daemon_uid)
        if path is not None and not os.access(path, os.R_OK):
            path, why = None, f"cannot read {final['path']}"
        try:
            if path is not None:
                self.deliver_copy(path, out, length)
            else:
                self.log(f"{why}; streaming from the daemon")
                self.deliver_stream(task_id, out, length, final.get("grant"))
        except files.ContentMismatch as e:
            # The daemon's copy is wrong: it drops it and tells its supernode,
            # so the next pull fetches the file again.
            self.client.corrupt(task_id, str(e))
            raise

    def pass_through(self, obj, out):
        """The daemon's cache is full: stream the file from it now (it keeps no copy)."""
        if self.streamed:
            return
        self.streamed = True
        task_id = obj.get("task_id") or self.opts["task_id"]
        self.log("the peer daemon's cache is full: streaming without caching")
        try:
            self.deliver_stream(task_id, out, obj.get("length"), obj.get("grant"))
        except files.ContentMismatch as e:
            self.client.corrupt(task_id, str(e))
            raise

    def deliver_copy(self, src, out, length):
        if out == "-":
            if self.algo:
                files.check_digest(self.spec, files.hash_file(src, self.algo))
            files.write_to(src, self.stdout)
            return
        tmp = self.new_temp(out)
        how, got = files.place(src, tmp, self.algo, mode=files.existing_mode(out))
        self.log(f"{how} {src} -> {out}")
        size = os.path.getsize(tmp)
        if isinstance(length, int) and size != length:
            raise DfgetError(f"copied {size} bytes, expected {length}")
        if self.algo:
            files.check_digest(self.spec, got)
        self.publish(tmp, out)

    def deliver_stream(self, task_id, out, length, grant=None):
        if out == "-":
            tmpdir = tempfile.mkdtemp(prefix="dfget-")
            self.temp_dirs.add(tmpdir)
            tmp = os.path.join(tmpdir, "data")
            self.temp_paths.add(tmp)
        else:
            tmp = self.new_temp(out)
        conn, response = self.client.data(task_id, grant)
        h = hashlib.new(self.algo) if self.algo else None
        received = 0
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        try:
            with open(tmp, "xb") as f:
                while True:
                    try:
                        n = response.readinto(buf)
                    except (OSError, http.client.HTTPException) as e:
                        raise DfgetError(f"the peer daemon stopped sending: {_reason(e)}")
                    if not n:
                        break
                    received += n
                    if h is not None:
                        h.update(view[:n])
                    files.write_sliced(f, view[:n])
        finally:
            conn.close()
        if isinstance(length, int) and received != length:
            raise DfgetError(f"got {received} bytes from the daemon, expected {length}")
        if h is not None:
            files.check_digest(self.spec, h.hexdigest())
        if out == "-":
            files.write_to(tmp, self.stdout)
        else:
            self.publish(tmp, out)

    def new_temp(self, out):
        tmp = files.temp_name(out)
        self.temp_paths.add(tmp)
        return tmp

    def publish(self, tmp, out):
        files.publish(tmp, out)
        self.temp_paths.discard(tmp)

    def cleanup(self):
        files.remove_temps(self.temp_paths, self.temp_dirs)

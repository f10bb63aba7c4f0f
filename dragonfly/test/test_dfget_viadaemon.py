"""dfget.viadaemon: the daemon path (standard library, no reactor) against a real
PeerAPI and against scripted daemons over loopback sockets, and what is left on
disk on success and failure."""
import hashlib
import json
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.server import NOT_DONE_YET

from dragonfly.dfget import cli, files, viadaemon
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.api import PeerAPI
from dragonfly.peer.node import NodeDeps, PeerNode
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore
from dragonfly.taskid import task_id_for_url
from dragonfly.test import short_dir
from dragonfly.test.dfgetsupport import (
    DATA, SHA, RunMixin, _hold, _ndjson, _Scripted, _serve)
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_peer_node import ME, PIECE, URL, _Hosts

MD5 = hashlib.md5(DATA).hexdigest()


class _Daemon:
    """A real PeerAPI + PeerNode over fakes."""

    def __init__(self, case, data=DATA):
        self.clock = Clock()
        self.store = PieceStore(case.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(data, PIECE)
        self.origin = FakeOrigin(data)
        self.node = PeerNode(NodeDeps(self.clock, self.store,
                                      _Hosts({"sn.test:8002": self.supernode}),
                                      FakePiecePool(data, PIECE), PeerMetrics(), SyncRunner(),
                                      origin=self.origin),
                             [("sn.test", 8002)], ME)
        self.api = PeerAPI(self.node, self.store, PeerMetrics(), self.clock)
        self.http = StubTreq(self.api.resource())


class DaemonMixin(RunMixin):
    """cli.main in a thread (it blocks), the daemon served by the test's reactor."""

    def setUp(self):
        RunMixin.setUp(self)
        self.embedded_runs = []
        self.embedded_timeouts = []

    def no_embedded(self, opts, out, timeout):
        self.embedded_runs.append(out)
        self.embedded_timeouts.append(timeout)
        self.stderr.write("dfget: error: embedded peer\n")
        return 1

    def run_dfget(self, daemon_url, *argv, isatty=False):
        return deferToThread(cli.main, list(argv) + ["--daemon", daemon_url],
                             stdout=self.stdout, stderr=self.stderr, isatty=isatty,
                             signals=False, embedded=self.no_embedded)

    async def ok(self, daemon, *argv, **kw):
        self.check_ok(await self.run_dfget(daemon, *argv, **kw))

    async def fails(self, daemon, *argv, **kw):
        return self.check_fails(await self.run_dfget(daemon, *argv, **kw))


class DaemonTests(DaemonMixin, TestCase):

    async def test_download_via_daemon(self):
        """With a daemon answering, the file is copied from its store, verified and
        renamed into place; nothing else is left in the output directory."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out, "--digest", "sha256:" + SHA)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])
        self.assertEqual(len(daemon.supernode.registrations), 1)

    async def test_output_linked_to_store(self):
        """On the store's filesystem the output is a hard link to the store's
        file (or a reflink): no bytes are copied."""
        self.patch(files, "_reflink", lambda fin, fout: False)   # whatever /tmp is
        self.patch(files, "_umask", lambda: 0o022)   # the store's 0644 is then no wider
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertTrue(os.path.samefile(self.out, task.path))
        self.assertEqual(self.listing(), ["file.bin"])

    async def test_edited_output_not_served_again(self):
        """Editing a linked output in place costs the store that task: the next
        dfget downloads it again instead of handing out the edited bytes."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(files, "_umask", lambda: 0o022)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        with open(self.out, "r+b") as f:
            f.write(b"EDITED")
        os.utime(self.out, ns=(0, 0))   # coarse kernel clocks may not tick in a test
        second = os.path.join(self.dir, "again.bin")
        await self.ok(url, URL, "-O", second)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(len(daemon.supernode.registrations), 2)

    async def test_copy_when_link_refused(self):
        """Where the kernel refuses the link (another filesystem, protected_hardlinks),
        the output is a copy."""
        
        def refuse(src, dst):
            raise PermissionError(1, "Operation not permitted")
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(os, "link", refuse)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out, "--digest", "sha256:" + SHA)
        task = daemon.store.get("sha256:" + SHA)   # a sha256 --digest names the task
        self.assertFalse(os.path.samefile(self.out, task.path))
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])

    async def test_copy_when_link_would_be_less_private(self):
        """A store file readable by others is copied, not linked, for a user
        whose umask makes new files private (077): FILE gets that user's mode."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(files, "_umask", lambda: 0o077)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)

    async def test_copy_when_not_the_owner(self):
        """A store file owned by another user (dfget run by root, the daemon by
        its own user) is copied: FILE must not stay writable by the daemon's user."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        uid = os.geteuid()
        self.patch(os, "geteuid", lambda: uid + 1)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))

    async def test_output_directory(self):
        """-O DIR puts the URL's basename in DIR."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.dir)
        self.assertEqual(self.listing(), ["blob.bin"])

    async def test_digest_mismatch_leaves_nothing(self):
        """When the digest does not match, dfget fails with one line and neither the
        output file nor a temporary file is left."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        line = await self.fails(url, URL, "-O", self.out, "--md5", "0" * 32)
        self.assertIn("md5 digest mismatch", line)
        self.assertEqual(self.listing(), [])

    async def test_digest_mismatch_drops_daemon_copy(self):
        """A daemon copy that fails --digest is dropped by the daemon and reported
        to its supernode; dfget pulls once more, gets the file afresh and
        succeeds with the right bytes."""
        from dragonfly.taskid import task_id_for_url
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        tid = task_id_for_url(URL)
        path = daemon.store.get(tid).path
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.write(b"\xff" * 8)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))   # the seal cannot tell
        second = os.path.join(self.dir, "again.bin")
        await self.ok(url, URL, "-O", second, "--md5", MD5)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual([t for t, _ in daemon.supernode.corrupt_reports], [tid])
        self.assertIn("md5 digest mismatch", daemon.supernode.corrupt_reports[0][1]["reason"])
        self.assertEqual(len(daemon.supernode.registrations), 2)

    async def test_existing_file_kept_on_failure(self):
        """A failed download leaves an existing FILE as it was."""
        with open(self.out, "wb") as f:
            f.write(b"old")
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.fails(url, URL, "-O", self.out, "--md5", "0" * 32)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(self.listing(), ["file.bin"])

    async def test_daemon_reports_failure(self):
        """When the daemon's download fails, dfget prints its reason on one line."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        daemon.supernode.register_answer = (502, {"error": "origin answered 404",
                                                  "origin_status": 404})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: origin answered 404")
        self.assertEqual(self.listing(), [])

    async def test_passes_options_to_daemon(self):
        """Headers, pattern, back-source and the task id reach the daemon."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out, "-H", "X-K: v", "--pattern", "source",
                "--tag", "t")
        self.assertEqual(daemon.origin.calls, [(URL, {"X-K": "v"}, 0)])
        self.assertIsNotNone(daemon.store.get(task_id_for_url(URL, [], "t")))

    async def test_limit_sent_to_daemon(self):
        """--limit reaches the daemon as the request's "limit" (bytes/s);
        without it the request carries none."""
        daemon = _Daemon(self)
        limits = []
        real = daemon.node.download

        def download(*a, **kw):     # (this daemon's clock stands still: no pacing here)
            limits.append(kw.pop("limit", None))
            return real(*a, **kw)
        daemon.node.download = download
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out, "--limit", "2M")
        await self.ok(url, URL, "-O", self.out + ".2")
        self.assertEqual(limits, [2 * 1024 * 1024, 0])

    async def test_no_back_source(self):
        """--no-back-source reaches the daemon: no supernode means failure."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        daemon.supernode.register_answer = (503, {"error": "down"})
        line = await self.fails(url, URL, "-O", self.out, "--no-back-source")
        self.assertIn("back-to-source is disabled", line)
        self.assertEqual(daemon.origin.calls, [])

    async def test_stdout(self):
        """-O - writes the verified bytes to stdout and no file."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", "-", "--digest", "sha256:" + SHA)
        self.assertEqual(self.stdout.getvalue(), DATA)
        self.assertEqual(self.listing(), [])

    async def test_unreadable_path_streams(self):
        """When the daemon's data path cannot be read, dfget streams the task's bytes
        from the daemon instead."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        self.patch(os, "access", lambda path, mode: False if "file.bin" not in path
                   and mode == os.R_OK else True)
        await self.ok(url, URL, "-O", self.out, "--digest", "sha256:" + SHA)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])


class ScriptedDaemonTests(DaemonMixin, TestCase):
    """The daemon path against daemons that misbehave."""

    def serve(self, **routes):
        self.daemon = _Scripted({k.replace("_", "/"): v for k, v in routes.items()})
        self.addCleanup(self.daemon.drain)
        return _serve(self, self.daemon)

    async def test_no_daemon_runs_embedded(self):
        """Nothing listening at --daemon: the embedded peer runs, with no time
        limit when no --timeout was given, and with what is left of --timeout
        (the daemon check took almost none of it) when one was."""
        from dragonfly.test.integration.harness import refused_url
        url = refused_url()     # refused for as long as this process runs
        code = await self.run_dfget(url, URL, "-O", self.out)
        self.assertEqual(code, 1)
        self.assertEqual(self.embedded_runs, [self.out])
        self.assertEqual(self.embedded_timeouts, [None])
        await self.run_dfget(url, URL, "-O", self.out, "--timeout", "600")
        self.assertEqual(self.embedded_runs, [self.out, self.out])
        left = self.embedded_timeouts[1]
        self.assertIsInstance(left, float)
        self.assertTrue(540 < left <= 600, left)

    async def test_unhealthy_daemon_runs_embedded(self):
        """A /healthz that is not 200 with {"status": "ok"} means no daemon."""
        for answer in (b'{"status": "starting"}', b"garbage", b"[]"):
            url = self.serve(**{"/healthz": lambda r, a=answer: a})
            self.embedded_runs.clear()
            await self.run_dfget(url, URL, "-O", self.out)
            self.assertEqual(self.embedded_runs, [self.out])
            self.assertNotIn("/api/v1/download", self.daemon.paths)

        def unavailable(request):
            request.setResponseCode(503)
            return b'{"status": "ok"}'
        url = self.serve(**{"/healthz": unavailable})
        await self.run_dfget(url, URL, "-O", self.out)
        self.assertEqual(len(self.embedded_runs), 2)

    async def test_silent_daemon_runs_embedded(self):
        """A daemon that accepts but never answers /healthz is given up on after
        HEALTH_TIMEOUT."""
        self.patch(viadaemon, "HEALTH_TIMEOUT", 0.2)
        url = self.serve(**{"/healthz": _hold})
        await self.run_dfget(url, URL, "-O", self.out)
        self.assertEqual(self.embedded_runs, [self.out])

    async def test_refused(self):
        """A 4xx answer to the download is reported with the daemon's reason."""
        def refuse(request):
            request.setResponseCode(400)
            return b'{"error": "url must be http(s)"}'
        url = self.serve(**{"/api/v1/download": refuse})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: the peer daemon refused the download: "
                               "url must be http(s)")
        self.assertEqual(self.listing(), [])

    def forbid(self, error):
        def refuse(request):
            request.setResponseCode(403)
            return json.dumps({"error": error}).encode()
        return self.serve(**{"/api/v1/download": refuse})

    async def test_origin_refused(self):
        """A 403 whose error is the egress policy's own line is printed as it is."""
        line = await self.fails(self.forbid("origin not allowed: h:80"), URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: origin not allowed: h:80")
        self.assertEqual(self.listing(), [])

    async def test_forbidden(self):
        """Another 403 is the daemon refusing the download."""
        line = await self.fails(self.forbid("forbidden"), URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: the peer daemon refused the download: forbidden")

    async def test_garbage(self):
        """A line that is not JSON fails the download."""
        url = self.serve(**{"/api/v1/download": lambda r: b"<html>\n"})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: the peer daemon sent garbage")

    async def test_hangup_before_done(self):
        """Progress lines and then the end of the stream: not a success."""
        def partial(request):
            return _ndjson({"completed": 10, "length": 1000})
        url = self.serve(**{"/api/v1/download": partial})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertIn("hung up before the download finished", line)
        self.assertEqual(self.listing(), [])

    async def test_overlong_line(self):
        """A line over 64 KiB is refused, not buffered without bound."""
        url = self.serve(**{"/api/v1/download": lambda r: b"x" * (80 * 1024)})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertIn("over 64 KiB", line)

    async def test_daemon_failure_state(self):
        """{"state": "failed"} is reported with its error."""
        url = self.serve(**{"/api/v1/download": lambda r: _ndjson(
            {"completed": 0, "length": 5}, {"state": "failed", "error": "origin answered 404"})})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: origin answered 404")

    async def test_short_stream(self):
        """Where the daemon's file cannot be read and its stream ends early, nothing
        is left behind."""
        task_id = task_id_for_url(URL)

        def done(request):
            return _ndjson({"state": "done", "path": "/nonexistent/x", "length": 1000,
                            "task_id": task_id})

        def short(request):
            request.setHeader(b"content-length", b"1000")
            request.write(DATA[:400])
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        url = self.serve(**{"/api/v1/download": done, "/api/v1/tasks/": short})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: got 400 bytes from the daemon, expected 1000")
        self.assertEqual(self.listing(), [])
        self.assertIn(f"/api/v1/tasks/{task_id}/data", self.daemon.paths)

    async def test_uncached_streams_data(self):
        """When the daemon says it passes the file through ("uncached": its cache
        is full), dfget streams /data at once, says so with -v, and the final
        line without a path is a success."""
        task_id = task_id_for_url(URL)

        def download(request):
            return _ndjson({"completed": 0, "length": len(DATA)},
                           {"uncached": True, "task_id": task_id, "length": len(DATA)},
                           {"completed": len(DATA), "length": len(DATA)},
                           {"state": "done", "uncached": True, "length": len(DATA),
                            "task_id": task_id})

        def data(request):
            request.setHeader(b"content-length", b"%d" % len(DATA))
            return DATA
        url = self.serve(**{"/api/v1/download": download, "/api/v1/tasks/": data})
        code = await self.run_dfget(url, URL, "-O", self.out, "-v", "--digest", "sha256:" + SHA)
        self.assertEqual(code, 0, self.stderr.getvalue())
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.daemon.paths.count(f"/api/v1/tasks/{task_id}/data"), 1)
        self.assertEqual(self.stderr.getvalue().count("streaming without caching"), 1)
        self.assertEqual(self.listing(), [os.path.basename(self.out)])

    async def test_bad_task_id_not_requested(self):
        """A malformed task id from the daemon never becomes a request path."""
        url = self.serve(**{"/api/v1/download": lambda r: _ndjson(
            {"state": "done", "path": "/nonexistent/x", "length": 3, "task_id": "../x"})})
        line = await self.fails(url, URL, "-O", self.out)
        self.assertEqual(line, "dfget: error: the peer daemon named a malformed task id '../x'")
        self.assertEqual([p for p in self.daemon.paths if "tasks" in p], [])
        self.assertEqual(self.listing(), [])

    async def test_progress_bar_only_on_tty(self):
        """A progress bar on stderr when it is a terminal (unless -q)."""
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        self.check_ok(await self.run_dfget(url, URL, "-O", self.out, "-q", isatty=True))
        code = await self.run_dfget(url, URL, "-O", self.out + "2", isatty=True)
        self.assertEqual(code, 0)
        self.assertIn("100%", self.stderr.getvalue())


class UnixSocketTests(DaemonMixin, TestCase):
    """--daemon-socket: the daemon's API on a unix socket (its --api-socket)."""

    def serve_unix(self, resource):
        from twisted.internet import reactor
        from twisted.web.server import Site
        path = os.path.join(short_dir(self), "api.sock")
        port = reactor.listenUNIX(path, Site(resource), mode=0o600)
        self.addCleanup(port.stopListening)
        return path

    async def test_download_through_the_socket(self):
        """With --daemon-socket the download goes through the socket (the TCP
        --daemon URL answers nothing), and the daemon's uid, known from the
        socket's peer credentials, lets dfget link the store's file."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(files, "_umask", lambda: 0o022)
        daemon = _Daemon(self)
        path = self.serve_unix(daemon.api.resource())
        code = await deferToThread(
            cli.main, [URL, "-O", self.out, "--daemon-socket", path,
                       "--daemon", "http://127.0.0.1:1"],
            stdout=self.stdout, stderr=self.stderr, isatty=False, signals=False,
            embedded=self.no_embedded)
        self.check_ok(code)
        self.assertEqual(self.embedded_runs, [])
        task = daemon.store.get(task_id_for_url(URL))
        self.assertTrue(os.path.samefile(self.out, task.path))

    async def test_client_sends_a_loopback_host(self):
        """Over the socket the client says Host: localhost, so the API's
        loopback rule serves it; the peer uid is ours."""
        daemon = _Daemon(self)
        path = self.serve_unix(daemon.api.resource())
        client = viadaemon.DaemonClient(None, socket_path=path)
        self.assertEqual(client.url, "unix:" + path)
        self.assertTrue(await deferToThread(client.alive))
        final = await deferToThread(
            client.download, {"url": URL, "task_id": task_id_for_url(URL), "headers": {}},
            lambda done, length: None)
        self.assertEqual(final["state"], "done")
        self.assertEqual(client.daemon_uid, os.getuid())

    async def test_missing_socket_falls_back_to_embedded(self):
        """A socket nobody listens on is like a daemon that does not answer:
        dfget uses its embedded peer."""
        path = os.path.join(short_dir(self), "none.sock")
        code = await deferToThread(
            cli.main, [URL, "-O", self.out, "--daemon-socket", path],
            stdout=self.stdout, stderr=self.stderr, isatty=False, signals=False,
            embedded=self.no_embedded)
        self.assertEqual(code, 1)
        self.assertEqual(self.embedded_runs, [self.out])

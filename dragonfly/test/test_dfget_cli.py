"""dfget: option parsing; the daemon path (standard library, no reactor) against a
real PeerAPI and against scripted daemons over loopback sockets; the embedded path
(an injected PeerNode over fakes); signals and --timeout in a real dfget process;
and what is left on disk on success and failure."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys

from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from dragonfly.dfget import cli, embedded, files, viadaemon
from dragonfly.dfget.options import DfgetError, OptionsError, ShowText, default_output, parse
from dragonfly.dfget.progress import ProgressBar
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.api import PeerAPI
from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
from dragonfly.storage.store import PieceStore
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_peer_node import ME, PIECE, URL, _Hosts
from dragonfly.runtime.threads import SyncRunner

DATA = b"dragonfly!" * 100  # 1000 bytes
SHA = hashlib.sha256(DATA).hexdigest()


class OptionTests(SynchronousTestCase):

    def test_url_argument_and_options_after_it(self):
        """The URL may come first or last; options after it still count (GNU style)."""
        o = parse([URL, "-O", "/tmp/x", "--tag", "t", "-q"])
        self.assertEqual(o["url"], URL)
        self.assertEqual(o["output"], "/tmp/x")
        self.assertTrue(o["quiet"])
        self.assertEqual(o["task_id"], task_id_for_url(URL, [], "t"))

    def test_defaults(self):
        """Without options: the default daemon, p2p, no digest, no limit, no timeout."""
        o = parse([URL])
        self.assertEqual(o["daemon_url"], "http://127.0.0.1:65002")
        self.assertEqual((o["pattern"], o["digest_spec"], o["limit_bps"], o["timeout_s"]),
                         ("p2p", None, 0, 0.0))
        self.assertEqual(o["supernode_list"], [("127.0.0.1", 8002)])
        self.assertFalse(o["quiet"] or o["verbose"] or o["no-back-source"])
        self.assertIsNone(parse([URL, "--daemon", "none"])["daemon_url"])

    def test_dragonfly1_style(self):
        """dfget -u URL -o FILE works like dfget URL -O FILE."""
        o = parse(["-u", URL, "-o", "out.bin"])
        self.assertEqual((o["url"], o["output"]), (URL, "out.bin"))

    def test_headers_repeat(self):
        """-H may repeat; the same header twice is joined with a comma."""
        o = parse([URL, "-H", "Authorization: Bearer x", "--header", "X-A: 1", "-H", "x-a: 2"])
        self.assertEqual(o["header_map"], {"Authorization": "Bearer x", "X-A": "1, 2"})

    def test_digests(self):
        """--digest ALGO:HEX accepts sha256/sha512/md5; --md5 HEX is an alias."""
        self.assertEqual(parse([URL, "--digest", "SHA256:" + SHA.upper()])["digest_spec"],
                         ("sha256", SHA))
        self.assertEqual(parse([URL, "--md5", "a" * 32])["digest_spec"], ("md5", "a" * 32))
        self.assertEqual(parse([URL, "--digest", "sha512:" + "b" * 128])["digest_spec"][0],
                         "sha512")

    def test_filter_changes_task_id(self):
        """--filter drops the named query parameters from the task id."""
        o = parse([URL + "?sig=abc&v=1", "--filter", "sig,exp"])
        self.assertEqual(o["task_id"], task_id_for_url(URL + "?v=1"))

    def test_numbers(self):
        """--limit takes K/M/G, --timeout seconds, --supernodes a list."""
        o = parse([URL, "--limit", "2M", "--timeout", "2.5", "--supernodes", "a:1,[::1]:2"])
        self.assertEqual((o["limit_bps"], o["timeout_s"]), (2 << 20, 2.5))
        self.assertEqual(o["supernode_list"], [("a", 1), ("::1", 2)])

    def test_bad_options(self):
        """Bad options are usage errors."""
        for argv in ([], ["ftp://x/y"], [URL, URL + "2"], [URL, "--digest", "sha1:" + "a" * 40],
                     [URL, "--digest", "sha256:abc"], [URL, "--digest", "x"],
                     [URL, "--md5", "a" * 32, "--digest", "sha256:" + SHA],
                     [URL, "--pattern", "magic"], [URL, "--limit", "fast"],
                     [URL, "--timeout", "-1"], [URL, "--timeout", "inf"],
                     [URL, "--timeout", "soon"], [URL, "-H", "no colon"],
                     [URL, "-H", "A: b\r\nC: d"], [URL, "--supernodes", "a:b"],
                     [URL, "--supernodes", ","], ["-u", URL, URL + "x"],
                     [URL, "--daemon", "ftp://x"], [URL, "--advertise", "a b"],
                     [URL, "--no-such-option"], [URL, "-q=1"], [URL, "--quiet=1"]):
            self.assertRaises(OptionsError, parse, argv)

    def test_help_and_version(self):
        """--help (or -h) lists every option; --version names dfget's version."""
        for flag in ("--help", "-h"):
            e = self.assertRaises(ShowText, parse, [flag])
            for name in ("--output", "--daemon", "--digest", "--md5", "--timeout",
                         "--no-back-source", "--header", "--advertise", "-o is an alias"):
                self.assertIn(name, e.text)
            self.assertTrue(all(len(line) <= 80 for line in e.text.splitlines()), e.text)
        self.assertIn("dragonfly", self.assertRaises(ShowText, parse, ["--version"]).text)

    def test_main_usage_and_help(self):
        """A usage error exits 2 with one error line and a hint; --help exits 0."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--digest", "x", URL], stdout=out, stderr=err), 2)
        self.assertEqual(err.getvalue().splitlines(),
                         ["dfget: error: --digest must be ALGO:HEX, not 'x'",
                          "Try 'dfget --help' for more information."])
        self.assertEqual(cli.main(["--help"], stdout=out, stderr=err), 0)
        self.assertIn("Usage: dfget", out.getvalue())

    def test_default_output(self):
        """The default output name is the URL path's basename (index.html for none)."""
        self.assertEqual(default_output("http://h/a/b/file%20x.tar.gz?q=1"), "file x.tar.gz")
        self.assertEqual(default_output("http://h/"), "index.html")
        self.assertEqual(default_output("http://h/a/.."), "index.html")

    def test_no_twisted_on_the_daemon_path(self):
        """Parsing options and the daemon path import no Twisted (their start-up cost
        is the point of that path)."""
        code = ("import sys; import dragonfly.dfget.cli, dragonfly.dfget.viadaemon; "
                "from dragonfly.dfget.options import parse; parse(['http://h/f']); "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('twisted', 'treq', 'klein', 'zope')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        self.assertEqual(out.strip(), "[]")


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


def _serve(case, resource):
    """Serve C{resource} on an ephemeral loopback port; its base URL."""
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class RunMixin:
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.out = os.path.join(self.dir, "file.bin")
        self.stdout = io.BytesIO()
        self.stderr = io.StringIO()

    def listing(self):
        return sorted(os.listdir(self.dir))

    def check_ok(self, code):
        self.assertEqual((code, self.stderr.getvalue()), (0, ""))

    def check_fails(self, code):
        self.assertNotEqual(code, 0)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("dfget: error: "), lines)
        return lines[0]


class DaemonMixin(RunMixin):
    """cli.main in a thread (it blocks), the daemon served by the test's reactor."""

    def setUp(self):
        RunMixin.setUp(self)
        self.embedded_runs = []

    def no_embedded(self, opts, out, timeout):
        self.embedded_runs.append(out)
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


class FilesTests(RunMixin, SynchronousTestCase):

    def test_umask_read_without_changing_it(self):
        """_umask() reports the process umask and leaves it as it was."""
        from dragonfly.dfget.files import _umask
        old = os.umask(0o027)
        try:
            self.assertEqual(_umask(), 0o027)
            self.assertEqual(os.umask(0o027), 0o027)
        finally:
            os.umask(old)

    def test_place_without_sharing(self):
        """place() never links a file it may not share: a private copy, digest of
        what was written."""
        self.patch(files, "_may_share", lambda st: False)
        src = os.path.join(self.dir, "src")
        with open(src, "wb") as f:
            f.write(DATA)
        how, got = files.place(src, self.out, "sha256")
        self.assertIn(how, ("copy", "reflink"))
        self.assertFalse(os.path.samefile(src, self.out))
        self.assertEqual(got, SHA)

    def test_missing_output_dir(self):
        """An output directory that does not exist is an error before any download."""
        code = cli.main([URL, "-O", os.path.join(self.dir, "nope", "f"), "--daemon", "none"],
                        stdout=self.stdout, stderr=self.stderr, signals=False,
                        embedded=lambda *a: self.fail("no download expected"))
        self.assertIn("does not exist", self.check_fails(code))

    def test_output_is_a_directory_name(self):
        """-O DIR puts the URL's basename in DIR; a FILE that is a directory is refused."""
        opts = parse([URL, "-O", self.dir])
        self.assertEqual(files.output_path(opts), os.path.join(self.dir, "blob.bin"))
        os.makedirs(os.path.join(self.dir, "blob.bin"))
        e = self.assertRaises(DfgetError, files.check_output, files.output_path(opts))
        self.assertIn("is a directory", str(e))


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
        task = daemon.store.get(task_id_for_url(URL))
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


class _Scripted(Resource):
    """A scripted peer daemon: C{routes} maps a path (or a prefix ending in /) to
    C{handler(request)}; records what was asked and tracks open requests."""

    isLeaf = True

    def __init__(self, routes):
        Resource.__init__(self)
        self.routes = {"/healthz": lambda r: b'{"status": "ok"}'}
        self.routes.update(routes)
        self.paths = []
        self.open = []

    def render(self, request):
        path = request.path.decode()
        self.paths.append(path)
        handler = self.routes.get(path) or next(
            (h for p, h in self.routes.items() if p.endswith("/") and path.startswith(p)),
            None)
        if handler is None:
            request.setResponseCode(404)
            return b'{"error": "no route"}'
        self.open.append(request)
        request.notifyFinish().addBoth(lambda _: self.open.remove(request))
        return handler(request)

    async def drain(self, timeout=30):
        """Wait for every request to end (the client hung up or was answered)."""
        for r in list(self.open):
            r.channel.transport.loseConnection()
        await _until(lambda: not self.open, timeout)


async def _until(predicate, timeout=60, step=0.02):
    """Poll C{predicate} until true; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        await task.deferLater(reactor, step, lambda: None)


def _ndjson(*objs):
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def _hold(request):
    return NOT_DONE_YET


def _free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ScriptedDaemonTests(DaemonMixin, TestCase):
    """The daemon path against daemons that misbehave."""

    def serve(self, **routes):
        self.daemon = _Scripted({k.replace("_", "/"): v for k, v in routes.items()})
        self.addCleanup(self.daemon.drain)
        return _serve(self, self.daemon)

    async def test_no_daemon_runs_embedded(self):
        """Nothing listening at --daemon: the embedded peer runs, with the whole
        --timeout still to use when none was given."""
        url = f"http://127.0.0.1:{_free_port()}"
        code = await self.run_dfget(url, URL, "-O", self.out)
        self.assertEqual(code, 1)
        self.assertEqual(self.embedded_runs, [self.out])

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


class ProcessTests(RunMixin, TestCase):
    """A real dfget process: --timeout and SIGTERM on the daemon path."""

    def spawn(self, url, *argv):
        from dragonfly.test.integration.harness import child_env, executable

        proc = subprocess.Popen([executable("dfget"), URL, "-O", self.out, "--daemon", url,
                                 *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=child_env())
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(proc.stderr.close)
        return proc

    async def wait(self, proc, timeout=60):
        await _until(lambda: proc.poll() is not None, timeout)
        return proc.returncode, proc.stderr.read().decode()

    async def test_timeout(self):
        """--timeout ends a download the daemon never finishes: one line, exit 1."""
        daemon = _Scripted({"/api/v1/download": _hold})
        self.addCleanup(daemon.drain)
        proc = self.spawn(_serve(self, daemon), "--timeout", "1")
        code, err = await self.wait(proc)
        self.assertEqual((code, err), (1, "dfget: error: timed out after 1 seconds\n"))
        self.assertEqual(self.listing(), [])

    async def test_sigterm_removes_partial_file(self):
        """SIGTERM while the bytes stream in: exit 130, and the partial file is gone."""
        task_id = task_id_for_url(URL)

        def done(request):
            return _ndjson({"state": "done", "path": "/nonexistent/x", "length": 10 << 20,
                            "task_id": task_id})

        def trickle(request):
            request.setHeader(b"content-length", str(10 << 20).encode())
            request.write(b"x" * (1 << 20))
            return NOT_DONE_YET
        daemon = _Scripted({"/api/v1/download": done, "/api/v1/tasks/": trickle})
        self.addCleanup(daemon.drain)
        proc = self.spawn(_serve(self, daemon))

        def partial():
            names = [n for n in self.listing() if ".dfget-tmp-" in n]
            return names and os.path.getsize(os.path.join(self.dir, names[0])) > 0
        await _until(partial)
        proc.send_signal(signal.SIGTERM)
        code, err = await self.wait(proc)
        self.assertEqual((code, err), (130, "dfget: error: interrupted\n"))
        self.assertEqual(self.listing(), [])


class EmbeddedTests(RunMixin, SynchronousTestCase):

    def run_dfget(self, *argv, clock=None, embedded_factory):
        opts = parse(list(argv) + ["--daemon", "none"])
        return embedded.main(clock or Clock(), opts, files.output_path(opts),
                             stdout=self.stdout, stderr=self.stderr, environ={},
                             http_client=object(), runner=SyncRunner(), isatty=False,
                             setup_logging=False, embedded_factory=embedded_factory)

    def ok(self, *argv, **kw):
        self.check_ok(self.successResultOf(self.run_dfget(*argv, **kw)))

    def fails(self, *argv, **kw):
        f = self.failureResultOf(self.run_dfget(*argv, **kw), SystemExit)
        return self.check_fails(f.value.code)

    def embedded(self, data=DATA, **kw):
        made = {}

        def factory(data_dir):
            clock = Clock()
            store = PieceStore(data_dir, clock=clock, runner=SyncRunner())
            supernode = FakeSupernode(data, PIECE)
            node = PeerNode(NodeDeps(clock, store, _Hosts({"sn.test:8002": supernode}),
                                     FakePiecePool(data, PIECE), PeerMetrics(), SyncRunner(),
                                     origin=FakeOrigin(data)),
                            [("sn.test", 8002)], ME, NodeSettings(**kw))
            made.update(node=node, store=store, data_dir=data_dir, supernode=supernode,
                        stopped=False)

            def start():
                return succeed(None)

            def stop():
                made["stopped"] = True
                return node.shutdown()
            return node, start, stop
        return factory, made

    def test_embedded_download(self):
        """With no daemon, an embedded peer downloads into a temporary directory next to
        the output, the file is moved into place, and the directory is removed."""
        factory, made = self.embedded()
        self.ok(URL, "-O", self.out, "--digest", "sha256:" + SHA,
                embedded_factory=factory)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])
        self.assertEqual(os.path.dirname(made["data_dir"]), self.dir)
        self.assertTrue(made["stopped"])

    def test_embedded_digest_mismatch(self):
        """A digest mismatch in embedded mode leaves no file and no temporary directory."""
        factory, made = self.embedded()
        line = self.fails(URL, "-O", self.out, "--digest", "sha512:" + "0" * 128,
                          embedded_factory=factory)
        self.assertIn("sha512 digest mismatch", line)
        self.assertEqual(self.listing(), [])

    def test_embedded_failure(self):
        """A failed embedded download prints one line and leaves nothing behind."""
        factory, made = self.embedded()

        def failing(data_dir):
            node, start, stop = factory(data_dir)
            made["supernode"].register_answer = (502, {"error": "x", "origin_status": 403})
            return node, start, stop
        line = self.fails(URL, "-O", self.out, embedded_factory=failing)
        self.assertEqual(line, "dfget: error: origin answered 403")
        self.assertEqual(self.listing(), [])

    def test_embedded_empty_file(self):
        """A zero-length file is delivered as an empty file."""
        factory, made = self.embedded(data=b"")
        self.ok("http://origin.test/empty", "-O", self.out,
                embedded_factory=factory)
        self.assertEqual(os.path.getsize(self.out), 0)
        self.assertEqual(self.listing(), ["file.bin"])

    def test_timeout(self):
        """--timeout gives up with one line and leaves nothing behind."""
        clock = Clock()
        factory, made = self.embedded()

        def slow(data_dir):
            node, start, stop = factory(data_dir)
            made["supernode"].hold = True
            return node, start, stop
        d = self.run_dfget(URL, "-O", self.out, "--timeout", "5", clock=clock,
                           embedded_factory=slow)
        self.assertNoResult(d)
        clock.advance(5)
        f = self.failureResultOf(d, SystemExit)
        self.assertEqual(f.value.code, 1)
        self.assertEqual(self.stderr.getvalue(), "dfget: error: timed out after 5 seconds\n")
        self.assertEqual(self.listing(), [])


class ProgressBarTests(SynchronousTestCase):

    def test_bar(self):
        """The bar redraws at most every interval and ends with a newline."""
        clock = Clock()
        out = io.StringIO()
        bar = ProgressBar(out, clock, label="f", width=80)
        bar.update(0, 1000)
        bar.update(100, 1000)
        self.assertEqual(out.getvalue().count("\r"), 1)
        clock.advance(1)
        bar.update(500, 1000)
        self.assertIn(" 50%", out.getvalue())
        bar.finish()
        self.assertTrue(out.getvalue().endswith("\n"))
        self.assertTrue(all(len(x) <= 83 for x in out.getvalue().split("\r")))

"""dfget: option parsing, the daemon path (a real PeerAPI over StubTreq), the embedded
path (an injected PeerNode over fakes), and what is left on disk on success and failure."""
import hashlib
import io
import os

from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget.cli import DfgetOptions, default_output, main
from dragonfly.dfget.progress import ProgressBar
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.api import PeerAPI
from dragonfly.peer.node import PeerNode
from dragonfly.storage.store import PieceStore
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_peer_node import ME, PIECE, URL, _Hosts
from dragonfly.threads import SyncRunner

DATA = b"dragonfly!" * 100  # 1000 bytes
SHA = hashlib.sha256(DATA).hexdigest()


def parse(*argv):
    o = DfgetOptions()
    o.parseOptions(list(argv))
    return o


class OptionTests(SynchronousTestCase):

    def test_url_argument_and_options_after_it(self):
        """The URL may come first or last; options after it still count (GNU style)."""
        o = parse(URL, "-O", "/tmp/x", "--tag", "t", "-q")
        self.assertEqual(o["url"], URL)
        self.assertEqual(o["output"], "/tmp/x")
        self.assertTrue(o["quiet"])
        self.assertEqual(o["task_id"], task_id_for_url(URL, [], "t"))

    def test_dragonfly1_style(self):
        """dfget -u URL -o FILE works like dfget URL -O FILE."""
        o = parse("-u", URL, "-o", "out.bin")
        self.assertEqual((o["url"], o["output"]), (URL, "out.bin"))

    def test_headers_repeat(self):
        """-H may repeat; the same header twice is joined with a comma."""
        o = parse(URL, "-H", "Authorization: Bearer x", "--header", "X-A: 1", "-H", "x-a: 2")
        self.assertEqual(o["header_map"], {"Authorization": "Bearer x", "X-A": "1, 2"})

    def test_digests(self):
        """--digest ALGO:HEX accepts sha256/sha512/md5; --md5 HEX is an alias."""
        self.assertEqual(parse(URL, "--digest", "SHA256:" + SHA.upper())["digest_spec"],
                         ("sha256", SHA))
        self.assertEqual(parse(URL, "--md5", "a" * 32)["digest_spec"], ("md5", "a" * 32))
        self.assertEqual(parse(URL, "--digest", "sha512:" + "b" * 128)["digest_spec"][0],
                         "sha512")

    def test_filter_changes_task_id(self):
        """--filter drops the named query parameters from the task id."""
        o = parse(URL + "?sig=abc&v=1", "--filter", "sig,exp")
        self.assertEqual(o["task_id"], task_id_for_url(URL + "?v=1"))

    def test_bad_options(self):
        """Bad options are usage errors."""
        for argv in ([], ["ftp://x/y"], [URL, URL + "2"], [URL, "--digest", "sha1:" + "a" * 40],
                     [URL, "--digest", "sha256:abc"], [URL, "--digest", "x"],
                     [URL, "--md5", "a" * 32, "--digest", "sha256:" + SHA],
                     [URL, "--pattern", "magic"], [URL, "--limit", "fast"],
                     [URL, "--timeout", "-1"], [URL, "-H", "no colon"],
                     [URL, "-H", "A: b\r\nC: d"], [URL, "--supernodes", "a:b"],
                     ["-u", URL, URL + "x"], [URL, "--daemon", "ftp://x"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_default_output(self):
        """The default output name is the URL path's basename (index.html for none)."""
        self.assertEqual(default_output("http://h/a/b/file%20x.tar.gz?q=1"), "file x.tar.gz")
        self.assertEqual(default_output("http://h/"), "index.html")
        self.assertEqual(default_output("http://h/a/.."), "index.html")


class _Daemon:
    """A real PeerAPI + PeerNode over fakes, reachable through StubTreq."""

    def __init__(self, case, data=DATA):
        self.clock = Clock()
        self.store = PieceStore(case.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(data, PIECE)
        self.origin = FakeOrigin(data)
        self.node = PeerNode(self.clock, self.store, [("sn.test", 8002)],
                             _Hosts({"sn.test:8002": self.supernode}),
                             FakePiecePool(data, PIECE), ME, PeerMetrics(), SyncRunner(),
                             origin=self.origin)
        self.api = PeerAPI(self.node, self.store, PeerMetrics(), self.clock)
        self.http = StubTreq(self.api.resource())


class _NoDaemon:
    """An HTTP client for which nothing answers (connection refused)."""

    def get(self, *a, **kw):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        return fail(ConnectionRefusedError())

    post = get


class RunMixin:
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.out = os.path.join(self.dir, "file.bin")
        self.stdout = io.BytesIO()
        self.stderr = io.StringIO()

    def run_dfget(self, *argv, http, **kw):
        d = main(Clock(), list(argv), stdout=self.stdout, stderr=self.stderr, environ={},
                 http_client=http, runner=SyncRunner(), isatty=False, setup_logging=False,
                 **kw)
        return d

    def ok(self, *argv, **kw):
        self.assertEqual(self.successResultOf(self.run_dfget(*argv, **kw)), 0)
        self.assertEqual(self.stderr.getvalue(), "")

    def fails(self, *argv, **kw):
        f = self.failureResultOf(self.run_dfget(*argv, **kw), SystemExit)
        self.assertNotEqual(f.value.code, 0)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("dfget: error: "), lines)
        return lines[0]

    def listing(self):
        return sorted(os.listdir(self.dir))


class DaemonTests(RunMixin, SynchronousTestCase):

    def test_download_via_daemon(self):
        """With a daemon answering, the file is copied from its store, verified and
        renamed into place; nothing else is left in the output directory."""
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, "--digest", "sha256:" + SHA, http=daemon.http)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])
        self.assertEqual(len(daemon.supernode.registrations), 1)

    def test_output_linked_to_store(self):
        """On the store's filesystem the output is a hard link to the store's
        file (or a reflink): no bytes are copied."""
        from dragonfly.dfget import cli
        self.patch(cli, "_reflink", lambda fin, fout: False)   # whatever /tmp is
        self.patch(cli, "_umask", lambda: 0o022)   # the store's 0644 is then no wider
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, http=daemon.http)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertTrue(os.path.samefile(self.out, task.path))
        self.assertEqual(self.listing(), ["file.bin"])

    def test_edited_output_not_served_again(self):
        """Editing a linked output in place costs the store that task: the next
        dfget downloads it again instead of handing out the edited bytes."""
        from dragonfly.dfget import cli
        self.patch(cli, "_reflink", lambda fin, fout: False)
        self.patch(cli, "_umask", lambda: 0o022)
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, http=daemon.http)
        with open(self.out, "r+b") as f:
            f.write(b"EDITED")
        os.utime(self.out, ns=(0, 0))   # coarse kernel clocks may not tick in a test
        second = os.path.join(self.dir, "again.bin")
        self.ok(URL, "-O", second, http=daemon.http)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(len(daemon.supernode.registrations), 2)

    def test_copy_when_link_refused(self):
        """Where the kernel refuses the link (another filesystem, protected_hardlinks),
        the output is a copy."""
        from dragonfly.dfget import cli

        def refuse(src, dst):
            raise PermissionError(1, "Operation not permitted")
        self.patch(cli, "_reflink", lambda fin, fout: False)
        self.patch(os, "link", refuse)
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, "--digest", "sha256:" + SHA, http=daemon.http)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])

    def test_copy_when_link_would_be_less_private(self):
        """A store file readable by others is copied, not linked, for a user
        whose umask makes new files private (077): FILE gets that user's mode."""
        from dragonfly.dfget import cli
        self.patch(cli, "_reflink", lambda fin, fout: False)
        self.patch(cli, "_umask", lambda: 0o077)
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, http=daemon.http)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)

    def test_copy_when_not_the_owner(self):
        """A store file owned by another user (dfget run by root, the daemon by
        its own user) is copied: FILE must not stay writable by the daemon's user."""
        from dragonfly.dfget import cli
        self.patch(cli, "_reflink", lambda fin, fout: False)
        uid = os.geteuid()
        self.patch(os, "geteuid", lambda: uid + 1)
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, http=daemon.http)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))

    def test_umask_read_without_changing_it(self):
        """_umask() reports the process umask and leaves it as it was."""
        from dragonfly.dfget.cli import _umask
        old = os.umask(0o027)
        try:
            self.assertEqual(_umask(), 0o027)
            self.assertEqual(os.umask(0o027), 0o027)
        finally:
            os.umask(old)

    def test_place_without_sharing(self):
        """_place never links a file it may not share: a private copy, digest of
        what was written."""
        from dragonfly.dfget import cli
        self.patch(cli, "_may_share", lambda st: False)
        src = os.path.join(self.dir, "src")
        with open(src, "wb") as f:
            f.write(DATA)
        how, got = cli._place(src, self.out, "sha256")
        self.assertIn(how, ("copy", "reflink"))
        self.assertFalse(os.path.samefile(src, self.out))
        self.assertEqual(got, SHA)

    def test_output_directory(self):
        """-O DIR puts the URL's basename in DIR."""
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.dir, http=daemon.http)
        self.assertEqual(self.listing(), ["blob.bin"])

    def test_digest_mismatch_leaves_nothing(self):
        """When the digest does not match, dfget fails with one line and neither the
        output file nor a temporary file is left."""
        daemon = _Daemon(self)
        line = self.fails(URL, "-O", self.out, "--md5", "0" * 32, http=daemon.http)
        self.assertIn("md5 digest mismatch", line)
        self.assertEqual(self.listing(), [])

    def test_existing_file_kept_on_failure(self):
        """A failed download leaves an existing FILE as it was."""
        with open(self.out, "wb") as f:
            f.write(b"old")
        daemon = _Daemon(self)
        self.fails(URL, "-O", self.out, "--md5", "0" * 32, http=daemon.http)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(self.listing(), ["file.bin"])

    def test_daemon_reports_failure(self):
        """When the daemon's download fails, dfget prints its reason on one line."""
        daemon = _Daemon(self)
        daemon.supernode.register_answer = (502, {"error": "origin answered 404",
                                                  "origin_status": 404})
        line = self.fails(URL, "-O", self.out, http=daemon.http)
        self.assertEqual(line, "dfget: error: origin answered 404")
        self.assertEqual(self.listing(), [])

    def test_passes_options_to_daemon(self):
        """Headers, pattern, back-source and the task id reach the daemon."""
        daemon = _Daemon(self)
        self.ok(URL, "-O", self.out, "-H", "X-K: v", "--pattern", "source",
                "--tag", "t", http=daemon.http)
        self.assertEqual(daemon.origin.calls, [(URL, {"X-K": "v"}, 0)])
        self.assertIsNotNone(daemon.store.get(task_id_for_url(URL, [], "t")))

    def test_no_back_source(self):
        """--no-back-source reaches the daemon: no supernode means failure."""
        daemon = _Daemon(self)
        daemon.supernode.register_answer = (503, {"error": "down"})
        line = self.fails(URL, "-O", self.out, "--no-back-source", http=daemon.http)
        self.assertIn("back-to-source is disabled", line)
        self.assertEqual(daemon.origin.calls, [])

    def test_stdout(self):
        """-O - writes the verified bytes to stdout and no file."""
        daemon = _Daemon(self)
        self.ok(URL, "-O", "-", "--digest", "sha256:" + SHA, http=daemon.http)
        self.assertEqual(self.stdout.getvalue(), DATA)
        self.assertEqual(self.listing(), [])

    def test_unreadable_path_streams(self):
        """When the daemon's data path cannot be read, dfget streams the task's bytes
        from the daemon instead."""
        daemon = _Daemon(self)
        self.patch(os, "access", lambda path, mode: False if "file.bin" not in path
                   and mode == os.R_OK else True)
        self.ok(URL, "-O", self.out, "--digest", "sha256:" + SHA, http=daemon.http)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertEqual(self.listing(), ["file.bin"])

    def test_usage_error(self):
        """A usage error exits 2 with a dfget: error line and a hint."""
        f = self.failureResultOf(self.run_dfget("--digest", "x", URL, http=_NoDaemon()),
                                 SystemExit)
        self.assertEqual(f.value.code, 2)
        self.assertTrue(self.stderr.getvalue().startswith("dfget: error: "))

    def test_missing_output_dir(self):
        """An output directory that does not exist is an error before any download."""
        line = self.fails(URL, "-O", os.path.join(self.dir, "nope", "f"), http=_NoDaemon())
        self.assertIn("does not exist", line)


class EmbeddedTests(RunMixin, SynchronousTestCase):

    def embedded(self, data=DATA, **kw):
        made = {}

        def factory(data_dir):
            clock = Clock()
            store = PieceStore(data_dir, clock=clock, runner=SyncRunner())
            supernode = FakeSupernode(data, PIECE)
            node = PeerNode(clock, store, [("sn.test", 8002)],
                            _Hosts({"sn.test:8002": supernode}), FakePiecePool(data, PIECE),
                            ME, PeerMetrics(), SyncRunner(), origin=FakeOrigin(data), **kw)
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
        self.ok(URL, "-O", self.out, "--digest", "sha256:" + SHA, http=_NoDaemon(),
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
                          http=_NoDaemon(), embedded_factory=factory)
        self.assertIn("sha512 digest mismatch", line)
        self.assertEqual(self.listing(), [])

    def test_embedded_failure(self):
        """A failed embedded download prints one line and leaves nothing behind."""
        factory, made = self.embedded()

        def failing(data_dir):
            node, start, stop = factory(data_dir)
            made["supernode"].register_answer = (502, {"error": "x", "origin_status": 403})
            return node, start, stop
        line = self.fails(URL, "-O", self.out, http=_NoDaemon(), embedded_factory=failing)
        self.assertEqual(line, "dfget: error: origin answered 403")
        self.assertEqual(self.listing(), [])

    def test_embedded_empty_file(self):
        """A zero-length file is delivered as an empty file."""
        factory, made = self.embedded(data=b"")
        self.ok("http://origin.test/empty", "-O", self.out, http=_NoDaemon(),
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
        d = main(clock, [URL, "-O", self.out, "--timeout", "5"], stdout=self.stdout,
                 stderr=self.stderr, environ={}, http_client=_NoDaemon(), runner=SyncRunner(),
                 isatty=False, setup_logging=False, embedded_factory=slow)
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

    def test_bar_shown_only_on_tty(self):
        """No progress bar unless stderr is a terminal (and not -q)."""
        daemon = _Daemon(self)
        d = self.mktemp()
        os.makedirs(d)
        err = io.StringIO()
        self.successResultOf(main(Clock(), [URL, "-O", os.path.join(d, "a")], stdout=io.BytesIO(),
                                  stderr=err, environ={}, http_client=daemon.http,
                                  runner=SyncRunner(), isatty=True, setup_logging=False))
        self.assertIn("100%", err.getvalue())
        err = io.StringIO()
        self.successResultOf(main(Clock(), [URL, "-q", "-O", os.path.join(d, "b")],
                                  stdout=io.BytesIO(), stderr=err, environ={},
                                  http_client=daemon.http, runner=SyncRunner(), isatty=True,
                                  setup_logging=False))
        self.assertEqual(err.getvalue(), "")

"""dfget.embedded: the embedded path (an injected PeerNode over fakes), its
--timeout, and what is left on disk on success and failure."""
import os

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import embedded, files
from dragonfly.dfget.options import parse
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.node import NodeDeps, NodeSettings, PeerNode
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore
from dragonfly.test.dfgetsupport import DATA, SHA, RunMixin
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_peer_node import ME, PIECE, URL, _Hosts


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


class EmbeddedHTTPTests(SynchronousTestCase):

    def test_supernode_calls_on_the_control_client(self):
        """The embedded peer's own supernode client is the one a daemon peer
        uses (L{dragonfly.control.http.ControlHTTP}), over a pool closed at
        the end of the run."""
        from twisted.internet.testing import MemoryReactorClock

        from dragonfly.control.http import ControlHTTP

        run = embedded.Dfget(MemoryReactorClock(), parse(["http://o.test/f", "--daemon", "none"]),
                             environ={})
        self.assertIsInstance(run.http, ControlHTTP)
        self.assertIs(run.http, run.http)
        self.assertEqual(len(run._cleanups), 1)

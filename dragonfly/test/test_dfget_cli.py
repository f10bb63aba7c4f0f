"""dfget.cli: signals and --timeout in a real dfget process on the daemon path."""
import os
import signal
import subprocess

from twisted.trial.unittest import TestCase
from twisted.web.server import NOT_DONE_YET

from dragonfly.taskid import task_id_for_url
from dragonfly.test.dfgetsupport import RunMixin, _hold, _ndjson, _Scripted, _serve, _until
from dragonfly.test.test_peer_node import URL


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


class QuickExitTests(TestCase):
    """The console entry point skips the interpreter's finalization on the
    daemon path (no Twisted imported), its output flushed and its status kept;
    with Twisted imported (the embedded peer) it ends the usual way."""

    def entry(self, argv, before=""):
        import sys

        code = ("import atexit, sys; atexit.register(lambda: print('finalized', file=sys.stderr)); "
                f"{before}sys.argv = ['dfget'] + {argv!r}; "
                "from dragonfly.dfget.cli import run; run()")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)

    def test_daemon_path(self):
        """Stdout (a pipe: block-buffered) arrives whole, the status is kept,
        and nothing runs at exit."""
        done = self.entry(["--version"])
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertIn("dfget", done.stdout)
        bad = self.entry(["--no-such-flag"])
        self.assertEqual(bad.returncode, 2)
        self.assertTrue(bad.stderr.startswith("dfget: "), bad.stderr)
        self.assertNotIn("finalized", bad.stderr)

    def test_with_twisted(self):
        """Twisted imported: the usual exit, atexit hooks and all."""
        done = self.entry(["--version"], before="import twisted.internet; ")
        self.assertEqual(done.returncode, 0)
        self.assertIn("dfget", done.stdout)
        self.assertEqual(done.stderr, "finalized\n")

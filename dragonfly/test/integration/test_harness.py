"""The harness fails loudly: small real processes that misbehave on purpose."""
import hashlib
import os
import socket
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from dragonfly.test.integration import harness
from dragonfly.test.integration.harness import (
    HTTP, HarnessError, Proc, Swarm, make_random_file, poll_until, refused_port, start_nginx,
    SETPRIV)

#: Says "ready" once its SIGTERM handler is in place, then waits.
SERVICE = """
import signal, sys, time
signal.signal(signal.SIGTERM, {handler})
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class StopTests(TestCase):
    timeout = 60

    async def service(self, handler):
        proc = Proc("svc", [sys.executable, "-c", SERVICE.format(handler=handler)],
                    self.mktemp_dir(), strict=True)
        self.addCleanup(proc.kill_now)
        await poll_until(reactor, lambda: "ready" in proc.read_log(), 20, "the service",
                         check=proc.check_alive)
        return proc

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path)
        return path

    async def test_ignored_sigterm_fails(self):
        """A strict process that ignores SIGTERM for its grace period is killed
        and its stop raises, naming it, with its log tail."""
        proc = await self.service("signal.SIG_IGN")
        with self.assertRaises(HarnessError) as e:
            await proc.stop(reactor, grace=1)
        self.assertIn("did not exit within 1s of SIGTERM", str(e.exception))
        self.assertIn("ready", str(e.exception))
        self.assertFalse(proc.alive())

    async def test_unclean_status_fails(self):
        """A strict process that exits 3 on SIGTERM: its stop raises."""
        proc = await self.service("lambda *a: sys.exit(3)")
        with self.assertRaises(HarnessError) as e:
            await proc.stop(reactor)
        self.assertIn("stopped with exit 3 on SIGTERM", str(e.exception))

    async def test_clean_stop(self):
        """A strict process that exits 0 on SIGTERM stops without complaint."""
        proc = await self.service("lambda *a: sys.exit(0)")
        self.assertEqual(await proc.stop(reactor), 0)


class SwarmDeathTests(TestCase):
    timeout = 60

    def swarm(self):
        swarm = Swarm(reactor, self.mktemp(), http=None)
        self.addCleanup(swarm.kill_now)
        return swarm

    async def test_death_during_the_test_fails(self):
        """A service of the swarm that exits on its own fails the liveness check
        and the swarm's stop, with its exit status."""
        swarm = self.swarm()
        proc = Proc("gone", [sys.executable, "-c", "print('bye')"], swarm.workdir, strict=True)
        swarm.peers.append(proc)
        await poll_until(reactor, lambda: proc.popen.poll() is not None, 20, "the exit")
        with self.assertRaises(HarnessError) as e:
            swarm.check_alive()
        self.assertIn("gone", str(e.exception))
        self.assertIn("bye", str(e.exception))
        with self.assertRaises(HarnessError) as e:
            await swarm.stop()
        self.assertIn("died during the test with exit 0", str(e.exception))

    async def test_ended_by_the_test_is_fine(self):
        """A service the test killed is not a death."""
        swarm = self.swarm()
        proc = Proc("victim", [sys.executable, "-c", "import time; time.sleep(60)"],
                    swarm.workdir, strict=True)
        swarm.peers.append(proc)
        proc.kill_now()
        await proc.wait(reactor, 20)
        swarm.check_alive()
        await swarm.stop()


class OrphanTests(TestCase):
    timeout = 60

    async def test_children_die_with_the_test_process(self):
        """A child the harness started is killed when the process that started it
        is SIGKILLed (no atexit runs then)."""
        if SETPRIV is None:
            raise SkipTest("setpriv (util-linux) is not installed")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        pidfile = os.path.join(workdir, "child.pid")
        script = (
            "import os, signal, sys, time\n"
            "from dragonfly.test.integration.harness import Proc\n"
            f"p = Proc('child', [sys.executable, '-c', 'import time; time.sleep(120)'], {workdir!r})\n"
            f"open({pidfile!r} + '.tmp', 'w').write(str(p.pid))\n"
            f"os.rename({pidfile!r} + '.tmp', {pidfile!r})\n"
            "time.sleep(0.2)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
        parent = Proc("parent", [sys.executable, "-c", script], workdir,
                      env=harness.child_env())
        self.addCleanup(parent.kill_now)
        await parent.wait(reactor, 30)
        with open(pidfile) as f:
            child = int(f.read())
        self.addCleanup(lambda: _pid_alive(child) and os.kill(child, 9))
        await poll_until(reactor, lambda: not _pid_alive(child), 10, "the orphan to die")


class PortTests(TestCase):

    def test_refused_port(self):
        """refused_port(): connections are refused, and nobody else can bind it."""
        port = refused_port()
        with socket.socket() as s:
            self.assertRaises(ConnectionRefusedError, s.connect, ("127.0.0.1", port))
        with socket.socket() as s:
            self.assertRaises(OSError, s.bind, ("127.0.0.1", port))
        self.assertEqual(refused_port(), port)


class ChunkedOriginTests(TestCase):
    timeout = 60

    async def test_random_files_come_whole_through_chunked(self):
        """Files of the harness whose random bytes end in "<" (one random file
        in 256 does) or hold an SSI command come through the origin's /chunked/
        exactly: chunked, without Content-Length, every byte. (nginx's SSI
        filter would drop the trailing "<", a body a byte short that no client
        can tell from the whole file, and run the command.)"""
        workdir = os.path.abspath(self.mktemp())
        root = os.path.join(workdir, "root")
        os.makedirs(root)
        drawn = {"tail.bin": b"x" * 5000 + b"<",
                 "command.bin": b'x<!--#echo var="DATE_LOCAL" -->' + b"x" * 5000}
        files = {}
        for name, raw in drawn.items():
            digest = make_random_file(os.path.join(root, name), len(raw),
                                      randbytes=lambda n, raw=raw: raw[:n])
            with open(os.path.join(root, name), "rb") as f:
                files[name] = f.read()
            self.assertEqual(hashlib.sha256(files[name]).hexdigest(), digest)
            self.assertEqual(len(files[name]), len(raw))
        origin = await start_nginx(reactor, workdir, root)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(origin.stop(reactor)))
        http = HTTP(reactor)
        self.addCleanup(http.close)
        for name, data in files.items():
            code, headers, body = await http.request("GET", origin.url("chunked/" + name))
            self.assertEqual(code, 200, name)
            self.assertFalse(headers.hasHeader("Content-Length"), (name, headers))
            self.assertEqual((name, len(body)), (name, len(data)))
            self.assertEqual(body, data, name)

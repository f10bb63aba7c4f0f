"""Integration tests of the roles' promises at start and per download: real
processes on 127.0.0.1.

Listening is part of starting: a supernode, peer or dfdaemon that cannot
listen on one of its endpoints exits non-zero within seconds with one line
naming the endpoint, whether run in the foreground (``twistd -n``, as the
systemd units do) or daemonised (``twistd --pidfile --logfile``, as the SysV
scripts do: the parent that the script waits for exits 1).

``dfget --limit`` means what it says through a peer daemon too.
"""
import os
import socket
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.test.integration.harness import (
    executable, LOOPBACK, MiB, poll_until, Proc, sha256_file, SwarmMixin, with_logs)

#: Seconds a role may take to notice its port is taken and exit (it is the
#: interpreter's start-up, mostly).
EXIT_WITHIN = 30

EPHEMERAL = f"tcp:0:interface={LOOPBACK}"


def hold_port():
    """A listening socket on a loopback port: (socket, 'tcp:PORT:interface=...')."""
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    s.listen(1)
    return s, f"tcp:{s.getsockname()[1]}:interface={LOOPBACK}"


def role_args(role, taken, which):
    """The flags that start C{role} with endpoint C{which} on C{taken}."""
    if role == "supernode":
        endpoints = {"--listen": EPHEMERAL, "--piece-listen": EPHEMERAL}
    else:
        endpoints = {"--piece-listen": EPHEMERAL, "--api-listen": EPHEMERAL,
                     "--supernodes": f"{LOOPBACK}:9"}
        if role == "dfdaemon":
            endpoints["--listen"] = EPHEMERAL
    endpoints[which] = taken
    return [x for kv in endpoints.items() for x in kv]


class TakenPortTests(TestCase):
    """A role started on a taken port exits non-zero, naming the endpoint."""

    timeout = 180

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.procs = []

        def kill():
            for p in self.procs:
                p.kill_now()
        self.addCleanup(kill)

    def start(self, name, role, args, daemonise=False):
        data_dir = os.path.join(self.workdir, name + "-data")
        if daemonise:
            head = [f"--pidfile={self.path(name + '.pid')}",
                    f"--logfile={self.path(name + '.twistd.log')}"]
        else:
            head = ["-n", "--pidfile="]
        argv = [executable("twistd")] + head + [role, "--data-dir", data_dir] + args
        proc = Proc(name, argv, self.workdir, separate_stderr=True)
        self.procs.append(proc)
        return proc

    def path(self, name):
        return os.path.join(self.workdir, name)

    async def assert_exits_naming(self, proc, endpoint, daemonised=False):
        code = await proc.wait(reactor, EXIT_WITHIN)
        self.assertNotEqual(code, 0, proc.tail())
        line = f"cannot listen on {endpoint}: Address already in use"
        if daemonised:
            # the parent says there was an error; the log file has the whole line
            self.assertIn("cannot listen on tcp:", proc.read_log(err=True))
            with open(self.path(proc.name + ".twistd.log")) as f:
                self.assertIn(line, f.read())
            # twistd's child writes the error to the parent before it removes
            # its pid file: the parent may exit first, so poll for it to go
            pid = self.path(proc.name + ".pid")
            await poll_until(reactor, lambda: not os.path.exists(pid), EXIT_WITHIN,
                             f"{pid} to be removed")
        else:
            self.assertIn(line, proc.read_log() + proc.read_log(err=True))

    async def check(self, cases, daemonise=False):
        held = []
        started = []
        try:
            for role, which in cases:
                sock, taken = hold_port()
                held.append(sock)
                name = f"{role}{which.replace('--', '-')}"
                proc = self.start(name, role, role_args(role, taken, which), daemonise)
                started.append((proc, taken))
            for proc, taken in started:
                await self.assert_exits_naming(proc, taken, daemonise)
        finally:
            for sock in held:
                sock.close()

    async def test_foreground(self):
        """Under twistd -n, each role exits non-zero when any one of its
        endpoints is taken, with the line "cannot listen on ENDPOINT: Address
        already in use" in its output."""
        await self.check([("supernode", "--listen"), ("supernode", "--piece-listen"),
                          ("peer", "--piece-listen"), ("peer", "--api-listen"),
                          ("dfdaemon", "--listen")])

    async def test_daemonised(self):
        """Daemonised (twistd --pidfile --logfile, as the SysV scripts run
        it), the command exits non-zero with an error on its stderr, the log
        file has the line naming the endpoint, and no pid file is left."""
        await self.check([("supernode", "--listen"), ("peer", "--api-listen"),
                          ("dfdaemon", "--listen")], daemonise=True)


class LimitThroughDaemonTests(SwarmMixin, TestCase):
    """dfget --limit through a real peer daemon."""

    timeout = 180

    @with_logs()
    async def test_limit_paces_the_daemon(self):
        """dfget --limit RATE through a peer daemon takes at least size/RATE
        seconds (the daemon paces the download), and the file is whole."""
        size, rate = 4 * MiB, 2 * MiB
        await self.swarm.start_origin({"limited.bin": size})
        await self.swarm.start_supernode(piece_size="512K")
        peer = await self.swarm.start_peer()
        started = time.monotonic()
        r = await self.swarm.dfget(self.swarm.origin_url("limited.bin"), peer=peer,
                                   args=["--limit", "2M"])
        took = time.monotonic() - started
        self.assertEqual(r.code, 0, r)
        self.assertEqual(sha256_file(r.output), self.swarm.files["limited.bin"][1])
        self.assertGreaterEqual(took, size / rate)
        self.assertNotIn("embedded", r.stderr)

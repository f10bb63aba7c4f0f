"""``--log-format json`` through a real twistd, for every role: the log is the
file ``--logfile`` names (under ``-n`` and daemonised with ``--pidfile``), or
stdout under ``-n`` without one, and each of its lines is one JSON object with
``time`` (RFC 3339), ``level``, ``logger`` and ``message``."""
import json
import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from dragonfly.test.integration.harness import (
    LOOPBACK, Proc, executable, poll_until, read_json_file)

RFC3339 = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")
LISTEN = f"tcp:0:interface={LOOPBACK}"
NOWHERE = f"{LOOPBACK}:1"     # a supernode nobody runs: the peers only start here

ROLES = {
    "supernode": (["--listen", LISTEN, "--piece-listen", LISTEN, "--advertise", LOOPBACK],
                  ("api", "piece")),
    "peer": (["--supernodes", NOWHERE, "--piece-listen", LISTEN, "--api-listen", LISTEN,
              "--advertise", LOOPBACK], ("api", "piece")),
    "dfdaemon": (["--supernodes", NOWHERE, "--piece-listen", LISTEN, "--api-listen", LISTEN,
                  "--advertise", LOOPBACK, "--listen", LISTEN], ("api", "piece", "mirror")),
}

LISTENING = {"supernode": "supernode api listening on ", "peer": "peer api listening on ",
             "dfdaemon": "peer registry mirror listening on "}


#: python -c SUBREAPER ARGV: run ARGV as a child subreaper (PR_SET_CHILD_SUBREAPER),
#: so the daemon twistd forks off is reparented here and its exit status seen;
#: one line per process reaped, "launcher exited CODE" or "PID exited CODE".
SUBREAPER = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
launcher = os.fork()
if launcher == 0:
    os.execv(sys.argv[1], sys.argv[1:])
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    who = "launcher" if pid == launcher else pid
    print(who, "exited", os.waitstatus_to_exitcode(status), flush=True)
"""


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JSONLogTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def argv(self, role, twistd_args):
        """twistd TWISTD_ARGS ROLE --log-format json, in our directory."""
        args, _ = ROLES[role]
        return ([executable("twistd")] + list(twistd_args) +
                [role, "--log-format", "json", "--data-dir", os.path.join(self.dir, "data"),
                 "--port-file", os.path.join(self.dir, "ports")] + args)

    async def ready(self, role, check=None):
        _, keys = ROLES[role]

        def ports():
            data = read_json_file(os.path.join(self.dir, "ports"))
            return data if data and all(data.get(k, 0) > 0 for k in keys) else None
        await poll_until(reactor, ports, 60, f"{role} to write its port file", check=check)

    def records(self, text):
        """Every line of C{text} as a JSON object with the four keys."""
        self.assertNotIn("\x1e", text)
        self.assertTrue(text.endswith("\n"), text[-200:])
        out = []
        for line in text.splitlines():
            rec = json.loads(line)
            self.assertIsInstance(rec, dict, line)
            self.assertLessEqual({"time", "level", "logger", "message"}, set(rec), line)
            self.assertRegex(rec["time"], RFC3339)
            self.assertIn(rec["level"], ("debug", "info", "warn", "error", "critical"))
            self.assertFalse([k for k in rec if k.startswith("log_")], line)
            out.append(rec)
        return out

    def check_log(self, role, text):
        """The whole run is there: start-up, our role listening, shut down."""
        messages = [r["message"] for r in self.records(text)]
        self.assertTrue(any(m.startswith(LISTENING[role]) for m in messages), messages)
        self.assertEqual(messages[-1], "Server Shut Down.", messages[-5:])
        self.assertTrue(any(m.startswith("twistd ") and "starting up" in m for m in messages))

    async def run_foreground(self, role, twistd_args):
        """Run ROLE under twistd -n until it is ready, SIGTERM it; its stdout."""
        proc = Proc(role, self.argv(role, ["-n", "--pidfile="] + twistd_args), self.dir)
        self.addCleanup(proc.kill_now)
        await self.ready(role, check=proc.check_alive)
        proc.signal(signal.SIGTERM)
        self.assertEqual(await proc.wait(reactor, 30), 0, proc.tail())
        return proc.read_log()

    async def check_foreground(self, role):
        logfile = os.path.join(self.dir, "json.log")
        stdout = await self.run_foreground(role, ["--logfile", logfile])
        with open(logfile) as f:
            self.check_log(role, f.read())
        self.assertNotIn('"message"', stdout)

    async def check_daemon(self, role):
        """Daemonised under L{SUBREAPER}: the launching twistd exits 0 once the
        role runs; on SIGTERM the daemon exits 0, removes its pid file, and its
        log file has the whole run."""
        logfile = os.path.join(self.dir, "json.log")
        pidfile = os.path.join(self.dir, "twistd.pid")
        wrapper = Proc(role + "-launch", [sys.executable, "-c", SUBREAPER] + self.argv(
            role, ["--pidfile", pidfile, "--logfile", logfile]), self.dir)
        self.addCleanup(wrapper.kill_now)

        def launched():
            return self.statuses(wrapper).get("launcher") is not None
        await poll_until(reactor, launched, 30, f"twistd {role} to daemonise",
                         check=wrapper.check_alive)
        self.assertEqual(self.statuses(wrapper)["launcher"], 0, wrapper.tail())
        with open(pidfile) as f:
            pid = int(f.read().strip())

        def kill():
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        self.addCleanup(kill)
        await self.ready(role)
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(await wrapper.wait(reactor, 30), 0, wrapper.tail())
        self.assertEqual(self.statuses(wrapper).get(str(pid)), 0, wrapper.tail())
        self.assertFalse(os.path.exists(pidfile), "the daemon left its pid file")
        with open(logfile) as f:
            self.check_log(role, f.read())

    def statuses(self, wrapper):
        """What L{SUBREAPER} reported: C{{"launcher" or pid: exit status}}."""
        found = re.findall(r"^(launcher|\d+) exited (-?\d+)$", wrapper.read_log(), re.M)
        return {who: int(code) for who, code in found}

    async def test_supernode_logfile(self):
        """twistd -n --logfile F supernode --log-format json: JSON lines in F."""
        await self.check_foreground("supernode")

    async def test_supernode_daemon(self):
        """Daemonised (--pidfile, --logfile F), the supernode's JSON lines are in F."""
        await self.check_daemon("supernode")

    async def test_supernode_stdout(self):
        """twistd -n without --logfile: the JSON lines are on stdout."""
        self.check_log("supernode", await self.run_foreground("supernode", []))

    async def test_peer_logfile(self):
        """twistd -n --logfile F peer --log-format json: JSON lines in F."""
        await self.check_foreground("peer")

    async def test_peer_daemon(self):
        """Daemonised, the peer's JSON lines are in the --logfile."""
        await self.check_daemon("peer")

    async def test_dfdaemon_logfile(self):
        """twistd -n --logfile F dfdaemon --log-format json: JSON lines in F."""
        await self.check_foreground("dfdaemon")

    async def test_dfdaemon_daemon(self):
        """Daemonised, the dfdaemon's JSON lines are in the --logfile."""
        await self.check_daemon("dfdaemon")

"""Tests of dragonfly.dfget.daemontrust (which of the daemon's files dfget may
take) and of the daemon path's use of it: a daemon that names a file outside
its data directory, or not its own, gets its bytes streamed, never copied."""
import os
import socket
import stat
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.dfget import daemontrust, files
from dragonfly.taskid import task_id_for_url
from dragonfly.test.dfgetsupport import DATA, _ndjson, _Scripted, _serve
from dragonfly.test.test_dfget_viadaemon import DaemonMixin, _Daemon
from dragonfly.test.test_peer_node import URL

# Two rows as Linux writes them: 127.0.0.1:8080 <- 127.0.0.1:40000 (uid 1000),
# and ::1 port 8080 listening (uid 0).
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 1 1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
"""


class ParseTests(SynchronousTestCase):

    def test_rows(self):
        """/proc/net/tcp rows give addresses, state and uid (words in host order)."""
        if sys.byteorder != "little":
            raise self.skipTest("the sample rows are little-endian")
        [(local, remote, state, uid)] = daemontrust.parse_proc_net(TCP)
        self.assertEqual((str(local[0]), local[1]), ("127.0.0.1", 8080))
        self.assertEqual((str(remote[0]), remote[1]), ("127.0.0.1", 40000))
        self.assertEqual((state, uid), ("01", 1000))
        [(local, _, state, uid)] = daemontrust.parse_proc_net(TCP6)
        self.assertEqual((str(local[0]), local[1], state, uid), ("::1", 8080, "0A", 0))

    def test_one_connection(self):
        """Asked for one connection's ports, only established rows with both
        ports are parsed (the others' addresses never are), and the rows that
        match the ports come back for the caller to compare addresses."""
        if sys.byteorder != "little":
            raise self.skipTest("the sample rows are little-endian")
        header, row = TCP.splitlines()
        other = row.replace(":9C40", ":9C41")
        listening = row.replace(" 01 ", " 0A ")
        elsewhere = row.replace("0100007F:9C40", "0200007F:9C40")
        text = "\n".join([header] + [other] * 1000 + [listening, elsewhere, row]) + "\n"
        parsed = []
        real = daemontrust._address
        self.patch(daemontrust, "_address", lambda field: parsed.append(field) or real(field))
        rows = daemontrust.parse_proc_net(text, ports=(8080, 40000))
        self.assertEqual([(str(rem[0]), rem[1]) for _, rem, _, _ in rows],
                         [("127.0.0.2", 40000), ("127.0.0.1", 40000)])
        self.assertEqual([uid for _, _, _, uid in rows], [1000, 1000])
        self.assertEqual(len(parsed), 4)
        self.assertEqual(len(daemontrust.parse_proc_net(text)), 1003)

    def test_garbage_rows_skipped(self):
        """Lines that do not parse are skipped."""
        self.assertEqual(daemontrust.parse_proc_net("header\nnonsense\n 0: zz:zz zz:zz 01 a b c d\n"),
                         [])


class ConnectionUidTests(SynchronousTestCase):

    def test_loopback_connection(self):
        """The uid behind a loopback TCP connection is its owner's (ours here)."""
        if not os.path.exists("/proc/net/tcp"):
            raise self.skipTest("needs Linux /proc/net/tcp")
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        conn, _ = server.accept()
        self.addCleanup(conn.close)
        self.assertEqual(daemontrust.connection_uid(client), os.getuid())

    def test_unix_socket(self):
        """Over a unix socket the uid is the peer's credentials (ours here),
        without /proc/net tables; an unconnected unix socket is unknown."""
        if not hasattr(socket, "SO_PEERCRED"):
            raise self.skipTest("needs SO_PEERCRED (Linux)")
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertEqual(daemontrust.connection_uid(a, tables=()), os.getuid())
        lone = socket.socket(socket.AF_UNIX)
        self.addCleanup(lone.close)
        self.assertIsNone(daemontrust.connection_uid(lone))

    def test_unknown(self):
        """No table, a remote peer or a socket that is not connected: unknown."""
        class Remote:
            def getsockname(self):
                return ("10.0.0.2", 5000)

            def getpeername(self):
                return ("10.0.0.1", 65002)
        self.assertIsNone(daemontrust.connection_uid(Remote()))
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertIsNone(daemontrust.connection_uid(s))


class TrustedFileTests(SynchronousTestCase):

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.data = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.data, "ab"))
        self.file = os.path.join(self.data, "ab", "task")
        with open(self.file, "wb") as f:
            f.write(b"x")
        self.outside = os.path.join(self.root, "secret")
        with open(self.outside, "wb") as f:
            f.write(b"s")
        self.uid = os.getuid()

    def trusted(self, path, data_dir=None, uid=None):
        return daemontrust.trusted_file(path, self.data if data_dir is None else data_dir,
                                        self.uid if uid is None else uid)

    def test_inside(self):
        """A regular file of the daemon's user inside its data directory is taken."""
        self.assertEqual(self.trusted(self.file), (os.path.realpath(self.file), None))

    def test_refusals(self):
        """Outside the directory (also through .. or a symlink), not a regular file,
        another owner, no data directory or an unknown uid: refused, with why."""
        link = os.path.join(self.data, "ab", "link")
        os.symlink(self.outside, link)
        os.mkfifo(os.path.join(self.data, "fifo"))
        sibling = self.data + "2"
        os.makedirs(sibling)
        with open(os.path.join(sibling, "f"), "wb") as f:
            f.write(b"y")
        cases = [
            (self.trusted(self.outside), "not inside"),
            (self.trusted(os.path.join(self.data, "..", "secret")), "not inside"),
            (self.trusted(link), "not inside"),
            (self.trusted(os.path.join(sibling, "f")), "not inside"),
            (self.trusted(os.path.join(self.data, "ab")), "not a regular file"),
            (self.trusted(os.path.join(self.data, "fifo")), "not a regular file"),
            (self.trusted(self.file, uid=self.uid + 1), "not owned"),
            (self.trusted(self.file, data_dir="relative"), "data directory"),
            (daemontrust.trusted_file(self.file, None, self.uid), "data directory"),
            (daemontrust.trusted_file(self.file, self.data, None), "which user"),
            (self.trusted("relative/x"), "absolute"),
            (self.trusted(os.path.join(self.data, "gone")), "cannot stat"),
        ]
        for (path, why), expect in cases:
            self.assertIsNone(path, expect)
            self.assertIn(expect, why)
        # A data directory that is itself a symlink into the outside world:
        # a path is judged by the real directory.
        evil = os.path.join(self.root, "evil")
        os.symlink("/", evil)
        path, why = daemontrust.trusted_file("/etc/passwd", evil, self.uid)
        if os.stat("/").st_uid != self.uid:
            self.assertIsNone(path)


class DaemonTrustTests(DaemonMixin, TestCase):
    """dfget's daemon path takes a daemon's file only when daemontrust vouches for it."""

    def lying_daemon(self, path, data_dir):
        task_id = task_id_for_url(URL)
        self.daemon = _Scripted({
            "/api/v1/download": lambda r: _ndjson({"state": "done", "path": path,
                                                   "length": len(DATA), "task_id": task_id,
                                                   "data_dir": data_dir}),
            "/api/v1/tasks/": lambda r: DATA})
        self.addCleanup(self.daemon.drain)
        return _serve(self, self.daemon)

    async def test_file_outside_data_dir_streamed(self):
        """A daemon naming a readable file outside its data directory (here one
        dfget's user can read) gets its own bytes streamed, the file is not copied."""
        secret = os.path.join(self.dir, "secret")
        with open(secret, "wb") as f:
            f.write(b"top secret")
        data_dir = os.path.join(self.dir, "store")
        os.makedirs(data_dir)
        for path, claimed in ((secret, data_dir), (secret, None),
                              (os.path.join(data_dir, "..", "secret"), data_dir)):
            url = self.lying_daemon(path, claimed)
            await self.ok(url, URL, "-O", self.out)
            with open(self.out, "rb") as f:
                self.assertEqual(f.read(), DATA)
            self.assertIn(f"/api/v1/tasks/{task_id_for_url(URL)}/data", self.daemon.paths)
            os.unlink(self.out)

    async def test_other_owner_streamed(self):
        """A file not owned by the user behind the daemon's socket is streamed."""
        self.patch(daemontrust, "connection_uid", lambda sock: os.getuid() + 1)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        self.assertEqual(await self.run_dfget(url, URL, "-O", self.out, "-v"), 0)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))
        self.assertIn("not owned by the daemon's user", self.stderr.getvalue())

    async def test_existing_output_keeps_mode(self):
        """An output that exists keeps its mode; it is then not a link to the store's
        file (whose mode would change with it)."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(files, "_umask", lambda: 0o022)
        with open(self.out, "wb") as f:
            f.write(b"old")
        os.chmod(self.out, 0o600)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        await self.ok(url, URL, "-O", self.out)
        self.assertEqual(stat.S_IMODE(os.stat(self.out).st_mode), 0o600)
        task = daemon.store.get(task_id_for_url(URL))
        self.assertFalse(os.path.samefile(self.out, task.path))
        self.assertNotEqual(stat.S_IMODE(os.stat(task.path).st_mode), 0o600)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)

    async def test_private_task_streamed_with_grant(self):
        """A private task streamed from the daemon (its file not taken) is
        asked for with the download answer's grant."""
        self.patch(daemontrust, "connection_uid", lambda sock: None)
        daemon = _Daemon(self)
        url = _serve(self, daemon.api.resource())
        self.assertEqual(await self.run_dfget(url, URL, "-O", self.out,
                                              "-H", "Authorization: Bearer t"), 0)
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), DATA)

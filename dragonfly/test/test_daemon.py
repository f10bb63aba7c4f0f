"""Tests for dragonfly.runtime.daemon: timers that survive, listeners that tell their port
(or why they have none), endpoints that keep their name, the start error."""
import errno
import os
import stat

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dragonfly.runtime.daemon import (CannotListen, DescribedEndpoint, ListeningService,
                                      describe_endpoint, listen_failure_reason, safe_timer,
                                      server_endpoint, unix_socket_endpoint)
from dragonfly.test import short_dir


class SafeTimerTests(SynchronousTestCase):
    def test_exceptions_do_not_stop_the_timer(self):
        """A timer body that raises is logged and the timer keeps running."""
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        clock = Clock()
        calls = []

        def body():
            calls.append(1)
            raise RuntimeError("boom")

        t = safe_timer(10, body, clock, "boom", Logger())
        t.startService()
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(calls), 3)
        self.assertTrue(t.running)
        t.stopService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)


class _PendingEndpoint:
    def __init__(self):
        self.pending = Deferred()

    def listen(self, factory):
        return self.pending


class ListeningServiceTests(SynchronousTestCase):

    def test_when_listening(self):
        """whenListening fires with the bound port, before and after binding;
        stopping stops listening."""
        reactor = MemoryReactor()
        s = ListeningService(TCP4ServerEndpoint(reactor, 4100), Factory(), "x")
        early = s.whenListening()
        s.startService()
        port = self.successResultOf(early)
        self.assertEqual(port.getHost().port, 4100)
        self.assertIs(self.successResultOf(s.whenListening()), port)
        stopped = []
        port.stopListening = lambda: stopped.append(True)
        s.stopService()
        self.assertEqual(stopped, [True])
        self.assertIsNone(s.port)

    def test_listen_fails(self):
        """A failed listen errbacks the waiters and, asked later, whenListening
        fails with it too; the listener logs nothing (its owner says it once)."""
        e = _PendingEndpoint()
        s = ListeningService(e, Factory(), "x")
        d = s.whenListening()
        s.startService()
        e.pending.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
        self.failureResultOf(d, CannotListenError)
        self.failureResultOf(s.whenListening(), CannotListenError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_listen_fails_at_once(self):
        """When the endpoint fails while startService runs (TCP does), a later
        whenListening still fails with it rather than waiting forever."""
        reactor = MemoryReactor()
        err = CannotListenError("", 4100, OSError(errno.EADDRINUSE, "Address already in use"))
        reactor.listenTCP = lambda *a, **kw: (_ for _ in ()).throw(err)
        s = ListeningService(TCP4ServerEndpoint(reactor, 4100), Factory(), "x")
        s.startService()
        f = self.failureResultOf(s.whenListening(), CannotListenError)
        self.assertIs(f.value, err)

    def test_description(self):
        """A listener names its endpoint as configured."""
        s = ListeningService(server_endpoint(MemoryReactor(), "tcp:4100:interface=127.0.0.1"),
                             Factory(), "x")
        self.assertEqual(s.description, "tcp:4100:interface=127.0.0.1")

    def test_stop_before_bound(self):
        """Stopping before the port is bound cancels the listen."""
        e = _PendingEndpoint()
        s = ListeningService(e, Factory(), "x")
        s.startService()
        s.stopService()
        self.assertTrue(e.pending.called)
        self.flushLoggedErrors()


class EndpointNameTests(SynchronousTestCase):

    def test_server_endpoint(self):
        """server_endpoint parses like serverFromString, keeps the string, and
        listens through the parsed endpoint."""
        reactor = MemoryReactor()
        e = server_endpoint(reactor, "tcp:4100:interface=127.0.0.1")
        verifyObject(IStreamServerEndpoint, e)
        self.assertIsInstance(e, DescribedEndpoint)
        self.assertEqual(str(e), "tcp:4100:interface=127.0.0.1")
        self.successResultOf(e.listen(Factory()))
        self.assertEqual(reactor.tcpServers[0][0], 4100)
        self.assertEqual(reactor.tcpServers[0][3], "127.0.0.1")

    def test_describe(self):
        """An endpoint is named by its configured string, a bare TCP endpoint
        by tcp:PORT[:interface=HOST], anything else by its type."""
        reactor = MemoryReactor()
        self.assertEqual(describe_endpoint(server_endpoint(reactor, "unix:/run/x.sock")),
                         "unix:/run/x.sock")
        self.assertEqual(describe_endpoint(TCP4ServerEndpoint(reactor, 80)), "tcp:80")
        self.assertEqual(describe_endpoint(TCP4ServerEndpoint(reactor, 80, interface="::1")),
                         "tcp:80:interface=::1")
        self.assertEqual(describe_endpoint(UNIXServerEndpoint(reactor, "/x")),
                         "UNIXServerEndpoint")


class CannotListenTests(SynchronousTestCase):

    def test_reason(self):
        """The reason is the OS's words when there are some, else the error's text."""
        in_use = CannotListenError("", 8002, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(listen_failure_reason(in_use), "Address already in use")
        self.assertEqual(listen_failure_reason(OSError(errno.EACCES, "Permission denied")),
                         "Permission denied")
        self.assertEqual(listen_failure_reason(CannotListenError("", 1, "weird")), "weird")
        self.assertEqual(listen_failure_reason(ValueError("bad")), "bad")

    def test_one_line(self):
        """The error is one line naming the endpoint and the reason; it is an
        Exception (twistd's start code reports it) and a SystemExit whose code
        is that line (Python prints it alone and exits 1)."""
        e = CannotListen("tcp:8002", "Address already in use")
        self.assertEqual(str(e), "cannot listen on tcp:8002: Address already in use")
        self.assertEqual(e.code, str(e))
        self.assertIsInstance(e, Exception)
        self.assertIsInstance(e, SystemExit)
        self.assertEqual((e.endpoint, e.reason), ("tcp:8002", "Address already in use"))


class UnixSocketEndpointTests(TestCase):
    """unix_socket_endpoint on the real reactor: owner-only, replaced when stale."""

    def setUp(self):
        self.path = os.path.join(short_dir(self), "api.sock")

    async def test_owner_only_socket(self):
        """The socket is created with mode 0600, named unix:PATH, and removed
        when the port stops listening."""
        from twisted.internet import reactor
        endpoint = unix_socket_endpoint(reactor, self.path)
        self.assertEqual(str(endpoint), "unix:" + self.path)
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        st = os.stat(self.path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        await port.stopListening()
        self.assertFalse(os.path.exists(self.path))

    async def test_stale_socket_replaced(self):
        """A socket file left by a crashed process (its lock names a dead pid)
        does not stop the next start."""
        import socket
        import subprocess
        from twisted.internet import reactor
        left = socket.socket(socket.AF_UNIX)
        left.bind(self.path)
        left.close()     # the file stays, nobody listens
        dead = subprocess.Popen(["true"])
        dead.wait()
        os.symlink(str(dead.pid), self.path + ".lock")   # twisted's FilesystemLock format
        port = await unix_socket_endpoint(reactor, self.path).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

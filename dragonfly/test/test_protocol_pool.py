"""Tests for the piece client pool (dragonfly.protocol.pool): connections per
source and task, argument checks, closing, and whole transfers against a real
server, in memory and over TCP."""
import os
import socket

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.test import iosim
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dragonfly.admission import PeerAdmission
from dragonfly.interfaces import IPieceSource, PeerInfo
from dragonfly.protocol import codec
from dragonfly.protocol.clientstate import PieceFetchError
from dragonfly.protocol.pool import PieceClientPool
from dragonfly.protocol.server import PieceServerFactory
from dragonfly.protocol.uplink import UplinkPacer, pacing_option
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.test.protocolfakes import (
    OTHER_TASK, SOURCE, TASK, ClientTestMixin, FakeEndpoint, FakeStore, ServerTestMixin, pattern,
    peer_admission,
)


class PoolTests(ClientTestMixin, SynchronousTestCase):
    def test_interface(self):
        """The pool provides IPieceSource."""
        verifyObject(IPieceSource, self.make_pool())

    def test_fake_interface(self):
        """The peer tests' FakePiecePool has everything IPieceSource lists."""
        from dragonfly.test.peerfakes import FakePiecePool

        verifyObject(IPieceSource, FakePiecePool(b"abc", 2), tentative=True)

    def test_one_connection_per_source_and_task(self):
        """When pieces of one task are fetched from one source, one connection carries them; another task gets its own."""
        pool = self.make_pool()
        pool.fetch(SOURCE, TASK, 0, 10)
        pool.fetch(SOURCE, TASK, 1, 10)
        pool.fetch(SOURCE, OTHER_TASK, 0, 10)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.assertEqual(pool.connections, 2)

    def test_connect_failed(self):
        """When the source cannot be reached, the fetch fails with the connect error."""
        pool = self.make_pool(endpoint_factory=FakeEndpoint("fail"))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 1, 3), None, "connect failed")
        self.assertEqual(pool.connections, 0)

    def test_bad_arguments(self):
        """When fetch gets a bad index, length or task id, it fails at once without connecting."""
        pool = self.make_pool()
        self.assertFetchError(pool.fetch(SOURCE, TASK, -1, 3))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 0, codec.MAX_PIECE + 1))
        self.assertFetchError(pool.fetch(SOURCE, "../../etc", 0, 3))
        self.assertEqual(self.endpoint.protocols, [])

class ClientCloseTests(ClientTestMixin, SynchronousTestCase):
    def test_close(self):
        """When the pool closes, outstanding fetches fail and close() fires once connections are gone."""
        pool = self.make_pool()
        d = pool.fetch(SOURCE, TASK, 1, 1)
        proto, tr = self.handshake()
        closed = pool.close()
        self.assertFetchError(d, None, "pool closed")
        self.assertTrue(tr.disconnected)
        self.assertNoResult(closed)
        self.lose(proto, ConnectionLost())
        self.assertIsNone(self.successResultOf(closed))
        self.assertFetchError(pool.fetch(SOURCE, TASK, 1, 1), None, "pool closed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_while_connecting(self):
        """When the pool closes while a connection attempt is pending, the attempt is cancelled."""
        endpoint = FakeEndpoint("hang")
        pool = self.make_pool(endpoint_factory=endpoint)
        d = pool.fetch(SOURCE, TASK, 1, 1)
        closed = pool.close()
        self.successResultOf(closed)
        self.assertEqual(endpoint.cancelled, endpoint.pending)
        self.assertFetchError(d, None, "pool closed")

    def test_close_empty(self):
        """When a pool with no connections closes, close() fires at once."""
        self.successResultOf(self.make_pool().close())


class LoopbackTests(ServerTestMixin, ClientTestMixin, SynchronousTestCase):
    """A real server factory and a real pool wired together in memory (iosim)."""

    def setUp(self):
        ServerTestMixin.setUp(self)
        self.pumps = []

    def make_pool(self, factory, **kw):
        def endpoint_factory(host, port):
            return self

        self.server_factory = factory
        tokens = PeerAdmission(self.clock)
        for task_id in (TASK, OTHER_TASK):
            tokens.admit(task_id, self.signer.issue(task_id, "me-1"))
        return PieceClientPool(self.clock, "me-1", endpoint_factory=endpoint_factory,
                               tokens=tokens, **kw)

    def connect(self, client_factory):
        client = client_factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.pumps.append(iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=self.clock))
        return defer.succeed(client)

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def test_pipelined_fetches(self):
        """When a client fetches several pieces of a task, they arrive intact over one connection."""
        factory = self.make_factory()
        pool = self.make_pool(factory)
        ds = [pool.fetch(SOURCE, TASK, i, self.task.piece_range(i)[1]) for i in (0, 1, 3)]
        missing = pool.fetch(SOURCE, TASK, 2, 256 * 1024)
        self.flush()
        for d, i in zip(ds, (0, 1, 3)):
            off, n = self.task.piece_range(i)
            self.assertEqual(self.successResultOf(d), self.data[off:off + n])
        self.assertFetchError(missing, codec.NOT_FOUND)
        self.assertEqual(len(self.pumps), 1)
        self.assertEqual(sum(self.uploaded), 256 * 1024 * 2 + len(self.data) - 3 * 256 * 1024)
        closed = pool.close()
        self.flush()
        self.successResultOf(closed)
        self.assertEqual(factory.connections, set())
        self.assertEqual(self.task.pins, 0)

    def test_task_not_held(self):
        """When the source does not hold the task, the fetch fails with NOT_FOUND."""
        pool = self.make_pool(self.make_factory())
        d = pool.fetch(SOURCE, OTHER_TASK, 0, 10)
        self.flush()
        self.assertFetchError(d, codec.NOT_FOUND, "task not held")

    def test_not_admitted(self):
        """When the pool has no token for a task, the source refuses the
        connection FORBIDDEN, whether or not it holds the task."""
        pool = self.make_pool(self.make_factory())
        pool._tokens.forget(TASK)
        d = pool.fetch(SOURCE, TASK, 0, 10)
        self.flush()
        self.assertFetchError(d, codec.FORBIDDEN, "not admitted")

    def test_server_shutdown(self):
        """When the server shuts down, queued fetches fail with SHUTTING_DOWN and a new fetch reconnects."""
        factory = self.make_factory()
        pool = self.make_pool(factory)
        d0 = pool.fetch(SOURCE, TASK, 0, 256 * 1024)
        self.pumps[0].pump()  # Hello
        self.pumps[0].pump()  # HelloAck
        self.pumps[0].pump()  # Request
        closed = factory.close()
        self.flush()
        self.assertEqual(len(self.successResultOf(d0)), 256 * 1024)
        self.successResultOf(closed)
        d1 = pool.fetch(SOURCE, TASK, 1, 256 * 1024)
        self.flush()
        self.assertFetchError(d1, codec.SHUTTING_DOWN)
        self.assertEqual(len(self.pumps), 2)


class RealTCPTests(TestCase):
    """A real server and a real client over TCP on 127.0.0.1."""

    timeout = 60

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.store = FakeStore(self)
        self.piece_size = 1024 * 1024
        self.data = pattern(5 * 1024 * 1024 + 12345, seed=5)
        self.task = self.store.add(TASK, self.data, self.piece_size)
        self.sendfile_bytes = 0
        real_sendfile = os.sendfile

        def counting_sendfile(*args):
            n = real_sendfile(*args)
            self.sendfile_bytes += n
            return n

        self.patch(os, "sendfile", counting_sendfile)

    async def transfer(self, **server_kw):
        uploaded = []
        admission = peer_admission(self.reactor, (TASK, OTHER_TASK))
        factory = PieceServerFactory(self.store, self.reactor, on_upload=uploaded.append,
                                     admission=admission, **server_kw)
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        pool = PieceClientPool(self.reactor, "me-1", piece_timeout=20, tokens=admission)
        try:
            source = PeerInfo("seed-1", "127.0.0.1", port.getHost().port)
            ds = [pool.fetch(source, TASK, i, self.task.piece_range(i)[1])
                  for i in range(self.task.piece_count)]
            pieces = await defer.gatherResults(ds)
            missing = pool.fetch(source, OTHER_TASK, 0, 10)
            try:
                await missing
            except PieceFetchError as e:
                self.assertEqual(e.code, codec.NOT_FOUND)
            else:
                self.fail("fetch of a task not held succeeded")
        finally:
            await pool.close()
            await port.stopListening()
            await factory.close()
        self.assertEqual(b"".join(pieces), self.data)
        self.assertEqual(sum(uploaded), len(self.data))
        self.assertEqual(self.task.pins, 0)
        return factory

    async def test_sendfile(self):
        """When a real client fetches every piece of a few MiB over TCP, it gets them intact, every
        byte sent by os.sendfile (the first call waits for the header to leave instead of copying)."""
        await self.transfer()
        self.assertEqual(self.sendfile_bytes, len(self.data))

    async def test_limited_copy_path(self):
        """When an upload limiter is set and the kernel may not pace, pieces go through the chunked copy path and still arrive intact."""
        limiter = TokenBucket(self.reactor, 1024 ** 3)
        await self.transfer(upload_limiter=limiter, kernel_pacing=False)
        self.assertEqual(self.sendfile_bytes, 0)

    async def test_kernel_paced(self):
        """When an upload limiter is set and the kernel can pace sockets, each upload's socket is capped at the limit (one upload at a time here) and pieces still go out by sendfile, intact."""
        if pacing_option() is None:
            raise SkipTest("no SO_MAX_PACING_RATE on this platform")
        caps = []
        real_cap = UplinkPacer._cap

        def spy(pacer, sock, rate):
            ok = real_cap(pacer, sock, rate)
            caps.append((rate, sock.getsockopt(socket.SOL_SOCKET, pacer.option)))
            return ok

        self.patch(UplinkPacer, "_cap", spy)
        limiter = TokenBucket(self.reactor, 1024 ** 3)
        await self.transfer(upload_limiter=limiter)
        self.assertGreater(self.sendfile_bytes, len(self.data) // 2)
        self.assertTrue(caps)
        self.assertEqual(set(caps), {(1024 ** 3, 1024 ** 3)})

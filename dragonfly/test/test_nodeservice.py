"""Tests for dragonfly.runtime.nodeservice: listener order, port file, readiness, stop."""
import json
import os
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.runtime.nodeservice import NodeService, bound_address, hostport


@dataclass
class _Config:
    port_file: str = None


class _Store:
    root = "/nowhere"

    def __init__(self, events):
        self.events = events

    def load(self):
        self.events.append("load")

    def gc(self):
        return 0

    def close(self):
        self.events.append("store closed")


class _Port:
    def __init__(self, name, events, address):
        self.name = name
        self.events = events
        self.address = address

    def getHost(self):
        return self.address

    def stopListening(self):
        self.events.append(f"unlisten {self.name}")
        return succeed(None)


class _Endpoint:
    """An endpoint whose listen() waits until the test calls bind() or refuse()."""

    def __init__(self, name, events, address=None):
        self.name = name
        self.events = events
        self.address = address or IPv4Address("TCP", "127.0.0.1", 0)
        self.pending = None

    def listen(self, factory):
        self.events.append(f"listen {self.name}")
        self.pending = Deferred()
        return self.pending

    def bind(self, port):
        self.address.port = port
        self.pending.callback(_Port(self.name, self.events, self.address))

    def refuse(self):
        self.pending.errback(CannotListenError("127.0.0.1", 0, OSError("in use")))


class _Node(NodeService):
    role = "testnode"

    def __init__(self, reactor, config, events):
        NodeService.__init__(self, reactor, config, _Store(events),
                             closers=[lambda: events.append("closer")])
        self.events = events

    def listener_bound(self, name, host, port):
        self.events.append(f"bound {name}")

    def before_unlisten(self):
        self.events.append("before unlisten")
        return []

    def after_unlisten(self):
        self.events.append("after unlisten")
        return []


class _Child(Service):
    def __init__(self, events):
        self.events = events

    def stopService(self):
        Service.stopService(self)
        self.events.append("children stopped")


class NodeServiceTests(SynchronousTestCase):

    def setUp(self):
        self.events = []
        self.reactor = MemoryReactorClock()
        self.port_file = os.path.abspath(self.mktemp())
        self.svc = _Node(self.reactor, _Config(port_file=self.port_file), self.events)
        self.a = _Endpoint("a", self.events)
        self.b = _Endpoint("b", self.events)
        self.svc.add_listener("a", self.a, Factory(), "first")
        self.svc.add_listener("b", self.b, Factory())

    def test_listeners_in_order_then_port_file(self):
        """When started, the store loads, then each listener listens only once the
        one before it is bound; the port file appears after the last one, with
        every port under its listener's name and the pid."""
        self.svc.startService()
        self.assertEqual(self.events, ["load", "listen a"])
        self.a.bind(4001)
        self.assertEqual(self.events, ["load", "listen a", "bound a", "listen b"])
        self.assertFalse(os.path.exists(self.port_file))
        self.b.bind(4002)
        with open(self.port_file) as f:
            self.assertEqual(json.load(f), {"a": 4001, "b": 4002, "pid": os.getpid()})

    def test_listening_log_lines(self):
        """Each bound port is logged as "<role> <label> listening on HOST:PORT",
        the address in the format itself."""
        with capturedLogs() as events:
            self.svc.startService()
            self.a.bind(4001)
            self.b.bind(4002)
        lines = [e["log_format"] for e in events if "listening on" in e["log_format"]]
        self.assertEqual(lines, ["testnode first listening on 127.0.0.1:4001",
                                 "testnode b listening on 127.0.0.1:4002"])

    def test_ready(self):
        """whenReady fires once every listener is bound, with {name: (host, port)};
        asked again later, it fires at once."""
        d = self.svc.whenReady()
        self.svc.startService()
        self.a.bind(4001)
        self.assertNoResult(d)
        self.b.bind(4002)
        want = {"a": ("127.0.0.1", 4001), "b": ("127.0.0.1", 4002)}
        self.assertEqual(self.successResultOf(d), want)
        self.assertEqual(self.successResultOf(self.svc.whenReady()), want)

    def test_listen_fails(self):
        """When a listener cannot listen, the failure is logged, whenReady fails
        (for waiters and later callers), no port file is written, later listeners
        never listen, and a running reactor is stopped."""
        self.reactor.running = True
        d = self.svc.whenReady()
        self.svc.startService()
        self.a.refuse()
        self.failureResultOf(d, CannotListenError)
        self.failureResultOf(self.svc.whenReady(), CannotListenError)
        self.assertNotIn("listen b", self.events)
        self.assertFalse(os.path.exists(self.port_file))
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 2)
        self.assertEqual([c.func for c in self.reactor.getDelayedCalls()], [self.reactor.stop])

    def test_add_listener_after_start(self):
        """Listeners are added before the service starts, never after."""
        self.svc.startService()
        self.assertRaises(RuntimeError, self.svc.add_listener, "c",
                          _Endpoint("c", self.events), Factory())

    def test_stop_order(self):
        """Stopping runs the role's early work, closes the listeners last-first,
        stops the children, runs the role's late work, then the closers and the
        store; the port file is removed."""
        _Child(self.events).setServiceParent(self.svc)
        self.svc.startService()
        self.a.bind(4001)
        self.b.bind(4002)
        del self.events[:]
        self.successResultOf(self.svc.stopService())
        self.assertEqual(self.events, ["before unlisten", "unlisten b", "unlisten a",
                                       "children stopped", "after unlisten", "closer",
                                       "store closed"])
        self.assertFalse(os.path.exists(self.port_file))

    def test_no_port_file(self):
        """Without a port file configured, nothing is written or removed."""
        svc = _Node(self.reactor, _Config(), self.events)
        e = _Endpoint("a", self.events)
        svc.add_listener("a", e, Factory())
        svc.startService()
        e.bind(1)
        self.assertEqual(self.successResultOf(svc.whenReady()), {"a": ("127.0.0.1", 1)})
        self.successResultOf(svc.stopService())

    def test_gc_timer(self):
        """add_timer runs its body on the injected reactor, and a failing body
        does not stop it."""
        calls = []

        def body():
            calls.append(1)
            raise OSError("disk on fire")

        self.svc.add_timer(10, body, "t")
        self.svc.startService()
        self.reactor.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


class RealListenerTests(TestCase):

    def test_loopback(self):
        """With real loopback endpoints, the port file holds the bound ephemeral
        ports; stopping closes them (trial waits for it)."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint

        events = []
        port_file = os.path.abspath(self.mktemp())
        svc = _Node(reactor, _Config(port_file=port_file), events)
        for name in ("a", "b"):
            svc.add_listener(name, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                             Factory())
        svc.startService()
        self.addCleanup(svc.stopService)
        ready = self.successResultOf(svc.whenReady())
        with open(port_file) as f:
            written = json.load(f)
        self.assertEqual({k: written[k] for k in "ab"}, {k: ready[k][1] for k in "ab"})
        self.assertTrue(all(ready[k][1] > 0 for k in "ab"))


class AddressTests(SynchronousTestCase):

    def test_hostport(self):
        """An IPv6 host is bracketed; others are not."""
        self.assertEqual(hostport("::1", 80), "[::1]:80")
        self.assertEqual(hostport("10.0.0.1", 80), "10.0.0.1:80")

    def test_bound_address(self):
        """The bound (host, port); an address without a host gives the default."""
        self.assertEqual(bound_address(_Port("x", [], IPv6Address("TCP", "::1", 5))),
                         ("::1", 5))

        class _Unix:
            name = "/tmp/sock"

        self.assertEqual(bound_address(_Port("x", [], _Unix())), ("127.0.0.1", 0))

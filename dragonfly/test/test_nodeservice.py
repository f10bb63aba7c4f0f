"""Tests for dragonfly.runtime.nodeservice: listener order, port file, readiness,
start failure, stop."""
import errno
import json
import os
import socket
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dragonfly.runtime.daemon import CannotListen
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
        self.description = f"tcp:{name}"
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
        self.pending.errback(_in_use())


def _in_use():
    return CannotListenError("127.0.0.1", 0, OSError(errno.EADDRINUSE, "Address already in use"))


class _TakenEndpoint(_Endpoint):
    """An endpoint that fails as TCP does when its port is taken: at once."""

    def listen(self, factory):
        self.events.append(f"listen {self.name}")
        raise _in_use()


class _Node(NodeService):
    role = "testnode"

    def __init__(self, reactor, config, events):
        NodeService.__init__(self, reactor, config, _Store(events),
                             closers=[lambda: events.append("closer")])
        self.events = events
        self.before = []        # Deferreds of the role's early work

    def listener_bound(self, name, host, port):
        self.events.append(f"bound {name}")

    def before_unlisten(self):
        self.events.append("before unlisten")
        return list(self.before)

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
        """When started, each listener listens only once the one before it is
        bound; then the store loads; the port file appears after that, with
        every port under its listener's name and the pid."""
        self.svc.startService()
        self.assertEqual(self.events, ["listen a"])
        self.a.bind(4001)
        self.assertEqual(self.events, ["listen a", "bound a", "listen b"])
        self.assertFalse(os.path.exists(self.port_file))
        self.b.bind(4002)
        self.assertEqual(self.events, ["listen a", "bound a", "listen b", "bound b", "load"])
        with open(self.port_file) as f:
            self.assertEqual(json.load(f), {"a": 4001, "b": 4002, "pid": os.getpid()})

    def test_children_start_after_listening(self):
        """Child services (timers, the cluster) start once every listener is
        bound and the store loaded, not before."""
        child = _Child(self.events)
        child.setServiceParent(self.svc)
        self.svc.startService()
        self.a.bind(4001)
        self.assertFalse(child.running)
        self.b.bind(4002)
        self.assertTrue(child.running)

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

    def test_listen_fails_later(self):
        """When a listener fails after startService returned, one line names
        the endpoint and the reason, whenReady fails (for waiters and later
        callers), the ports already bound close, later listeners never listen,
        the store is never loaded, no port file is written, and a running
        reactor is stopped, the process to exit 1 once it has shut down."""
        self.reactor.running = True
        d = self.svc.whenReady()
        with capturedLogs() as logged:
            self.svc.startService()
            self.a.bind(4001)
            self.b.refuse()
        self.failureResultOf(d, CannotListen)
        f = self.failureResultOf(self.svc.whenReady(), CannotListen)
        self.assertEqual(str(f.value), "cannot listen on tcp:b: Address already in use")
        self.assertEqual(self.events, ["listen a", "bound a", "listen b", "unlisten a"])
        self.assertFalse(os.path.exists(self.port_file))
        errors = [e for e in logged if e["log_level"].name == "error"]
        self.assertEqual([e["log_format"] for e in errors],
                         ["cannot listen on tcp:b: Address already in use"])
        self.assertEqual((errors[0]["endpoint"], errors[0]["reason"]),
                         ("tcp:b", "Address already in use"))
        self.assertEqual([c.func for c in self.reactor.getDelayedCalls()], [self.reactor.stop])
        after = self.reactor.triggers["after"]["shutdown"]
        self.assertEqual([t[0].__name__ for t in after], ["_exit_failed"])

    def test_listen_fails_at_once(self):
        """When a listener fails while startService runs (a taken TCP port),
        startService raises CannotListen naming the endpoint, after closing
        the ports it bound; nothing else started: the store was neither loaded
        nor closed, no child ran, and the port file of whoever holds the port
        is left alone; the reactor is not touched (twistd never starts it)."""
        with open(self.port_file, "w") as f:
            f.write("{}")
        child = _Child(self.events)
        child.setServiceParent(self.svc)
        svc = _Node(self.reactor, _Config(port_file=self.port_file), self.events)
        a = _Endpoint("a", self.events)
        svc.add_listener("a", a, Factory())
        svc.add_listener("b", _TakenEndpoint("b", self.events), Factory())
        a.listen = lambda factory: succeed(_Port("a", self.events, IPv4Address("TCP", "::", 7)))
        self.reactor.running = True
        with capturedLogs() as logged:
            e = self.assertRaises(CannotListen, svc.startService)
        self.assertEqual(str(e), "cannot listen on tcp:b: Address already in use")
        self.assertEqual(self.events, ["bound a", "listen b", "unlisten a"])
        self.assertEqual([e["log_format"] for e in logged if e["log_level"].name == "error"],
                         [str(e)])
        self.assertFalse(svc.running)
        self.failureResultOf(svc.whenReady(), CannotListen)
        self.successResultOf(svc.stopService())
        self.assertNotIn("store closed", self.events)
        self.assertTrue(os.path.exists(self.port_file))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_store_fails_to_load(self):
        """When the store cannot load, startService raises its error (logged
        with its traceback) and the bound ports close."""
        svc = _Node(self.reactor, _Config(), self.events)
        a = _Endpoint("a", self.events)
        a.listen = lambda factory: succeed(_Port("a", self.events, IPv4Address("TCP", "::", 7)))
        svc.add_listener("a", a, Factory())

        def broken():
            raise OSError(errno.EIO, "disk gone")

        svc.store.load = broken
        self.assertRaises(OSError, svc.startService)
        self.assertEqual(self.events, ["bound a", "unlisten a"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

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

    def test_closers_wait_for_the_early_work(self):
        """The closers (the node's HTTP pools) run only once the role's early
        work settled (a peer's leave calls go out through those pools); the
        stop fires after them."""
        self.svc.startService()
        self.a.bind(4001)
        self.b.bind(4002)
        leave = Deferred()
        self.svc.before.append(leave)
        del self.events[:]
        d = self.svc.stopService()
        self.assertNotIn("closer", self.events)
        self.assertNoResult(d)
        leave.callback(None)
        self.successResultOf(d)
        self.assertEqual(self.events[-2:], ["store closed", "closer"])
    def test_clean_stop_is_not_failed(self):
        """A stop whose every part succeeds leaves C{stop_failed} False."""
        _Child(self.events).setServiceParent(self.svc)
        self.svc.startService()
        self.a.bind(4001)
        self.b.bind(4002)
        self.successResultOf(self.svc.stopService())
        self.assertFalse(self.svc.stop_failed)
        self.assertFalse(self.svc.running)

    def test_failed_stop(self):
        """A child whose stop fails and a closer that raises are logged, the
        rest of the stop still runs (store closed, port file removed), and
        C{stop_failed} is set (twistd then exits 1)."""
        class Failing(Service):
            def stopService(self):
                Service.stopService(self)
                raise OSError("child on fire")

        def closer():
            raise ValueError("closer on fire")
        Failing().setServiceParent(self.svc)
        self.svc._closers.append(closer)
        self.svc.startService()
        self.a.bind(4001)
        self.b.bind(4002)
        self.successResultOf(self.svc.stopService())
        self.assertTrue(self.svc.stop_failed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIn("store closed", self.events)
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
        self.a.bind(4001)
        self.b.bind(4002)
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

    def test_taken_port(self):
        """With real loopback endpoints, a port another socket holds makes
        startService raise "cannot listen on tcp:PORT:interface=127.0.0.1:
        Address already in use"; the listener bound before it is closed."""
        from twisted.internet import reactor

        from dragonfly.runtime.daemon import server_endpoint

        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        events = []
        svc = _Node(reactor, _Config(), events)
        first = svc.add_listener("a", server_endpoint(reactor, "tcp:0:interface=127.0.0.1"),
                                 Factory())
        svc.add_listener("b", server_endpoint(reactor, f"tcp:{taken}:interface=127.0.0.1"),
                         Factory())
        e = self.assertRaises(CannotListen, svc.startService)
        self.assertEqual(str(e), f"cannot listen on tcp:{taken}:interface=127.0.0.1: "
                                 "Address already in use")
        self.assertIsNone(first.port)
        self.assertNotIn("load", events)


class AddressTests(SynchronousTestCase):

    def test_hostport(self):
        """An IPv6 host is bracketed; others are not."""
        self.assertEqual(hostport("::1", 80), "[::1]:80")
        self.assertEqual(hostport("10.0.0.1", 80), "10.0.0.1:80")

    def test_bound_address(self):
        """The bound (host, port); an address without a host gives the default;
        a unix socket gives (its path, None), named unix:PATH."""
        self.assertEqual(bound_address(_Port("x", [], IPv6Address("TCP", "::1", 5))),
                         ("::1", 5))

        class _Unix:
            name = b"/tmp/sock"

        class _Nameless:
            pass

        self.assertEqual(bound_address(_Port("x", [], _Unix())), ("/tmp/sock", None))
        self.assertEqual(bound_address(_Port("x", [], _Nameless())), ("127.0.0.1", 0))
        self.assertEqual(hostport("/tmp/sock", None), "unix:/tmp/sock")

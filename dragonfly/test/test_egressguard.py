"""EgressGuard and GuardedEndpointFactory: the policy at connect time, redirects included."""
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dragonfly.egress import EgressPolicy
from dragonfly.egressguard import EgressGuard, GuardedEndpointFactory
from dragonfly.origin import OriginClient, OriginError, OriginRefused, make_http_client
from dragonfly.runtime.tuning import HIGH_PRIORITY


@implementer(IHostnameResolver)
class FakeResolver:
    """Names -> addresses from a dict; records every lookup."""

    def __init__(self, table):
        self.table = table
        self.lookups = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.lookups.append(hostName)
        receiver.resolutionBegan(None)
        for a in self.table.get(hostName, ()):
            cls = IPv6Address if ":" in a else IPv4Address
            receiver.addressResolved(cls("TCP", a, portNumber))
        receiver.resolutionComplete()
        return receiver


def _reactor(table=None):
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver(table or {})
    return reactor


class EgressGuardTests(SynchronousTestCase):

    def check(self, host, port=80, table=None, policy=None):
        reactor = _reactor(table)
        guard = EgressGuard(reactor, policy or EgressPolicy())
        return guard.check(host, port), reactor.nameResolver

    def test_allowed_name(self):
        """A name whose every address is allowed gives those addresses."""
        d, _ = self.check("origin.test", table={"origin.test": ["93.184.216.34", "2001:db8::1"]})
        self.assertEqual(self.successResultOf(d), ["93.184.216.34", "2001:db8::1"])

    def test_any_denied_address_refuses_the_name(self):
        """A name that resolves to any denied address is refused, naming it."""
        d, _ = self.check("evil.test", table={"evil.test": ["93.184.216.34", "127.0.0.1"]})
        f = self.failureResultOf(d, OriginRefused)
        self.assertEqual(str(f.value), "origin not allowed: evil.test resolves to 127.0.0.1 "
                                       "(loopback); allow it with --allow-origin evil.test:80")

    def test_numeric_forms_skip_dns(self):
        """Numeric hosts (decimal, hex, IPv6, IPv4-mapped) are judged as the address
        they name, without a DNS lookup."""
        for host in ["2130706433", "0x7f000001", "127.1", "[::1]", "::ffff:169.254.169.254"]:
            d, resolver = self.check(host)
            self.failureResultOf(d, OriginRefused)
            self.assertEqual(resolver.lookups, [])

    def test_no_address(self):
        """A name that resolves to nothing fails with DNSLookupError."""
        d, _ = self.check("nowhere.test")
        self.failureResultOf(d, DNSLookupError)

    def test_check_url(self):
        """check_url() checks the URL's host with its (default) port."""
        reactor = _reactor()
        guard = EgressGuard(reactor, EgressPolicy(allow=["127.0.0.1:443"]))
        self.assertEqual(self.successResultOf(guard.check_url("https://127.0.0.1/x")),
                         ["127.0.0.1"])
        self.failureResultOf(guard.check_url("http://127.0.0.1/x"), OriginRefused)


class GuardedAgentTests(SynchronousTestCase):
    """make_http_client(egress=...) through a MemoryReactor: what is connected to."""

    def client(self, policy, table=None):
        reactor = _reactor(table)
        origin = OriginClient(reactor, make_http_client(reactor, egress=policy))
        return reactor, origin

    def test_interface(self):
        """The endpoint factory provides IAgentEndpointFactory."""
        verifyObject(IAgentEndpointFactory,
                     GuardedEndpointFactory(_reactor(), EgressGuard(_reactor(), EgressPolicy())))

    def test_denied_origin_is_never_connected(self):
        """A denied origin fails with OriginRefused (an OriginError that is not
        retried) and no connection is attempted."""
        reactor, origin = self.client(EgressPolicy())
        f = self.failureResultOf(origin.get("http://0x7f000001:8080/f"), OriginRefused)
        self.assertIsInstance(f.value, OriginError)
        self.assertFalse(f.value.retryable)
        self.assertIn("127.0.0.1", f.value.message)
        self.assertEqual(reactor.tcpClients, [])

    def test_connects_to_the_checked_address(self):
        """An allowed name is connected at the address the guard checked."""
        reactor, origin = self.client(EgressPolicy(), {"origin.test": ["93.184.216.34"]})
        origin.get("http://origin.test:8080/f")
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("93.184.216.34", 8080)])

    def test_https_verifies_the_host_name(self):
        """An https origin is connected through TLS created for the URL's host name."""
        names = []

        class Policy:
            def creatorForNetloc(self, hostname, port):
                names.append((hostname, port))
                from twisted.internet.ssl import optionsForClientTLS
                return optionsForClientTLS(hostname.decode("ascii"))
        guard = EgressGuard(_reactor({"origin.test": ["93.184.216.34"]}), EgressPolicy())
        factory = GuardedEndpointFactory(guard._reactor, guard, Policy())
        factory.endpointForURI(URI.fromBytes(b"https://Origin.Test/f"))
        self.assertEqual(names, [(b"origin.test", 443)])

    def test_redirect_is_checked_again(self):
        """A redirect from an allowed origin to a denied address fails with
        OriginRefused: the second hop is never connected."""
        reactor, origin = self.client(EgressPolicy(), {"origin.test": ["93.184.216.34"]})
        d = origin.get("http://origin.test/f")
        self.assertEqual(len(reactor.tcpClients), 1)
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIn(b"GET /f HTTP/1.1", transport.value())
        protocol.dataReceived(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest\r\n"
                              b"Content-Length: 0\r\n\r\n")
        f = self.failureResultOf(d, OriginRefused)
        self.assertIn("169.254.169.254 (cloud metadata address)", f.value.message)
        self.assertEqual(len(reactor.tcpClients), 1)


class DownloadPriorityTests(SynchronousTestCase):
    """The connections of make_http_client's agents, guarded or not, are marked
    as downloads (dragonfly.runtime.tuning.prioritise)."""

    def setUp(self):
        if not hasattr(socket, "SO_PRIORITY"):
            raise self.skipTest("no SO_PRIORITY here")

    def connect(self, egress):
        reactor = _reactor({"origin.test": ["93.184.216.34"]})
        origin = OriginClient(reactor, make_http_client(reactor, egress=egress))
        origin.get("http://origin.test:8080/f")
        self.assertEqual(len(reactor.tcpClients), 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)

        class SocketTransport(StringTransport):
            def getHandle(self):
                return sock
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        protocol.makeConnection(SocketTransport())
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY)

    def test_guarded(self):
        """When an origin connection of a guarded agent is made, it is marked."""
        self.assertEqual(self.connect(EgressPolicy()), HIGH_PRIORITY)

    def test_plain(self):
        """When a connection of an unguarded agent (the supernode client) is
        made, it is marked."""
        self.assertEqual(self.connect(None), HIGH_PRIORITY)

    def test_plain_schemes(self):
        """The unguarded agent's endpoints: https through TLS for the URL's host
        name, other schemes refused."""
        from twisted.web.error import SchemeNotSupported

        from dragonfly.origin import _DownloadEndpoints
        names = []

        class Policy:
            def creatorForNetloc(self, hostname, port):
                names.append((hostname, port))
                from twisted.internet.ssl import optionsForClientTLS
                return optionsForClientTLS(hostname.decode("ascii"))
        factory = _DownloadEndpoints(_reactor(), Policy())
        verifyObject(IAgentEndpointFactory, factory)
        factory.endpointForURI(URI.fromBytes(b"https://origin.test/f"))
        self.assertEqual(names, [(b"origin.test", 443)])
        self.assertRaises(SchemeNotSupported, factory.endpointForURI,
                          URI.fromBytes(b"ftp://origin.test/f"))

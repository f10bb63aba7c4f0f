"""Tests for dragonfly.tls: the checks of --tls-cert/--tls-key/--tls-ca and
their messages, the TLS options of every role, mutual TLS over an in-memory
connection (names checked, strangers refused, the client's names read on the
server), the identity rule, SIGHUP reloads."""
import datetime
import os
import signal

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface.verify import verifyObject

from dragonfly import pki
from dragonfly.nodeoptions import check_tls
from dragonfly.tls import (
    NodeTLS, ReloadOnHangup, TLSError, TLSFiles, load_material, peer_id_allowed, peer_names)

DAY = datetime.timedelta(days=1)


def make_fleet(test):
    """A CA (and another one) in a temporary directory: (dir, other_dir)."""
    base = os.path.abspath(test.mktemp())
    ours, other = os.path.join(base, "ca"), os.path.join(base, "other")
    pki.init_ca(ours)
    pki.init_ca(other)
    return ours, other


def files(ca_dir, name, **kw):
    if not os.path.exists(os.path.join(ca_dir, name + ".pem")):
        pki.issue(ca_dir, name, **kw)
    return TLSFiles(os.path.join(ca_dir, name + ".pem"), os.path.join(ca_dir, name + ".key"),
                    os.path.join(ca_dir, "ca.pem"))


class LoadMaterialTests(SynchronousTestCase):
    """load_material's verdicts, each one line naming the flag and the file."""

    def setUp(self):
        self.ca, self.other = make_fleet(self)

    def assertRefused(self, tls, *parts, now=None):
        e = self.assertRaises(TLSError, load_material, tls, now)
        for part in parts:
            self.assertIn(part, str(e))
        self.assertNotIn("\n", str(e))
        return str(e)

    def test_good(self):
        """A node certificate of the CA, with its key: the names it carries."""
        m = load_material(files(self.ca, "node1", ips=["10.0.0.1"], dns=["node1.lab"]))
        self.assertEqual(m.names, ("node1", "node1.lab", "10.0.0.1"))

    def test_missing_file(self):
        """A missing file is named with its flag."""
        good = files(self.ca, "node1")
        for flag, field in (("--tls-cert", "cert"), ("--tls-key", "key"), ("--tls-ca", "ca")):
            tls = TLSFiles(**dict(vars(good), **{field: "/nonexistent/x.pem"}))
            self.assertRefused(tls, flag, "/nonexistent/x.pem", "no such file")

    def test_not_pem(self):
        """A file that is not PEM, and a key that cannot be read as one."""
        good = files(self.ca, "node1")
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("hello\n")
        self.assertRefused(TLSFiles(junk, good.key, good.ca), "--tls-cert", "not a PEM certificate")
        self.assertRefused(TLSFiles(good.cert, junk, good.ca), "--tls-key",
                           "not an unencrypted PEM private key")

    def test_key_mismatch(self):
        """Another node's key does not match the certificate."""
        a, b = files(self.ca, "a"), files(self.ca, "b")
        self.assertRefused(TLSFiles(a.cert, b.key, a.ca), "--tls-key", "does not match")

    def test_wrong_ca(self):
        """A certificate of another CA."""
        stranger = files(self.other, "stranger")
        ours = files(self.ca, "node1")
        self.assertRefused(TLSFiles(stranger.cert, stranger.key, ours.ca), "--tls-cert",
                           "is not issued by the CA in " + ours.ca)

    def test_expired_and_not_yet_valid(self):
        """A certificate past its end, or before its start."""
        past = datetime.datetime.now(datetime.timezone.utc) - 10 * DAY
        old = files(self.ca, "old", days=1, now=past)
        self.assertRefused(old, "--tls-cert", "expired on")
        future = datetime.datetime.now(datetime.timezone.utc) + 2 * DAY
        soon = files(self.ca, "soon", now=future)
        self.assertRefused(soon, "--tls-cert", "not valid before")


class CheckTLSTests(SynchronousTestCase):
    """The shared option check, and the flags of each role."""

    def setUp(self):
        self.ca, _ = make_fleet(self)
        self.good = files(self.ca, "node1")

    def opts(self, cert=None, key=None, ca=None):
        return {"tls-cert": cert, "tls-key": key, "tls-ca": ca}

    def test_none(self):
        """No flag: None (plain TCP)."""
        self.assertIsNone(check_tls(self.opts()))

    def test_all_three(self):
        """All three: the absolute paths."""
        got = check_tls(self.opts(self.good.cert, self.good.key, self.good.ca))
        self.assertEqual(got, self.good)

    def test_all_or_none(self):
        """One or two of them: a UsageError naming the missing ones."""
        e = self.assertRaises(usage.UsageError, check_tls, self.opts(cert=self.good.cert))
        self.assertEqual(str(e), "--tls-cert, --tls-key and --tls-ca go together: "
                                 "--tls-key, --tls-ca missing")

    def test_bad_file(self):
        """A file that cannot be used: the UsageError says why."""
        e = self.assertRaises(usage.UsageError, check_tls,
                              self.opts(self.good.cert, "/nope.key", self.good.ca))
        self.assertEqual(str(e), "--tls-key: /nope.key: no such file")

    def test_roles(self):
        """The supernode, the peer and the dfdaemon take the flags (and TOML keys)."""
        from dragonfly.dfdaemon.tap import Options as DaemonOptions
        from dragonfly.peer.tap import Options as PeerOptions
        from dragonfly.supernode.tap import Options as SupernodeOptions

        for cls in (SupernodeOptions, PeerOptions, DaemonOptions):
            o = cls()
            o.parseOptions(["--data-dir", self.mktemp(), "--tls-cert", self.good.cert,
                            "--tls-key", self.good.key, "--tls-ca", self.good.ca])
            self.assertEqual(o.config.tls, self.good, cls)
            o = cls()
            o.parseOptions(["--data-dir", self.mktemp()])
            self.assertIsNone(o.config.tls)
            o = cls()
            self.assertRaises(usage.UsageError, o.parseOptions,
                              ["--data-dir", self.mktemp(), "--tls-ca", self.good.ca])
        o = SupernodeOptions()
        o.applyMapping({"tls-cert": self.good.cert, "tls_key": self.good.key,
                        "tls-ca": self.good.ca})
        o.parseOptions(["--data-dir", self.mktemp()])
        self.assertEqual(o.config.tls, self.good)


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Client(Protocol):
    received = b""
    lost = None

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class _ClientFactory(Factory):
    protocol = _Client

    def buildProtocol(self, addr):
        self.built = Factory.buildProtocol(self, addr)
        return self.built


def talk(server, creator):
    """Connect a client (C{creator}) to C{server} (a NodeTLS) in memory, the
    client sending C{ping} to an echo server: (server's TLS protocol, client's
    application protocol)."""
    clock = Clock()
    server.clock = clock
    server_factory = server.server_factory(Factory.forProtocol(_Echo))
    client = _ClientFactory()
    client_factory = TLSMemoryBIOFactory(creator, True, client, clock=clock)
    sp, cp = server_factory.buildProtocol(None), client_factory.buildProtocol(None)
    connect(sp, makeFakeServer(sp), cp, makeFakeClient(cp), clock=clock)
    return sp, client.built


class HandshakeTests(SynchronousTestCase):
    """Mutual TLS over an in-memory connection."""

    def setUp(self):
        self.ca, self.other = make_fleet(self)
        self.server = NodeTLS(files(self.ca, "server1", ips=["127.0.0.1"], dns=["sn.lab"]))

    def talk(self, client_tls, host, creator=None):
        """(server protocol, client protocol) after a pumped exchange."""
        return talk(self.server, creator or client_tls.client_creator(host))

    def test_interfaces(self):
        """NodeTLS is a server connection creator and an HTTPS policy."""
        verifyObject(IOpenSSLServerConnectionCreator, self.server)
        verifyObject(IPolicyForHTTPS, self.server)

    def test_mutual(self):
        """Both sides of the CA: the bytes go through; the server reads the
        client's names and the client checked the server's (by IP or name)."""
        client = NodeTLS(files(self.ca, "peer7"))
        for host in ("127.0.0.1", "sn.lab", "server1"):
            sp, cp = self.talk(client, host)
            self.assertEqual(cp.received, b"ping", host)
            self.assertEqual(peer_names(sp), ("peer7",))

    def test_name_mismatch(self):
        """A server whose certificate lacks the name dialled: nothing goes through."""
        client = NodeTLS(files(self.ca, "peer7"))
        for host in ("other.lab", "10.0.0.9"):
            sp, cp = self.talk(client, host)
            self.assertEqual(cp.received, b"", host)
            self.assertTrue(cp.lost.check(VerificationError), (host, cp.lost))

    def test_strangers_refused(self):
        """No client certificate, or one of another CA: nothing goes through."""
        from twisted.internet.ssl import Certificate

        with open(files(self.ca, "x").ca, "rb") as f:
            ours = Certificate.loadPEM(f.read())
        stranger = load_material(files(self.other, "stranger"))
        for cert in (None, stranger.private):
            creator = optionsForClientTLS("127.0.0.1", trustRoot=ours, clientCertificate=cert)
            sp, cp = self.talk(None, None, creator)
            self.assertEqual(cp.received, b"")
            self.assertTrue(cp.lost.check(SSL.Error), cp.lost)
            self.assertIsNone(peer_names(sp))

    def test_ca_bundle(self):
        """A CA file with two CAs (a CA rotation): certificates of either are
        accepted, and nodes of the old and the new CA talk to each other."""
        bundle = os.path.abspath(self.mktemp())
        with open(bundle, "wb") as out:
            for d in (self.ca, self.other):
                with open(os.path.join(d, "ca.pem"), "rb") as f:
                    out.write(f.read())
        old = files(self.ca, "server1")
        new = files(self.other, "peer9")
        server = NodeTLS(TLSFiles(old.cert, old.key, bundle))
        client = NodeTLS(TLSFiles(new.cert, new.key, bundle))
        self.assertEqual(len(client.material.cas), 2)
        sp, cp = talk(server, client.client_creator("127.0.0.1"))
        self.assertEqual(cp.received, b"ping")
        self.assertEqual(peer_names(sp), ("peer9",))

    def test_plain_transport(self):
        """peer_names of a transport that is not TLS: None."""
        from twisted.internet.testing import StringTransport

        self.assertIsNone(peer_names(StringTransport()))
        self.assertIsNone(peer_names(None))


class IdentityTests(SynchronousTestCase):
    """The rule binding a peer id to its certificate."""

    def test_rule(self):
        names = ("peer1", "peer1.lab", "10.0.0.1")
        for peer_id, ok in (("peer1", True), ("peer1-123-abcd", True), ("PEER1-1-a", True),
                            ("peer1.lab-9-x", True), ("10.0.0.1-1-x", True),
                            ("peer10-1-x", False), ("peer2-1-x", False), ("xpeer1", False),
                            ("peer1x-1", False), ("", False)):
            self.assertEqual(peer_id_allowed(peer_id, names), ok, peer_id)

    def test_api_check(self):
        """The supernode API's check: plain TCP passes; over TLS, 403 for an id
        outside the certificate's names."""
        from twisted.internet.testing import StringTransport

        from dragonfly.supernode.apisite import ApiError, check_identity as _check_identity

        class Request:
            transport = StringTransport()
        _check_identity(Request(), "anyone-1-x")

        class TLSRequest:
            transport = None
        ca, _ = make_fleet(self)
        server = NodeTLS(files(ca, "server1"))
        client = NodeTLS(files(ca, "peer1"))
        TLSRequest.transport, _ = talk(server, client.client_creator("server1"))
        _check_identity(TLSRequest(), "peer1-1-x")
        e = self.assertRaises(ApiError, _check_identity, TLSRequest(), "peer2-1-x")
        self.assertEqual(e.status, 403)
        self.assertIn("peer1", str(e))


class _FakeReactor:
    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *a):
        self.calls.append(f)


class ReloadTests(SynchronousTestCase):
    """NodeTLS.reload and the SIGHUP service."""

    def setUp(self):
        self.ca, self.other = make_fleet(self)
        self.node = files(self.ca, "node1")
        self.tls = NodeTLS(self.node)

    def replace(self, source):
        for src, dst in ((source.cert, self.node.cert), (source.key, self.node.key)):
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read())

    def test_reload(self):
        """New files: new connections get a new context and client creators."""
        ctx, creator = self.tls.getContext(), self.tls.client_creator("h")
        self.replace(files(self.ca, "node1b"))
        self.assertTrue(self.tls.reload())
        self.assertEqual(self.tls.names, ("node1b",))
        self.assertIsNot(self.tls.getContext(), ctx)
        self.assertIsNot(self.tls.client_creator("h"), creator)

    def test_bad_reload_keeps_old(self):
        """Files that do not check: the old material stays, the error is logged."""
        ctx = self.tls.getContext()
        self.replace(files(self.other, "stranger"))
        self.assertFalse(self.tls.reload())
        self.assertIs(self.tls.getContext(), ctx)
        self.assertEqual(self.tls.names, ("node1",))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_sighup(self):
        """While running, SIGHUP schedules a reload on the reactor; stopping
        puts the previous handler back."""
        reactor = _FakeReactor()
        previous = signal.getsignal(signal.SIGHUP)
        svc = ReloadOnHangup(reactor, self.tls)
        svc.startService()
        try:
            handler = signal.getsignal(signal.SIGHUP)
            handler(signal.SIGHUP, None)
            self.assertEqual(reactor.calls, [self.tls.reload])
        finally:
            svc.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

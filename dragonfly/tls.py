"""Mutual TLS between the roles: a node's certificate, key and CA (C{--tls-cert},
C{--tls-key}, C{--tls-ca}) checked into L{TLSMaterial}, and L{NodeTLS}, which
turns them into what Twisted needs: the server side of every listener (TLS 1.2+,
a client certificate chaining to the CA required), client connection creators
that present our certificate, trust only our CA and check the server's name or
address with service-identity, an HTTPS policy for treq/Agent, and endpoint
wrappers. L{NodeTLS.reload} (on SIGHUP, L{ReloadOnHangup}) swaps the material
for new connections; open ones keep theirs. L{peer_names} reads the names of
the certificate a connected client presented, and L{peer_id_allowed} is the
rule that binds a peer id to them. Imports no role.
"""
import datetime
import signal
from dataclasses import dataclass

from twisted.application import service
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator, ISSLTransport, IStreamServerEndpoint)
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["TLSError", "TLSFiles", "TLSMaterial", "NodeTLS", "ReloadOnHangup", "load_material",
           "node_tls", "warn_tls_off", "peer_names", "peer_id_allowed", "certificate_names",
           "OFF_WARNING"]

#: The one line a node logs at start when it runs without TLS.
OFF_WARNING = ("TLS is off: the API, the piece port and the cluster links are plain TCP and "
               "accept anyone who can reach them (see --tls-cert/--tls-key/--tls-ca)")


class TLSError(Exception):
    """A certificate, key or CA that cannot be used; C{str()} is one line naming the flag."""


@dataclass(frozen=True)
class TLSFiles:
    """The three files of a node's TLS identity (paths)."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class TLSMaterial:
    """Checked TLS material: Twisted's C{PrivateCertificate} (ours), the
    C{Certificate}s of the CA file (one CA, or the old and the new one while
    a CA is rotated), and the names our certificate carries."""

    private: object
    cas: tuple
    names: tuple
    not_after: datetime.datetime


def _read(flag, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSError(f"--{flag}: {path}: no such file")
    except OSError as e:
        raise TLSError(f"--{flag}: {path}: cannot read it ({e.strerror or e})")


def _load_certs(flag, path):
    """[(PEM bytes, cryptography certificate)] of every certificate in C{path}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = _read(flag, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSError(f"--{flag}: {path}: not a PEM certificate")
    return [(c.public_bytes(serialization.Encoding.PEM), c) for c in certs]


def _issued_by_one(cert, cas):
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:
            continue
    return False


def _check_dates(flag, path, cert, now):
    if now < cert.not_valid_before_utc:
        raise TLSError(f"--{flag}: {path}: not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if now > cert.not_valid_after_utc:
        raise TLSError(f"--{flag}: {path}: expired on "
                       f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def _public_bytes(key):
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate_names(cert):
    """The names a C{cryptography} certificate carries: its DNS and IP subject
    alternative names and its common name, lower case, in that order, once each."""
    from cryptography import x509

    names = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    names += [str(a.value).lower()
              for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n for n in names if n))


def load_material(files, now=None):
    """Read and check C{files} (a L{TLSFiles}): a L{TLSMaterial}, else
    L{TLSError} saying which file is wrong and how (missing, unreadable, not
    PEM, key not matching the certificate, certificate not issued by the CA,
    expired or not yet valid)."""
    from cryptography.hazmat.primitives import serialization
    from twisted.internet.ssl import Certificate, PrivateCertificate

    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert_pem, cert = _load_certs("tls-cert", files.cert)[0]
    cas = _load_certs("tls-ca", files.ca)
    key_pem = _read("tls-key", files.key)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TLSError(f"--tls-key: {files.key}: not an unencrypted PEM private key ({e})")
    except Exception as e:     # an unsupported key type
        raise TLSError(f"--tls-key: {files.key}: cannot use this key ({e})")
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise TLSError(f"--tls-key: {files.key} does not match the certificate {files.cert}")
    for _, ca in cas:
        _check_dates("tls-ca", files.ca, ca, now)
    _check_dates("tls-cert", files.cert, cert, now)
    if not _issued_by_one(cert, [ca for _, ca in cas]):
        raise TLSError(f"--tls-cert: {files.cert} is not issued by the CA in {files.ca}")
    private = PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    return TLSMaterial(private, tuple(Certificate.loadPEM(pem) for pem, _ in cas),
                       certificate_names(cert), cert.not_valid_after_utc)


def peer_names(transport):
    """The names (L{certificate_names}) of the certificate the other end of
    C{transport} presented; None when C{transport} is not TLS, showed none
    or is closed."""
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    try:
        x509 = transport.getPeerCertificate()
    except AttributeError:     # the TLS connection is gone
        x509 = None
    if x509 is None:
        return None
    return certificate_names(x509.to_cryptography())


def peer_id_allowed(peer_id, names):
    """The identity rule: a peer id belongs to a certificate when it equals one
    of the certificate's names or starts with one followed by C{-} (peers name
    themselves C{NAME-PID-RANDOM})."""
    pid = str(peer_id).lower()
    return any(pid == n or pid.startswith(n + "-") for n in names)


@implementer(IOpenSSLServerConnectionCreator, IPolicyForHTTPS)
class NodeTLS:
    """One node's TLS, from L{TLSFiles}; its material is replaced by L{reload}.

    As a server connection creator (C{TLSMemoryBIOFactory}'s first argument)
    every new connection gets the current context: TLS 1.2 or later, our
    certificate, a client certificate chaining to the CA required. As an
    C{IPolicyForHTTPS} (an C{Agent}'s C{contextFactory}) and through
    L{client_creator}, client connections present our certificate, trust the
    CA alone and check the server's name or IP address. C{clock}: the
    IReactorTime TLS connections flush their small writes with (default: the
    global reactor).
    """

    log = Logger()

    def __init__(self, files, load=load_material, clock=None):
        self.files = files
        self.clock = clock
        self._load = load
        self._use(load(files))

    def _use(self, material):
        from twisted.internet.ssl import CertificateOptions, TLSVersion, trustRootFromCertificates

        trust = trustRootFromCertificates(list(material.cas))
        server = CertificateOptions(
            privateKey=material.private.privateKey.original,
            certificate=material.private.original,
            trustRoot=trust,
            raiseMinimumTo=TLSVersion.TLSv1_2)   # with trustRoot: a client cert is required
        server.getContext()     # fails here, not on the next connection
        self.material, self._trust, self._server, self._clients = material, trust, server, {}

    @property
    def names(self):
        """Our certificate's names (L{certificate_names})."""
        return self.material.names

    def reload(self):
        """Read the files again; new connections use them. True when they were
        good; else the old material stays and the reason is logged."""
        try:
            material = self._load(self.files)
            self._use(material)
        except Exception as e:
            self.log.error("TLS reload failed, keeping the old certificate: {why}", why=str(e))
            return False
        self.log.info("TLS certificate reloaded from {cert} (valid until {until})",
                      cert=self.files.cert, until=material.not_after.isoformat())
        return True

    # -- server side ----------------------------------------------------------

    def getContext(self):
        """The current server context (old-style context factory)."""
        return self._server.getContext()

    def serverConnectionForTLS(self, tlsProtocol):
        from OpenSSL.SSL import Connection

        return Connection(self.getContext(), None)

    def server_factory(self, factory):
        """C{factory}'s protocols behind TLS (a C{TLSMemoryBIOFactory})."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(self, False, factory, clock=self.clock)

    def wrap_server(self, endpoint):
        """A server endpoint like C{endpoint} whose connections speak our TLS."""
        return _TLSServerEndpoint(endpoint, self)

    # -- client side ----------------------------------------------------------

    def client_creator(self, host):
        """A client connection creator for a server at C{host} (name or IP)."""
        from twisted.internet.ssl import TLSVersion, optionsForClientTLS

        host = str(host)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        creator = self._clients.get(host)
        if creator is None:
            creator = optionsForClientTLS(
                host, trustRoot=self._trust, clientCertificate=self.material.private,
                extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2})
            if len(self._clients) < 4096:
                self._clients[host] = creator
        return creator

    def creatorForNetloc(self, hostname, port):
        return self.client_creator(hostname.decode("ascii") if isinstance(hostname, bytes)
                                   else hostname)

    def wrap_client(self, endpoint, host):
        """C{endpoint} (a client endpoint to C{host}) speaking our TLS."""
        from twisted.internet.endpoints import wrapClientTLS

        return wrapClientTLS(self.client_creator(host), endpoint)


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    """Listens on an endpoint with every connection behind a L{NodeTLS}."""

    def __init__(self, endpoint, tls):
        self.endpoint = endpoint
        self.tls = tls
        self.description = getattr(endpoint, "description", None)

    def listen(self, factory):
        return self.endpoint.listen(self.tls.server_factory(factory))

    def __str__(self):
        return str(self.description or self.endpoint)


class ReloadOnHangup(service.Service):
    """While running, SIGHUP makes C{tls} (a L{NodeTLS}) read its files again.

    The handler only schedules the reload on the reactor (C{callFromThread});
    the previous handler is back once the service stops.
    """

    name = "tls-reload"

    def __init__(self, reactor, tls):
        self.reactor = reactor
        self.tls = tls
        self._previous = None

    def startService(self):
        service.Service.startService(self)
        try:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)
        except ValueError:     # not the main thread (a test): no signals
            self._previous = None

    def _hangup(self, signum, frame):
        self.reactor.callFromThread(self.tls.reload)

    def stopService(self):
        service.Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


_log = Logger()


def warn_tls_off():
    """Log the one L{OFF_WARNING} line of a daemon running without TLS."""
    _log.warn(OFF_WARNING)


def node_tls(files, clock=None):
    """A L{NodeTLS} for C{files} (a L{TLSFiles}); None, after the one
    L{OFF_WARNING} line, when there are none (the node runs plain TCP)."""
    if files is None:
        warn_tls_off()
        return None
    return NodeTLS(files, clock=clock)

"""Tests for dragonfly.pki (``dragonfly-pki``): the files it writes, their
modes, the certificates' names, uses and lifetimes, the chain, and refusals."""
import datetime
import io
import os
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from dragonfly import pki


def _cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class PKITests(SynchronousTestCase):

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())

    def run_pki(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = pki.main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def test_init(self):
        """init makes ca.pem and ca.key (0600) in a new 0700 directory: a
        10-year CA certificate that signed itself."""
        code, out, _ = self.run_pki("init", self.dir)
        self.assertEqual(code, 0)
        ca_pem, ca_key = os.path.join(self.dir, "ca.pem"), os.path.join(self.dir, "ca.key")
        self.assertEqual(out.split(), [ca_pem, ca_key])
        self.assertEqual(_mode(ca_key), 0o600)
        self.assertEqual(_mode(self.dir), 0o700)
        ca = _cert(ca_pem)
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        ca.verify_directly_issued_by(ca)
        life = ca.not_valid_after_utc - ca.not_valid_before_utc
        self.assertGreater(life, datetime.timedelta(days=3649))

    def test_issue(self):
        """issue makes NAME.pem and NAME.key (0600): a 1-year certificate of the
        CA for server and client auth, named NAME and the --dns/--ip given."""
        self.run_pki("init", self.dir)
        code, out, err = self.run_pki("issue", self.dir, "peer1", "--ip", "10.0.0.1",
                                      "--ip", "::1", "--dns", "peer1.lab")
        self.assertEqual((code, err), (0, ""))
        pem, key = os.path.join(self.dir, "peer1.pem"), os.path.join(self.dir, "peer1.key")
        self.assertEqual(out.split(), [pem, key])
        self.assertEqual(_mode(key), 0o600)
        cert = _cert(pem)
        cert.verify_directly_issued_by(_cert(os.path.join(self.dir, "ca.pem")))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["peer1", "peer1.lab"])
        self.assertEqual([str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
                         ["10.0.0.1", "::1"])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(set(eku), {ExtendedKeyUsageOID.SERVER_AUTH,
                                    ExtendedKeyUsageOID.CLIENT_AUTH})
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertTrue(datetime.timedelta(days=365) <= life < datetime.timedelta(days=366))

    def test_loads_as_node_material(self):
        """What issue writes passes dragonfly.tls's checks."""
        from dragonfly.tls import TLSFiles, load_material

        self.run_pki("init", self.dir)
        self.run_pki("issue", self.dir, "sn1", "--ip", "127.0.0.1")
        m = load_material(TLSFiles(*(os.path.join(self.dir, n)
                                     for n in ("sn1.pem", "sn1.key", "ca.pem"))))
        self.assertEqual(m.names, ("sn1", "127.0.0.1"))

    def test_refuses_to_overwrite(self):
        """A second init, or a second issue of a name, changes nothing."""
        self.run_pki("init", self.dir)
        self.run_pki("issue", self.dir, "n1")
        before = {n: open(os.path.join(self.dir, n), "rb").read() for n in os.listdir(self.dir)}
        for argv in (("init", self.dir), ("issue", self.dir, "n1")):
            code, out, err = self.run_pki(*argv)
            self.assertEqual(code, 1)
            self.assertIn("exists; not overwriting it", err)
        after = {n: open(os.path.join(self.dir, n), "rb").read() for n in os.listdir(self.dir)}
        self.assertEqual(before, after)

    def test_refusals(self):
        """No CA yet, a bad address or name, a lifetime past the CA's."""
        code, _, err = self.run_pki("issue", self.dir, "n1")
        self.assertEqual(code, 1)
        self.assertIn("dragonfly-pki init", err)
        self.run_pki("init", self.dir, "--days", "30")
        for argv, text in ((("n1", "--ip", "10.0.0.300"), "--ip: not an IP address"),
                           (("n1", "--dns", "bad name"), "--dns: not a DNS name"),
                           (("../x",), "not a usable node name"),
                           (("ca",), "not a usable node name"),
                           (("n1",), "the CA expires on")):
            days = [] if text.startswith("the CA") else ["--days", "1"]
            code, _, err = self.run_pki("issue", self.dir, *argv, *days)
            self.assertEqual(code, 1, argv)
            self.assertIn(text, err)
        self.assertEqual(sorted(os.listdir(self.dir)), ["ca.key", "ca.pem"])

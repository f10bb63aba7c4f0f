"""Tests of the mirror's upstream registries (dragonfly.dfdaemon.upstream)."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon.upstream import (
    Refused, UpstreamError, Upstreams, UpstreamTLSPolicy, parse_upstream)


class UpstreamTests(SynchronousTestCase):
    def test_default_is_docker_hub(self):
        """With no --registry, the upstream is Docker Hub over verified HTTPS and
        containerd's ns=docker.io selects it."""
        ups = Upstreams.from_options(None)
        self.assertEqual(ups.default.base, "https://registry-1.docker.io")
        self.assertFalse(ups.default.insecure)
        self.assertIs(ups.select("docker.io"), ups.default)
        self.assertIs(ups.select(None), ups.default)

    def test_plain_http_needs_opt_in(self):
        """A plain-HTTP upstream is refused unless listed with --insecure-registry."""
        self.assertRaises(UpstreamError, Upstreams.from_options, "http://127.0.0.1:5000")
        ups = Upstreams.from_options("http://127.0.0.1:5000", insecure=["127.0.0.1:5000"])
        self.assertEqual(ups.default.base, "http://127.0.0.1:5000")
        self.assertTrue(ups.default.insecure)

    def test_bad_addresses(self):
        """Registry addresses with paths, credentials or bad ports are rejected."""
        for bad in ["https://h/path", "https://u:p@h", "ftp://h", "h:0", "h:99999", "a/b", ""]:
            self.assertRaises(UpstreamError, parse_upstream, bad)

    def test_select(self):
        """ns= matches allowed registries by host[:port]; anything else is Refused."""
        ups = Upstreams.from_options("https://reg.example", ["10.0.0.5:5000", "http://lab:80"],
                                     insecure=["lab"])
        self.assertEqual(ups.select("REG.example").base, "https://reg.example")
        self.assertEqual(ups.select("reg.example:443").base, "https://reg.example")
        self.assertEqual(ups.select("10.0.0.5:5000").base, "https://10.0.0.5:5000")
        self.assertEqual(ups.select("lab").base, "http://lab")
        for other in ["10.0.0.5", "reg.example:5000", "evil.example", "reg.example/x", "a b"]:
            self.assertRaises(Refused, ups.select, other)

    def test_tls_policy(self):
        """HTTPS upstreams are verified; only those marked insecure are not."""
        ups = Upstreams.from_options("https://reg.example", ["https://selfsigned.example:8443"],
                                     insecure=["selfsigned.example:8443"])
        policy = UpstreamTLSPolicy(ups)
        unverified = policy.creatorForNetloc(b"selfsigned.example", 8443)
        verified = policy.creatorForNetloc(b"reg.example", 443)
        self.assertEqual(type(unverified).__name__, "_UnverifiedTLS")
        self.assertNotEqual(type(verified).__name__, "_UnverifiedTLS")
        self.assertEqual(type(policy.creatorForNetloc(b"selfsigned.example", 443)).__name__,
                         type(verified).__name__)

"""The egress policy (dragonfly.egress): entries, defaults and precedence, as tables."""
import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.egress import (REFUSAL_PREFIX, BadEntry, EgressPolicy, literal_address,
                              normalize_host, parse_entries)


class LiteralAddressTests(SynchronousTestCase):

    def test_forms(self):
        """Every numeric host form a resolver accepts names the address it means;
        host names are not literals."""
        table = [
            ("127.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("169.254.43518", "169.254.169.254"),
            ("2852039166", "169.254.169.254"),
            ("0", "0.0.0.0"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
            ("[fe80::1%eth0]", "fe80::1"),
            ("example.com", None),
            ("deadbeef", None),
            ("1.2.3.4.5", None),
            ("256.1.1.1", None),
            ("4294967296", None),
            ("08.1.1.1", None),
            ("", None),
        ]
        for host, want in table:
            got = literal_address(host)
            self.assertEqual(str(got) if got is not None else None, want, host)

    def test_normalize_host(self):
        """Host names compare in lower case, without brackets or a trailing dot."""
        self.assertEqual(normalize_host("Example.COM."), "example.com")
        self.assertEqual(normalize_host(b"[::1]"), "::1")


class DefaultPolicyTests(SynchronousTestCase):

    def test_table(self):
        """By default loopback, link-local (so the metadata address), unspecified,
        multicast and broadcast are denied, IPv4-mapped IPv6 is judged as its IPv4,
        and everything else is allowed."""
        policy = EgressPolicy()
        table = [
            # (host, resolved address, allowed, reason)
            ("localhost", "127.0.0.1", False, "loopback"),
            ("127.0.0.2", "127.0.0.2", False, "loopback"),
            ("2130706433", "127.0.0.1", False, "loopback"),
            ("0x7f000001", "127.0.0.1", False, "loopback"),
            ("localhost", "::1", False, "loopback"),
            ("v6.test", "::ffff:127.0.0.1", False, "loopback"),
            ("v6.test", "::ffff:169.254.169.254", False, "cloud metadata address"),
            ("metadata.google.internal", "169.254.169.254", False, "cloud metadata address"),
            ("imds.test", "fd00:ec2::254", False, "cloud metadata address"),
            ("ll.test", "169.254.1.1", False, "link-local"),
            ("ll.test", "fe80::1", False, "link-local"),
            ("any.test", "0.0.0.0", False, "unspecified"),
            ("any.test", "::", False, "unspecified"),
            ("mc.test", "224.0.0.1", False, "multicast"),
            ("mc.test", "ff02::1", False, "multicast"),
            ("bc.test", "255.255.255.255", False, "broadcast"),
            ("example.com", "93.184.216.34", True, "default"),
            ("lan.test", "10.1.2.3", True, "default"),
            ("lan.test", "192.168.1.10", True, "default"),
            ("v6.test", "2001:db8::1", True, "default"),
            ("v6.test", "::ffff:93.184.216.34", True, "default"),
        ]
        for host, address, allowed, reason in table:
            v = policy.decide(host, address, 80)
            self.assertEqual((v.allowed, v.reason), (allowed, reason), (host, address))
            self.assertFalse(v.explicit)

    def test_accepts_ip_address_objects(self):
        """decide() takes an address as text or as an ipaddress object."""
        v = EgressPolicy().decide("h.test", ipaddress.ip_address("127.0.0.1"), 80)
        self.assertFalse(v.allowed)


class EntryPolicyTests(SynchronousTestCase):

    def test_allow_and_deny_table(self):
        """An explicit deny wins, then an explicit allow, then the default; host
        name entries match the URL's host name, address and CIDR entries the
        resolved address, port entries only that port."""
        policy = EgressPolicy(
            allow=["127.0.0.1:8080", "registry.local", "10.0.0.0/8", "[::1]:9000",
                   "169.254.169.254", "files.test:443", "::ffff:127.0.0.9"],
            deny=["10.9.0.0/16", "blocked.test", "10.1.1.1:22", "files.test:8443"])
        table = [
            # (host, address, port, allowed, reason)
            ("127.0.0.1", "127.0.0.1", 8080, True, "--allow-origin 127.0.0.1:8080"),
            ("127.0.0.1", "127.0.0.1", 8081, False, "loopback"),
            ("localhost", "127.0.0.1", 8080, True, "--allow-origin 127.0.0.1:8080"),
            ("2130706433", "127.0.0.1", 8080, True, "--allow-origin 127.0.0.1:8080"),
            ("v6.test", "::ffff:127.0.0.1", 8080, True, "--allow-origin 127.0.0.1:8080"),
            ("x.test", "127.0.0.9", 1, True, "--allow-origin ::ffff:127.0.0.9"),
            ("registry.local", "127.0.0.1", 5000, True, "--allow-origin registry.local"),
            ("Registry.Local.", "::1", 443, True, "--allow-origin registry.local"),
            ("other.local", "127.0.0.1", 5000, False, "loopback"),
            ("localhost", "::1", 9000, True, "--allow-origin [::1]:9000"),
            ("localhost", "::1", 9001, False, "loopback"),
            ("meta.test", "169.254.169.254", 80, True, "--allow-origin 169.254.169.254"),
            ("lan.test", "10.2.3.4", 80, True, "--allow-origin 10.0.0.0/8"),
            ("lan.test", "10.9.3.4", 80, False, "listed in --deny-origin 10.9.0.0/16"),
            ("ssh.test", "10.1.1.1", 22, False, "listed in --deny-origin 10.1.1.1:22"),
            ("ssh.test", "10.1.1.1", 80, True, "--allow-origin 10.0.0.0/8"),
            ("blocked.test", "93.184.216.34", 80, False, "listed in --deny-origin blocked.test"),
            ("files.test", "127.0.0.1", 443, True, "--allow-origin files.test:443"),
            ("files.test", "93.184.216.34", 8443, False,
             "listed in --deny-origin files.test:8443"),
            ("files.test", "93.184.216.34", 80, True, "default"),
        ]
        for host, address, port, allowed, reason in table:
            v = policy.decide(host, address, port)
            self.assertEqual((v.allowed, v.reason), (allowed, reason), (host, address, port))

    def test_deny_beats_allow_for_the_same_address(self):
        """The same address both allowed and denied is denied."""
        policy = EgressPolicy(allow=["93.184.216.34"], deny=["93.184.216.0/24"])
        self.assertFalse(policy.decide("example.com", "93.184.216.34", 80).allowed)

    def test_with_allowed(self):
        """with_allowed() adds allow entries (the dfdaemon's registries) and keeps
        the deny list, which still wins."""
        base = EgressPolicy(deny=["127.0.0.1:5001"])
        policy = base.with_allowed(["127.0.0.1:5000", "127.0.0.1:5001"])
        self.assertTrue(policy.decide("127.0.0.1", "127.0.0.1", 5000).allowed)
        self.assertFalse(policy.decide("127.0.0.1", "127.0.0.1", 5001).allowed)
        self.assertEqual(base.allow, ())


class ParseEntriesTests(SynchronousTestCase):

    def test_good(self):
        """Entries are comma-separated, in one string or a list of strings."""
        entries = parse_entries(["127.0.0.1, 10.0.0.0/8", "host.test:8080,[::1]:99",
                                 "fd00::/8", "0x7f000001"])
        self.assertEqual([e.text for e in entries],
                         ["127.0.0.1", "10.0.0.0/8", "host.test:8080", "[::1]:99", "fd00::/8",
                          "0x7f000001"])
        self.assertEqual(entries[2].host, "host.test")
        self.assertEqual(entries[2].port, 8080)
        self.assertEqual(str(entries[3].network), "::1/128")
        self.assertEqual(str(entries[5].network), "127.0.0.1/32")
        self.assertEqual(parse_entries("a.test"), parse_entries(["a.test"]))
        self.assertEqual(parse_entries(""), [])

    def test_bad(self):
        """A bad entry raises BadEntry naming it."""
        for bad in ["host.test:0", "host.test:99999", "host.test:x", "10.0.0.0/33",
                    "[::1", "[::1]x", "bad host", "a/b", "http://x.test", "x..test"]:
            with self.assertRaises(BadEntry, msg=bad) as cm:
                parse_entries([bad])
            self.assertIn(bad.strip(), str(cm.exception))


class RefusalMessageTests(SynchronousTestCase):

    def test_default_refusal_suggests_an_allow_entry(self):
        """A refusal by default names the host, the address, the reason and the
        --allow-origin entry that would allow it (HOST:PORT)."""
        policy = EgressPolicy()
        v = policy.decide("metadata.test", "169.254.169.254", 80)
        self.assertEqual(
            policy.refusal("metadata.test", "169.254.169.254", 80, v),
            "origin not allowed: metadata.test resolves to 169.254.169.254 "
            "(cloud metadata address); allow it with --allow-origin metadata.test:80")
        v = policy.decide("2130706433", "127.0.0.1", 8080)
        msg = policy.refusal("2130706433", "127.0.0.1", 8080, v)
        self.assertTrue(msg.startswith(REFUSAL_PREFIX))
        self.assertTrue(msg.endswith("(loopback); allow it with --allow-origin 127.0.0.1:8080"),
                        msg)
        v = policy.decide("[::1]", "::1", 81)
        self.assertTrue(policy.refusal("[::1]", "::1", 81, v).endswith(
            "allow it with --allow-origin [::1]:81"))

    def test_explicit_deny_suggests_nothing(self):
        """An explicit deny cannot be undone with --allow-origin: the message says
        which entry denied it."""
        policy = EgressPolicy(deny=["10.0.0.0/8"])
        v = policy.decide("lan.test", "10.0.0.1", 80)
        self.assertEqual(policy.refusal("lan.test", "10.0.0.1", 80, v),
                         "origin not allowed: lan.test resolves to 10.0.0.1 "
                         "(listed in --deny-origin 10.0.0.0/8)")

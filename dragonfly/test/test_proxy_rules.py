"""Tests of the proxy's pure decisions (dragonfly.dfdaemon.proxyrules): rules, digests,
request targets and the decision table; and of its option checks (dragonfly.dfdaemon.proxy)."""
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfdaemon.proxy import check_proxy_options, loopback_only
from dragonfly.dfdaemon.proxyrules import (
    BadRequest, RuleError, Rules, decide, parse_digest_value, parse_rule, parse_target)

HEX = "ab" * 32


class RuleParsingTests(SynchronousTestCase):
    def test_plain_regex(self):
        """When a rule is a bare expression, it has no filter, tag or digest header."""
        rule = parse_rule(r"\.whl$")
        self.assertEqual((rule.filters, rule.tag, rule.digest_header), ((), "", None))
        self.assertTrue(rule.pattern.search("http://x/a-1.0.whl"))

    def test_options(self):
        """When options follow the expression, they become dfget's --filter, --tag
        and the digest header (names lower-cased)."""
        rule = parse_rule(r"^https://files\.example/ filter=X-Amz-Date,Signature tag=models "
                          "digest-header=X-Checksum-Sha256")
        self.assertEqual(rule.filters, ("X-Amz-Date", "Signature"))
        self.assertEqual(rule.tag, "models")
        self.assertEqual(rule.digest_header, "x-checksum-sha256")

    def test_bad_rules(self):
        """When a rule has a broken expression, an unknown, empty or repeated option
        or a bad header name, RuleError names it."""
        for text in ("", "   ", "([a-z]", r"\.whl$ colour=red", r"\.whl$ tag=", r"\.whl$ tag",
                     r"\.whl$ tag=a tag=b", r"\.whl$ digest-header=bad:name"):
            with self.assertRaises(RuleError, msg=text):
                parse_rule(text)

    def test_first_match_wins(self):
        """When two rules match a URL, the first one given is used."""
        rules = Rules([r"\.bin$ tag=first", r"/files/ tag=second"])
        rule, _ = rules.match("http://o.example/files/a.bin")
        self.assertEqual(rule.tag, "first")
        self.assertIsNone(rules.match("http://o.example/other.txt"))


class DigestTests(SynchronousTestCase):
    def test_url_group(self):
        """When the expression has a group named after an algorithm, its capture
        from the URL is the digest (lower-cased)."""
        rule = parse_rule(r"/by-hash/(?P<sha256>[0-9a-fA-F]{64})$")
        url = "http://o/by-hash/" + HEX.upper()
        self.assertEqual(rule.digest(rule.pattern.search(url), {}), "sha256:" + HEX)

    def test_header(self):
        """When a rule names a digest header, its value (ALGO:HEX or bare hex, the
        algorithm read from the length) is the digest; without it there is none."""
        rule = parse_rule(r"\.bin$ digest-header=X-Digest")
        m = rule.pattern.search("http://o/a.bin")
        self.assertEqual(rule.digest(m, {"x-digest": "sha256:" + HEX}), "sha256:" + HEX)
        self.assertEqual(rule.digest(m, {"x-digest": "c" * 128}), "sha512:" + "c" * 128)
        self.assertEqual(rule.digest(m, {"x-digest": "d" * 32}), "md5:" + "d" * 32)
        self.assertIsNone(rule.digest(m, {}))

    def test_disagreement_and_malformed(self):
        """When the URL and the header name different digests, or a digest is
        malformed, the request is a BadRequest."""
        rule = parse_rule(r"/(?P<sha256>[0-9a-f]{64})$ digest-header=X-Digest")
        m = rule.pattern.search("http://o/" + HEX)
        with self.assertRaises(BadRequest):
            rule.digest(m, {"x-digest": "sha256:" + "cd" * 32})
        self.assertEqual(rule.digest(m, {"x-digest": HEX}), "sha256:" + HEX)
        for bad in ("sha256:abc", "crc32:" + HEX, "zz" * 32, "abc"):
            with self.assertRaises(BadRequest, msg=bad):
                parse_digest_value(bad)

    def test_md5_group_too_short(self):
        """When a group named md5 captures something that is not 32 hex digits, BadRequest."""
        rule = parse_rule(r"/(?P<md5>[0-9a-f]+)\.bin$")
        with self.assertRaises(BadRequest):
            rule.digest(rule.pattern.search("http://o/abc.bin"), {})


class TargetTests(SynchronousTestCase):
    def test_absolute_uri(self):
        """When the target is an absolute http(s) URI, host, port, scheme and URL
        are read from it (default ports; an empty path becomes /)."""
        t = parse_target(b"GET", b"http://Files.Example/a/b.whl?x=1")
        self.assertEqual((t.scheme, t.host, t.port, t.url),
                         ("http", "files.example", 80, "http://Files.Example/a/b.whl?x=1"))
        t = parse_target(b"GET", b"https://[::1]:8443")
        self.assertEqual((t.host, t.port, t.url), ("::1", 8443, "https://[::1]:8443/"))
        self.assertEqual(parse_target(b"GET", b"http://h?q=1").url, "http://h/?q=1")

    def test_connect(self):
        """When the method is CONNECT, the target is HOST:PORT ([v6]:PORT too)."""
        t = parse_target(b"CONNECT", b"pypi.org:443")
        self.assertEqual((t.host, t.port, t.url, t.authority), ("pypi.org", 443, None,
                                                                "pypi.org:443"))
        t = parse_target(b"CONNECT", b"[2001:db8::1]:443")
        self.assertEqual((t.host, t.authority), ("2001:db8::1", "[2001:db8::1]:443"))

    def test_malformed(self):
        """When the target is a path, another scheme, has credentials, a bad port or
        host, bad bytes, or a CONNECT without a port, it is a BadRequest."""
        cases = [(b"GET", b"/index.html"), (b"GET", b"ftp://h/x"), (b"GET", b"http:///x"),
                 (b"GET", b"http://u:p@h/x"), (b"GET", b"http://h:99999/x"),
                 (b"GET", b"http://h:0/x"), (b"GET", b"http://h/x\\y"),
                 (b"GET", b"http://bad_host!/x"), (b"GET", "http://h/\u00e9".encode()),
                 (b"GET", b"http://h/" + b"a" * 9000), (b"CONNECT", b"pypi.org"),
                 (b"CONNECT", b"pypi.org:0"), (b"CONNECT", b"a:b:443"), (b"CONNECT", b"[::1]"),
                 (b"CONNECT", b"/x:443")]
        for method, uri in cases:
            with self.assertRaises(BadRequest, msg=(method, uri)):
                parse_target(method, uri)


class DecisionTests(SynchronousTestCase):
    rules = Rules([r"\.whl$", r"/by-hash/(?P<sha256>[0-9a-f]{64})$"])

    def decide(self, method, uri, headers=None):
        return decide(parse_target(method, uri), self.rules, headers or {})

    def test_table(self):
        """CONNECT -> tunnel; a GET matching a rule -> p2p (with the rule's digest);
        a GET matching none, or another method on a matching URL -> passthrough."""
        self.assertEqual(self.decide(b"CONNECT", b"h:443").kind, "tunnel")
        d = self.decide(b"GET", b"http://h/a-1.0.whl")
        self.assertEqual((d.kind, d.digest), ("p2p", None))
        d = self.decide(b"GET", b"http://h/by-hash/" + HEX.encode())
        self.assertEqual((d.kind, d.digest), ("p2p", "sha256:" + HEX))
        self.assertEqual(self.decide(b"GET", b"http://h/simple/").kind, "passthrough")
        for method in (b"HEAD", b"POST", b"PUT"):
            self.assertEqual(self.decide(method, b"http://h/a-1.0.whl").kind, "passthrough")


class OptionTests(SynchronousTestCase):
    def options(self, listen=None, rules=(), remote=False):
        return {"proxy-listen": listen, "proxy_rule": list(rules), "proxy-allow-remote": remote}

    def test_loopback_only(self):
        """Endpoints on 127.x, ::1 or a UNIX socket are loopback-only; every-interface
        and other addresses are not."""
        for e in ("tcp:3128:interface=127.0.0.1", r"tcp6:3128:interface=\:\:1",
                  "unix:/run/df.sock", "tcp:0:interface=127.0.0.2"):
            self.assertTrue(loopback_only(e), e)
        for e in ("tcp:3128", "tcp:3128:interface=0.0.0.0", "tcp:3128:interface=10.0.0.1",
                  r"tcp6:3128:interface=\:\:"):
            self.assertFalse(loopback_only(e), e)

    def test_non_loopback_refused_unless_allowed(self):
        """When --proxy-listen is not loopback-only, the options are refused with a
        line saying how to fix it, unless --proxy-allow-remote is given."""
        with self.assertRaises(usage.UsageError) as e:
            check_proxy_options(self.options("tcp:3128"))
        self.assertIn("--proxy-allow-remote", str(e.exception))
        c = check_proxy_options(self.options("tcp:3128", remote=True))
        self.assertEqual((c.listen, c.allow_remote), ("tcp:3128", True))

    def test_off_by_default_rules_need_listen(self):
        """Without --proxy-listen there is no proxy; rules alone are an error; a bad
        rule is an error naming it."""
        self.assertIsNone(check_proxy_options(self.options()).listen)
        with self.assertRaises(usage.UsageError):
            check_proxy_options(self.options(rules=[r"\.whl$"]))
        with self.assertRaises(usage.UsageError) as e:
            check_proxy_options(self.options("tcp:0:interface=127.0.0.1", rules=["(["]))
        self.assertIn("--proxy-rule", str(e.exception))


class DfdaemonOptionsTests(SynchronousTestCase):
    def parse(self, argv, toml=None):
        from dragonfly.dfdaemon.tap import Options

        if toml is not None:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(toml)
            argv = ["--config", path] + argv
        o = Options()
        o.parseOptions(["--data-dir", self.mktemp()] + argv)
        return o.proxy_config

    def test_flags(self):
        """--proxy-rule repeats (a comma inside an expression is not a separator)."""
        c = self.parse(["--proxy-listen", "tcp:0:interface=127.0.0.1",
                        "--proxy-rule", r"/(?P<md5>[0-9a-f]{32})\.bin$",
                        "--proxy-rule", r"\.whl$ tag=py"])
        self.assertEqual(c.rules, [r"/(?P<md5>[0-9a-f]{32})\.bin$", r"\.whl$ tag=py"])

    def test_toml(self):
        """The TOML file takes proxy-listen, a list of proxy-rule and proxy-allow-remote;
        a flag beats the file."""
        toml = ("proxy-listen = \"tcp:65003\"\nproxy-allow-remote = true\n"
                "proxy-rule = ['\\.(whl|deb)$', '/(?P<sha256>[0-9a-f]{64})$']\n")
        c = self.parse([], toml)
        self.assertEqual((c.listen, c.allow_remote), ("tcp:65003", True))
        self.assertEqual(c.rules, [r"\.(whl|deb)$", "/(?P<sha256>[0-9a-f]{64})$"])
        c = self.parse(["--proxy-rule", r"\.iso$"], toml)
        self.assertEqual(c.rules, [r"\.iso$"])

    def test_default_off(self):
        """Without proxy settings the dfdaemon has no proxy."""
        self.assertIsNone(self.parse([]).listen)

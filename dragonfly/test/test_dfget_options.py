"""dfget.options (and cli.main's usage errors): option parsing, help, defaults;
parsing and the daemon path import no Twisted."""
import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import cli
from dragonfly.dfget.options import OptionsError, ShowText, default_output, parse
from dragonfly.taskid import task_id_for_url
from dragonfly.test.dfgetsupport import SHA
from dragonfly.test.test_peer_node import URL


class OptionTests(SynchronousTestCase):

    def test_url_argument_and_options_after_it(self):
        """The URL may come first or last; options after it still count (GNU style)."""
        o = parse([URL, "-O", "/tmp/x", "--tag", "t", "-q"])
        self.assertEqual(o["url"], URL)
        self.assertEqual(o["output"], "/tmp/x")
        self.assertTrue(o["quiet"])
        self.assertEqual(o["task_id"], task_id_for_url(URL, [], "t"))

    def test_defaults(self):
        """Without options: the default daemon, p2p, no digest, no limit, no timeout."""
        o = parse([URL])
        self.assertEqual(o["daemon_url"], "http://127.0.0.1:65002")
        self.assertEqual((o["pattern"], o["digest_spec"], o["limit_bps"], o["timeout_s"]),
                         ("p2p", None, 0, 0.0))
        self.assertEqual(o["supernode_list"], [("127.0.0.1", 8002)])
        self.assertFalse(o["quiet"] or o["verbose"] or o["no-back-source"])
        self.assertIsNone(parse([URL, "--daemon", "none"])["daemon_url"])

    def test_tls_files(self):
        """--tls-cert/--tls-key/--tls-ca: all three (existing files, made
        absolute) or none; else a usage error naming what is missing."""
        path = os.path.relpath(__file__)
        self.assertIsNone(parse([URL])["tls_files"])
        o = parse([URL, "--tls-cert", path, "--tls-key", path, "--tls-ca", path])
        self.assertEqual(o["tls_files"], (os.path.abspath(path),) * 3)
        e = self.assertRaises(OptionsError, parse, [URL, "--tls-cert", path])
        self.assertEqual(str(e), "--tls-cert, --tls-key and --tls-ca go together: "
                                 "--tls-key, --tls-ca missing")
        e = self.assertRaises(OptionsError, parse, [URL, "--tls-cert", path, "--tls-key",
                                                    "/nope.key", "--tls-ca", path])
        self.assertEqual(str(e), "--tls-key: /nope.key: no such file")

    def test_dragonfly1_style(self):
        """dfget -u URL -o FILE works like dfget URL -O FILE."""
        o = parse(["-u", URL, "-o", "out.bin"])
        self.assertEqual((o["url"], o["output"]), (URL, "out.bin"))

    def test_headers_repeat(self):
        """-H may repeat; the same header twice is joined with a comma."""
        o = parse([URL, "-H", "Authorization: Bearer x", "--header", "X-A: 1", "-H", "x-a: 2"])
        self.assertEqual(o["header_map"], {"Authorization": "Bearer x", "X-A": "1, 2"})

    def test_digests(self):
        """--digest ALGO:HEX accepts sha256/sha512/md5; --md5 HEX is an alias."""
        self.assertEqual(parse([URL, "--digest", "SHA256:" + SHA.upper()])["digest_spec"],
                         ("sha256", SHA))
        self.assertEqual(parse([URL, "--md5", "a" * 32])["digest_spec"], ("md5", "a" * 32))
        self.assertEqual(parse([URL, "--digest", "sha512:" + "b" * 128])["digest_spec"][0],
                         "sha512")

    def test_filter_changes_task_id(self):
        """--filter drops the named query parameters from the task id."""
        o = parse([URL + "?sig=abc&v=1", "--filter", "sig,exp"])
        self.assertEqual(o["task_id"], task_id_for_url(URL + "?v=1"))

    def test_numbers(self):
        """--limit takes K/M/G, --timeout seconds, --supernodes a list."""
        o = parse([URL, "--limit", "2M", "--timeout", "2.5", "--supernodes", "a:1,[::1]:2"])
        self.assertEqual((o["limit_bps"], o["timeout_s"]), (2 << 20, 2.5))
        self.assertEqual(o["supernode_list"], [("a", 1), ("::1", 2)])

    def test_bad_options(self):
        """Bad options are usage errors."""
        for argv in ([], ["ftp://x/y"], [URL, URL + "2"], [URL, "--digest", "sha1:" + "a" * 40],
                     [URL, "--digest", "sha256:abc"], [URL, "--digest", "x"],
                     [URL, "--md5", "a" * 32, "--digest", "sha256:" + SHA],
                     [URL, "--pattern", "magic"], [URL, "--limit", "fast"],
                     [URL, "--timeout", "-1"], [URL, "--timeout", "inf"],
                     [URL, "--timeout", "soon"], [URL, "-H", "no colon"],
                     [URL, "-H", "A: b\r\nC: d"], [URL, "--supernodes", "a:b"],
                     [URL, "--supernodes", ","], ["-u", URL, URL + "x"],
                     [URL, "--daemon", "ftp://x"], [URL, "--advertise", "a b"],
                     [URL, "--no-such-option"], [URL, "-q=1"], [URL, "--quiet=1"]):
            self.assertRaises(OptionsError, parse, argv)

    def test_help_and_version(self):
        """--help (or -h) lists every option; --version names dfget's version."""
        for flag in ("--help", "-h"):
            e = self.assertRaises(ShowText, parse, [flag])
            for name in ("--output", "--daemon", "--digest", "--md5", "--timeout",
                         "--no-back-source", "--header", "--advertise", "-o is an alias"):
                self.assertIn(name, e.text)
            self.assertTrue(all(len(line) <= 80 for line in e.text.splitlines()), e.text)
        self.assertIn("dragonfly", self.assertRaises(ShowText, parse, ["--version"]).text)

    def test_main_usage_and_help(self):
        """A usage error exits 2 with one error line and a hint; --help exits 0."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--digest", "x", URL], stdout=out, stderr=err), 2)
        self.assertEqual(err.getvalue().splitlines(),
                         ["dfget: error: --digest must be ALGO:HEX, not 'x'",
                          "Try 'dfget --help' for more information."])
        self.assertEqual(cli.main(["--help"], stdout=out, stderr=err), 0)
        self.assertIn("Usage: dfget", out.getvalue())

    def test_default_output(self):
        """The default output name is the URL path's basename (index.html for none)."""
        self.assertEqual(default_output("http://h/a/b/file%20x.tar.gz?q=1"), "file x.tar.gz")
        self.assertEqual(default_output("http://h/"), "index.html")
        self.assertEqual(default_output("http://h/a/.."), "index.html")

    def test_no_twisted_on_the_daemon_path(self):
        """Parsing options and the daemon path import no Twisted (their start-up cost
        is the point of that path)."""
        code = ("import sys; import dragonfly.dfget.cli, dragonfly.dfget.viadaemon; "
                "from dragonfly.dfget.options import parse; parse(['http://h/f']); "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('twisted', 'treq', 'klein', 'zope')))")
        out = _run_python(code)
        self.assertEqual(out.strip(), "[]")

    def test_lean_daemon_path(self):
        """Nor what only an error or an option not given needs: traceback (a crash
        under --verbose), the egress module (--allow-origin, a refused origin),
        fractions (a size with a decimal point): each costs dfget's start-up
        milliseconds of a warm download's ~1 s (bench/README.md, round six)."""
        code = ("import sys; import dragonfly.dfget.cli, dragonfly.dfget.viadaemon; "
                "from dragonfly.dfget.options import parse; parse(['http://h/f']); "
                "parse(['http://h/f', '--limit', '10M']); "
                "print(sorted(m for m in ('traceback', 'dragonfly.egress', 'fractions', "
                "'dataclasses') if m in sys.modules))")
        out = _run_python(code)
        self.assertEqual(out.strip(), "[]")
        code = ("import sys; from dragonfly.dfget.options import parse; "
                "parse(['http://h/f', '--allow-origin', '127.0.0.1']); "
                "print('dragonfly.egress' in sys.modules, 'dataclasses' in sys.modules)")
        out = _run_python(code)
        self.assertEqual(out.split(), ["True", "False"])   # (its values are plain classes)


def _run_python(code):
    """What a fresh interpreter running C{code} prints."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout

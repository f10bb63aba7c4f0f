"""dfget.compat: the Dragonfly 1.x and 2.x flags parse into the same options as ours."""
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import cli, compat
from dragonfly.dfget.options import OptionsError, ShowText, parse
from dragonfly.test.test_peer_node import URL

MD5 = "0123456789abcdef" * 2

#: The run's derived values: what the rest of dfget reads.
DERIVED = ("url", "output", "supernode_list", "limit_bps", "no-back-source", "digest_spec",
           "task_id", "filters", "timeout_s", "pattern", "showbar", "header_map", "quiet")

#: (ours, Dragonfly 1.x, Dragonfly 2.x): the same download, three dialects.
TABLE = [
    ([URL, "-O", "f", "--supernodes", "sn:8002"],
     ["-u", URL, "-o", "f", "--node", "sn"],
     ["-u", URL, "-O", "f", "--supernodes", "sn:8002"]),
    ([URL, "-O", "f", "--limit", "8M", "--no-back-source", "--md5", MD5],
     ["-u", URL, "-o", "f", "-s", "8M", "--notbs", "-m", MD5],
     ["-u", URL, "-O", "f", "--limit", "8M", "--disable-back-source", "--digest",
      "md5:" + MD5]),
    ([URL, "-O", "f", "--tag", "build-7", "--filter", "sig,exp", "--timeout", "90"],
     ["-u", URL, "-o", "f", "-i", "build-7", "-f", "sig&exp", "-e", "90s"],
     ["-u", URL, "-O", "f", "--tag", "build-7", "--filter", "sig&exp", "--timeout", "1m30s"]),
    ([URL, "-O", "f", "--pattern", "cdn", "--supernodes", "a:8002,b:9000"],
     ["-u", URL, "-o", "f", "-p", "cdn", "-n", "a=2,b:9000=1"],
     ["-u", URL, "-O", "f", "--pattern", "cdn", "--supernodes", "a:8002,b:9000"]),
    ([URL, "-O", "f", "--limit", "1M"],
     ["-u", URL, "-o", "f", "--locallimit", "4MB", "--totallimit", "1m"],
     ["-u", URL, "-O", "f", "--limit", "1M", "--callsystem", "ci"]),
    ([URL, "-O", "f", "-H", "A: 1", "--no-back-source"],
     ["-u", URL, "-o", "f", "--header", "A: 1", "--notbs", "--console"],
     ["-u", URL, "-O", "f", "--header", "A: 1", "--disable-back-source"]),
]


def derived(o):
    return {k: o[k] for k in DERIVED}


class DialectTableTests(SynchronousTestCase):

    def test_table(self):
        """Each row's 1.x and 2.x command lines give the same run as ours."""
        for ours, v1, v2 in TABLE:
            want = derived(parse(ours))
            self.assertEqual(derived(parse(v1)), want, v1)
            self.assertEqual(derived(parse(v2)), want, v2)

    def test_showbar(self):
        """-b, --showbar and --show-progress ask for a bar; ours default to none forced."""
        self.assertFalse(parse([URL])["showbar"])
        for flag in ("-b", "--showbar", "--show-progress"):
            self.assertTrue(parse([URL, flag])["showbar"], flag)

    def test_ignored_flags_collected(self):
        """Flags with no meaning here are accepted and listed once each, in order."""
        o = parse(["-u", URL, "--callsystem", "x", "--console", "--home", "/h",
                   "--callsystem", "y", "--dfdaemon"])
        self.assertEqual(o["compat_ignored"], ["--callsystem", "--console", "--home",
                                               "--dfdaemon"])
        self.assertEqual(parse([URL])["compat_ignored"], [])

    def test_refused_flags(self):
        """A flag whose meaning we cannot honour (a byte range) is a usage error."""
        for argv in ([URL, "--range", "0-9"], [URL, "--list"]):
            self.assertRaises(OptionsError, parse, argv)

    def test_bad_values(self):
        """Bad dialect values are usage errors naming the flag."""
        for argv, word in (([URL, "-s", "fast"], "--locallimit"),
                           ([URL, "--totallimit", "-1"], "--totallimit"),
                           ([URL, "-e", "soon"], "--timeout"),
                           ([URL, "-n", ","], "--node"),
                           ([URL, "-p", "bt"], "--pattern")):
            with self.assertRaises(OptionsError, msg=argv) as cm:
                parse(argv)
            self.assertIn(word, str(cm.exception))

    def test_durations(self):
        """--timeout takes seconds or Go-style durations."""
        for text, seconds in (("30", 30), ("2.5", 2.5), ("30s", 30), ("5m", 300),
                              ("1h30m", 5400), ("500ms", 0.5)):
            self.assertEqual(compat.parse_duration(text), seconds, text)
        for text in ("", "5x", "m", "5m3"):
            self.assertRaises(compat.CompatError, compat.parse_duration, text)

    def test_node_list(self):
        """1.x --node entries get port 8002 by default and lose their weight."""
        self.assertEqual(compat.node_list("a, b:1=3 ,::1,[::2]:7=1"),
                         "a:8002,b:1,[::1]:8002,[::2]:7")

    def test_help_compat(self):
        """--help-compat lists every dialect flag; --help lists ours, not theirs."""
        with self.assertRaises(ShowText) as cm:
            parse(["--help-compat"])
        text = cm.exception.text
        for name, letter, _, _, _ in compat.COMPAT:
            self.assertIn("--" + name, text)
        for flag in ("--md5", "--filter", "--pattern", "-e, --timeout"):
            self.assertIn(flag, text)
        with self.assertRaises(ShowText) as cm:
            parse(["--help"])
        self.assertIn("--help-compat", cm.exception.text)
        self.assertNotIn("--notbs", cm.exception.text)

    def test_one_warning_line(self):
        """dfget prints one warning line for all ignored flags, then goes on."""
        err = io.StringIO()
        runs = []
        out = os.path.abspath(self.mktemp())
        code = cli.main(["-u", URL, "-o", out, "--callsystem", "ci",
                         "--console", "--daemon", "none"], stdout=io.StringIO(), stderr=err,
                        isatty=False, signals=False,
                        embedded=lambda opts, out, left: runs.append(out) or 0)
        self.assertEqual((code, runs), (0, [out]))
        warnings = [line for line in err.getvalue().splitlines() if "warning" in line]
        self.assertEqual(warnings, ["dfget: warning: ignoring --callsystem, --console "
                                    "(no meaning in this dfget)"])

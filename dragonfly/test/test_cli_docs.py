"""Bash completion and man pages of dfget and dfctl stay in step with the code,
and the Debian and RPM packaging install them."""
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfctl import cli as dfctl_cli
from dragonfly.dfget import options
from dragonfly.test import source_file


def read(*parts):
    with open(source_file(*parts)) as f:
        return f.read()


class CliDocsTests(SynchronousTestCase):

    def test_dfget_flags_documented(self):
        """Every dfget option is in its bash completion and its man page."""
        completion = read("packaging", "completion", "dfget")
        man = read("packaging", "man", "dfget.1").replace("\\-", "-")
        names = [n for n, _, _ in options.FLAGS] + [n for n, _, _, _ in options.PARAMETERS]
        for name in names:
            self.assertIn("--" + name, completion, name)
            self.assertIn("--" + name, man, name)

    def test_dfctl_commands_documented(self):
        """Every dfctl command and option is in its bash completion and man page."""
        completion = read("packaging", "completion", "dfctl")
        man = read("packaging", "man", "dfctl.1").replace("\\-", "-")
        help_text = dfctl_cli.parser().format_help()
        for word in ("task", "preheat", "cluster", "ls", "rm", "--json", "--peer",
                     "--supernodes", "--tls-cert", "--wait", "--header", "--filter", "--tag",
                     "--insecure", "--platform", "--timeout"):
            self.assertIn(word, completion, word)
            self.assertIn(word, man, word)
        self.assertIn("preheat", help_text)

    def test_completion_parses(self):
        """The completion scripts are valid bash."""
        bash = shutil.which("bash")
        if bash is None:
            raise self.skipTest("no bash")
        for name in ("dfget", "dfctl"):
            subprocess.run([bash, "-n", source_file("packaging", "completion", name)],
                           check=True)

    def test_packaging_installs_them(self):
        """The Debian and RPM packages install both commands, completions and man pages."""
        spec = read("packaging", "rpm", "dragonfly.spec")
        deb = (read("packaging", "debian", "dragonfly.install")
               + read("packaging", "debian", "dragonfly.manpages")
               + read("packaging", "debian", "dragonfly.links"))
        for name in ("dfget", "dfctl"):
            self.assertIn(f"packaging/completion/{name}", deb)
            self.assertIn(f"packaging/man/{name}.1", deb)
            self.assertIn(f"usr/bin/{name}", deb)
            self.assertIn(f"%{{_bindir}}/{name}", spec)
            self.assertIn(f"completions/{name}", spec)
            self.assertIn(f"man1/{name}.1", spec)
        self.assertIn('dfctl = "dragonfly.dfctl.cli:run"', read("pyproject.toml"))

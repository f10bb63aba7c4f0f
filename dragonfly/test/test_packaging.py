"""The packaging stays in step with the code: pyproject.toml's metadata,
C{python -m dragonfly}, the roles' man pages, the hashed lock, and what the
Debian and RPM packages promise (umask, run directory, dfdaemon off at boot,
a stop on removal). make package-test builds and exercises the packages."""
import importlib.util
import io
import os
import re
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from dragonfly import __main__ as dragonfly_main
from dragonfly import __version__
from dragonfly.dfdaemon.tap import Options as DfdaemonOptions
from dragonfly.peer.tap import Options as PeerOptions
from dragonfly.supernode.tap import Options as SupernodeOptions
from dragonfly.test import source_file

ROLES = {"supernode": SupernodeOptions, "peer": PeerOptions, "dfdaemon": DfdaemonOptions}


def read(*parts):
    with open(source_file(*parts)) as f:
        return f.read()


def pyproject():
    with open(source_file("pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def lock_pins():
    """{name: version} of packaging/requirements.lock, and the requirement
    texts (one per package, continuation lines joined)."""
    text = read("packaging", "requirements.lock").replace("\\\n", " ")
    reqs = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    pins = {}
    for req in reqs:
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", req)
        if m:
            pins[m.group(1).lower().replace("_", "-").replace(".", "-")] = m.group(2)
    return pins, reqs


class MainTests(SynchronousTestCase):

    def test_prints_the_commands(self):
        """C{python -m dragonfly} names every role and command and exits 0."""
        out = io.StringIO()
        self.assertEqual(dragonfly_main.main([], out), 0)
        text = out.getvalue()
        for cmd in ("twistd -n supernode", "twistd -n peer", "twistd -n dfdaemon",
                    "dfget URL", "dfctl", "dragonfly-pki"):
            self.assertIn(cmd, text)
        self.assertIn(__version__, text)

    def test_scripts_dir_shown_when_not_on_path(self):
        """When the scripts' directory is not on PATH (the packages' venv), the
        commands are shown with it; when it is, bare."""
        away = dragonfly_main.usage("/opt/dragonfly/bin", "/usr/bin:/bin")
        self.assertIn("/opt/dragonfly/bin/twistd -n peer", away)
        self.assertIn("/opt/dragonfly/bin/dfget URL", away)
        on_path = dragonfly_main.usage("/opt/dragonfly/bin", "/usr/bin:/opt/dragonfly/bin/")
        self.assertNotIn("/opt/dragonfly/bin/", on_path)
        self.assertIn("  twistd -n peer", on_path)

    def test_version_and_unknown_arguments(self):
        """--version prints the version; an unknown argument exits 2."""
        out = io.StringIO()
        self.assertEqual(dragonfly_main.main(["--version"], out), 0)
        self.assertEqual(out.getvalue(), f"dragonfly {__version__}\n")
        self.patch(dragonfly_main.sys, "stderr", io.StringIO())
        self.assertEqual(dragonfly_main.main(["--bogus"], io.StringIO()), 2)


class PyprojectTests(SynchronousTestCase):

    def test_metadata(self):
        """PEP 621 metadata: a distribution name that is not PyPI's unrelated
        "dragonfly", Apache-2.0 with its LICENSE, the readme, the commands."""
        project = pyproject()["project"]
        self.assertEqual(project["name"], "dragonfly-p2p")
        self.assertEqual(project["version"], __version__)
        self.assertEqual(project["license"], "Apache-2.0")
        self.assertEqual(project["license-files"], ["LICENSE"])
        self.assertEqual(project["readme"], "README.md")
        self.assertIn("Apache License", read("LICENSE"))
        self.assertIn("Version 2.0, January 2004", read("LICENSE"))
        self.assertEqual(project["scripts"], {"dfget": "dragonfly.dfget.cli:run",
                                              "dfctl": "dragonfly.dfctl.cli:run",
                                              "dragonfly-pki": "dragonfly.pki:run"})
        self.assertEqual(project["optional-dependencies"]["test"], ["hypothesis"])
        self.assertIn("Homepage", project["urls"])

    def test_twisted_plugins_shipped(self):
        """The plugin directory (no __init__.py) is a package of the distribution."""
        found = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
        self.assertIn("twisted.plugins", found)
        self.assertFalse(os.path.exists(os.path.join(
            os.path.dirname(source_file("twisted", "plugins", "dragonfly_plugins.py")),
            "__init__.py")))

    def test_no_setup_py(self):
        """pyproject.toml is the one source of metadata."""
        root = os.path.dirname(source_file("pyproject.toml"))
        self.assertFalse(os.path.exists(os.path.join(root, "setup.py")))


class LockTests(SynchronousTestCase):

    def test_every_requirement_pinned_with_hashes(self):
        """Each locked package is pinned to one version and carries sha256 hashes."""
        pins, reqs = lock_pins()
        self.assertEqual(len(pins), len(reqs))
        for req in reqs:
            self.assertRegex(req, r"==\S+ .*--hash=sha256:[0-9a-f]{64}")

    def test_lock_covers_the_dependencies(self):
        """Every dependency of pyproject.toml, and the build backend, is locked."""
        pins, _ = lock_pins()
        for dep in pyproject()["project"]["dependencies"] + ["setuptools"]:
            name = re.match(r"[A-Za-z0-9._-]+", dep).group(0).lower()
            self.assertIn(name.replace("_", "-").replace(".", "-"), pins, dep)

    def test_packages_install_from_the_lock(self):
        """The venv of the .deb and the RPM is filled from the lock, hashes required."""
        build = read("packaging", "build-venv.sh")
        self.assertIn("--require-hashes", build)
        self.assertIn("-r packaging/requirements.lock", build)
        self.assertIn("packaging/build-venv.sh", read("packaging", "debian", "rules"))
        self.assertIn("packaging/build-venv.sh", read("packaging", "rpm", "dragonfly.spec"))


class RoleManPagesTests(SynchronousTestCase):

    def test_every_option_documented(self):
        """Each role's man page lists every one of its options."""
        for role, options in ROLES.items():
            man = read("packaging", "man", f"dragonfly-{role}.8").replace("\\-", "-")
            for spec in options().longOpt:
                name = spec.rstrip("=")
                if name not in ("help", "version"):
                    self.assertIn(f"--{name}", man, (role, name))

    def test_pages_are_generated(self):
        """The committed pages are what packaging/man/roles.py writes now."""
        spec = importlib.util.spec_from_file_location(
            "dragonfly_man_roles", source_file("packaging", "man", "roles.py"))
        roles = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(roles)
        for role in ROLES:
            self.assertEqual(roles.page(role), read("packaging", "man", f"dragonfly-{role}.8"),
                             f"regenerate: PYTHONPATH=. python3 packaging/man/roles.py ({role})")

    def test_packages_install_them(self):
        """The Debian role packages and the RPM install the role pages and logrotate."""
        spec = read("packaging", "rpm", "dragonfly.spec")
        for role in ROLES:
            self.assertIn(f"packaging/man/dragonfly-{role}.8",
                          read("packaging", "debian", f"dragonfly-{role}.manpages"))
            self.assertIn(f"man8/dragonfly-{role}.8", spec)
        self.assertIn("packaging/logrotate/dragonfly etc/logrotate.d/",
                      read("packaging", "debian", "dragonfly.install"))
        self.assertIn("%{_sysconfdir}/logrotate.d/dragonfly", spec)


class ServiceFilesTests(SynchronousTestCase):

    def test_umask_everywhere(self):
        """Files are group-readable (umask 0027) under systemd and under the SysV
        scripts, where a daemonizing twistd would otherwise apply 0077."""
        for role in ROLES:
            unit = read("packaging", "systemd", f"dragonfly-{role}.service")
            self.assertIn("\nUMask=0027\n", unit)
            self.assertIn("\nRuntimeDirectory=dragonfly\n", unit)
            sysv = read("packaging", "sysvinit", f"dragonfly-{role}")
            self.assertIn("\nUMASK=0027\n", sysv)
            self.assertIn('"umask $UMASK; exec $TWISTD --umask=$UMASK ', sysv)

    def test_dfdaemon_off_at_boot(self):
        """The dfdaemon (the peer's ports) is neither enabled nor started on install."""
        rules = read("packaging", "debian", "rules")
        self.assertRegex(rules, r"dh_installinit -pdragonfly-dfdaemon .*--no-enable --no-start")
        self.assertRegex(rules, r"dh_installsystemd -pdragonfly-dfdaemon .*--no-enable --no-start")
        self.assertIn("# chkconfig: - ", read("packaging", "sysvinit", "dragonfly-dfdaemon"))

    def test_every_role_stops_on_removal(self):
        """Every role's prerm stops its daemon on remove, under either init system."""
        for role in ROLES:
            prerm = read("packaging", "debian", f"dragonfly-{role}.prerm")
            self.assertIn(f"invoke-rc.d --skip-systemd-native dragonfly-{role} stop", prerm)
            self.assertIn(f"deb-systemd-invoke stop dragonfly-{role}.service", prerm)
            self.assertIn(f"%{{_initrddir}}/dragonfly-{role} stop",
                          read("packaging", "rpm", "dragonfly.spec"))

    def test_debian_depends_on_its_interpreter(self):
        """The runtime package depends on the versioned interpreter its venv
        links to, found from /usr/bin/python3 at build time."""
        self.assertIn("${dragonfly:Python}", read("packaging", "debian", "control"))
        rules = read("packaging", "debian", "rules")
        self.assertIn("/usr/bin/python3 -c", rules)
        self.assertIn('-Vdragonfly:Python="python$(PYVER)"', rules)
        self.assertIn("Requires:       python(abi) = %{pyver}",
                      read("packaging", "rpm", "dragonfly.spec"))

"""The container image's Dockerfile and build context, read as text (no
registry is reachable to build it here): a pinned base, a numeric non-root
user, a health check, the ports, labels, the hashed lock, and a context that
leaves the checkout's clutter out."""
import fnmatch
import importlib.util
import os
import re
import shlex

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test import source_file


def instructions(text):
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerignore_excludes(patterns, path):
    """Whether Docker leaves C{path} out of the context: the last matching
    pattern of the file (or of a parent directory) wins; C{!} re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            tail = pat[3:]
            hit = any(fnmatch.fnmatchcase(p.split("/")[-1], tail) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) and p.count("/") == pat.count("/")
                      for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


class DockerfileTests(SynchronousTestCase):

    def setUp(self):
        with open(source_file("packaging", "docker", "Dockerfile")) as f:
            self.text = f.read()
        self.steps = instructions(self.text)
        with open(source_file(".dockerignore")) as f:
            self.ignore = [line.strip() for line in f
                           if line.strip() and not line.startswith("#")]

    def args_of(self, keyword):
        return [rest for k, rest in self.steps if k == keyword]

    def final_stage(self):
        starts = [i for i, (k, _) in enumerate(self.steps) if k == "FROM"]
        return self.steps[starts[-1]:]

    def test_base_pinned_to_a_full_version(self):
        """Every stage starts FROM the one base argument, a full version tag
        (not 'latest', not a bare minor version); a comment leaves the digest
        to the release process."""
        (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", self.text, re.MULTILINE)
        self.assertRegex(default, r"\Apython:\d+\.\d+\.\d+-slim-[a-z]+\Z")
        froms = self.args_of("FROM")
        self.assertEqual(len(froms), 2)
        self.assertTrue(all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms), froms)
        self.assertIn("digest", self.text)

    def test_multi_stage_ships_no_build_tools(self):
        """The runtime stage copies only the built venv from the build stage and
        installs nothing; pip itself is removed from the venv."""
        final = self.final_stage()
        self.assertNotIn("COPY . ", " ".join(f"{k} {a}" for k, a in final))
        copies = [a for k, a in final if k == "COPY"]
        self.assertEqual(copies, ["--from=build /opt/dragonfly /opt/dragonfly"])
        for k, a in final:
            if k == "RUN":
                self.assertNotRegex(a, r"\b(pip|apt-get|apt)\b")
        self.assertIn("pip uninstall -y pip", self.text)

    def test_installs_from_the_hashed_lock_then_the_project_without_deps(self):
        """Dependencies come only from packaging/requirements.lock with
        --require-hashes; the project itself is installed with --no-deps."""
        runs = " && ".join(self.args_of("RUN"))
        self.assertIn("--require-hashes --no-deps -r /tmp/requirements.lock", runs)
        self.assertIn("COPY packaging/requirements.lock /tmp/requirements.lock",
                      "\n".join(f"{k} {a}" for k, a in self.steps))
        installs = re.findall(r"pip install ([^&]*)", runs)
        self.assertEqual(len(installs), 2, installs)
        self.assertIn("--no-deps", installs[1])

    def test_numeric_non_root_user(self):
        """The image runs as 65532:65532, the user and group it creates with
        those ids (the manifests' runAsUser/runAsGroup)."""
        self.assertEqual(self.args_of("USER"), ["65532:65532"])
        runs = " ".join(self.args_of("RUN"))
        self.assertIn("--gid 65532 dragonfly", runs)
        self.assertIn("--uid 65532 --gid 65532", runs)

    def test_healthcheck_with_python(self):
        """HEALTHCHECK runs the venv's python on the shipped script (the image has no curl)."""
        (check,) = self.args_of("HEALTHCHECK")
        self.assertIn('CMD ["/opt/dragonfly/bin/python", "/opt/dragonfly/healthcheck.py"]', check)
        self.assertNotIn("curl", check)
        self.assertIn("COPY packaging/docker/healthcheck.py /opt/dragonfly/healthcheck.py",
                      "\n".join(f"{k} {a}" for k, a in self.steps))

    def test_exposes_every_role_port(self):
        """EXPOSE names the default ports of the three roles."""
        ports = {int(p) for e in self.args_of("EXPOSE") for p in e.split()}
        self.assertEqual(ports, {8001, 8002, 65000, 65001, 65002})

    def test_oci_labels(self):
        """The runtime stage carries the OCI labels for title, licence, version,
        revision and base image."""
        labels = dict(pair.split("=", 1) for a in self.args_of("LABEL")
                      for pair in shlex.split(a))
        for key in ("title", "description", "licenses", "version", "revision", "base.name"):
            self.assertIn(f"org.opencontainers.image.{key}", labels)
        self.assertEqual(labels["org.opencontainers.image.licenses"], "Apache-2.0")

    def test_context_leaves_the_checkout_clutter_out(self):
        """.dockerignore keeps virtualenvs, git, build and test output out of
        the context, and keeps in everything the Dockerfile copies."""
        for path in (".venv/bin/python", ".git/HEAD", "build/lib/dragonfly/x.py",
                     "_trial_temp/test.log", ".trial/_trial_temp/x", ".artifacts/a.png",
                     "bench/results/r.json", "dragonfly/__pycache__/units.cpython-311.pyc",
                     "dragonfly/peer/__pycache__/api.cpython-311.pyc", "demo/demo.py",
                     "dragonfly.egg-info/PKG-INFO", "dragonfly/test/_trial_temp/x", "setup.py"):
            self.assertTrue(dockerignore_excludes(self.ignore, path), path)
        for path in ("pyproject.toml", "dragonfly/units.py", "dragonfly/supernode/ui/index.html",
                     "twisted/plugins/dragonfly_plugins.py", "README.md", "LICENSE",
                     "packaging/requirements.lock", "packaging/docker/healthcheck.py"):
            self.assertFalse(dockerignore_excludes(self.ignore, path), path)
        for k, a in self.steps:
            if k == "COPY" and not a.startswith("--from"):
                source = a.split()[0]
                if source != ".":
                    self.assertFalse(dockerignore_excludes(self.ignore, source), source)


class HealthcheckScriptTests(SynchronousTestCase):

    def setUp(self):
        spec = importlib.util.spec_from_file_location(
            "healthcheck", source_file("packaging", "docker", "healthcheck.py"))
        self.hc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.hc)

    def test_role_picks_the_port(self):
        """The role in PID 1's command line picks its API port; an override wins."""
        twistd = ["/opt/dragonfly/bin/python", "/opt/dragonfly/bin/twistd", "--nodaemon",
                  "--pidfile=", "--logfile=-"]
        for role, port in (("supernode", 8002), ("peer", 65002), ("dfdaemon", 65001)):
            self.assertEqual(self.hc.healthz_url(twistd + [role, "--config=x"], {}),
                             f"http://127.0.0.1:{port}/healthz")
        self.assertEqual(self.hc.healthz_url(twistd + ["peer"],
                                             {"DRAGONFLY_HEALTHZ": "http://h:1/healthz"}),
                         "http://h:1/healthz")
        self.assertIsNone(self.hc.healthz_url(twistd, {}))

    def test_unhealthy_without_a_role(self):
        """With no role to probe (and no override) the check fails."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"sleep\x00infinity\x00")
        self.assertEqual(self.hc.main(path, {}), 1)

    def test_unhealthy_when_nothing_answers(self):
        """A refused connection is unhealthy, not an exception."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"twistd\x00peer\x00")
        self.assertEqual(self.hc.main(path, {"DRAGONFLY_HEALTHZ": "http://127.0.0.1:1/healthz"}), 1)

    def test_healthy_on_200(self):
        """A 200 from the role's /healthz is healthy; another status is not."""
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/healthz" else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"twistd\x00peer\x00")
        self.assertEqual(self.hc.main(path, {"DRAGONFLY_HEALTHZ": base + "/healthz"}), 0)
        self.assertEqual(self.hc.main(path, {"DRAGONFLY_HEALTHZ": base + "/other"}), 1)

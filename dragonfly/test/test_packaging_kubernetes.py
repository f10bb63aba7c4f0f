"""The Kubernetes manifests as C{kubectl kustomize} renders them: hardened pods,
room on the volumes, a disruption budget, and the containerd-hosts component's
init container writing the hosts.toml containerd needs."""
import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from urllib.parse import urlsplit

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dragonfly.test import source_file
from dragonfly.units import parse_size

#: the renders checked: the base, and the base with the containerd-hosts component
RENDERS = (("packaging", "kubernetes"),
           ("packaging", "kubernetes", "overlays", "containerd-hosts"))

#: init containers that run as root, and the only capabilities each may add
ROOT_INIT = {"chown-cache": ["CHOWN"], "containerd-hosts": []}

_QUANTITY = re.compile(r"\A(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?\Z")
_FACTORS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
            "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(text):
    """A Kubernetes storage quantity ('200Gi') in bytes."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    return int(m.group(1)) * _FACTORS[m.group(2)]


def _kubectl():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SkipTest("no kubectl")
    return kubectl


_RENDERED = {}


def render(*parts):
    """The objects C{kubectl kustomize} makes of a directory, as dicts (a
    fresh copy each call; kubectl runs once per directory)."""
    if parts not in _RENDERED:
        _RENDERED[parts] = _render(*parts)
    return copy.deepcopy(_RENDERED[parts])


def _render(*parts):
    """C{kubectl patch --local} with an empty patch turns the YAML into JSON
    without a cluster (no YAML parser needed here)."""
    kubectl = _kubectl()
    yaml_text = subprocess.run([kubectl, "kustomize", source_file(*parts)],
                               check=True, capture_output=True).stdout
    text = subprocess.run(
        [kubectl, "patch", "--local", "--type=merge", "-p", "{}", "-f", "-", "-o", "json"],
        input=yaml_text, check=True, capture_output=True,
        env=dict(os.environ, KUBECONFIG=os.devnull)).stdout.decode()
    decoder, objects, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return objects
        obj, i = decoder.raw_decode(text, i)
        objects.append(obj)


def one(objects, kind, name_prefix=""):
    found = [o for o in objects if o["kind"] == kind
             and o["metadata"]["name"].startswith(name_prefix)]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} {kind} named {name_prefix}*")
    return found[0]


def pod_specs(objects):
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objects
            if o["kind"] in ("DaemonSet", "StatefulSet", "Deployment", "Job")]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def config_toml(objects, name, key):
    return tomllib.loads(one(objects, "ConfigMap", name)["data"][key])


class KubernetesManifestTests(SynchronousTestCase):

    def setUp(self):
        self.renders = {os.path.join(*p): render(*p) for p in RENDERS}

    def each_render(self):
        return self.renders.items()

    def test_every_container_hardened(self):
        """When rendered, every container and init container has a securityContext
        with no privilege escalation, a read-only root, ALL capabilities dropped
        and the RuntimeDefault seccomp profile; only the listed init containers
        run as root, adding no capability beyond theirs."""
        seen = set()
        for where, objects in self.each_render():
            for pod, spec in pod_specs(objects):
                self.assertEqual(spec["securityContext"]["seccompProfile"],
                                 {"type": "RuntimeDefault"}, pod)
                self.assertIs(spec["securityContext"]["runAsNonRoot"], True, pod)
                for c in containers(spec):
                    ctx, label = c.get("securityContext"), f"{where}: {pod}/{c['name']}"
                    self.assertIsNotNone(ctx, label)
                    seen.add(c["name"])
                    self.assertIs(ctx["allowPrivilegeEscalation"], False, label)
                    self.assertIs(ctx["readOnlyRootFilesystem"], True, label)
                    self.assertEqual(ctx["capabilities"]["drop"], ["ALL"], label)
                    self.assertEqual(ctx["seccompProfile"], {"type": "RuntimeDefault"}, label)
                    if c["name"] in ROOT_INIT:
                        self.assertIn(c, spec["initContainers"], label)
                        self.assertEqual(ctx.get("capabilities", {}).get("add", []),
                                         ROOT_INIT[c["name"]], label)
                    else:
                        self.assertIs(ctx["runAsNonRoot"], True, label)
                        self.assertNotIn("add", ctx["capabilities"], label)
                        self.assertNotIn("runAsUser", ctx, label)
        self.assertEqual(seen, {"supernode", "dfdaemon", "chown-cache", "containerd-hosts"})

    def test_runs_as_the_image_user(self):
        """Every pod runs as 65532:65532, the numeric USER of the image."""
        with open(source_file("packaging", "docker", "Dockerfile")) as f:
            users = re.findall(r"^USER\s+(\S+)\s*$", f.read(), re.MULTILINE)
        self.assertEqual(users, ["65532:65532"])
        for _, objects in self.each_render():
            for pod, spec in pod_specs(objects):
                ctx = spec["securityContext"]
                self.assertEqual((ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]),
                                 (65532, 65532, 65532), pod)

    def test_no_system_priority_outside_kube_system(self):
        """No pod outside kube-system uses a system-* priority class; the one
        the dfdaemon uses is defined alongside and is not the cluster default."""
        for where, objects in self.each_render():
            for o in objects:
                if o["kind"] not in ("DaemonSet", "StatefulSet"):
                    continue
                self.assertNotEqual(o["metadata"]["namespace"], "kube-system")
                spec = o["spec"]["template"]["spec"]
                name = spec.get("priorityClassName")
                if name is not None:
                    self.assertFalse(name.startswith("system-"), (where, name))
                    pc = one(objects, "PriorityClass", name)
                    self.assertEqual(pc["metadata"]["name"], name)
                    self.assertIs(pc["globalDefault"], False)
                    self.assertLess(pc["value"], 1_000_000_000)

    def test_supernode_disruption_budget(self):
        """A PodDisruptionBudget selects the supernodes and lets fewer of them
        go at once than there are."""
        for where, objects in self.each_render():
            sts = one(objects, "StatefulSet", "supernode")
            pdb = one(objects, "PodDisruptionBudget", "supernode")
            self.assertEqual(pdb["spec"]["selector"]["matchLabels"],
                             sts["spec"]["selector"]["matchLabels"], where)
            self.assertLess(pdb["spec"]["maxUnavailable"], sts["spec"]["replicas"], where)

    def test_service_account_without_token(self):
        """Every pod uses the dragonfly ServiceAccount and mounts no API token."""
        for where, objects in self.each_render():
            sa = one(objects, "ServiceAccount", "dragonfly")
            self.assertIs(sa["automountServiceAccountToken"], False)
            for pod, spec in pod_specs(objects):
                self.assertEqual(spec["serviceAccountName"], "dragonfly", pod)
                self.assertIs(spec["automountServiceAccountToken"], False, pod)

    def test_images_name_a_registry_and_tag(self):
        """Every container image has the registry placeholder and a version tag."""
        for where, objects in self.each_render():
            for pod, spec in pod_specs(objects):
                for c in containers(spec):
                    self.assertRegex(c["image"],
                                     r"\Aregistry\.example\.com/dragonfly/dragonfly:\d+\.\d+\.\d+\Z",
                                     (where, c["name"]))

    def test_supernode_cache_leaves_room_on_its_volume(self):
        """The supernode's cache-size is at most 85% of its volume: the rest is
        for spool files and metadata."""
        for where, objects in self.each_render():
            sts = one(objects, "StatefulSet", "supernode")
            config = config_toml(objects, "supernode-config", "supernode.toml")
            (claim,) = [t for t in sts["spec"]["volumeClaimTemplates"]
                        if t["metadata"]["name"] == "data"]
            volume = quantity(claim["spec"]["resources"]["requests"]["storage"])
            mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]
                      ["containers"][0]["volumeMounts"]}
            self.assertEqual(mounts["data"], config["data-dir"])
            self.assertLessEqual(parse_size(config["cache-size"]), volume * 0.85, where)

    def test_read_only_root_has_a_writable_tmp(self):
        """With a read-only root, each role has an emptyDir on /tmp (spool files
        fall back there)."""
        for where, objects in self.each_render():
            for pod, spec in pod_specs(objects):
                empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
                (main,) = spec["containers"]
                tmp = [m for m in main["volumeMounts"] if m["mountPath"] == "/tmp"]
                self.assertEqual(len(tmp), 1, pod)
                self.assertIn(tmp[0]["name"], empty, pod)

    def test_base_has_no_containerd_hosts(self):
        """The base leaves the nodes' containerd alone: the component is optional."""
        ds = one(self.renders[os.path.join("packaging", "kubernetes")], "DaemonSet")
        names = [c["name"] for c in containers(ds["spec"]["template"]["spec"])]
        self.assertEqual(names, ["chown-cache", "dfdaemon"])


class ContainerdHostsTests(SynchronousTestCase):
    """The containerd-hosts init container's script, run here on a temporary
    directory as the rendered pod would run it on the node."""

    def setUp(self):
        self.objects = render(*RENDERS[1])
        spec = one(self.objects, "DaemonSet")["spec"]["template"]["spec"]
        (self.init,) = [c for c in spec["initContainers"] if c["name"] == "containerd-hosts"]
        self.spec = spec
        self.configmap = one(self.objects, "ConfigMap", "dfdaemon-containerd-hosts")
        self.certs = self.mktemp()
        os.makedirs(self.certs)
        sh = shutil.which("sh")
        if sh is None:
            raise SkipTest("no sh")
        self.sh = sh

    def env(self):
        """The init container's environment, config map references resolved,
        with CERTS_DIR moved to the temporary directory."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in self.init["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["configMapKeyRef"]
                self.assertEqual(ref["name"], self.configmap["metadata"]["name"])
                env[e["name"]] = self.configmap["data"][ref["key"]]
        return env

    def run_script(self):
        command = self.init["command"]
        self.assertEqual(command[0], "/bin/sh")
        mounts = {m["mountPath"]: m["name"] for m in self.init["volumeMounts"]}
        script_dir, script = os.path.split(command[1])
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        cm = volumes[mounts[script_dir]]["configMap"]["name"]
        self.assertEqual(cm, self.configmap["metadata"]["name"])
        path = os.path.join(self.mktemp() + ".sh")
        with open(path, "w") as f:
            f.write(self.configmap["data"][script])
        env = self.env()
        certs_mount = env["CERTS_DIR"]
        self.assertEqual(volumes[mounts[certs_mount]]["hostPath"]["path"],
                         "/etc/containerd/certs.d")
        env["CERTS_DIR"] = self.certs
        return subprocess.run([self.sh, path], env=env, check=True, capture_output=True)

    def dfdaemon_config(self):
        return config_toml(self.objects, "dfdaemon-config", "dfdaemon.toml")

    def test_writes_hosts_toml_for_the_node_local_mirror(self):
        """Each configured registry gets a hosts.toml whose server is the registry
        (one the dfdaemon is allowed to reach) and whose one host is the
        dfdaemon's mirror on this node's loopback, for pull and resolve."""
        self.run_script()
        config = self.dfdaemon_config()
        written = sorted(os.listdir(self.certs))
        self.assertEqual(written, ["docker.io"])
        with open(os.path.join(self.certs, "docker.io", "hosts.toml"), "rb") as f:
            hosts = tomllib.load(f)
        self.assertEqual(hosts["server"], "https://registry-1.docker.io")
        self.assertIn(urlsplit(hosts["server"]).hostname, config["allow-registry"])
        (mirror,) = hosts["host"].keys()
        port = config["listen"].split(":")[1]
        self.assertIn("interface=127.0.0.1", config["listen"])
        self.assertEqual(mirror, f"http://127.0.0.1:{port}")
        self.assertEqual(hosts["host"][mirror], {"capabilities": ["pull", "resolve"]})

    def test_rerun_rewrites_its_own_file_only(self):
        """Run again (a pod restart) the script rewrites its own file, and a
        hosts.toml the operator wrote is left byte for byte."""
        self.run_script()
        own = os.path.join(self.certs, "docker.io", "hosts.toml")
        with open(own) as f:
            first = f.read()
        with open(own, "a") as f:
            f.write("# stale\n")
        os.makedirs(os.path.join(self.certs, "ghcr.io"))
        theirs = os.path.join(self.certs, "ghcr.io", "hosts.toml")
        with open(theirs, "w") as f:
            f.write('server = "https://ghcr.io"\n')
        self.configmap["data"]["registries"] += " ghcr.io=https://ghcr.io"
        out = self.run_script().stdout.decode()
        with open(own) as f:
            self.assertEqual(f.read(), first)
        with open(theirs) as f:
            self.assertEqual(f.read(), 'server = "https://ghcr.io"\n')
        self.assertIn("left as it is", out)
        self.assertEqual(sorted(os.listdir(os.path.join(self.certs, "docker.io"))),
                         ["hosts.toml"])

    def test_refuses_a_bad_registry_name(self):
        """A registry name that would leave the certs directory is refused."""
        self.configmap["data"]["registries"] = "../etc=https://x.example"
        with self.assertRaises(subprocess.CalledProcessError):
            self.run_script()
        self.assertEqual(os.listdir(self.certs), [])

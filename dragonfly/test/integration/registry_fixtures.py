"""Fixtures for registry-mirror integration tests: a real registry, a token
server, OCI image layouts built offline, and real processes on loopback.

Everything here is asynchronous (the token server lives in the test's own
reactor, so nothing may block it): processes are the harness's
(:class:`dragonfly.test.integration.harness.Proc`, output in log files), and
are waited for by polling with deadlines, never sleeps.

- :func:`build_oci_layout` writes an OCI image layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/...``) of random layers, for ``skopeo copy
  oci:DIR:TAG docker://...``; :func:`build_multiarch_layout` one whose tag is
  an image index of one such image per platform.
- :class:`TokenServer` is a Docker token-auth server (the Bearer dance):
  Basic credentials in, an RS256 JWT signed by a throw-away key out, with the
  certificate in the ``x5c`` header; the registry trusts that certificate via
  ``rootcertbundle``.
- :class:`Registry` runs Debian's ``docker-registry serve`` (the CNCF
  distribution registry) with filesystem storage in a temp dir and JSON logs,
  and reads its request log (method, path, status, bytes written).
- :func:`skopeo` runs one skopeo command to completion; :func:`start_dfdaemon`
  adds a dfdaemon to a harness ``Swarm``.
- :class:`Containerd`, :class:`Dockerd` and :class:`Podman` run the container
  engines with private state (own root, state dirs and socket; vfs/native
  storage, no networking set-up); :func:`daemon_json`, :func:`hosts_toml` and
  :func:`registries_conf` write the engines' mirror settings exactly as
  docs/mirror.md shows them, addresses substituted.
"""
import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import time
import uuid

from twisted.web import resource, server

from dragonfly.test.integration.harness import (
    LOOPBACK, HarnessError, Proc, child_env, free_port, poll_until)

DOCKER_REGISTRY = "/usr/bin/docker-registry"


def which(name, fallback=None):
    found = shutil.which(name)
    if found:
        return found
    if fallback and os.access(fallback, os.X_OK):
        return fallback
    return None


# ---------------------------------------------------------------- OCI layout

def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files, compress=True, mtime=0):
    """A tar layer of C{files} ({name: bytes}), gzipped by default. Deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if not compress:
        return raw, sha256_digest(raw)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=mtime, compresslevel=1) as gz:
        gz.write(raw)
    return out.getvalue(), sha256_digest(raw)


def build_oci_layout(root, layer_sizes=(300_000, 1_500_000, 5_000_000), tag="v1", seed=None):
    """Write an OCI image layout of random layers under C{root}.

    Returns a dict: ``manifest_digest``, ``config_digest``, ``layers`` (list of
    (digest, size)) and ``blobs`` ({digest: size} of every blob a pull fetches
    with GET /blobs/, i.e. config and layers).
    """
    rnd = os.urandom if seed is None else _seeded(seed)
    blobs_dir = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)

    def put(data):
        digest = sha256_digest(data)
        with open(os.path.join(blobs_dir, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
        return digest

    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        # Random bytes do not compress: the layer is about `size` bytes. Gzipped,
        # so that pushing keeps the digests (skopeo compresses plain tar layers).
        blob, diff_id = make_layer({f"data/file{i}.bin": rnd(size)}, compress=True)
        layers.append((put(blob), len(blob), True))
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "dragonfly test layer"} for _ in layer_sizes],
    }, sort_keys=True).encode()
    config_digest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar"
                    + ("+gzip" if gz else ""), "digest": d, "size": n}
                   for d, n, gz in layers],
    }, sort_keys=True).encode()
    manifest_digest = put(manifest)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    blobs = {config_digest: len(config)}
    blobs.update({d: n for d, n, _ in layers})
    return {"manifest_digest": manifest_digest, "config_digest": config_digest,
            "layers": [(d, n) for d, n, _ in layers], "blobs": blobs}


def build_multiarch_layout(root, platforms=("linux/amd64", "linux/arm64"),
                           layer_sizes=(200_000, 700_000), tag="v1"):
    """An OCI image layout whose C{tag} is an image index of one image per
    platform (random layers each), for C{skopeo copy --all}. Returns
    C{{"index_digest", "images": {platform: what build_oci_layout returns}}}."""
    images = {}
    for platform in platforms:
        images[platform] = build_oci_layout(root, layer_sizes, tag)
    entries = []
    for platform, info in images.items():
        os_, arch = platform.split("/")[:2]
        path = os.path.join(root, "blobs", "sha256", info["manifest_digest"].split(":", 1)[1])
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": info["manifest_digest"], "size": os.path.getsize(path),
                        "platform": {"os": os_, "architecture": arch}})
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}, sort_keys=True).encode()
    index_digest = sha256_digest(index)
    with open(os.path.join(root, "blobs", "sha256", index_digest.split(":", 1)[1]), "wb") as f:
        f.write(index)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": len(index),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    return {"index_digest": index_digest, "images": images}


def _seeded(seed):
    import random
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def layout_blobs(root):
    """{digest: bytes} of every blob in an OCI layout (for verifying a pulled copy)."""
    out = {}
    d = os.path.join(root, "blobs", "sha256")
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            out["sha256:" + name] = f.read()
    return out


def verify_layout(root):
    """Check every blob of an OCI layout matches its name; return the count."""
    blobs = layout_blobs(root)
    for digest, data in blobs.items():
        if sha256_digest(data) != digest:
            raise AssertionError(f"blob {digest} in {root} does not match its digest")
    return len(blobs)


# ---------------------------------------------------------------- token auth

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenSigner:
    """A throw-away RSA key and self-signed certificate for registry tokens."""

    def __init__(self, directory, issuer="dragonfly-test-issuer", service="dragonfly-test-registry"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.issuer = issuer
        self.service = service
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dragonfly test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self._key, hashes.SHA256()))
        self.cert_path = os.path.join(directory, "token-signer.pem")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def sign(self, subject, access, lifetime=600):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service,
                  "exp": now + lifetime, "nbf": now - 60, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)


class TokenServer(resource.Resource):
    """``GET /token?service=..&scope=repository:NAME:pull,push`` (Docker token auth).

    Valid Basic credentials get the actions they asked for; no credentials get
    an anonymous token granting nothing (like Docker Hub), so the registry then
    refuses the pull; wrong credentials get 401.
    """

    isLeaf = True

    def __init__(self, signer, users):
        resource.Resource.__init__(self)
        self.signer = signer
        self.users = dict(users)
        self.issued = []  # (subject, scopes)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        subject = ""
        auth = request.getHeader(b"authorization")
        if auth:
            scheme, _, value = auth.partition(b" ")
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except Exception:
                user = password = None
            if scheme.lower() != b"basic" or self.users.get(user) != password:
                request.setResponseCode(401)
                return json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                               "message": "bad credentials"}]}).encode()
            subject = user
        access = []
        for scope in request.args.get(b"scope", []):
            parts = scope.decode().split(":")
            if len(parts) >= 3 and subject:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        self.issued.append((subject, [s.decode() for s in request.args.get(b"scope", [])]))
        token = self.signer.sign(subject, access)
        return json.dumps({"token": token, "access_token": token, "expires_in": 600,
                           "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
                          ).encode()


def listen_token_server(reactor, token_server):
    """Listen on 127.0.0.1:0; returns (port object, realm URL)."""
    site = server.Site(token_server)
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}/token"


# ---------------------------------------------------------------- processes

async def skopeo(clock, workdir, name, args, timeout=120):
    """Run ``skopeo ARGS`` with a private HOME and policy; (exit code, stdout, stderr)."""
    env, policy = skopeo_env(os.path.join(workdir, "skopeo-home"))
    argv = [which("skopeo", "/usr/bin/skopeo"), "--policy", policy] + list(args)
    proc = Proc(name, argv, workdir, env=child_env(env), separate_stderr=True)
    try:
        await proc.wait(clock, timeout)
    except HarnessError:
        proc.kill_now()
        await proc.wait(clock, 10)
        raise HarnessError(f"skopeo {' '.join(args)} did not finish in {timeout}s:\n{proc.tail()}")
    return proc.returncode, proc.read_log(), proc.read_log(err=True)


async def start_dfdaemon(swarm, registry, extra=()):
    """A dfdaemon in C{swarm} (a harness Swarm with a supernode) mirroring C{registry}
    (an L{Registry}, plain HTTP, so opted in with --insecure-registry).
    Its port file has "api", "piece" and "mirror"; C{node.mirror} is its base URL."""
    name = swarm._name("dfdaemon")
    args = ["--supernodes", swarm.supernode_list(),
            "--listen", f"tcp:0:interface={LOOPBACK}",
            "--piece-listen", f"tcp:0:interface={LOOPBACK}",
            "--api-listen", f"tcp:0:interface={LOOPBACK}",
            "--advertise", LOOPBACK,
            "--registry", registry.url,
            "--insecure-registry", registry.hostport] + list(extra)
    node = await swarm._start_node(name, "dfdaemon", args)
    swarm.peers.append(node)
    await node.wait_ports(swarm.clock, ["api", "piece", "mirror"])
    node.mirror = f"http://{LOOPBACK}:{node.ports['mirror']}"
    node.mirror_hostport = f"{LOOPBACK}:{node.ports['mirror']}"
    await poll_until(swarm.clock, lambda: swarm.http.healthy(node.mirror), 30,
                     f"{name} mirror /healthz", check=node.check_alive)
    return node


# ---------------------------------------------------------------- the registry

def missing_registry_tools():
    """The names of the tools a registry test needs that are not installed."""
    return [name for name, path in (("docker-registry", DOCKER_REGISTRY),
                                    ("skopeo", "/usr/bin/skopeo"))
            if which(name, path) is None]


async def start_token_registry(test, reactor, workdir, users):
    """An empty docker-registry under C{workdir}/registry with token auth from
    a L{TokenServer} for C{users} ({name: password}); both stopped by C{test}'s
    cleanups. Returns C{(registry, tokens)}."""
    signer = TokenSigner(workdir)
    tokens = TokenServer(signer, users)
    port, realm = listen_token_server(reactor, tokens)
    test.addCleanup(port.stopListening)
    registry = Registry(os.path.join(workdir, "registry"), auth={
        "realm": realm, "service": signer.service, "issuer": signer.issuer,
        "rootcertbundle": signer.cert_path})
    test.addCleanup(registry.stop, reactor)
    await registry.start(reactor)
    return registry, tokens


class Registry:
    """``docker-registry serve`` on 127.0.0.1 with storage under C{directory}.

    C{auth} is None (anonymous) or a dict ``{"realm", "service", "issuer",
    "rootcertbundle"}`` for token auth.
    """

    def __init__(self, directory, auth=None, binary=DOCKER_REGISTRY):
        self.directory = directory
        self.binary = binary
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hostport = f"127.0.0.1:{self.port}"
        self.config_path = os.path.join(directory, "registry.yml")
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: json",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {os.path.join(directory, 'storage')}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: dragonfly-test-secret",
        ]
        if auth:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {auth['realm']}",
                f"    service: {auth['service']}",
                f"    issuer: {auth['issuer']}",
                f"    rootcertbundle: {auth['rootcertbundle']}",
            ]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    async def start(self, clock, timeout=30.0):
        self.proc = Proc("registry", [self.binary, "serve", self.config_path], self.directory)
        self.log_path = self.proc.log_path

        def up():
            s = socket.socket()
            s.settimeout(0.2)
            try:
                s.connect((LOOPBACK, self.port))
                return True
            except OSError:
                return False
            finally:
                s.close()

        try:
            await poll_until(clock, up, timeout, "docker-registry to listen",
                             check=self.proc.check_alive)
        except BaseException:
            self.proc.kill_now()
            raise

    async def stop(self, clock):
        if self.proc is not None:
            await self.proc.stop(clock)

    def requests(self):
        """Completed requests from the registry's JSON log:
        dicts with method, path, status, written, user_agent."""
        out = []
        with open(self.log_path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("msg") != "response completed":
                    continue
                out.append({
                    "method": entry.get("http.request.method"),
                    "path": (entry.get("http.request.uri") or "").split("?", 1)[0],
                    "status": entry.get("http.response.status"),
                    "written": entry.get("http.response.written", 0),
                    "user_agent": entry.get("http.request.useragent", ""),
                })
        return out

    def blob_gets(self, digest):
        """The GET requests (any repository) for blob C{digest} that sent bytes."""
        suffix = "/blobs/" + digest
        return [r for r in self.requests()
                if r["method"] == "GET" and r["path"].endswith(suffix)]


# The podman/skopeo drop-in exactly as docs/mirror.md shows it (a test checks
# the two stay identical); registries_conf() substitutes the addresses.
DOCS_REGISTRIES_CONF = """\
[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "127.0.0.1:65001"
insecure = true
"""


def registries_conf(path, registry_hostport, mirror_hostport):
    """The documented containers-registries.conf(5) drop-in, for C{registry_hostport}
    mirrored by C{mirror_hostport}."""
    text = (DOCS_REGISTRIES_CONF
            .replace('"docker.io"', f'"{registry_hostport}"')
            .replace('"127.0.0.1:65001"', f'"{mirror_hostport}"'))
    with open(path, "w") as f:
        f.write(text)
    return path


def auth_file(path, creds):
    """A containers-auth.json(5) file: {host[:port]: (user, password)}.

    Note: skopeo/podman never send ``--src-creds``/``--creds`` to a mirror
    on another host (containers/image drops them); a mirror's credentials
    come from the auth file entry for the *mirror's* host, as ``podman login
    MIRROR`` writes it.
    """
    auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             for host, (user, password) in creds.items()}
    with open(path, "w") as f:
        json.dump({"auths": auths}, f)
    return path


def skopeo_env(home):
    """An environment that keeps skopeo away from the user's auth and policy files."""
    os.makedirs(os.path.join(home, ".config", "containers"), exist_ok=True)
    policy = os.path.join(home, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    return {"HOME": home, "XDG_RUNTIME_DIR": home,
            "REGISTRY_AUTH_FILE": os.path.join(home, "auth.json")}, policy




# ---------------------------------------------------------------- container engines
#
# docker, containerd and podman, each run with private state (own root, state
# and socket, vfs/native storage so nothing is mounted) and each configured
# with the very snippet docs/mirror.md shows (the tests check the two stay
# identical; only the addresses are substituted).

# docs/mirror.md, Docker: /etc/docker/daemon.json.
DOCS_DAEMON_JSON = """\
{
  "registry-mirrors": ["http://127.0.0.1:65001"]
}
"""

# docs/mirror.md, containerd: the hosts.toml of a registry other than Docker Hub.
DOCS_HOSTS_TOML = """\
server = "https://ghcr.io"

[host."http://127.0.0.1:65001"]
  capabilities = ["pull", "resolve"]
"""

DOCS_MIRROR_URL = "http://127.0.0.1:65001"


def daemon_json(path, mirror_url, extra=None):
    """The documented daemon.json with the mirror at C{mirror_url}; C{extra}
    settings (a dict) are added to its object when given."""
    text = DOCS_DAEMON_JSON.replace(f'"{DOCS_MIRROR_URL}"', f'"{mirror_url}"')
    if extra:
        obj = json.loads(text)
        obj.update(extra)
        text = json.dumps(obj, indent=2) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return path


def hosts_toml(hosts_dir, registry_url, mirror_url):
    """The documented hosts.toml for the registry at C{registry_url} (its server)
    mirrored by C{mirror_url}, at ``HOSTS_DIR/HOST:PORT/hosts.toml`` as
    containerd looks it up. Returns its path."""
    host = registry_url.split("://", 1)[1].rstrip("/")
    text = (DOCS_HOSTS_TOML
            .replace('"https://ghcr.io"', f'"{registry_url}"')
            .replace(f'"{DOCS_MIRROR_URL}"', f'"{mirror_url}"'))
    os.makedirs(os.path.join(hosts_dir, host), exist_ok=True)
    path = os.path.join(hosts_dir, host, "hosts.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def docker_client():
    """The Docker CLI of the docker.io package (else the first one on PATH)."""
    return which("/usr/bin/docker") or which("docker")


def engine_binaries(engine):
    """{name: path or None} of the binaries an engine's test needs."""
    if engine == "containerd":
        return {"containerd": which("containerd", "/usr/bin/containerd"),
                "ctr": which("ctr", "/usr/bin/ctr")}
    if engine == "podman":
        return {"podman": which("podman", "/usr/bin/podman")}
    if engine == "docker":
        return {"dockerd": which("dockerd", "/usr/sbin/dockerd"), "docker": docker_client()}
    raise ValueError(engine)


def short_tempdir(prefix):
    """A fresh directory under /tmp: unix socket paths must stay under 108
    bytes, which trial's nested temp directories easily exceed."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path):
    """Mount points at or below C{path} (deepest first), from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = _unescape_mountinfo(fields[4])
                    if point == path or point.startswith(path + os.sep):
                        found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=lambda p: (-p.count(os.sep), p))


def unmount_under(path):
    """Detach (umount2 MNT_DETACH) every mount at or below C{path}; return them."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    points = mounts_under(path)
    for point in points:
        if libc.umount2(point.encode(), 2) != 0:  # MNT_DETACH
            err = ctypes.get_errno()
            raise OSError(err, f"umount {point}: {os.strerror(err)}")
    return points


def remove_tree(path):
    """Unmount anything left below C{path}, then delete it."""
    if not os.path.lexists(path):
        return
    unmount_under(path)
    shutil.rmtree(path)


async def run_command(clock, workdir, name, argv, env=None, timeout=60):
    """Run C{argv} to completion (output in C{workdir}/NAME.log and .stderr);
    (exit code, stdout, stderr). Killed, with HarnessError, after C{timeout}."""
    proc = Proc(name, argv, workdir, env=child_env(env), separate_stderr=True)
    try:
        await proc.wait(clock, timeout)
    except HarnessError:
        proc.kill_now()
        await proc.wait(clock, 10)
        raise HarnessError(f"{' '.join(argv)} did not finish in {timeout}s:\n{proc.tail()}")
    return proc.returncode, proc.read_log(), proc.read_log(err=True)


def _unix_http_ok(path, request=b"GET /_ping HTTP/1.0\r\n\r\n", timeout=1.0):
    """True when a unix-socket HTTP server at C{path} answers 2xx."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(request)
        head = s.recv(64)
        return head.startswith(b"HTTP/1.") and head[9:10] == b"2"
    except OSError:
        return False
    finally:
        s.close()


def _unix_connects(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class _Engine:
    """A daemon (containerd, dockerd) with private directories; C{stop} ends it,
    unmounts anything it left and deletes its directories."""

    name = "engine"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.dirs = []  # removed on stop

    def _dir(self, path):
        os.makedirs(path, exist_ok=True)
        self.dirs.append(path)
        return path

    def logs(self, lines=40):
        if self.proc is None:
            return ""
        return (f"----- {self.proc.name} (pid {self.proc.pid}, exit {self.proc.returncode}) "
                f"{self.proc.log_path}\n{self.proc.tail(lines)}")

    def _orphans(self):
        """Pids of helper processes that may outlive the daemon (by pid file)."""
        return []

    async def stop(self, clock):
        if self.proc is not None:
            await self.proc.stop(clock, grace=20)
        for pid in self._orphans():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for path in reversed(self.dirs):
            remove_tree(path)


class Containerd(_Engine):
    """A private ``containerd`` (own root, state and socket; the CRI plugin and
    the mounting snapshotters disabled, so images unpack with ``native``)."""

    name = "containerd"
    DISABLED = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.overlayfs",
                "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

    def __init__(self, workdir, binary=None, ctr=None):
        _Engine.__init__(self, workdir)
        self.binary = binary or which("containerd", "/usr/bin/containerd")
        self.ctr_binary = ctr or which("ctr", "/usr/bin/ctr")
        self.root = self._dir(os.path.join(workdir, "containerd-root"))
        self.run = self._dir(short_tempdir("df-ctd-"))
        self.state = os.path.join(self.run, "state")
        self.socket = os.path.join(self.run, "containerd.sock")
        self.config_path = os.path.join(self.run, "config.toml")
        with open(self.config_path, "w") as f:
            f.write("\n".join([
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.state}"',
                "disabled_plugins = [" + ", ".join(f'"{p}"' for p in self.DISABLED) + "]",
                "[grpc]",
                f'  address = "{self.socket}"',
                "[ttrpc]",
                f'  address = "{self.socket}.ttrpc"',
                "[debug]",
                '  address = ""',
                "[metrics]",
                '  address = ""',
            ]) + "\n")

    async def start(self, clock, timeout=30):
        self.proc = Proc("containerd", [self.binary, "--config", self.config_path], self.workdir)
        try:
            await poll_until(clock, lambda: _unix_connects(self.socket), timeout,
                             "containerd to listen", check=self.proc.check_alive)
        except BaseException:
            self.proc.kill_now()
            raise

    async def ctr(self, clock, name, args, timeout=60):
        """``ctr --address SOCKET ARGS`` (``native`` snapshotter by default):
        (exit code, stdout, stderr)."""
        return await run_command(clock, self.workdir, name,
                                 [self.ctr_binary, "--address", self.socket] + list(args),
                                 env={"CONTAINERD_SNAPSHOTTER": "native"}, timeout=timeout)


class Dockerd(_Engine):
    """A private ``dockerd``: own data-root, exec-root, pid file, trust key and
    unix socket; no bridge, no iptables, no IP forwarding, the vfs storage
    driver (nothing mounted but the data-root's own propagation bind, which
    dockerd undoes on a clean stop and L{stop} undoes otherwise).

    Its ``--config-file`` is the documented daemon.json (L{daemon_json}) with
    the mirror at C{mirror_url}, plus ``deprecated-key-path``: dockerd 20.10
    has no flag for its trust key and would otherwise create
    /etc/docker/key.json. Everything else is given as flags."""

    name = "dockerd"

    def __init__(self, workdir, mirror_url, binary=None, client=None):
        _Engine.__init__(self, workdir)
        self.binary = binary or which("dockerd", "/usr/sbin/dockerd")
        self.client = client or docker_client()
        self.data_root = self._dir(os.path.join(workdir, "docker-data"))
        self.run = self._dir(short_tempdir("df-dkd-"))
        self.exec_root = os.path.join(self.run, "exec")
        self.socket = os.path.join(self.run, "docker.sock")
        self.cli_config = self._dir(os.path.join(workdir, "docker-cli"))
        self.config_file = daemon_json(
            os.path.join(workdir, "daemon.json"), mirror_url,
            extra={"deprecated-key-path": os.path.join(self.run, "key.json")})

    async def start(self, clock, timeout=45):
        argv = [self.binary, "--config-file", self.config_file,
                "--data-root", self.data_root, "--exec-root", self.exec_root,
                "--pidfile", os.path.join(self.run, "docker.pid"),
                "-H", "unix://" + self.socket,
                "--bridge", "none", "--iptables=false", "--ip6tables=false",
                "--ip-forward=false", "--ip-masq=false",
                "--storage-driver", "vfs"]
        self.proc = Proc("dockerd", argv, self.workdir)
        try:
            await poll_until(clock, lambda: _unix_http_ok(self.socket), timeout,
                             "dockerd to answer /_ping", interval=0.1, check=self.proc.check_alive)
        except BaseException:
            self.proc.kill_now()
            raise

    def _orphans(self):
        # dockerd starts its own containerd (in its own process group); on a
        # clean stop dockerd ends it, after a SIGKILL it would linger.
        pids = []
        path = os.path.join(self.exec_root, "containerd", "containerd.pid")
        try:
            with open(path) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if self.exec_root.encode() in f.read():
                    pids.append(pid)
        except (OSError, ValueError):
            pass
        return pids

    async def docker(self, clock, name, args, timeout=60):
        """``docker -H unix://SOCKET ARGS`` with a private client config."""
        return await run_command(clock, self.workdir, name,
                                 [self.client, "-H", "unix://" + self.socket] + list(args),
                                 env={"DOCKER_CONFIG": self.cli_config}, timeout=timeout)


class Podman(_Engine):
    """Rootful ``podman`` with private storage (vfs, own --root/--runroot,
    storage.conf and containers.conf), libpod tmpdir, network config dir, no
    events; pulls use the given registries.conf (CONTAINERS_REGISTRIES_CONF)."""

    name = "podman"

    def __init__(self, workdir, binary=None):
        _Engine.__init__(self, workdir)
        self.binary = binary or which("podman", "/usr/bin/podman")
        base = self._dir(os.path.join(workdir, "podman"))
        self.root = self._dir(os.path.join(base, "root"))
        # podman refuses a runroot longer than 50 characters.
        self.runroot = self._dir(short_tempdir("df-podman-"))
        self.tmpdir = self._dir(os.path.join(base, "tmp"))
        self.netdir = self._dir(os.path.join(base, "networks"))
        self.home = self._dir(os.path.join(base, "home"))
        self.storage_conf = os.path.join(base, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\nrunroot = "{self.runroot}"\n'
                    f'graphroot = "{self.root}"\n')
        # podman insists that REGISTRY_AUTH_FILE exists.
        self.auth_file = auth_file(os.path.join(self.home, "auth.json"), {})
        self.containers_conf = os.path.join(base, "containers.conf")
        with open(self.containers_conf, "w") as f:
            # CNI, not netavark: rootful netavark keeps its state in
            # /run/containers/networks whatever the flags say; CNI keeps its
            # config in --network-config-dir and needs nothing for a pull.
            f.write(f'[engine]\nimage_copy_tmp_dir = "{self.tmpdir}"\n'
                    '[network]\nnetwork_backend = "cni"\n')

    async def start(self, clock):
        """podman has no daemon."""

    async def podman(self, clock, name, args, registries_conf=None, timeout=60):
        env = {"HOME": self.home, "XDG_RUNTIME_DIR": self.home, "TMPDIR": self.tmpdir,
               "REGISTRY_AUTH_FILE": self.auth_file,
               "CONTAINERS_STORAGE_CONF": self.storage_conf,
               "CONTAINERS_CONF": self.containers_conf}
        if registries_conf:
            env["CONTAINERS_REGISTRIES_CONF"] = registries_conf
        argv = [self.binary, "--root", self.root, "--runroot", self.runroot,
                "--storage-driver", "vfs", "--tmpdir", self.tmpdir,
                "--network-config-dir", self.netdir, "--events-backend", "none",
                "--cgroup-manager", "cgroupfs"] + list(args)
        return await run_command(clock, self.workdir, name, argv, env=env, timeout=timeout)

"""Fixtures for registry-mirror integration tests: a real registry, a token
server, OCI image layouts built offline, and real processes on loopback.

Everything here is asynchronous (the token server lives in the test's own
reactor, so nothing may block it): processes are the harness's
(:class:`dragonfly.test.integration.harness.Proc`, output in log files), and
are waited for by polling with deadlines, never sleeps.

- :func:`build_oci_layout` writes an OCI image layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/...``) of random layers, for ``skopeo copy
  oci:DIR:TAG docker://...``.
- :class:`TokenServer` is a Docker token-auth server (the Bearer dance):
  Basic credentials in, an RS256 JWT signed by a throw-away key out, with the
  certificate in the ``x5c`` header; the registry trusts that certificate via
  ``rootcertbundle``.
- :class:`Registry` runs Debian's ``docker-registry serve`` (the CNCF
  distribution registry) with filesystem storage in a temp dir and JSON logs,
  and reads its request log (method, path, status, bytes written).
- :func:`skopeo` runs one skopeo command to completion; :func:`start_dfdaemon`
  adds a dfdaemon to a harness ``Swarm``.
"""
import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
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



"""``twistd dfdaemon``: a peer plus a registry mirror.

The options are the peer's (L{dragonfly.peer.tap.PeerOptions}, the same code
as ``twistd peer``) plus the mirror's; the service is the peer's service with
the mirror attached (L{dragonfly.dfdaemon.service.attach_mirror}).

Only this module touches the global reactor, and only when C{makeService}
is not given one.
"""
from twisted.python import usage

from dragonfly.dfdaemon.proxy import PROXY_FLAGS, PROXY_ROWS, attach_proxy, check_proxy_options
from dragonfly.dfdaemon.service import MirrorConfig, attach_mirror, registry_origins
from dragonfly.dfdaemon.upstream import DEFAULT_REGISTRY, UpstreamError, Upstreams
from dragonfly.peer.assembly import make_peer_service
from dragonfly.peer.service import PeerConfig
from dragonfly.peer.tap import PeerOptions, check_endpoint

__all__ = ["Options", "makeService"]


def _peer_parameters():
    out = []
    for p in PeerOptions.optParameters:
        if p[0] == "port-file":
            p = ["port-file", None, None,
                 'Write {"api": PORT, "piece": PORT, "mirror": PORT} (JSON) here once listening.']
        out.append(p)
    return out


class Options(PeerOptions):
    """twistd dfdaemon [options]"""

    role = "dfdaemon"
    default_data_dir = "/var/lib/dragonfly/dfdaemon"
    synopsis = "[options]"
    longdesc = (
        "The dragonfly dfdaemon: a peer plus an OCI/Docker registry mirror on --listen. "
        "Image blobs are pulled through the P2P swarm (task id = the blob's digest); "
        "everything else (pushes too, streamed, never cached) passes through to the "
        "upstream registry unchanged. Only "
        "--registry and --allow-registry upstreams are ever contacted (containerd's "
        "?ns= picks among them); it is never an open proxy. With --proxy-listen it is "
        "also a forward HTTP proxy: GETs matching a --proxy-rule go through P2P, other "
        "requests to origins the egress policy allows pass through, the rest is 403.")

    optParameters = _peer_parameters() + [
        ["listen", None, "tcp:65001",
         "Registry mirror endpoint: tcp:65001, "
         "ssl:65001:privateKey=KEY.pem:certKey=CERT.pem, unix:/path, ..."],
        ["registry", None, DEFAULT_REGISTRY,
         "The default upstream registry (https://HOST[:PORT]; http:// only with "
         "--insecure-registry)."],
        ["upstream-timeout", None, "60",
         "Seconds to wait for an upstream registry's response headers."],
    ] + PROXY_ROWS
    optFlags = PROXY_FLAGS
    listOptions = tuple(PeerOptions.listOptions) + ("allow-registry", "insecure-registry",
                                                    "proxy-rule")

    def opt_proxy_rule(self, value):
        """HTTP proxy: a GET whose URL matches REGEX goes through P2P (REGEX [filter=NAME,...] [tag=TEXT] [digest-header=NAME]; a named group sha256/sha512/md5 captures a digest); repeatable."""  # noqa: E501
        self["proxy_rule"].append(value)

    def opt_allow_registry(self, value):
        """Another upstream the mirror may use: HOST[:PORT] (HTTPS) or a URL; repeatable. containerd's ?ns= picks among them."""  # noqa: E501
        self["allow_registry"].extend(v.strip() for v in value.split(",") if v.strip())

    def opt_insecure_registry(self, value):
        """Opt-in: reach upstream HOST[:PORT] over plain HTTP or unverified TLS; repeatable."""
        self["insecure_registry"].extend(v.strip() for v in value.split(",") if v.strip())

    def postOptions(self):
        self.applyConfig()
        self.config = self.build_config(PeerConfig())
        self.mirror_config = self.build_mirror_config(MirrorConfig())
        self.proxy_config = check_proxy_options(self, self.mirror_config.upstream_timeout)
        # The registries are origins this node may always reach (unless denied).
        self.config.allow_origin = self.config.allow_origin + registry_origins(self.mirror_config)

    def build_mirror_config(self, m):
        check_endpoint("listen", self["listen"], example="tcp:65001")
        m.listen = self["listen"]
        m.registry = str(self["registry"] or DEFAULT_REGISTRY).strip()
        m.allow_registry = [str(v) for v in self["allow_registry"]]
        m.insecure_registry = [str(v) for v in self["insecure_registry"]]
        try:
            Upstreams.from_options(m.registry, m.allow_registry, m.insecure_registry)
        except UpstreamError as e:
            raise usage.UsageError(f"registry upstreams: {e}")
        try:
            m.upstream_timeout = float(self["upstream-timeout"])
        except (TypeError, ValueError):
            raise usage.UsageError(
                f"--upstream-timeout must be a number of seconds, not {self['upstream-timeout']!r}")
        if not 0 < m.upstream_timeout <= 3600:
            raise usage.UsageError("--upstream-timeout must be between 0 and 3600 seconds")
        return m


def makeService(options, reactor=None):
    """The dfdaemon's service: the peer's, with the registry mirror attached;
    without C{reactor} (twistd), on the global one, exiting 0 after SIGTERM."""
    from dragonfly.runtime.exitstatus import twistd_service

    return twistd_service(_make_service, options, reactor)


def _make_service(options, reactor):
    from dragonfly.egress import EgressPolicy

    svc, node, metrics = make_peer_service(options, reactor)
    c = options.config
    egress = EgressPolicy(c.allow_origin, c.deny_origin)
    attach_mirror(svc, reactor, options.mirror_config, node, metrics, egress=egress)
    if options.proxy_config.listen:
        attach_proxy(svc, reactor, options.proxy_config, node, metrics, egress)
    return svc

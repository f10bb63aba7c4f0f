"""Start real dragonfly processes (supernode, peer, dfget) for the benchmarks.

Process contract (SPEC.md + docs/design.md):
  twistd -n --pidfile= supernode --listen tcp:0:interface=H --piece-listen tcp:0:interface=H
         --advertise H --data-dir D --port-file F          -> F = {"api": p, "piece": p}
  twistd -n --pidfile= peer --supernodes H:API --piece-listen ... --api-listen ...
         --advertise H --data-dir D --port-file F
  dfget URL -O FILE --daemon http://H:PEERAPI --supernodes H:API

``tls``: a L{bench.tlsfiles.BenchPKI}; the node then gets a certificate of its
own (its name, its address) and speaks mutual TLS on the supernode API and
the piece ports (the peer's local API stays plain HTTP on loopback).
"""
import os
import shutil

from bench.procs import Proc, peak_rss_argv, scrape, tool, wait_for_file

ENV = dict(os.environ, PYTHONUNBUFFERED="1")
#: The benches' origins (nginx, registries) listen on loopback, which the egress
#: policy denies by default; every node and dfget here allows it explicitly.
ALLOW_LOOPBACK = ["--allow-origin", "127.0.0.1"]


class Node:
    """A twistd process of ours: its directory, data dir, port file, log."""

    def __init__(self, workdir, host, ns, extra, name, tls=None):
        self.host = host
        self.ns = ns
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        self.port_file = os.path.join(self.dir, "ports.json")
        self.extra = list(extra) + (tls.flags(name, host) if tls is not None else [])
        self.tls = tls
        self.proc = None
        self.api = self.piece = None

    def _spawn(self, argv):
        self.proc = Proc(argv, os.path.join(self.dir, "log.txt"), ns=self.ns, env=ENV, name=self.name)

    def _read_ports(self, timeout):
        ports = wait_for_file(self.port_file, timeout, self.proc)
        self.api, self.piece = int(ports["api"]), int(ports["piece"])
        return ports

    def stop(self):
        if self.proc:
            self.proc.stop()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Supernode(Node):
    def __init__(self, workdir, host="127.0.0.1", ns=None, extra=(), name="supernode", tls=None):
        Node.__init__(self, workdir, host, ns, extra, name, tls)

    def start(self, timeout=60):
        ep = "tcp:0:interface=%s" % self.host
        self._spawn([tool("twistd"), "-n", "--pidfile=", "supernode",
                     "--listen", ep, "--piece-listen", ep, "--advertise", self.host,
                     "--data-dir", self.data, "--port-file", self.port_file]
                    + ALLOW_LOOPBACK + self.extra)
        self._read_ports(timeout)
        return self

    @property
    def address(self):
        return "%s:%d" % (self.host, self.api)

    def metrics(self):
        return scrape(self.host, self.api, ns=self.ns,
                      tls=self.tls.client() if self.tls is not None else None)


class Peer(Node):
    def __init__(self, workdir, supernodes, host="127.0.0.1", ns=None, extra=(), name="peer",
                 tls=None):
        Node.__init__(self, workdir, host, ns, extra, name, tls)
        self.supernodes = supernodes

    def start(self, timeout=60):
        self._spawn([tool("twistd"), "-n", "--pidfile=", "peer",
                     "--supernodes", self.supernodes,
                     "--piece-listen", "tcp:0:interface=%s" % self.host,
                     "--api-listen", "tcp:0:interface=127.0.0.1",
                     "--advertise", self.host,
                     "--data-dir", self.data, "--port-file", self.port_file]
                    + ALLOW_LOOPBACK + self.extra)
        return self

    def wait_ready(self, timeout=60):
        self._read_ports(timeout)
        return self

    @property
    def daemon_url(self):
        return "http://127.0.0.1:%d" % self.api

    def metrics(self):
        return scrape("127.0.0.1", self.api, ns=self.ns)

    def dfget(self, url, output, extra=(), log=None, rss_file=None):
        return dfget(url, output, self.supernodes, daemon=self.daemon_url, ns=self.ns,
                     extra=extra, log=log or os.path.join(self.dir, "dfget.log"),
                     rss_file=rss_file)


def dfget(url, output, supernodes, daemon=None, ns=None, extra=(), log=None, rss_file=None):
    """Start one dfget; returns its Proc (``wait``/``poll`` it).

    ``rss_file``: run it under GNU time, which writes dfget's own peak RSS
    there (see ``procs.peak_rss_argv``).
    """
    argv = [tool("dfget"), url, "-O", output, "--supernodes", supernodes] + ALLOW_LOOPBACK
    if daemon:
        argv += ["--daemon", daemon]
    argv += list(extra)
    if rss_file:
        argv = peak_rss_argv(argv, rss_file)
    return Proc(argv, log or output + ".log", ns=ns, env=ENV, name="dfget")


def curl(url, output, ns=None, log=None, extra=()):
    """Start one curl download to a file; returns its Proc."""
    argv = ["curl", "-sS", "-f", "-o", output] + list(extra) + [url]
    return Proc(argv, log or output + ".log", ns=ns, name="curl")


def peer_bytes(samples):
    """{source: bytes} of a peer's dragonfly_peer_download_bytes_total."""
    from bench.procs import metric
    return {s: metric(samples, "dragonfly_peer_download_bytes_total", source=s)
            for s in ("peer", "supernode", "origin")}

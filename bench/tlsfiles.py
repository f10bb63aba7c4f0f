"""Certificates for the benches' mutual-TLS runs, made with ``dragonfly-pki``
as an operator would (``init DIR``, then ``issue DIR NAME --ip IP`` per node).

A node's flags name its own certificate (NAME, the address it serves on) and
the CA; the bench itself scrapes a TLS supernode's /metrics with a client
certificate of its own (``client``).
"""
import os
import subprocess
import sys

from bench.procs import BenchError, tool


class BenchPKI:
    """A CA in ``directory`` and the node certificates issued from it (reused
    when a node of the same name and address starts again)."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = os.path.join(directory, "ca.pem")
        if not os.path.exists(self.ca):
            self._pki("init", directory)
        self._issued = {}

    def _pki(self, *args):
        try:
            argv = [tool("dragonfly-pki")]
        except BenchError:      # not installed as a script: the same code as a module
            argv = [sys.executable, "-m", "dragonfly.pki"]
        out = subprocess.run(argv + list(args), capture_output=True, timeout=60)
        if out.returncode != 0:
            raise BenchError("dragonfly-pki %s failed: %s" % (
                " ".join(args), (out.stderr or out.stdout).decode().strip()))

    def files(self, name, ip):
        """(cert, key, ca) of node ``name`` serving on ``ip``."""
        if (name, ip) not in self._issued:
            if name in {n for n, _ in self._issued}:
                raise BenchError("certificate %s already issued for another address" % name)
            cert = os.path.join(self.dir, name + ".pem")
            if not os.path.exists(cert):
                self._pki("issue", self.dir, name, "--ip", ip)
            self._issued[(name, ip)] = (cert, os.path.join(self.dir, name + ".key"), self.ca)
        return self._issued[(name, ip)]

    def flags(self, name, ip):
        """``--tls-cert/--tls-key/--tls-ca`` for node ``name`` on ``ip``."""
        cert, key, ca = self.files(name, ip)
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]

    def client(self):
        """(cert, key, ca) the bench presents when it scrapes a TLS API."""
        return self.files("bench-client", "127.0.0.1")

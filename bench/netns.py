"""A private switched network of Linux network namespaces for the swarm bench.

Layout (all names start with the lab prefix, default ``dfb``)::

    dfb-br   bridge namespace: bridge br0 (10.201.0.254/24), one veth port per host
    dfb-h0   host namespace: eth0 10.201.0.1/24 + lo          (origin)
    dfb-h1   host namespace: eth0 10.201.0.2/24 + lo          (supernode)
    dfb-hK   ...                                              (peers)

Every host's link is a full-duplex port of ``rate``: a ``tbf`` qdisc on the
host's eth0 limits its uplink (egress), and one on the bridge-side veth limits
its downlink. Nothing is created in the machine's root namespace, and only
these namespaces carry the traffic. ``close()`` (also run by
``bench.procs``-style cleanup from ``bench.run`` on any exit) kills whatever
still runs inside the lab's namespaces and deletes them.
"""
import subprocess

_LABS = []


def _ip(*args, check=True):
    out = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and out.returncode != 0:
        raise NetnsError("ip %s: %s" % (" ".join(args), out.stderr.strip()))
    return out


class NetnsError(Exception):
    pass


def namespaces():
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def available():
    """(True, "") when we may create namespaces and tbf qdiscs, else (False, reason)."""
    probe = "dfbprobe"
    try:
        _ip("netns", "add", probe)
    except (NetnsError, OSError) as e:
        return False, str(e)
    try:
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        out = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "p0",
                              "root", "tbf", "rate", "100mbit", "burst", "256k", "latency", "100ms"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return False, "tc tbf: " + out.stderr.strip()
        return True, ""
    except (NetnsError, OSError) as e:
        return False, str(e)
    finally:
        _ip("netns", "del", probe, check=False)


class NetLab:
    """``hosts`` namespaces on one bridge, each link limited to ``rate_mbit``."""

    def __init__(self, hosts, rate_mbit=100, prefix="dfb", subnet="10.201.0", burst="256k", child=""):
        if hosts > 250:
            raise ValueError("at most 250 hosts")
        self.prefix = prefix
        self.subnet = subnet
        self.rate_mbit = rate_mbit
        self.burst = burst
        self.child = child      # a qdisc under each tbf (e.g. fq_codel); "" = tbf's FIFO
        self.count = hosts
        self.bridge_ns = "%s-br" % prefix
        self.hosts = ["%s-h%d" % (prefix, i) for i in range(hosts)]
        self.created = []

    # -- addresses ----------------------------------------------------
    def addr(self, i):
        return "%s.%d" % (self.subnet, i + 1)

    @property
    def bridge_addr(self):
        return "%s.254" % self.subnet

    @property
    def link_bytes_per_s(self):
        return self.rate_mbit * 1e6 / 8

    # -- lifecycle ----------------------------------------------------
    def stale(self):
        return [n for n in namespaces() if n == self.bridge_ns or n.startswith(self.prefix + "-h")]

    def create(self):
        # Leftovers of a crashed run of ours (same private prefix) go first.
        for ns in self.stale():
            self._kill_inside(ns)
            _ip("netns", "del", ns, check=False)
        _LABS.append(self)
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "addr", "add", self.bridge_addr + "/24", "dev", "br0")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i, ns in enumerate(self.hosts):
                self._add_ns(ns)
                port = "p%d" % i
                _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth",
                    "peer", "name", "eth0", "netns", ns)
                _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", port, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", self.addr(i) + "/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                if self.rate_mbit:
                    self._tbf(ns, "eth0")                  # uplink
                    self._tbf(self.bridge_ns, port)        # downlink
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns):
        _ip("netns", "add", ns)
        self.created.append(ns)

    def _tbf(self, ns, dev):
        out = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                              "handle", "1:", "tbf", "rate", "%dmbit" % self.rate_mbit, "burst", self.burst,
                              "latency", "100ms"], capture_output=True, text=True)
        if out.returncode == 0 and self.child:
            out = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                                  "parent", "1:1", self.child], capture_output=True, text=True)
        if out.returncode != 0:
            raise NetnsError("tc on %s/%s: %s" % (ns, dev, out.stderr.strip()))

    def _kill_inside(self, ns):
        import os
        import signal
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass

    def close(self):
        for ns in reversed(self.created):
            self._kill_inside(ns)
            _ip("netns", "del", ns, check=False)
        self.created = []
        if self in _LABS:
            _LABS.remove(self)

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.close()


def cleanup():
    """Delete every lab still up (called on every exit path of bench.run)."""
    for lab in list(_LABS):
        lab.close()

"""dfget --recursive against a real nginx autoindex, through two real peers.

nginx (Debian's nginx-light, unprivileged, everything under the test's temp
dir) serves a tree of 20 files in 3 levels as HTML autoindex (C{/tree/}) and
as JSON autoindex (C{/jtree/}, the same files under other URLs), and a crafted listing with a
C{../} entry (C{/crafted/}). Its access log counts the body bytes per path.
"""
import os
import shutil
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    ALLOW_LOOPBACK, HTTP, DfgetResult, Proc, Swarm, executable, free_port, make_random_file,
    poll_until, sha256_file, with_logs)

CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    log_format counted '"$request" $status $body_bytes_sent';
    access_log {tmp}/access.log counted;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /tree/ {{ autoindex on; }}
        location /jtree/ {{ alias {root}/tree/; autoindex on; autoindex_format json; }}
        location /crafted/ {{ index listing.html; }}
    }}
}}
"""

#: 20 files in 3 levels (sizes vary; two cross the 1M piece size).
TREE = (["top-%d.bin" % i for i in range(6)]
        + ["lvl2/a-%d.bin" % i for i in range(5)] + ["lvl2 b/%d.dat" % i for i in range(3)]
        + ["lvl2/lvl3/deep-%d.bin" % i for i in range(6)])

CRAFTED = b"""<html><body><pre><a href="../">../</a>
<a href="ok.bin">ok.bin</a>
<a href="../../tree/top-0.bin">escape</a>
</pre></body></html>"""


class Nginx:
    def __init__(self, workdir, root):
        self.tmp = os.path.join(workdir, "nginx")
        os.makedirs(self.tmp)
        os.chmod(self.tmp, 0o755)
        self.port = free_port()
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(tmp=self.tmp, port=self.port, root=root, user=user))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = Proc("nginx", [nginx, "-p", self.tmp, "-c", conf, "-e",
                                   os.path.join(self.tmp, "error.log")], workdir)
        self.base = f"http://127.0.0.1:{self.port}"

    def sent(self):
        """{path: [body bytes of each 200 answer]} from the access log."""
        out = {}
        try:
            with open(os.path.join(self.tmp, "access.log")) as f:
                lines = f.read().splitlines()
        except OSError:
            return out
        for line in lines:
            req, _, tail = line[1:].partition('" ')
            status, sent = tail.split()
            parts = req.split()
            if len(parts) >= 2 and status in ("200", "206"):
                out.setdefault(parts[1], []).append(int(sent))
        return out


class RecursiveTests(unittest.TestCase):
    timeout = 300

    @with_logs()
    async def test_tree_through_two_peers(self):
        """Every file of a 3-level autoindex tree arrives verified at its relative path
        through each of two peers (HTML listing on one, JSON on the other); nginx sent
        each file once; a crafted ../ entry is refused and dfget exits non-zero."""
        if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            raise unittest.SkipTest("nginx is not installed")
        http = HTTP(reactor)
        self.addCleanup(http.close)
        self.swarm = swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        root = swarm.path("www")
        digests = {}
        for i, rel in enumerate(TREE):
            os.makedirs(os.path.dirname(os.path.join(root, "tree", rel)), exist_ok=True)
            digests[rel] = make_random_file(os.path.join(root, "tree", rel),
                                            1000 + i * 77_777 + (1 << 20 if i % 9 == 0 else 0))
        os.makedirs(os.path.join(root, "crafted"), exist_ok=True)
        with open(os.path.join(root, "crafted", "listing.html"), "wb") as f:
            f.write(CRAFTED)
        make_random_file(os.path.join(root, "crafted", "ok.bin"), 5000)
        for d, _, names in os.walk(root):
            os.chmod(d, 0o755)
            for n in names:
                os.chmod(os.path.join(d, n), 0o644)
        nginx = Nginx(swarm.workdir, root)
        swarm.dfgets.append(nginx.proc)   # stopped with the swarm
        await poll_until(reactor, lambda: http.get_json(nginx.base + "/jtree/"), 15,
                         "nginx to answer", check=nginx.proc.check_alive)
        await swarm.start_supernode(piece_size="1M")
        first = await swarm.start_peer()
        second = await swarm.start_peer()

        for peer in (first, second):
            out = swarm.path("out-" + peer.name)
            r = await self._dfget(swarm, [nginx.base + "/tree/", "--recursive", "-O", out,
                                          "--daemon", peer.api])
            self.assertEqual(r.code, 0, repr(r))
            self.assertTree(out, TREE, digests)
        sent = nginx.sent()
        for rel in TREE:
            self.assertEqual(sent.get(quote("/tree/" + rel)),
                             [os.path.getsize(os.path.join(root, "tree", rel))], (rel, sent))

        # The JSON autoindex, --accept-regex and --level.
        out = swarm.path("out-json")
        r = await self._dfget(swarm, [nginx.base + "/jtree/", "--recursive", "-O", out,
                                      "--accept-regex", "/lvl3/", "--daemon", second.api])
        self.assertEqual(r.code, 0, repr(r))
        deep = [rel for rel in TREE if "/lvl3/" in rel]
        self.assertTree(out, deep, digests)
        out = swarm.path("out-level")
        r = await self._dfget(swarm, [nginx.base + "/tree/", "--recursive", "-O", out,
                                      "--level", "1", "--daemon", first.api])
        self.assertEqual(r.code, 0, repr(r))
        self.assertTree(out, [rel for rel in TREE if "/" not in rel], digests)
        sent = nginx.sent()
        for rel in TREE:
            self.assertEqual(len(sent.get(quote("/tree/" + rel))), 1, rel)

        out = swarm.path("out-crafted")
        r = await self._dfget(swarm, [nginx.base + "/crafted/", "--recursive", "-O", out,
                                      "--daemon", first.api])
        self.assertNotEqual(r.code, 0, repr(r))
        self.assertIn("../../tree/top-0.bin", r.stderr)
        self.assertEqual(os.listdir(out), ["ok.bin"])
        self.assertFalse(os.path.exists(swarm.path("tree")))

    def assertTree(self, out, rels, digests):
        got = sorted(os.path.relpath(os.path.join(d, n), out)
                     for d, _, names in os.walk(out) for n in names)
        self.assertEqual(got, sorted(rels))
        for rel in rels:
            self.assertEqual(sha256_file(os.path.join(out, rel)), digests[rel], rel)

    async def _dfget(self, swarm, argv):
        proc = Proc(f"dfget-{len(swarm.dfgets) + 1}", [executable("dfget")] + argv
                    + list(ALLOW_LOOPBACK), swarm.workdir, separate_stderr=True)
        swarm.dfgets.append(proc)
        await proc.wait(swarm.clock, 180)
        return DfgetResult(proc, None)

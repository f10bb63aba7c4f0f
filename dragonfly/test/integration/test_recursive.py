"""dfget --recursive against a real nginx autoindex, through two real peers.

nginx (Debian's nginx-light, the harness's L{start_nginx}, everything under the
test's temp dir) serves a tree of 20 files in 3 levels as HTML autoindex (C{/tree/}) and
as JSON autoindex (C{/jtree/}, the same files under other URLs), and a crafted listing with a
C{../} entry (C{/crafted/}). Its access log counts the body bytes per path.
"""
import os
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration.harness import (
    ALLOW_LOOPBACK, HTTP, DfgetResult, Proc, Swarm, executable, make_random_file, sha256_file,
    start_nginx, with_logs)


def _locations(root):
    return f"""\
        location /tree/ {{ autoindex on; }}
        location /jtree/ {{ alias {root}/tree/; autoindex on; autoindex_format json; }}
        location /crafted/ {{ index listing.html; }}
"""


#: 20 files in 3 levels (sizes vary; two cross the 1M piece size).
TREE = (["top-%d.bin" % i for i in range(6)]
        + ["lvl2/a-%d.bin" % i for i in range(5)] + ["lvl2 b/%d.dat" % i for i in range(3)]
        + ["lvl2/lvl3/deep-%d.bin" % i for i in range(6)])

CRAFTED = b"""<html><body><pre><a href="../">../</a>
<a href="ok.bin">ok.bin</a>
<a href="../../tree/top-0.bin">escape</a>
</pre></body></html>"""


def sent(origin):
    """{path: [body bytes of each 200/206 answer]} from nginx's access log."""
    out = {}
    for r in origin.requests():
        if r["status"] in (200, 206):
            out.setdefault(r["uri"], []).append(r["bytes"])
    return out


class RecursiveTests(unittest.TestCase):
    timeout = 300

    @with_logs()
    async def test_tree_through_two_peers(self):
        """Every file of a 3-level autoindex tree arrives verified at its relative path
        through each of two peers (HTML listing on one, JSON on the other); nginx sent
        each file once; a crafted ../ entry is refused and dfget exits non-zero."""
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
        swarm.origin = nginx = await start_nginx(reactor, swarm.workdir, root,
                                                 locations=_locations(root))
        await swarm.start_supernode(piece_size="1M")
        first = await swarm.start_peer()
        second = await swarm.start_peer()

        for peer in (first, second):
            out = swarm.path("out-" + peer.name)
            r = await self._dfget(swarm, [nginx.base + "/tree/", "--recursive", "-O", out,
                                          "--daemon", peer.api])
            self.assertEqual(r.code, 0, repr(r))
            self.assertTree(out, TREE, digests)
        got = sent(nginx)
        for rel in TREE:
            self.assertEqual(got.get(quote("/tree/" + rel)),
                             [os.path.getsize(os.path.join(root, "tree", rel))], (rel, got))

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
        got = sent(nginx)
        for rel in TREE:
            self.assertEqual(len(got.get(quote("/tree/" + rel))), 1, rel)

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

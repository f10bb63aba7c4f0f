"""Tests for dragonfly.supernode.dashboard, swarmview and the /ui routes."""
import json
import random
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.interfaces import PeerInfo
from dragonfly.supernode import swarmview
from dragonfly.supernode.cluster import Cluster
from dragonfly.redact import redact_url
from dragonfly.supernode.dashboard import RateTracker, page
from dragonfly.supernode.scheduler import Scheduler
from dragonfly.taskid import task_id_for_url
from dragonfly.test.test_supernode_api import APITestBase, PEER, SEED, TASK

PEER2 = {"peer_id": "host-2-abcdef02", "host": "127.0.0.2", "port": 65001}


def peer(n):
    return PeerInfo(f"host-{n}-abcdef{n:02d}", f"10.0.0.{n}", 9000 + n)


class RedactTests(SynchronousTestCase):
    def test_userinfo_query_fragment(self):
        """When a URL carries a user, password, query or fragment, none is shown
        (the dashboard uses the one redaction of every answer)."""
        self.assertEqual(redact_url("https://bob:s3cret@example.com:8443/a/b?token=x#frag"),
                         "https://<redacted>@example.com:8443/a/b?<redacted>#<redacted>")
        self.assertEqual(redact_url("http://example.com/f"), "http://example.com/f")
        self.assertEqual(redact_url(None), None)


class SwarmViewTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.s = Scheduler(self.clock, rng=random.Random(1))
        self.s.add_task("t", [100, 100, 100, 50], SEED)
        for i in range(3):
            self.s.seed_has("t", i, f"d{i}")
        self.s.join("t", peer(1))
        self.s.join("t", peer(2))

    def test_grid_rows(self):
        """When two peers are in a swarm, the grid has the seed's row and one
        row per peer; held, in-flight (by source) and missing pieces differ."""
        a = self.s.assign("t", peer(1).peer_id, 2)
        self.s.report("t", peer(1).peer_id, have=[a[0].index])
        g = self.s.swarm_grid("t")
        self.assertEqual(g["supernode"]["cells"], "###.")
        self.assertEqual([r["peer_id"] for r in g["peers"]], [peer(1).peer_id, peer(2).peer_id])
        row = g["peers"][0]["cells"]
        self.assertEqual(row[a[0].index], "#")
        self.assertEqual(row[a[1].index], "s")
        self.assertEqual(g["peers"][1]["cells"], "....")
        self.assertEqual(g["peers"][0]["fetching"], [{"piece": a[1].index, "from": SEED.peer_id}])

    def test_failed_and_banned(self):
        """When askers report a source failing, the piece shows as failed for
        them and the source, once marked bad, as banned."""
        s = Scheduler(self.clock, bad_peer_failures=1)
        s.add_task("t", [10, 10], SEED)
        s.join("t", peer(1))
        s.join("t", peer(2))
        s.seed_has("t", 0, "0" * 64)
        s.report("t", peer(1).peer_id, have=[0])
        [a] = s.assign("t", peer(2).peer_id, 1)
        self.assertEqual((a.index, a.source), (0, peer(1)))
        s.report("t", peer(2).peer_id, failed=[(0, peer(1).peer_id)])
        rows = {r["peer_id"]: r for r in s.swarm_grid("t")["peers"]}
        self.assertTrue(rows[peer(1).peer_id]["banned"])
        self.assertEqual(rows[peer(2).peer_id]["cells"], "x.")
        self.assertEqual(rows[peer(2).peer_id]["failed_pieces"], [0])

    def test_columns_cover_big_files(self):
        """When a file has more pieces than columns, each column covers a run
        of pieces: full when all are held, partial when some are."""
        s = Scheduler(self.clock)
        n = swarmview.MAX_COLUMNS * 4
        s.add_task("t", [1] * n, SEED)
        s.join("t", peer(1))
        s.report("t", peer(1).peer_id, have=[0, 1, 2, 3, 4])
        g = s.swarm_grid("t")
        self.assertEqual(g["columns"], swarmview.MAX_COLUMNS)
        self.assertEqual(g["peers"][0]["cells"][:3], "#+.")

    def test_summary_bytes(self):
        """The summary counts bytes held by peers and splits them by source."""
        pid = peer(1).peer_id
        a = self.s.assign("t", pid, 3)
        self.s.report("t", pid, have=[x.index for x in a])
        sm = self.s.swarm_summary("t")
        self.assertEqual(sm["delivered_bytes"], 300)
        self.assertEqual(sm["supernode_bytes"] + sm["p2p_bytes"], 300)
        self.assertEqual(sm["length"], 350)

    def test_no_bookkeeping_changes(self):
        """Reading the views changes nothing the scheduler keeps."""
        before = self.s.task_stats("t"), self.s.stats()
        self.s.swarm_grid("t"), self.s.swarm_summary("t"), self.s.peer_activity()
        self.assertEqual((self.s.task_stats("t"), self.s.stats()), before)


class RateTrackerTests(SynchronousTestCase):
    def test_rates(self):
        """Between two samples, held-bytes growth is the download rate and a
        fetch that completed credits its source's upload rate."""
        t = RateTracker()
        a1 = {"a": {"held_bytes": 0.0, "have": {"t": 0}, "fetching": {("t", 0): "b"},
                    "piece_bytes": {"t": 100.0}},
              "b": {"held_bytes": 100.0, "have": {"t": 1}, "fetching": {}, "piece_bytes": {"t": 100.0}}}
        t.update(a1, 10.0)
        a2 = {"a": dict(a1["a"], held_bytes=100.0, have={"t": 1}, fetching={}),
              "b": a1["b"]}
        r = t.update(a2, 12.0)
        self.assertEqual(r["a"], {"down": 50.0, "up": 0.0})
        self.assertEqual(r["b"], {"down": 0.0, "up": 50.0})
        self.assertIs(t.update(a2, 12.5), r)


class PageTests(APITestBase):
    def test_page_is_self_contained(self):
        """/ui is one HTML page with no outside assets, under a strict CSP."""
        r = self.request("GET", "/ui")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertIn("connect-src 'self'", r.headers.getRawHeaders("content-security-policy")[0])
        body = self.successResultOf(r.content()).decode()
        self.assertEqual(body.encode(), page())
        self.assertNotRegex(body, r"<script[^>]+src|<link|@import|https?://")
        self.assertIn('fetch(path', body)

    def test_overview(self):
        """The overview lists the task with its redacted URL, its swarm and the peers."""
        url = "http://origin.test/f?sig=s3cr3tsig"   # userinfo is refused at registration
        self.origin.add("/f", b"x" * 9000)
        task = task_id_for_url(url)
        self.register(task=task, url=url)
        self.register(peer=PEER2, task=task, url=url)
        obj = self.call("GET", "/api/v1/dashboard")
        [t] = obj["tasks"]
        self.assertEqual(t["url"], "http://origin.test/f?<redacted>")
        self.assertNotIn("s3cr3tsig", json.dumps(obj))
        self.assertEqual(t["peers"], 2)
        self.assertEqual(t["state"], "done")
        self.assertEqual(t["origin_progress"], 1.0)
        self.assertEqual({p["peer_id"] for p in obj["peers"]}, {PEER["peer_id"], PEER2["peer_id"]})
        self.assertEqual(obj["cluster"][0]["tasks"], 1)
        self.assertEqual(obj["totals"]["origin_bytes"], 9000)
        self.assertNotIn("sig=abc", str(obj))
        self.assertNotIn(":pw@", str(obj))

    def test_task_view(self):
        """One task's view has its row and a grid with one row per peer."""
        self.register()
        self.register(peer=PEER2)
        obj = self.call("GET", f"/api/v1/dashboard/tasks/{TASK}")
        self.assertEqual(obj["task"]["task_id"], TASK)
        self.assertEqual(len(obj["grid"]["peers"]), 2)
        self.assertEqual(obj["grid"]["supernode"]["cells"], "###")

    def test_unknown_task(self):
        """An unknown task is a JSON 404; a malformed id a 400."""
        self.call("GET", "/api/v1/dashboard/tasks/" + "0" * 64, status=404)
        self.call("GET", "/api/v1/dashboard/tasks/..", status=400)

    def test_failed_task_shows_error(self):
        """A task whose origin fetch failed is listed with its state and error."""
        self.origin.status["/f"] = 404
        self.request("POST", "/api/v1/tasks", {"task_id": TASK, "url": "http://origin.test/f",
                                               "peer": PEER})
        [t] = self.call("GET", "/api/v1/dashboard")["tasks"]
        self.assertEqual(t["state"], "failed")
        self.assertEqual(t["origin_status"], 404)
        self.assertTrue(re.search("404", t["error"]))


class ClusterViewTests(APITestBase):
    def make_cluster(self):
        from treq.testing import StubTreq
        from dragonfly.test.test_supernode_cluster import Members

        class Counting(Members):
            def render_GET(self, request):
                body = Members.render_GET(self, request)
                return body if b"down" in body else b'{"status": "ok", "tasks": 7}'
        self.members = Counting()
        return Cluster(self.clock, StubTreq(self.members), ["10.0.0.2:8002", "10.0.0.3:8002"],
                       self_name="10.0.0.1:8002", fail_after=1)

    def test_members(self):
        """The cluster lists this supernode first, then each member with its
        health, the task count its /healthz gave and the last check's error."""
        self.members.down.add("10.0.0.3:8002")
        self.successResultOf(self.api.cluster.check())
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": "http://origin.test/f",
                                            "peer": PEER, "redirected": True})
        cluster = self.call("GET", "/api/v1/dashboard")["cluster"]
        self.assertEqual([m["name"] for m in cluster],
                         ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"])
        self.assertEqual([m["alive"] for m in cluster], [True, True, False])
        self.assertEqual(cluster[1]["tasks"], 7)
        self.assertIsNone(cluster[2]["tasks"])
        self.assertIn("503", cluster[2]["error"])
        self.assertEqual(cluster[0]["tasks"], 1)
        self.assertEqual(sum(m["owned_here"] for m in cluster), 1)

    def test_healthz_counts_tasks(self):
        """/healthz says how many tasks this supernode knows (what members show)."""
        self.assertEqual(self.call("GET", "/healthz")["tasks"], 0)


class SizerTests(SynchronousTestCase):
    def test_held_bytes(self):
        """Bytes held are counted exactly, with a short last piece or with
        pieces of any sizes."""
        for sizes in ([100, 100, 100, 50], [10, 20, 30], [7]):
            s = Scheduler(Clock())
            s.add_task("t", sizes, SEED)
            s.join("t", peer(1))
            for i in range(len(sizes)):
                s.report("t", peer(1).peer_id, have=[i])
                self.assertEqual(s.swarm_summary("t")["delivered_bytes"], sum(sizes[:i + 1]))

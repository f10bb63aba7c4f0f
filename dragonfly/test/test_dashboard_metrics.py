"""Tests for the metrics the Grafana board needs, and for the board itself."""
import json
import re

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import PeerMetrics, sample
from dragonfly.test import source_file
from dragonfly.test.peernodes import DATA, PIECE, URL, NodeMixin
from dragonfly.test.test_supernode_api import PEER, TASK, APITestBase

PEER2 = {"peer_id": "host-2-abcdef02", "host": "127.0.0.2", "port": 65001}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("_sum", "_count")}


class PeerTimingTests(NodeMixin, SynchronousTestCase):
    def test_piece_and_task_durations(self):
        """When a download's pieces take time to arrive, each piece's fetch
        time goes to the piece histogram (by source) and the whole download's
        to the task histogram (by result)."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        pieces = -(-len(DATA) // PIECE)
        waited = 0.0
        while self.pool.held:
            self.clock.advance(0.25)
            waited += 0.25
            self.pool.release()
        self.successResultOf(d)
        count = sample(self.metrics, "dragonfly_peer_piece_fetch_duration_seconds_count",
                       {"source": "supernode"})
        self.assertEqual(count, pieces)
        self.assertAlmostEqual(sample(self.metrics, "dragonfly_peer_piece_fetch_duration_seconds_sum",
                                      {"source": "supernode"}), 0.25 * pieces)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_task_duration_seconds_count",
                                {"result": "ok"}), 1)
        self.assertAlmostEqual(sample(self.metrics, "dragonfly_peer_task_duration_seconds_sum",
                                      {"result": "ok"}), waited)


class SupernodeActiveTests(APITestBase):
    def gauges(self):
        r = self.request("GET", "/metrics")
        text = self.successResultOf(r.content()).decode()
        values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        return values["dragonfly_supernode_active_tasks"], values["dragonfly_supernode_active_peers"]

    def test_active_gauges(self):
        """Peers still downloading count as active, as does their task; once
        every peer holds every piece, neither does."""
        self.assertEqual(self.gauges(), (0, 0))
        self.register()
        self.register(peer=PEER2)
        self.assertEqual(self.gauges(), (1, 2))
        self.scheduler.report(TASK, PEER["peer_id"], have=[0, 1, 2])
        self.assertEqual(self.gauges(), (1, 1))
        self.scheduler.report(TASK, PEER2["peer_id"], have=[0, 1, 2])
        self.assertEqual(self.gauges(), (0, 0))


def exposed(text):
    """{sample name: set of label names} that a /metrics page can yield."""
    out = {}
    for fam in text_string_to_metric_families(text):
        labels = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le", "quantile"}
        for suffix in SUFFIXES.get(fam.type, ("",)):
            out[fam.name + suffix] = labels
        for s in fam.samples:
            out.setdefault(s.name, labels)
    return out


class GrafanaTests(APITestBase):
    """packaging/grafana/dragonfly.json against the real /metrics of each role."""

    def supernode_metrics_text(self):
        r = self.request("GET", "/metrics")
        return self.successResultOf(r.content()).decode()

    def board(self):
        with open(source_file("packaging", "grafana", "dragonfly.json")) as f:
            return json.load(f)

    def targets(self, board):
        for p in board["panels"]:
            for t in p.get("targets", ()):
                yield p, t

    def test_valid_board(self):
        """The board is a Grafana dashboard: unique panel ids, every panel
        placed on the grid, every query on the imported Prometheus source."""
        b = self.board()
        self.assertEqual(b["__inputs"][0]["pluginId"], "prometheus")
        ids = [p["id"] for p in b["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for p in b["panels"]:
            self.assertTrue({"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"])
            self.assertLessEqual(p["gridPos"]["x"] + p["gridPos"]["w"], 24, p["title"])
        targets = list(self.targets(b))
        self.assertGreater(len(targets), 10)
        for p, t in targets:
            self.assertEqual(t["datasource"]["uid"], "${DS_PROMETHEUS}", p["title"])
            self.assertEqual(t["expr"].count("("), t["expr"].count(")"), t["expr"])

    def test_every_queried_metric_is_exported(self):
        """Every dragonfly_* series the board queries is on the /metrics page
        of a supernode or of a peer (the dfdaemon's is a peer's), with the
        labels the query selects on."""
        peer = PeerMetrics()
        peer.mirror_requests.labels(kind="blob", code="200").inc()
        peer.piece_failures.labels(reason="timeout").inc()
        peer.downloads.labels(result="ok").inc()
        peer.task_seconds.labels(result="ok").observe(1)
        self.register()
        self.call("POST", f"/api/v1/tasks/{TASK}/schedule",
                  {"peer_id": PEER["peer_id"], "want": 1, "wait": 0})
        known = exposed(self.supernode_metrics_text())
        known.update(exposed(peer.render().decode()))
        queried = set()
        for p, t in self.targets(self.board()):
            for name, selector in re.findall(r"\b(dragonfly_[a-z0-9_]+)(\{[^}]*\})?", t["expr"]):
                queried.add(name)
                self.assertIn(name, known, f"panel {p['title']!r} queries {name}, not exported")
                for label in re.findall(r"(\w+)\s*=~?", selector):
                    self.assertIn(label, known[name], f"{name} has no label {label!r}")
        for new in ("dragonfly_supernode_active_tasks", "dragonfly_supernode_active_peers",
                    "dragonfly_peer_task_duration_seconds_bucket",
                    "dragonfly_peer_piece_fetch_duration_seconds_bucket"):
            self.assertIn(new, queried)

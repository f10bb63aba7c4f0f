"""What the supernode's live dashboard (``GET /ui``) shows, as JSON.

L{Dashboard} gathers, on request only, from the parts the supernode already
has: the cluster (each member, alive or not, and the known tasks it owns),
the tasks (the CDN's jobs and the scheduler's swarms: redacted URL, size,
origin-fetch progress, peers, bytes from the origin, from the supernode and
peer to peer, state and error), one task's pieces x peers grid
(L{dragonfly.supernode.swarmview}), and the peers (address, tasks, rates
estimated between two samples, last seen). Nothing here is secret: URLs lose
their userinfo, query and fragment, and request headers are never shown.
L{page} is the static page (``ui/index.html``, shipped as package data).
"""
import os

from dragonfly.metrics import sample
from dragonfly.redact import redact_url

__all__ = ["Dashboard", "RateTracker", "page"]

#: At most this many tasks and peers in one answer (busiest first).
MAX_TASKS = 100
MAX_PEERS = 200

_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui", "index.html")


def page():
    """The dashboard's HTML page (bytes): inline CSS and JS, no outside assets."""
    with open(_PAGE, "rb") as f:
        return f.read()


class RateTracker:
    """Per-peer download and upload rates, from two samples of the swarm.

    Download: growth of the bytes a peer holds. Upload: a fetch seen in
    flight at the last sample whose asker now holds the piece credits its
    source with that piece (an estimate: fetches shorter than the sampling
    interval are not seen). Samples closer than C{min_interval} reuse the
    previous rates (several open pages must not shrink the window).
    """

    def __init__(self, min_interval=1.0):
        self.min_interval = min_interval
        self._when = None
        self._held = {}
        self._fetching = {}
        self.rates = {}

    def update(self, activity, now):
        """Fold C{activity} (L{swarmview.peer_activity}) taken at C{now}."""
        if self._when is not None and now - self._when < self.min_interval:
            return self.rates
        if self._when is not None:
            dt = now - self._when
            up = {}
            for asker, fetching in self._fetching.items():
                e = activity.get(asker)
                if e is None:
                    continue
                for (task_id, index), source in fetching.items():
                    if e["have"].get(task_id, 0) >> index & 1:
                        up[source] = up.get(source, 0.0) + e["piece_bytes"].get(task_id, 0.0)
            self.rates = {
                pid: {"down": max(0.0, e["held_bytes"] - self._held.get(pid, e["held_bytes"])) / dt,
                      "up": up.get(pid, 0.0) / dt}
                for pid, e in activity.items()}
            self.rates["_seed"] = {"down": 0.0, "up": sum(
                v for k, v in up.items() if k not in activity) / dt}
        self._when = now
        self._held = {pid: e["held_bytes"] for pid, e in activity.items()}
        self._fetching = {pid: dict(e["fetching"]) for pid, e in activity.items() if e["fetching"]}
        return self.rates


class Dashboard:
    """The dashboard's data, gathered from the supernode's parts on request.

    @param clock: IReactorTime.
    @param cdn: L{dragonfly.supernode.cdn.CDN} (C{task_ids}, C{status}, C{store}, C{seed}).
    @param scheduler: the scheduler (C{task_ids}, C{swarm_summary}, C{swarm_grid},
        C{peer_activity}).
    @param metrics: L{dragonfly.metrics.SupernodeMetrics} or None.
    @param cluster: L{dragonfly.supernode.cluster.Cluster} or None.
    """

    def __init__(self, clock, cdn, scheduler, metrics=None, cluster=None):
        self.clock = clock
        self.cdn = cdn
        self.scheduler = scheduler
        self.metrics = metrics
        self.cluster = cluster
        self.rates = RateTracker()

    def overview(self):
        """The whole page's data except the grid: cluster, tasks, peers, totals."""
        now = self.clock.seconds()
        tasks = self.tasks()
        activity = self.scheduler.peer_activity()
        rates = self.rates.update(activity, now)
        seed = self.cdn.seed
        return {
            "time": now,
            "supernode": seed.to_json() if seed is not None else None,
            "cluster": self.cluster_view([t["task_id"] for t in tasks]),
            "tasks": tasks[:MAX_TASKS], "tasks_not_shown": max(0, len(tasks) - MAX_TASKS),
            "peers": self.peers(activity, rates),
            "totals": self.totals(tasks, rates),
        }

    def task(self, task_id):
        """One task's row and its swarm grid, or None for a task unknown here."""
        row = self.task_row(task_id)
        if row is None:
            return None
        grid = None
        if self.scheduler.has_task(task_id):
            grid = self.scheduler.swarm_grid(task_id)
        return {"task": row, "grid": grid}

    def task_count(self):
        """How many tasks this supernode knows (scheduled, or with a CDN job)."""
        return len(set(self.scheduler.task_ids()) | set(self.cdn.task_ids()))

    def active(self):
        """C{{"tasks", "peers"}}: tasks being fetched from the origin or by a
        peer, and peers still downloading (the supernode's active gauges)."""
        tasks = peers = 0
        for task_id in set(self.scheduler.task_ids()) | set(self.cdn.task_ids()):
            status = self.cdn.status(task_id) or {}
            fetching = status.get("state") in ("pending", "running")
            downloading = 0
            if self.scheduler.has_task(task_id):
                s = self.scheduler.task_stats(task_id)
                downloading = s["peers"] - s["done"]
            peers += downloading
            tasks += 1 if fetching or downloading else 0
        return {"tasks": tasks, "peers": peers}

    # -- parts -------------------------------------------------------------------

    def tasks(self):
        """Every task known here, those with work going on first."""
        ids = dict.fromkeys(self.scheduler.task_ids())
        ids.update(dict.fromkeys(self.cdn.task_ids()))
        rows = [r for r in (self.task_row(t) for t in ids) if r is not None]
        rows.sort(key=lambda r: (not r["active"], r["task_id"]))
        return rows

    def task_row(self, task_id):
        """One task: URL (redacted), size, origin fetch, swarm, bytes by source."""
        status = self.cdn.status(task_id)
        swarm = self.scheduler.swarm_summary(task_id) if self.scheduler.has_task(task_id) else None
        if status is None and swarm is None:
            return None
        status = status or {}
        tf = self.cdn.store.get(task_id)
        length = status.get("length") if tf is None else tf.length
        origin_bytes = tf.completed_bytes if tf is not None else 0
        pieces = status.get("piece_count") or (swarm or {}).get("piece_count") or 0
        row = {
            "task_id": task_id, "url": redact_url(status.get("url")),
            "state": status.get("state", "scheduled"), "error": status.get("error"),
            "origin_status": status.get("origin_status"),
            "length": length, "piece_count": pieces,
            "origin_pieces": status.get("seeded", 0), "origin_bytes": origin_bytes,
            "origin_progress": (origin_bytes / length) if length else 0.0,
            "peers": 0, "done_peers": 0, "bad_peers": 0, "failures": 0,
            "delivered_bytes": 0, "supernode_bytes": 0, "p2p_bytes": 0,
            "swarm_progress": 0.0, "p2p_share": 0.0, "offload": 0.0,
        }
        if swarm is not None:
            row.update(peers=swarm["peers"], done_peers=swarm["done"],
                       bad_peers=swarm["bad_peers"], failures=swarm["failures"],
                       delivered_bytes=swarm["delivered_bytes"],
                       supernode_bytes=swarm["supernode_bytes"], p2p_bytes=swarm["p2p_bytes"])
            want = swarm["peers"] * swarm["length"]
            row["swarm_progress"] = swarm["delivered_bytes"] / want if want else 0.0
            if swarm["delivered_bytes"]:
                row["p2p_share"] = swarm["p2p_bytes"] / swarm["delivered_bytes"]
            if origin_bytes:
                row["offload"] = swarm["delivered_bytes"] / origin_bytes
        row["active"] = row["state"] in ("pending", "running") or row["done_peers"] < row["peers"]
        return row

    def cluster_view(self, task_ids):
        """Each supernode (us first): alive or not, the tasks it holds (its own
        count, from its last /healthz) and, of those known here, how many it owns."""
        seed = self.cdn.seed
        if self.cluster is None:
            me = seed.host if seed is not None else "this supernode"
            return [{"name": me, "self": True, "alive": True, "tasks": len(task_ids),
                     "owned_here": len(task_ids), "error": None}]
        me = self.cluster.self_name or "this supernode"
        owned = {}
        for t in task_ids:
            owner = self.cluster.owner(t) or me
            owned[owner] = owned.get(owner, 0) + 1
        out = [{"name": me, "self": True, "alive": True, "tasks": len(task_ids),
                "owned_here": owned.get(me, 0), "error": None}]
        for m in sorted(self.cluster.members(), key=lambda m: m["name"]):
            out.append({"name": m["name"], "self": False, "alive": m["alive"],
                        "tasks": m["tasks"], "owned_here": owned.get(m["name"], 0),
                        "error": m["error"]})
        return out

    def peers(self, activity, rates):
        """Every peer: address, tasks, rates, last seen (the busiest first)."""
        rows = []
        for pid, e in activity.items():
            r = rates.get(pid, {})
            rows.append({"peer_id": pid, "host": e["host"], "port": e["port"],
                         "tasks": len(e["tasks"]), "uploads": e["uploads"],
                         "banned": e["banned"], "down_rate": r.get("down", 0.0),
                         "up_rate": r.get("up", 0.0), "last_seen": e["last_seen"]})
        rows.sort(key=lambda r: (-(r["down_rate"] + r["up_rate"]), r["peer_id"]))
        return rows[:MAX_PEERS]

    def totals(self, tasks, rates):
        """Fleet counters: bytes by source, the saving, the supernode's upload rate."""
        delivered = sum(t["delivered_bytes"] for t in tasks)
        p2p = sum(t["p2p_bytes"] for t in tasks)
        out = {"tasks": len(tasks), "active_tasks": sum(1 for t in tasks if t["active"]),
               "peers": sum(t["peers"] for t in tasks), "delivered_bytes": delivered,
               "p2p_bytes": p2p, "p2p_share": p2p / delivered if delivered else 0.0,
               "supernode_up_rate": rates.get("_seed", {}).get("up", 0.0)}
        if self.metrics is not None:
            origin = sample(self.metrics, "dragonfly_supernode_origin_bytes_total")
            out["origin_bytes"] = origin
            out["upload_bytes"] = sample(self.metrics, "dragonfly_supernode_upload_bytes_total")
            out["saving"] = max(0.0, 1.0 - origin / delivered) if delivered else 0.0
        return out

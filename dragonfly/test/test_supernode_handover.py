"""Tests for dragonfly.supernode.handover and the supernode's side of failover:
taking over a task it does not own, learning the pieces re-registering peers
hold, draining and moving its peers when it stops."""
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.supernode.cluster import Cluster
from dragonfly.supernode.handover import HandOver
from dragonfly.taskid import task_id_for_url
from dragonfly.test.test_supernode_api import APITestBase, DATA, PEER, SECRET, URL

SELF, B, C = "10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"
OTHER = {"peer_id": "host-2-abcdef02", "host": "127.0.0.2", "port": 65001}


class _Parts:
    """A scheduler and a CDN with scripted busyness."""

    def __init__(self):
        self.tasks = {}        # task_id -> (peers, done)
        self.fetching = set()

    def task_ids(self):
        return list(self.tasks) + [t for t in self.fetching if t not in self.tasks]

    def task_stats(self, task_id):
        peers, done = self.tasks[task_id]
        return {"peers": peers, "done": done}

    def fetch_ended(self, task_id):
        return Deferred() if task_id in self.fetching else None


class HandOverTests(SynchronousTestCase):
    def make(self, members=(B, C), alive=(B, C), timeout=10.0):
        self.clock = Clock()
        self.parts = _Parts()
        cluster = Cluster(self.clock, None, list(members), self_name=SELF) if members else None
        for name in members:
            cluster._members[name].alive = name in alive
        self.h = HandOver(self.clock, self.parts, self.parts, cluster, timeout=timeout,
                          grace=2.0, interval=0.5)
        return self.h

    def test_next_owner_skips_self_and_dead(self):
        """The next owner of a task is the first live member of its order but us."""
        h = self.make(alive=(C,))
        for i in range(20):
            task = f"t{i}"
            expect = [m for m in h.cluster.order(task) if m == C][0]
            self.assertEqual(h.next_owner(task), expect)
        self.assertIsNone(self.make(alive=()).next_owner("t"))
        self.assertIsNone(self.make(members=()).next_owner("t"))

    def test_nobody_to_hand_over_to(self):
        """Without a cluster, or with every other member dead, stopping is at once."""
        for h in (self.make(members=()), self.make(alive=())):
            h.scheduler.tasks["t"] = (3, 1)
            self.successResultOf(h.run())
            self.assertFalse(h.draining)

    def test_drain_ends_when_every_peer_is_done(self):
        """Draining lasts while an origin fetch runs or a peer lacks pieces;
        when neither is left the stop goes on without moving anyone."""
        h = self.make()
        self.parts.tasks["t"] = (2, 1)
        self.parts.fetching.add("u")
        moved = h.moved()
        d = h.run()
        self.assertTrue(h.draining)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.parts.fetching.clear()
        self.clock.advance(1)
        self.assertNoResult(d)
        self.parts.tasks["t"] = (2, 2)
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertFalse(h.moving)
        self.assertNoResult(moved)

    def test_timeout_moves_the_peers(self):
        """After the drain timeout the peers are told to move (the waiters of
        moved() fire), and the stop goes on after the grace."""
        h = self.make(timeout=3.0)
        self.parts.tasks["t"] = (2, 1)
        moved = h.moved()
        d = h.run()
        self.clock.advance(3.0)
        self.assertTrue(h.moving)
        self.successResultOf(moved)
        self.successResultOf(h.moved())
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.successResultOf(d)

    def test_cancelled_waiter_is_forgotten(self):
        """A cancelled moved() waiter is dropped."""
        h = self.make()
        d = h.moved()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(h._movers, [])


class _ClusterBase(APITestBase):
    def make_cluster(self):
        return Cluster(self.clock, None, [B, C], self_name=SELF)

    def url_owned_by_other(self):
        cluster = self.api.cluster
        url = next(u for u in (f"{URL}{i}" for i in range(100))
                   if cluster.owner(task_id_for_url(u)) is not None)
        self.origin.add(url[len("http://origin.test"):], DATA)
        return url, task_id_for_url(url)

    def take_over(self, url, task, peer=PEER):
        return self.call("POST", "/api/v1/tasks", {"task_id": task, "url": url, "peer": peer,
                                                   "redirected": True})


class TakeOverTests(_ClusterBase):
    def test_take_over_learns_held_pieces(self):
        """A supernode asked (redirected) for a task it does not own takes it
        over; the pieces a re-registering peer reports are scheduled from it."""
        url, task = self.url_owned_by_other()
        self.take_over(url, task)
        self.take_over(url, task, OTHER)
        self.call("POST", f"/api/v1/tasks/{task}/schedule",
                  {"peer_id": PEER["peer_id"], "have": [0, 1], "want": 0})
        self.assertEqual(self.scheduler.holds(task, PEER["peer_id"]), [0, 1])
        obj = self.call("POST", f"/api/v1/tasks/{task}/schedule",
                        {"peer_id": OTHER["peer_id"], "want": 3})
        sources = {a["index"]: a["source"]["peer_id"] for a in obj["assignments"]}
        self.assertEqual(sorted(sources), [0, 1, 2])
        self.assertIn(PEER["peer_id"], sources.values())
        self.assertEqual(len(self.origin.gets(url[len("http://origin.test"):])), 1)


class DrainingAPITests(_ClusterBase):
    def test_draining_healthz_and_new_tasks(self):
        """A draining supernode answers /healthz 503 "draining"; a registration
        of a task it does not schedule goes to the next owner even when marked
        redirected; its own tasks are still served."""
        mine_url = next(u for u in (f"{URL}{i}" for i in range(100))
                        if self.api.cluster.owner(task_id_for_url(u)) is None)
        self.origin.add(mine_url[len("http://origin.test"):], DATA)
        self.register(task=task_id_for_url(mine_url), url=mine_url)
        self.api.handover.draining = True
        self.assertEqual(self.call("GET", "/healthz", status=503)["status"], "draining")
        url, task = self.url_owned_by_other()
        r = self.request("POST", "/api/v1/tasks", {"task_id": task, "url": url, "peer": PEER,
                                                   "redirected": True})
        self.assertEqual(r.code, 307)
        self.assertEqual(self.json(r)["owner"], self.api.handover.next_owner(task))
        self.register(OTHER, task=task_id_for_url(mine_url), url=mine_url)

    def test_moving_answers_schedules_and_wakes_long_polls(self):
        """Once moving, a schedule call (a long-poll in flight too) is answered
        503 {"moved": true, "owner": next owner}."""
        url, task = self.url_owned_by_other()
        self.take_over(url, task)
        path = f"/api/v1/tasks/{task}/schedule"
        pid = PEER["peer_id"]
        self.assertEqual(len(self.call("POST", path, {"peer_id": pid, "want": 3})["assignments"]), 3)
        self.api.handover.draining = True
        waiting = self.client.post(f"http://supernode.test{path}",
                                   json={"peer_id": pid, "want": 1, "wait": 30,
                                         "secret": SECRET})
        self.client.flush()
        self.assertNoResult(waiting)
        self.api.handover.moving = True
        movers, self.api.handover._movers = self.api.handover._movers, []
        for m in movers:
            m.callback(None)
        self.client.flush()
        r = self.successResultOf(waiting)
        self.assertEqual(r.code, 503)
        obj = self.successResultOf(self.client.json_content(r))
        self.assertEqual(obj["moved"], True)
        self.assertEqual(obj["owner"], self.api.handover.next_owner(task))

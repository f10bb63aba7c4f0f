"""A peer moving to the next supernode (issue 12): when the supernode owning a
task dies, or stops and says so, the swarm session registers at the next one,
keeps every piece it holds, reports them there, and finishes without the origin."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.test.peerfakes import SEED, FakeSupernode
from dragonfly.test.peernodes import DATA, PIECE, SN1, SN2, URL, NodeMixin


class MoveTests(NodeMixin, SynchronousTestCase):

    def start(self):
        """A download registered at SN1 holding its first two pieces, SN2 alive."""
        node = self.make(supernodes=(SN1, SN2))
        self.survivor = FakeSupernode(DATA, PIECE, (SEED,))
        self.hosts.by_host["sn2.test:8002"] = self.survivor
        self.pool.manual = True
        d = node.download(URL)
        self.pool.release(2)
        self.held = sorted(self.store.get(self.supernode.registrations[0]["task_id"]).completed())
        self.assertEqual(len(self.held), 2)
        return d

    def finish(self, d):
        while not d.called:
            self.pool.release()
            self.hosts.flush()
            self.clock.advance(1)
        self.assertEqual(self.read_all(self.successResultOf(d)), DATA)
        self.assertEqual(self.origin.calls, [])

    def first_report(self):
        """The pieces the first schedule call at the survivor reported."""
        return sorted(self.survivor.schedules[0]["have"])

    def test_owner_killed(self):
        """When the owner dies and the survivor still redirects to it, the peer
        registers at the survivor marked redirected (it takes the task over),
        reports the pieces it holds, and completes without the origin."""
        d = self.start()
        del self.hosts.by_host["sn1.test:8002"]
        self.survivor.register_script.append((307, {"error": "not mine", "owner": "sn1.test:8002"}))
        self.finish(d)
        regs = self.survivor.registrations
        self.assertEqual([r.get("redirected", False) for r in regs], [False, True])
        self.assertTrue(set(self.held) <= set(self.first_report()))

    def test_moved(self):
        """When a stopping supernode answers a schedule 503 "moved" naming the
        next owner, the peer registers there at once (marked redirected) and
        carries on with the pieces it holds."""
        d = self.start()
        self.supernode.schedule_answer = (503, {"error": "supernode stopping", "moved": True,
                                                "owner": "sn2.test:8002"})
        self.finish(d)
        self.assertEqual(len(self.supernode.registrations), 1)
        self.assertIs(self.survivor.registrations[0]["redirected"], True)
        self.assertTrue(set(self.held) <= set(self.first_report()))

    def test_moved_without_owner(self):
        """A "moved" answer without a usable owner: the peer registers at the
        supernodes of its list."""
        d = self.start()
        self.supernode.schedule_script.append((503, {"error": "stopping", "moved": True}))
        self.finish(d)
        self.assertEqual(len(self.supernode.registrations), 2)

"""Tests for the swarm simulator (dragonfly.sim), which drives the real Scheduler."""
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.sim import Swarm, hop_bound, lower_bound, mixed_bound, simulate
from dragonfly.sim.swarm import DIGEST, TASK, rendezvous_order
from dragonfly.supernode.cluster import _score
from dragonfly.sim.__main__ import main, parse_link
from dragonfly.supernode.scheduler import Scheduler

MiB = 1024 * 1024
LINK = 125e6  # 1 Gbit/s in bytes/s


class LowerBoundTests(SynchronousTestCase):
    def test_terms(self):
        """The bound is the largest of F/u_seed, F/d and N*F/(u_seed + N*u)."""
        self.assertEqual(lower_bound(100, 1, 10, 10, 10), 10)
        self.assertEqual(lower_bound(100, 1, 10, 10, 5), 20)
        self.assertEqual(lower_bound(100, 10, 10, 1, 10), 50)

    def test_hop_bound(self):
        """Whole pieces add the last piece's hops to F/u_seed: 1, 3, 7, 15, 31
        holders after 0-4 piece times with equal links (4 hops for 16 hosts)."""
        self.assertEqual(hop_bound(64, 1, 1, [1] * 16, [1] * 16), 64 + 4)
        self.assertEqual(hop_bound(64, 1, 1, [1] * 15, [1] * 15), 64 + 3)
        self.assertEqual(hop_bound(64, 1, 1, [1] * 8, [1] * 8), 64 + 3)
        self.assertEqual(hop_bound(64, 1, 1, [1], [1]), 64)
        # links twice as fast: half the time, hops of half a time unit
        self.assertEqual(hop_bound(64, 1, 2, [2] * 16, [2] * 16), 32 + 4 * 0.5)
        # the origin's last piece reaches the seed at 128, leaves it at 129
        self.assertEqual(hop_bound(64, 1, 1, [1] * 3, [1] * 3, origin_rate=0.5), 129 + 1)
        # the summed uplinks dominate: the hops do not matter
        self.assertEqual(hop_bound(64, 1, 10, [0.1] * 100, [10] * 100),
                         mixed_bound(64, 10, [0.1] * 100, [10] * 100))


class SwarmTests(SynchronousTestCase):
    def test_small_swarm_completes(self):
        """When 20 hosts fetch a small file, all complete, no sooner than the lower
        bound, and the seed sends little more than one copy."""
        r = simulate(20, 64 * MiB, piece_size=4 * MiB, up=LINK, seed=3,
                     scheduler_args={"seed_max_uploads": 8})
        self.assertEqual(r["completed"], 20)
        self.assertGreaterEqual(r["max_time"], r["lower_bound"])
        self.assertGreaterEqual(r["median_time"], r["lower_bound"])
        self.assertLessEqual(r["median_time"], r["max_time"])
        self.assertGreaterEqual(r["seed_egress"], 64 * MiB)  # every piece left the seed once
        self.assertLess(r["seed_egress_x"], 3)
        self.assertLess(r["ratio_max"], 2)  # a sane schedule, not a stall
        self.assertEqual(r["assigned"]["peer"] + r["assigned"]["supernode"], 20 * 16)

    def test_uses_real_scheduler(self):
        """The simulator drives dragonfly.supernode.scheduler.Scheduler itself."""
        sw = Swarm(3, 8 * MiB, piece_size=MiB)
        self.assertIsInstance(sw.scheduler, Scheduler)
        r = sw.run()
        self.assertEqual(r["completed"], 3)
        self.assertEqual(sw.clock.seconds(), r["max_time"])

    def test_origin_limited(self):
        """When the origin feeds the seed slowly, nobody finishes before the whole file
        has arrived from the origin, and peers start before it has."""
        sw = Swarm(10, 32 * MiB, piece_size=4 * MiB, up=LINK, origin_rate=LINK / 4)
        first = []
        finish = sw._finish

        def spy(t, now):
            first.append(now)
            finish(t, now)

        sw._finish = spy
        r = sw.run()
        origin_time = 32 * MiB / (LINK / 4)
        self.assertEqual(r["completed"], 10)
        self.assertGreaterEqual(r["max_time"], origin_time)
        self.assertLess(min(first), origin_time / 2)

    def test_seed_bound(self):
        """When the seed's uplink is the bottleneck, completion respects F/u_seed."""
        r = simulate(4, 16 * MiB, piece_size=MiB, up=LINK, seed_up=LINK / 10)
        self.assertEqual(r["completed"], 4)
        self.assertGreaterEqual(r["max_time"], 16 * MiB / (LINK / 10))

    def test_deterministic(self):
        """The same seed gives the same result."""
        a = simulate(8, 16 * MiB, piece_size=MiB, seed=5)
        b = simulate(8, 16 * MiB, piece_size=MiB, seed=5)
        self.assertEqual(a["max_time"], b["max_time"])
        self.assertEqual(a["seed_egress"], b["seed_egress"])

    def test_long_poll_timeouts(self):
        """When long-polls time out often, peers ask again and everyone still completes."""
        r = simulate(10, 16 * MiB, piece_size=MiB, poll_wait=0.001, origin_rate=LINK / 8)
        self.assertEqual(r["completed"], 10)

    def test_bad_arguments(self):
        """When sizes or counts are not positive, Swarm raises ValueError."""
        self.assertRaises(ValueError, Swarm, 0, 100)
        self.assertRaises(ValueError, Swarm, 1, 0)

    def test_woken_waiter_asks_at_once(self):
        """When a change wakes a waiting host, it asks inside that change, as
        the API's long-poll resumes inside the Deferred's callback (before the
        peer whose report woke it asks for itself)."""
        sw = Swarm(2, 4 * MiB, piece_size=MiB, up=LINK, origin_rate=LINK)
        sw._start_origin(0.0)
        for h in sw.hosts:
            sw.scheduler.join(TASK, h.info)
            sw._poll(h)
        self.assertTrue(all(h.waiter is not None and not h.downloads for h in sw.hosts))
        sw.scheduler.seed_has(TASK, 0, DIGEST)
        self.assertEqual(sum(len(h.downloads) for h in sw.hosts), 1)

    def test_staggered_joins(self):
        """With join_over, hosts join at random times over that span: all
        complete, none before it joined, and the longest join-to-done span is
        shorter than the last completion."""
        sw = Swarm(12, 32 * MiB, piece_size=MiB, up=LINK, seed=4, join_over=0.5)
        r = sw.run()
        self.assertEqual(r["completed"], 12)
        joins = [h.joined_at for h in sw.hosts]
        self.assertTrue(all(0 <= j <= 0.5 for j in joins))
        self.assertGreater(max(joins), 0.1)
        self.assertTrue(all(h.done_at > h.joined_at for h in sw.hosts))
        self.assertLess(r["max_span"], r["max_time"])
        self.assertEqual(r["max_span"], max(h.done_at - h.joined_at for h in sw.hosts))


class FailureTests(SynchronousTestCase):
    """The failure scenarios on a 50-host swarm."""

    def test_mixed_bound(self):
        """With uneven hosts the bound takes the slowest downlink and the summed uplinks."""
        self.assertEqual(mixed_bound(100, 10, [10, 10], [10, 10]), lower_bound(100, 2, 10, 10, 10))
        self.assertEqual(mixed_bound(100, 10, [10, 1], [10, 1]), 100)

    def test_rendezvous_order(self):
        """The owner order is the cluster's: highest sha256(member NUL task) first."""
        members = [f"sn{i}:8001" for i in range(5)]
        self.assertEqual(rendezvous_order(members, "t"),
                         sorted(members, key=lambda m: _score(m, "t"), reverse=True))

    def test_kill_owner(self):
        """When the owner dies at a quarter of the swarm's progress, every host
        completes through the next supernode and the origin sends at most two copies."""
        sw = Swarm(50, 64 * MiB, piece_size=4 * MiB, up=LINK, supernodes=3,
                   kill_owner_at=0.25, seed=4)
        first = sw.seed.info.peer_id
        r = sw.run()
        self.assertIsNotNone(r["killed_at"])
        self.assertEqual(r["completed"], 50)
        self.assertNotEqual(sw.seed.info.peer_id, first)
        self.assertEqual(sw.seed.info.peer_id, sw.members[1])
        self.assertLessEqual(r["origin_egress"], 2 * 64 * MiB)
        self.assertGreater(r["origin_egress"], 64 * MiB)
        self.assertGreaterEqual(r["max_time"], r["lower_bound"])

    def test_kill_owner_while_fetching(self):
        """When the owner dies during its origin fetch, the origin sends less than
        two copies: the part the dead owner got and the whole file once more."""
        r = simulate(50, 32 * MiB, piece_size=4 * MiB, up=LINK, origin_rate=LINK / 4,
                     supernodes=2, kill_owner_at=0.25, seed=6)
        self.assertEqual(r["completed"], 50)
        self.assertLess(r["origin_egress"], 2 * 32 * MiB)
        self.assertGreater(r["origin_egress"], 32 * MiB)

    def test_churn(self):
        """When a fifth of the hosts leave at random times, every host that stays
        completes, and the run does not wait for those that left."""
        sw = Swarm(50, 64 * MiB, piece_size=4 * MiB, up=LINK, churn=0.2, seed=7)
        r = sw.run()
        self.assertEqual(r["churned"], 10)
        self.assertGreater(r["left_early"], 0)
        self.assertEqual(r["completed"], r["expected"])
        self.assertEqual(r["expected"], 50 - r["left_early"])
        stayed = [h for h in sw.hosts if not h.gone]
        self.assertTrue(all(h.done_at is not None for h in stayed))
        self.assertTrue(all(not h.uploads and not h.downloads for h in sw.hosts if h.gone))
        self.assertEqual(r["origin_egress"], 64 * MiB)

    def test_slow_hosts(self):
        """When a fifth of the hosts have a tenth of the link, all complete, no
        sooner than the slow hosts' F/d bound, and the fast hosts finish sooner."""
        r = simulate(50, 64 * MiB, piece_size=4 * MiB, up=LINK, slow=0.2, seed=8)
        self.assertEqual(r["slow"], 10)
        self.assertEqual(r["completed"], 50)
        self.assertGreaterEqual(r["max_time"], 64 * MiB / (LINK / 10))
        self.assertEqual(r["lower_bound"], 64 * MiB / (LINK / 10))
        self.assertLess(r["max_time_fast"], r["max_time"])
        self.assertGreaterEqual(r["max_time_fast"], r["lower_bound_fast"])

    def test_all_at_once(self):
        """Owner killed, churn and slow hosts together: every staying host completes."""
        r = simulate(50, 64 * MiB, piece_size=4 * MiB, up=LINK, supernodes=3,
                     kill_owner_at=0.5, churn=0.2, slow=0.2, seed=9)
        self.assertIsNotNone(r["killed_at"])
        self.assertEqual(r["completed"], r["expected"])
        self.assertLessEqual(r["origin_egress_x"], 2)

    def test_bad_failure_arguments(self):
        """Killing the only supernode, or shares outside [0, 1], are refused."""
        self.assertRaises(ValueError, Swarm, 5, 100, kill_owner_at=0.5)
        self.assertRaises(ValueError, Swarm, 5, 100, supernodes=2, kill_owner_at=1.5)
        self.assertRaises(ValueError, Swarm, 5, 100, churn=2)
        self.assertRaises(ValueError, Swarm, 5, 100, slow=-0.1)
        self.assertRaises(ValueError, Swarm, 5, 100, supernodes=0)
        self.assertRaises(ValueError, Swarm, 5, 100, join_over=-1)


class CLITests(SynchronousTestCase):
    def test_parse_link(self):
        """Link rates: decimal bits with 'bit', else bytes with 1024-based suffixes."""
        self.assertEqual(parse_link("1Gbit"), 125e6)
        self.assertEqual(parse_link("100Mbit"), 12.5e6)
        self.assertEqual(parse_link("125M"), 125 * MiB)

    def test_main_json(self):
        """The CLI prints a table and writes the results as JSON."""
        path = self.mktemp()
        out = io.StringIO()
        rc = main(["--hosts", "5,10", "--size", "8M", "--piece-size", "1M",
                   "--link", "1Gbit", "--json", path], out=out)
        self.assertEqual(rc, 0)
        with open(path) as f:
            data = json.load(f)
        self.assertEqual([r["hosts"] for r in data["results"]], [5, 10])
        self.assertTrue(all(r["completed"] == r["hosts"] for r in data["results"]))
        self.assertIn("max/bound", out.getvalue())
        self.assertIn("max/hop", out.getvalue())
        self.assertTrue(all(r["lower_bound"] < r["hop_bound"] <= r["max_time"]
                            for r in data["results"]))
        self.assertTrue(os.path.getsize(path) > 0)

    def test_main_failure_flags(self):
        """--supernodes, --kill-owner-at, --churn and --slow reach the simulator
        and the table shows origin egress and completed/staying hosts."""
        path = self.mktemp()
        out = io.StringIO()
        rc = main(["--hosts", "20", "--size", "16M", "--piece-size", "1M",
                   "--supernodes", "3", "--kill-owner-at", "0.3", "--churn", "0.1",
                   "--slow", "0.1", "--json", path], out=out)
        self.assertEqual(rc, 0)
        with open(path) as f:
            (r,) = json.load(f)["results"]
        self.assertEqual((r["supernodes"], r["churned"], r["slow"]), (3, 2, 2))
        self.assertIsNotNone(r["killed_at"])
        self.assertEqual(r["completed"], r["expected"])
        self.assertIn("origin egress", out.getvalue())
        self.assertIn("fast hosts", out.getvalue())

    def test_main_pipeline_flags(self):
        """--swarm-uploads sets the scheduler's uploads per peer and swarm cap,
        --join-over staggers the joins; the table says how long the longest
        host took from its join."""
        path = self.mktemp()
        out = io.StringIO()
        rc = main(["--hosts", "6", "--size", "16M", "--piece-size", "1M", "--swarm-uploads", "1",
                   "--join-over", "0.05", "--json", path], out=out)
        self.assertEqual(rc, 0)
        with open(path) as f:
            (r,) = json.load(f)["results"]
        self.assertEqual((r["completed"], r["join_over"]), (6, 0.05))
        self.assertIn("longest join-to-done", out.getvalue())
        err = io.StringIO()
        self.assertEqual(main(["--swarm-uploads", "0"], out=io.StringIO(), err=err), 2)
        self.assertIn("--swarm-uploads", err.getvalue())

    def test_main_progress(self):
        """--progress prints the swarm's progress to stderr as it runs."""
        out, err = io.StringIO(), io.StringIO()
        rc = main(["--hosts", "3", "--size", "8M", "--piece-size", "1M", "--progress"],
                  out=out, err=err)
        self.assertEqual(rc, 0)
        seen = []
        sw = Swarm(20, 64 * MiB, piece_size=1 * MiB, up=LINK, seed=2, progress=seen.append)
        sw._progress_mask = 255
        r = sw.run()
        self.assertTrue(seen)
        self.assertIs(seen[0], sw)
        self.assertEqual(len(seen), r["events"] // 256)

    def test_main_bad_usage(self):
        """When an option is malformed, the CLI exits with status 2."""
        err = io.StringIO()
        self.assertEqual(main(["--hosts", "x"], out=io.StringIO(), err=err), 2)
        self.assertEqual(main(["--link", "fast"], out=io.StringIO(), err=err), 2)
        self.assertEqual(main(["--kill-owner-at", "0.5"], out=io.StringIO(), err=err), 2)
        self.assertEqual(main(["--churn", "1.5"], out=io.StringIO(), err=err), 2)
        self.assertEqual(main(["--supernodes", "0"], out=io.StringIO(), err=err), 2)
        self.assertIn("error:", err.getvalue())

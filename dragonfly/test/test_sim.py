"""Tests for the swarm simulator (dragonfly.sim), which drives the real Scheduler."""
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.sim import Swarm, lower_bound, simulate
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
        self.assertTrue(os.path.getsize(path) > 0)

    def test_main_bad_usage(self):
        """When an option is malformed, the CLI exits with status 2."""
        err = io.StringIO()
        self.assertEqual(main(["--hosts", "x"], out=io.StringIO(), err=err), 2)
        self.assertEqual(main(["--link", "fast"], out=io.StringIO(), err=err), 2)
        self.assertIn("error:", err.getvalue())

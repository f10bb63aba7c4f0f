"""Tests for dragonfly.supernode.bitset: walking piece sets stored as ints."""
import random

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.supernode.bitset import bits, lowest_bits, random_bits


def bitset(indices):
    x = 0
    for i in indices:
        x |= 1 << i
    return x


class BitsTests(SynchronousTestCase):
    def test_bits(self):
        """bits() yields every set bit, lowest first; none for 0."""
        self.assertEqual(list(bits(0)), [])
        self.assertEqual(list(bits(bitset([0, 3, 64, 5000]))), [0, 3, 64, 5000])

    def test_lowest_bits(self):
        """lowest_bits() returns at most k set bits, lowest first, across long
        runs of clear bits and chunk boundaries."""
        x = bitset([2, 1023, 1024, 1025, 9000, 20000])
        self.assertEqual(lowest_bits(x, 0), [])
        self.assertEqual(lowest_bits(x, 3), [2, 1023, 1024])
        self.assertEqual(lowest_bits(x, 10), [2, 1023, 1024, 1025, 9000, 20000])
        self.assertEqual(lowest_bits(bitset([30000]), 2), [30000])
        self.assertEqual(lowest_bits(0, 4), [])

    def test_random_bits_sparse_and_dense(self):
        """random_bits() yields each set bit exactly once, in an order that
        depends on the rng, for sparse and dense sets alike."""
        n = 4096
        for indices in ([5, 77, 4000], range(0, n, 2), range(n)):
            x = bitset(indices)
            orders = set()
            for seed in range(5):
                got = list(random_bits(x, n, random.Random(seed)))
                self.assertEqual(sorted(got), list(indices))
                orders.add(tuple(got))
            self.assertGreater(len(orders), 1)

    def test_random_bits_lazy(self):
        """random_bits() is a generator: taking the first few draws few numbers."""
        rng = random.Random(1)
        it = random_bits(bitset(range(0, 4096, 2)), 4096, rng)
        first = [next(it) for _ in range(3)]
        self.assertEqual(len(set(first)), 3)
        self.assertTrue(all(i % 2 == 0 for i in first))

"""Piece sets as Python ints: the bit helpers of the scheduler.

A set of piece indices is an int with bit C{i} set for piece C{i}, so set
algebra is a handful of big-int operations. This module owns walking such
sets: every index, the lowest few, or all in random order (drawn lazily,
since callers often stop early). Pure functions, no state.
"""

__all__ = ["bits", "lowest_bits", "random_bits"]

# Bits examined per step when looking for the lowest set bits of a big bitset.
_CHUNK = 1024
_CHUNK_MASK = (1 << _CHUNK) - 1


def lowest_bits(x, k):
    """The (at most) C{k} lowest set bits of C{x}, lowest first.

    Works on bounded slices of C{x}, so the cost grows with C{k} and with the
    gaps skipped, not with C{x}'s width per bit found.
    """
    out = []
    base = 0
    while x and len(out) < k:
        chunk = x & _CHUNK_MASK
        if not chunk:
            skip = (x & -x).bit_length() - 1
            x >>= skip
            base += skip
            continue
        while chunk and len(out) < k:
            low = chunk & -chunk
            out.append(base + low.bit_length() - 1)
            chunk ^= low
        x >>= _CHUNK
        base += _CHUNK
    return out


def bits(x):
    """The indices of the set bits of C{x}, lowest first."""
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def random_bits(x, n, rng):
    """The set bits of C{x} (all below C{n}) in random order."""
    rand = rng.random
    k = x.bit_count()
    if k <= 16 or k * 16 < n:
        yield from _draw(list(bits(x)), rand)
        return
    # Dense: rejection-sample positions, then draw from whatever is left.
    misses = 0
    while x and misses < 64:
        i = int(rand() * n)
        bit = 1 << i
        if x & bit:
            x ^= bit
            misses = 0
            yield i
        else:
            misses += 1
    yield from _draw(list(bits(x)), rand)


def _draw(items, rand):
    """Yield C{items} in random order, drawing lazily (callers often stop early)."""
    while items:
        j = int(rand() * len(items))
        item = items[j]
        items[j] = items[-1]
        items.pop()
        yield item

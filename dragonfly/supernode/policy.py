"""The scheduler's choices: which pieces an asker gets, and from whom.

Rarest-first among the pieces an asker still needs (random tie-break, by
walking the rarity buckets of L{dragonfly.supernode.swarmstate.Task}), the
in-order window of a streaming asker, the candidate sources of one request
(the peers with a free upload slot, or a sample of them), and the source of
one piece (the least-loaded eligible holder, else the seed when it may serve;
eligible: alive, not bad, not failed this asker for this piece, not avoided
by this asker).
Read-only over the swarm state; randomness from the C{random.Random} given.
"""
from operator import attrgetter

from dragonfly.supernode.bitset import bits, lowest_bits, random_bits
from dragonfly.supernode.swarmstate import SCAN_HOLDERS, SEED

__all__ = ["MAX_MISSES", "by_load", "candidates", "sequential", "rarest", "pick_source"]

_SAMPLE_HOLDERS = 12
# Look for sources among the peers with free upload slots when they are few.
_SMALL_FREE = 64
_POOL_SAMPLE = 32
_POOL_RUNS = 4
_POOL_RUN = _POOL_SAMPLE // _POOL_RUNS
# Failed source look-ups per assign() before only sure candidates are tried.
MAX_MISSES = 8
# Streaming askers (a cursor): the in-order window is this many times their
# want (at least _MIN_WINDOW) of the pieces they still need.
_WINDOW_FACTOR = 2
_MIN_WINDOW = 4


def candidates(free, rng):
    """C{(pool, exact)}: the candidate sources of one request.

    Every peer with a free upload slot (C{free}) when they are few, from a
    random starting point (C{exact} true); else a sample of them: a few runs
    of neighbours in C{free} from random starting points (the list's order
    is churned by every swap-removal; runs cost a slice, not a draw each).
    Pieces with few holders are looked up through their holder lists instead.
    """
    nfree = len(free)
    if nfree <= _SMALL_FREE:
        if nfree:
            start = int(rng.random() * nfree)
            return free[start:] + free[:start], True
        return free, True
    rand = rng.random
    pool = []
    for _ in range(_POOL_RUNS):
        start = int(rand() * (nfree - _POOL_RUN))
        pool += free[start:start + _POOL_RUN]
    return pool, False


def sequential(task, a, cursor, want, wanted, need):
    """C{(window, quota)}: the in-order candidates of streaming asker C{a}.

    C{window} is, lowest first, those of the first C{_WINDOW_FACTOR *
    want} (at least C{_MIN_WINDOW}) pieces from C{cursor} on that C{a}
    could be assigned (C{wanted}: available, not held, not being fetched)
    that some candidate source can serve (C{need}). C{quota} is how many
    of them to assign: half of C{want}, rounded down, so rarest-first
    keeps the rest; for C{want} 1, every other assignment (C{seq_turn})
    unless the stream is blocked: the lowest piece from the cursor on
    that C{a} lacks is not in flight, which always gets the slot.

    But the leading pieces of the window that are as rare as the rarest
    piece in C{need} are rarest-first choices already: those all go in
    order (up to C{want}). A stream whose next pieces are as rare as any
    it needs (one warm source holding the whole file, or a seed alone)
    then gets them in order and nothing lands ahead of its cursor to wait
    there, while a rarer piece elsewhere still gets its half of the slots.
    """
    size = max(_WINDOW_FACTOR * want, _MIN_WINDOW)
    window = [cursor + i for i in lowest_bits(wanted >> cursor, size)
              if need >> (cursor + i) & 1]
    if not window:
        return (), 0
    key = task.key
    rarest_key = _lowest_key(task, need)
    lead = 0
    for i in window:
        if lead >= want or key[i] != rarest_key:
            break
        lead += 1
    if want >= 2:
        quota = want // 2
    elif a.seq_turn:
        quota = 1
    else:
        lacking = (task.full & ~a.have) >> cursor
        low = lacking & -lacking
        blocked = bool(low) and not a.fetch_mask >> (cursor + low.bit_length() - 1) & 1
        quota = 1 if blocked else 0
    quota = max(quota, lead)
    return (window, quota) if quota else ((), 0)


def _lowest_key(task, need):
    """The rarity key of the rarest piece in C{need} (non-empty), or None."""
    buckets = task.buckets
    for k in task.keys:
        m = buckets.get(k)
        if m is not None and m & need:
            return k
    return None


def rarest(task, need, rng):
    """The pieces in C{need}, lowest rarity key first, ties in random order."""
    keys = task.keys
    k = need.bit_count()
    if k == 1:
        yield need.bit_length() - 1
        return
    if k <= 8 or k * 4 <= len(keys):
        key = task.key
        rand = rng.random
        yield from sorted(bits(need), key=lambda i: (key[i], rand()))
        return
    buckets = task.buckets
    for b in list(keys):
        m = buckets.get(b)
        if m is None:
            continue
        cand = m & need
        if not cand:
            continue
        need ^= cand
        if cand & (cand - 1) == 0:
            yield cand.bit_length() - 1
        else:
            yield from random_bits(cand, task.n, rng)
        if not need:
            return


def by_load(pool):
    """Sort C{pool} (candidate sources) least-loaded first, in place."""
    pool.sort(key=_LOAD)


_LOAD = attrgetter("uploads")


def pick_source(task, a, i, pool, exact, seed_ok, rng, max_uploads, seed_copies,
                ordered=False):
    """The source of piece C{i} for asker C{a}: a peer, the seed, or None.

    None means eligible holders exist but all are busy (or the seed may
    not serve it now): the asker should get a different piece. C{ordered}:
    C{pool} is least-loaded first (L{by_load}), so its first eligible holder
    is the one.
    """
    bit = 1 << i
    failed = a.failed.get(i)
    avoid = a.avoid
    best = None
    best_load = max_uploads
    count = task.count[i]
    if count <= SCAN_HOLDERS:
        candidates = task.holders[i] if count else ()
        ordered = False
    else:
        candidates = pool
    for q in candidates:
        if (q.uploads < best_load and q.have & bit and q.alive and not q.bad
                and q is not a and not (failed and q.id in failed)
                and not (avoid and q.id in avoid)):
            best, best_load = q, q.uploads
            if best_load == 0 or ordered:
                break
    if best is None and count > SCAN_HOLDERS and not exact:
        hl = task.holders[i]
        n = len(hl)
        rand = rng.random
        for _ in range(_SAMPLE_HOLDERS):
            q = hl[int(rand() * n)]
            if (q.uploads < best_load and q.alive and not q.bad
                    and q is not a and not (failed and q.id in failed)
                    and not (avoid and q.id in avoid)):
                best, best_load = q, q.uploads
    if best is not None:
        return best
    # Nobody free can serve it. Busy eligible holders: try another piece.
    good = task.count_good[i]
    if good:
        # At most len(failed) + len(avoid) of them are not eligible for a.
        if good > (len(failed) if failed else 0) + len(avoid):
            return None
        if any(q.alive and not q.bad and not (failed and q.id in failed) and q.id not in avoid
               for q in task.holders[i]):
            return None
    if (seed_ok and task.seed_mask & bit
            and task.seed_inflight[i] < seed_copies
            and not (failed and task.seed.peer_id in failed)):
        return SEED
    return None

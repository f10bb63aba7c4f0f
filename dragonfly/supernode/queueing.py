"""A streamed task's queue at its sources.

A peer that streams a task to a reader waiting for its bytes in order (the
registry mirror's client, the peer API's data stream) fetches each source's
pieces over one pipelined connection. With only the source's upload slots
(C{max_uploads_per_peer}) assigned, a slot comes back through the control
loop alone: bytes in, the C{fetched} report, the supernode frees the slot
and answers the long-poll, the request goes out; meanwhile the connection
idles (bench/README.md, issue 20 round six: 14-24% of the transfer). So an
asker that says it streams (C{queue} with a C{cursor} in its schedule
request) may hold, beyond its fair share of the slots, up to
C{stream_queue} more assignments in the source's queue: it keeps them in
its own queue and sends each request as an earlier piece of the connection
arrives, without waiting for the supernode.

What that costs, and whom:
  - the source: nothing more at once. A queued assignment holds no upload
    slot in the scheduler's count (L{dragonfly.supernode.swarmstate.Peer}'s
    C{uploads} is unchanged, C{queued} counts the places); the asker sends
    no more requests at once than its fetch slots, and the source's piece
    server answers one connection's requests one at a time and caps its
    uploads itself (BUSY beyond), as it always did;
  - other downloaders of the source: nothing. They see the same free upload
    slots as before (a queued place is none); a source's queue has
    C{stream_queue} places in all, first come first served, and a place
    frees like a slot (the bytes arrived, held, failed, timed out);
  - the swarm's fairness model and the simulator: unchanged for every asker
    that does not ask for it (no C{queue} field, as from older peers: the
    same choices and the same random draws).

The flag is the asker's word, as its cursor is: a hostile peer that claims to
stream gets at most this larger queue, C{stream_queue} assignments more in
flight than a plain asker, in places no other asker's slots depend on; the
most it takes from anyone is the queue places an honest streamer at the
same source would have used. Pieces come in order from the cursor on (the
ones the stream waits for next), from eligible holders (alive, not bad, not
failed or avoided by the asker), never from the seed (which has slots and
copy limits of its own).
"""
from dragonfly.supernode.bitset import lowest_bits
from dragonfly.supernode.swarmstate import SCAN_HOLDERS, start

__all__ = ["queue_fetches"]

# Pieces from the cursor on looked at per queued assignment wanted (at least
# _MIN_LOOK): those no source can queue are skipped.
_LOOK_FACTOR = 4
_MIN_LOOK = 8
# Holders sampled per piece when it has more than SCAN_HOLDERS.
_SAMPLE = 12


def queue_fetches(task, a, cursor, room, limits, deadline):
    """Up to C{room} queued assignments for streaming asker C{a} of C{task}:
    the lowest pieces from C{cursor} on that it may be assigned, each from
    the eligible holder with the fewest queued (below C{limits.stream_queue}).

    C{limits} is the scheduler (C{stream_queue}, C{max_uploads_per_peer},
    C{seed_piece_copies}, C{rng}).
    """
    wanted = (task.avail & ~a.have & ~a.fetch_mask) >> cursor
    if not wanted:
        return []
    out = []
    for k in lowest_bits(wanted, max(_MIN_LOOK, _LOOK_FACTOR * room)):
        i = cursor + k
        src = _queue_source(task, a, i, limits.stream_queue, limits.rng)
        if src is None:
            continue
        out.append(start(task, a, i, src, deadline, limits.max_uploads_per_peer,
                         limits.seed_piece_copies, queued=True))
        if len(out) >= room:
            break
    return out


def _queue_source(task, a, i, limit, rng):
    """The eligible holder of piece C{i} with the fewest queued assignments
    (fewer than C{limit}) for asker C{a}, or None."""
    count = task.count[i]
    if not count:
        return None
    holders = task.holders[i]
    if count > SCAN_HOLDERS:
        n = len(holders)
        holders = [holders[int(rng.random() * n)] for _ in range(_SAMPLE)]
    failed = a.failed.get(i)
    avoid = a.avoid
    best = None
    best_queued = limit
    for q in holders:
        if (q.queued < best_queued and q.alive and not q.bad and q is not a
                and not (failed and q.id in failed) and not (avoid and q.id in avoid)):
            best, best_queued = q, q.queued
            if best_queued == 0:
                break
    return best

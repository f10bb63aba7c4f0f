"""An asker's report to the scheduler: pieces it holds, fetched or failed.

L{apply_report} is the body of L{dragonfly.supernode.scheduler.Scheduler.report}
(the facade checks the arguments and wakes the long-polls): it ends or
marks the asker's in-flight assignments through the bookkeeping writers of
L{dragonfly.supernode.swarmstate}. Pure: no I/O, no clock, no Deferreds.
"""
from dragonfly.supernode.swarmstate import (add_have, mark_fetched, record_failure, release,
                                            source_id)

__all__ = ["apply_report"]


def apply_report(task, p, have, failed, fetched, limits, now):
    """Apply asker C{p}'s report to C{task}: C{(opportunities, offered)}.

    C{failed} holds C{(index, source_id, reason)}, C{have} and C{fetched}
    piece indexes, all checked. Failures first (each ends the matching
    assignment, or is ignored and counted), then C{fetched} (each frees the
    source's slot of the matching assignment, which stays in flight: see
    L{mark_fetched}; no matching assignment: ignored), then C{have}.
    C{limits} is the scheduler (its C{max_uploads_per_peer},
    C{seed_piece_copies} and failure limits). C{opportunities} counts the
    assignment chances the report made, C{offered} the pieces that freed
    slots or new holders can now serve.
    """
    max_uploads, copies = limits.max_uploads_per_peer, limits.seed_piece_copies
    opportunities = 0
    offered = 0
    for i, s, reason in failed:
        f = p.fetching.get(i)
        if f is None or source_id(task, f.source) != s:
            task.ignored += 1
            continue
        offered |= release(task, p, f, max_uploads, copies)
        opportunities += 1
        record_failure(task, p, i, s, limits, now, reason)
    for i in fetched:
        f = p.fetching.get(i)
        if f is not None and not f.fetched:
            offered |= mark_fetched(task, p, f, max_uploads)
            opportunities += 1
    new = 0
    for i in have:
        f = p.fetching.get(i)
        if f is not None:
            rekey = bool(p.have >> i & 1)   # else in flight -> held: same key
            offered |= release(task, p, f, max_uploads, copies, rekey)
            opportunities += 1   # (a fetched one: the asker's own share, see release)
            if add_have(task, p, i, max_uploads, rekey):
                new |= 1 << i
        elif add_have(task, p, i, max_uploads):
            new |= 1 << i
    if new and not p.bad:
        offered |= p.have
        opportunities += max(0, max_uploads - p.uploads)
    return opportunities, offered

"""A peer the supernode found dead: its assignments end, nobody is sent to it.

A peer killed without a word (SIGKILL, a lost host) while it had no
long-poll out kept, until C{assignment_timeout} and C{peer_timeout}, the
upload slots of the sources it was fetching from (the seed's too: with
super-seeding, a piece it was fetching from the seed and nobody held went to
nobody else for that long) and stayed a source handed out to the others.
When an asker reports a fetch from it failed, the supernode checks the
peer's piece port itself (L{dragonfly.supernode.liveness}); a refused
connection, with no call from the peer since the check began, is the
verdict L{mark_down} applies. Any later call of the peer (a report, a
heartbeat, a registration) is a sign of life that undoes it (L{revive}), so
a wrong verdict costs a live peer at most its next call's interval as a
source, and the assignments it still fetches count again when it reports
them held (as after a dropped long-poll). A hostile reporter only makes the
supernode knock on a port: the verdict is the supernode's own.
Pure bookkeeping over L{dragonfly.supernode.swarmstate}: no I/O, no clock.
"""
from dragonfly.supernode.swarmstate import BUSY, DIGEST, SEED, mark_bad, release, restore

__all__ = ["mark_down", "revive", "suspects"]


def suspects(p, failed):
    """The L{PeerInfo}s of the peer sources to check after asker C{p}'s
    report of C{failed} (C{(index, source_id, reason)}, before it is applied):
    only those of C{p}'s own in-flight assignments, not for C{"busy"} (a
    loaded source) or C{"digest"} (a bad piece: a live source), nor about
    a source already marked down."""
    out = []
    for i, s, reason in failed:
        f = p.fetching.get(i)
        if (f is not None and reason not in (BUSY, DIGEST) and f.source is not SEED
                and f.source.id == s and f.source.down is None):
            out.append(f.source.info)
    return out


def mark_down(task, p, until, max_uploads, seed_copies):
    """Peer C{p} of C{task} refused the supernode's check: its in-flight
    assignments end now, and it is marked bad (no source for anyone) until
    C{until} or its next sign of life (a peer already bad keeps that verdict).
    Returns C{(released, offered)} as L{dragonfly.supernode.swarmstate.release}
    does, C{offered} with the pieces the seed or others now serve instead."""
    released = offered = 0
    for f in list(p.fetching.values()):
        offered |= release(task, p, f, max_uploads, seed_copies)
        released += 1
    if not p.bad:
        mark_bad(task, p, until)
        p.down = until
        offered |= p.have
    return released, offered


def revive(task, p, max_uploads):
    """A sign of life from C{p} (marked by L{mark_down}): it serves again
    unless another verdict marked it bad since. The pieces it offers."""
    until, p.down = p.down, None
    if p.bad and p.bad_until == until:
        return restore(task, p, max_uploads)
    return 0

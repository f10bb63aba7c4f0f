"""Read-only views of the scheduler's swarm state, for the dashboard.

L{task_summary} is one task's counts (pieces, peers, bytes held and the
supernode's share); L{swarm_grid} is its pieces x peers grid: one row per
peer (the seed first), one character per column, a column covering one
piece or, for big files, a run of pieces. Plain functions over a
L{dragonfly.supernode.swarmstate.Task}: they only read, allocate nothing in
the scheduler and cost nothing until the dashboard asks.

Grid characters: C{#} held, C{s} being fetched from the supernode, C{>}
being fetched from a peer, C{x} failed (from some source) and not held,
C{.} missing; a column of several pieces shows C{#} when every one is
held, C{+} when some are, else the strongest of the others.
"""
from dragonfly.supernode.bitset import bits
from dragonfly.supernode.swarmstate import SEED, PieceSizes

__all__ = ["task_summary", "swarm_grid", "peer_activity", "scheduler_stats", "task_stats",
           "SchedulerViews", "MAX_COLUMNS", "MAX_ROWS"]

#: At most this many grid columns (a column covers several pieces above that).
MAX_COLUMNS = 256
#: At most this many peer rows in one grid (the rest are counted, not drawn).
MAX_ROWS = 200


def _sizer(task):
    """A function: piece bitset -> bytes. Pieces are one size but the last
    (as the CDN cuts them), so that is a bit count, not a walk over the bits."""
    sizes = task.sizes
    n = task.n
    if not n:
        return lambda mask: 0
    if isinstance(sizes, PieceSizes) or all(sizes[i] == sizes[0] for i in range(n - 1)):
        size, last_bit, short = sizes[0], 1 << (n - 1), sizes[0] - sizes[n - 1]
        return lambda mask: mask.bit_count() * size - (short if mask & last_bit else 0)
    return lambda mask: sum(sizes[i] for i in bits(mask))


def _length(task):
    sizes = task.sizes
    return sizes.length if isinstance(sizes, PieceSizes) else sum(sizes)


def task_summary(task):
    """Counts of one task: pieces, peers, bytes held by peers, seed share."""
    n = task.n
    length = _length(task)
    held_bytes = _sizer(task)
    delivered = sum(held_bytes(p.have) for p in task.peers.values())
    mean = length / n if n else 0
    # Assignments, not bytes, are counted per source (no per-assign overhead):
    # the supernode's share of what peers hold is estimated from them.
    from_seed = min(delivered, int(task.assigned["supernode"] * mean))
    return {
        "piece_count": n, "length": length,
        "seeded": task.seed_mask.bit_count(),
        "peers": len(task.peers), "done": task.done,
        "bad_peers": sum(1 for p in task.peers.values() if p.bad),
        "inflight": task.n_inflight, "seed_inflight": task.seed_uploads,
        "assigned": dict(task.assigned), "failures": task.failures, "expired": task.expired,
        "delivered_bytes": delivered, "supernode_bytes": from_seed,
        "p2p_bytes": delivered - from_seed,
    }


def _columns(n):
    """Piece ranges [(first, last+1)] of each grid column."""
    if n <= MAX_COLUMNS:
        return [(i, i + 1) for i in range(n)]
    cols = []
    for c in range(MAX_COLUMNS):
        cols.append((c * n // MAX_COLUMNS, (c + 1) * n // MAX_COLUMNS))
    return cols


def _row(have, fetching, failed_mask, columns):
    """One peer's grid row (see the module docstring for the characters)."""
    out = []
    for first, end in columns:
        span = ((1 << (end - first)) - 1) << first
        held = have & span
        if held == span:
            out.append("#")
            continue
        pending = [fetching[i] for i in range(first, end) if i in fetching]
        if held:
            out.append("+")
        elif pending:
            out.append("s" if any(f.source is SEED for f in pending) else ">")
        elif failed_mask & span:
            out.append("x")
        else:
            out.append(".")
    return "".join(out)


def _peer_row(task, p, columns, now, held_bytes):
    info = p.info
    fetching = [{"piece": f.index,
                 "from": task.seed.peer_id if f.source is SEED else f.source.id}
                for f in sorted(p.fetching.values(), key=lambda f: f.index)]
    return {
        "peer_id": p.id, "host": info.host, "port": info.port,
        "cells": _row(p.have, p.fetching, p.failed_mask & ~p.have, columns),
        "held": p.have.bit_count(), "held_bytes": held_bytes(p.have),
        "fetching": fetching, "uploads": p.uploads, "from_supernode": p.seed_got,
        "failed_pieces": sorted(bits(p.failed_mask & ~p.have))[:32],
        "banned": p.bad, "down": p.down is not None,
        "reported_failing_by": len(p.fail_reporters),
        "last_seen": round(max(0.0, now - p.last_seen), 1),
    }


def swarm_grid(task, now):
    """One task's pieces x peers grid: the seed's row first, then each peer's."""
    columns = _columns(task.n)
    seed_row = {
        "peer_id": task.seed.peer_id, "host": task.seed.host, "port": task.seed.port,
        "supernode": True, "cells": _row(task.seed_mask, {}, 0, columns),
        "held": task.seed_mask.bit_count(), "uploads": task.seed_uploads,
    }
    peers = sorted(task.peers.values(), key=lambda p: p.joined)
    held_bytes = _sizer(task)
    rows = [_peer_row(task, p, columns, now, held_bytes) for p in peers[:MAX_ROWS]]
    return {
        "piece_count": task.n,
        "columns": len(columns),
        "pieces_per_column": round(task.n / len(columns), 2) if columns else 1,
        "supernode": seed_row, "peers": rows,
        "peers_not_shown": max(0, len(peers) - MAX_ROWS),
    }


def peer_activity(tasks, now):
    """Every peer of C{tasks} once: address, tasks, pieces held, what it fetches.

    C{have} maps each task id to the peer's piece bitset there (ints: copies
    by nature) and C{fetching} maps C{(task_id, index)} to the source's id,
    so a caller sampling twice can tell which fetches completed.
    """
    out = {}
    for task in tasks:
        mean = _length(task) / task.n if task.n else 0.0
        held_bytes = _sizer(task)
        seed_id = task.seed.peer_id
        for p in task.peers.values():
            e = out.get(p.id)
            if e is None:
                e = out[p.id] = {"peer_id": p.id, "host": p.info.host, "port": p.info.port,
                                 "tasks": [], "held_bytes": 0.0, "last_seen": p.last_seen,
                                 "uploads": 0, "banned": False, "have": {}, "fetching": {},
                                 "piece_bytes": {}}
            e["tasks"].append(task.id)
            e["held_bytes"] += held_bytes(p.have)
            e["last_seen"] = max(e["last_seen"], p.last_seen)
            e["uploads"] += p.uploads
            e["banned"] = e["banned"] or p.bad
            e["have"][task.id] = p.have
            e["piece_bytes"][task.id] = mean
            for f in p.fetching.values():
                e["fetching"][(task.id, f.index)] = seed_id if f.source is SEED else f.source.id
    for e in out.values():
        e["last_seen"] = round(max(0.0, now - e["last_seen"]), 1)
    return out


def scheduler_stats(tasks, removed_assigned):
    """Counters for metrics over C{tasks}: tasks, peers, assignments by
    source kind (plus C{removed_assigned}, those of removed tasks)."""
    assigned = dict(removed_assigned)
    peers = inflight = seed_inflight = bad = ignored = n = 0
    for t in tasks:
        n += 1
        ignored += t.ignored
        for k, v in t.assigned.items():
            assigned[k] += v
        peers += len(t.peers)
        inflight += sum(len(p.fetching) for p in t.peers.values())
        bad += sum(1 for p in t.peers.values() if p.bad)
        seed_inflight += t.seed_uploads
    return {"tasks": n, "peers": peers, "assigned": assigned,
            "inflight": inflight, "seed_inflight": seed_inflight,
            "bad_peers": bad, "ignored_failures": ignored}


def task_stats(task):
    """One task's state: C{seeded} pieces at the seed, peers, done peers."""
    return {
        "task_id": task.id, "piece_count": task.n,
        "seeded": task.seed_mask.bit_count(),
        "peers": len(task.peers),
        "done": task.done,
        "inflight": sum(len(p.fetching) for p in task.peers.values()),
        "seed_inflight": task.seed_uploads,
        "assigned": dict(task.assigned),
        "failures": task.failures, "expired": task.expired,
        "ignored_failures": task.ignored, "bad_pieces": task.bad_pieces,
    }


class SchedulerViews:
    """The L{dragonfly.supernode.scheduler.Scheduler}'s read-only views
    (metrics, the dashboard), over its C{_tasks} and C{_removed_assigned};
    C{_task(task_id)} raises for an unknown task."""

    def stats(self):
        """Counters for metrics: tasks, peers, assignments by source kind
        (L{scheduler_stats})."""
        return scheduler_stats(self._tasks.values(), self._removed_assigned)

    def task_stats(self, task_id):
        """One task's state: C{seeded} pieces at the seed, peers, done peers
        (L{task_stats})."""
        return task_stats(self._task(task_id))

    # -- read-only views (the dashboard) -------------------------------------

    def task_ids(self):
        """The ids of the tasks scheduled now."""
        return list(self._tasks)

    def fetching_peer(self, task_id, peer_id, source_id=None):
        """The L{PeerInfo} of C{peer_id} in C{task_id} while it has assignments
        in flight (one from the peer C{source_id}, when given) and is not
        marked down (a peer worth a liveness check), else None."""
        task = self._tasks.get(task_id)
        p = task.peers.get(peer_id) if task is not None else None
        if p is None or not p.fetching or p.down is not None:
            return None
        if source_id is not None and not any(
                f.source is not SEED and f.source.id == source_id for f in p.fetching.values()):
            return None
        return p.info

    def swarm_summary(self, task_id):
        """L{task_summary} of C{task_id}."""
        return task_summary(self._task(task_id))

    def swarm_grid(self, task_id):
        """L{swarm_grid} of C{task_id}: its pieces x peers."""
        return swarm_grid(self._task(task_id), self.clock.seconds())

    def peer_activity(self):
        """L{peer_activity} over every task."""
        return peer_activity(self._tasks.values(), self.clock.seconds())

"""The simulator's yardsticks: lower bounds of a swarm's completion time and
the cluster's owner order."""
import hashlib
import math

__all__ = ["lower_bound", "mixed_bound", "hop_bound", "rendezvous_order"]


def lower_bound(size, hosts, seed_up, peer_up, peer_down):
    """max(F/u_seed, F/d, N*F/(u_seed + N*u)): no schedule finishes sooner."""
    return max(size / seed_up, size / peer_down,
               hosts * size / (seed_up + hosts * peer_up))


def mixed_bound(size, seed_up, ups, downs):
    """L{lower_bound} for uneven hosts: max(F/u_seed, F/min(d), N*F/(u_seed + sum(u)))."""
    return max(size / seed_up, size / min(downs),
               len(ups) * size / (seed_up + sum(ups)))


def hop_bound(size, piece, seed_up, ups, downs, origin_rate=0.0):
    """L{mixed_bound}, and the tail that store-and-forward of whole pieces adds.

    A peer serves a piece only once it holds all of it (verified). Every
    piece leaves the seed at least once, so the last piece's first copy is
    complete no sooner than C{F/u_seed} (with an origin: no sooner than the
    origin's last byte plus that piece at the seed's rate). From then on one
    copy of a piece takes a hop, C{piece / min(u, d)} (the fastest peer
    link), of its sender's uplink: each holder adds at most one holder per
    hop, the seed C{ceil(u_seed / min(u, d))}. With 1 holder and a seed
    adding s per hop, holders after k hops are at most C{h(k+1) = 2 h(k) + s}:
    the last piece needs k hops to reach all N hosts (k = 4 for N=16 with
    equal links: 1, 3, 7, 15, 31). C{piece}: the smallest piece's size.
    """
    n = len(ups)
    lb = mixed_bound(size, seed_up, ups, downs)
    rate = min(max(ups), max(downs))
    hop = piece / rate
    start = size / seed_up
    if origin_rate > 0:
        start = max(start, size / origin_rate + piece / min(seed_up, max(downs)))
    per_hop = max(1, math.ceil(seed_up / rate - 1e-9))
    held, hops = 1, 0
    while held < n:
        held = 2 * held + per_hop
        hops += 1
    return max(lb, start + hops * hop)


def rendezvous_order(members, task_id):
    """C{members} best owner first, by the score of L{dragonfly.supernode.cluster}."""
    return sorted(members, key=lambda m: hashlib.sha256(
        f"{m}\0{task_id}".encode("utf-8")).digest(), reverse=True)

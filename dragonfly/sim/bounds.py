"""The simulator's yardsticks: lower bounds of a swarm's completion time and
the cluster's owner order."""
import hashlib

__all__ = ["lower_bound", "mixed_bound", "rendezvous_order"]


def lower_bound(size, hosts, seed_up, peer_up, peer_down):
    """max(F/u_seed, F/d, N*F/(u_seed + N*u)): no schedule finishes sooner."""
    return max(size / seed_up, size / peer_down,
               hosts * size / (seed_up + hosts * peer_up))


def mixed_bound(size, seed_up, ups, downs):
    """L{lower_bound} for uneven hosts: max(F/u_seed, F/min(d), N*F/(u_seed + sum(u)))."""
    return max(size / seed_up, size / min(downs),
               len(ups) * size / (seed_up + sum(ups)))


def rendezvous_order(members, task_id):
    """C{members} best owner first, by the score of L{dragonfly.supernode.cluster}."""
    return sorted(members, key=lambda m: hashlib.sha256(
        f"{m}\0{task_id}".encode("utf-8")).digest(), reverse=True)

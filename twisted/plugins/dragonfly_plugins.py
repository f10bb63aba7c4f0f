"""twistd plugins for dragonfly: supernode, peer, dfdaemon.

Lazy: naming a ServiceMaker imports nothing heavy, so ``twistd --help`` stays fast.
"""
from twisted.application.service import ServiceMaker

supernode = ServiceMaker(
    "dragonfly supernode",
    "dragonfly.supernode.tap",
    "Tracker, scheduler and CDN seed of a dragonfly P2P swarm.",
    "supernode",
)
peer = ServiceMaker(
    "dragonfly peer",
    "dragonfly.peer.tap",
    "Per-host dragonfly agent: fetches, verifies, caches and serves pieces.",
    "peer",
)
dfdaemon = ServiceMaker(
    "dragonfly dfdaemon",
    "dragonfly.dfdaemon.tap",
    "A dragonfly peer plus a registry mirror that pulls image blobs through P2P.",
    "dfdaemon",
)

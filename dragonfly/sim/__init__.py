"""Swarm simulation: the real scheduler against thousands of simulated hosts."""
from dragonfly.sim.bounds import hop_bound, lower_bound, mixed_bound
from dragonfly.sim.swarm import Swarm, SwarmResult, simulate

__all__ = ["Swarm", "SwarmResult", "hop_bound", "lower_bound", "mixed_bound", "simulate"]

"""Swarm simulation: the real scheduler against thousands of simulated hosts."""
from dragonfly.sim.swarm import Swarm, SwarmResult, lower_bound, mixed_bound, simulate

__all__ = ["Swarm", "SwarmResult", "lower_bound", "mixed_bound", "simulate"]

"""Transitional name: the piece cutter lives in L{dragonfly.ingest.cutter}.

Only peer/node.py's back-to-source imports it from here; delete this module
when that switches to the ingest pipeline.
"""
from dragonfly.ingest.cutter import PieceCutter

__all__ = ["PieceCutter"]

"""dfctl, the operator's command line: the local peer's tasks, preheating, the cluster.

Standard library only and importing no role package: it speaks to the peer's
loopback API and the supernodes' HTTP API like any other client
(L{dragonfly.dfctl.cli}).
"""

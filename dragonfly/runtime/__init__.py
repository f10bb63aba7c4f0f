"""What every role runs on: bounded threads, idle timers, rate limits, signals,
daemon plumbing (timers, listeners) and the NodeService base of the supernode
and the peer. Importing the package loads nothing (dfget's daemon path needs
no Twisted)."""

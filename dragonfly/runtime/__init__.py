"""What every role runs on: bounded threads, idle timers, rate limits, daemon plumbing."""

"""The origin -> store pipeline: an origin's response body cut into a task's pieces.

One pipeline for every role that fetches from an origin (the supernode's CDN
and a peer's back-to-source): L{cutter} cuts a body into pieces with a bounded
window of piece writes (the origin connection pauses at the limit), L{spool}
keeps a body of unknown length in a temporary file until it can be cut,
L{writer} hands finished pieces to the store, and L{pipeline} runs them on an
L{dragonfly.origin.OriginResponse}. What differs between the roles (counting,
errors, whether held pieces are re-verified) is an L{events.IngestEvents}
strategy and a few parameters. The package knows no role and no protocol.
"""

"""The origin -> store pipeline: an origin's response body cut into a task's pieces.

One pipeline for every role that fetches from an origin (the supernode's CDN
and a peer's back-to-source). L{receiver} feeds a response body to a consumer
and pauses the connection while the consumer is busy (the origin client,
L{dragonfly.origin}, delivers every body through it); L{cutter} is that
consumer for a task of known length, cutting the body into pieces with a
bounded window of piece writes; L{spool} is the consumer for a body of
unknown length, kept in a temporary file until it can be cut; L{writer}
hands finished pieces to the store; L{pipeline} runs them on one
C{OriginResponse}. What differs between the roles (counting, error types,
whether held pieces are re-verified, the write window) is an
L{events.IngestEvents} strategy and a few parameters. The package imports
the store and nothing of a role or the piece protocol.
"""

"""The control plane between peers and supernodes: the JSON messages both ends
speak (L{dragonfly.control.messages}) and the peer's supernode client
(L{dragonfly.control.client}). It imports no role, no protocol and no storage."""

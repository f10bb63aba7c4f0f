"""Which caller may speak for a peer id: the per-peer secrets of the supernode.

A peer gets a secret when it first registers (the one it offers, or a fresh
random one); its schedule, heartbeat and leave calls must carry it, compared
in constant time. Registering again under a known id needs it too, so nobody
else can take over an id. A secret unused for C{ttl} seconds is forgotten
(the peer then registers afresh). This stands in for authentication until
mTLS names peers (docs/design.md "Trust and limits").
"""
import secrets

__all__ = ["PeerKeys", "WrongSecret", "SECRET_BYTES"]

#: Random bytes in an issued secret (URL-safe base64: 22 characters).
SECRET_BYTES = 16


class WrongSecret(Exception):
    """A call for a known peer id without that peer's secret."""

    def __init__(self, peer_id):
        Exception.__init__(self, peer_id)
        self.peer_id = peer_id

    def __str__(self):
        return f"not the secret of peer {self.peer_id!r}"


class PeerKeys:
    """Peer id -> secret, with last use.

    @param clock: an L{IReactorTime} (only C{seconds()} is used).
    @param ttl: seconds a secret lives without a call that uses it.
    @param token: C{() -> str}, a fresh secret (tests pass a fixed one).
    """

    def __init__(self, clock, ttl=600.0, token=None):
        self.clock = clock
        self.ttl = ttl
        self._token = token or (lambda: secrets.token_urlsafe(SECRET_BYTES))
        self._keys = {}             # peer id -> [secret, last use]
        self._next_prune = clock.seconds() + ttl

    def __len__(self):
        return len(self._keys)

    def register(self, peer_id, offered):
        """The secret of C{peer_id} after a registration offering C{offered} (or None).

        @raise WrongSecret: the id is known and C{offered} is not its secret.
        """
        now = self._prune()
        entry = self._keys.get(peer_id)
        if entry is None:
            secret = offered if offered is not None else self._token()
            self._keys[peer_id] = [secret, now]
            return secret
        if offered is None or not secrets.compare_digest(entry[0], offered):
            raise WrongSecret(peer_id)
        entry[1] = now
        return entry[0]

    def check(self, peer_id, presented):
        """True if C{presented} is C{peer_id}'s secret; None if the id has none.

        @raise WrongSecret: the id has a secret and C{presented} is not it.
        """
        entry = self._keys.get(peer_id)
        if entry is None:
            return None
        if presented is None or not secrets.compare_digest(entry[0], presented):
            raise WrongSecret(peer_id)
        entry[1] = self.clock.seconds()
        return True

    def _prune(self):
        """Forget secrets unused for C{ttl} (at most once per C{ttl}): now."""
        now = self.clock.seconds()
        if now >= self._next_prune:
            cutoff = now - self.ttl
            self._keys = {k: e for k, e in self._keys.items() if e[1] > cutoff}
            self._next_prune = now + self.ttl
        return now

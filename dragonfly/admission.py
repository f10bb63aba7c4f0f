"""Admission to pieces: the supernode's signed proofs that a peer may fetch a task.

A piece port serves a task only to a peer the supernode admitted to it. The
supernode (L{AdmissionSigner}, its Ed25519 key kept in its data directory)
hands each registered peer a short-lived token naming the task, the peer and
an expiry; the peer presents it in its Hello, and the serving side checks it
with the public keys it trusts (L{AdmissionKeys}, an
L{dragonfly.interfaces.IAdmission}). Only supernodes hold private keys, so
holders cannot mint tokens. A token is C{base64url(payload) "." base64url(sig)}
(no padding) with the payload the compact JSON
C{{"e": expiry, "k": key id, "p": peer id, "t": task id}}; a key id is the
first 8 bytes of the SHA-256 of the raw public key, in hex. L{PeerAdmission}
is the peer's side: the keys its supernodes gave it and its latest token per
task (for its piece client).
"""
import base64
import binascii
import functools
import hashlib
import json
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey, Ed25519PublicKey)
from twisted.logger import Logger
from zope.interface import implementer

from dragonfly.interfaces import IAdmission

__all__ = ["AdmissionSigner", "AdmissionKeys", "PeerAdmission", "key_id", "TOKEN_LIFETIME",
           "MAX_TOKEN", "MAX_KEYS", "TOKEN_RE", "KEY_ID_RE", "PUBLIC_KEY_RE", "KEY_FILE"]

#: Seconds a token is valid (at least; expiries are rounded up to a whole
#: minute); every schedule answer renews it.
TOKEN_LIFETIME = 600
#: Expiries are multiples of this many seconds, so the tokens of one peer and
#: task within that time are the same (signed once: a schedule answer costs
#: a cache look-up, not a signature).
EXPIRY_STEP = 60
#: Tokens remembered for reuse: more than the peers one supernode schedules
#: in a minute (an LRU smaller than the peers polling in turn never hits).
SIGNED_CACHE = 1 << 16
#: Longest token accepted anywhere (a real one is about 250 characters).
MAX_TOKEN = 1024
#: Most verifying keys one node keeps (a cluster has a handful of supernodes).
MAX_KEYS = 64
#: The private key's file name in the supernode's data directory.
KEY_FILE = "admission.key"

TOKEN_RE = re.compile(r"\A[A-Za-z0-9_-]{1,1000}\.[A-Za-z0-9_-]{86}\Z")
KEY_ID_RE = re.compile(r"\A[0-9a-f]{16}\Z")
PUBLIC_KEY_RE = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public):
    """The id of the raw 32-byte public key C{raw_public}."""
    return hashlib.sha256(raw_public).digest()[:8].hex()


class AdmissionSigner:
    """The supernode's signing key: issues tokens.

    @param clock: an L{IReactorTime} (C{seconds()} dates the expiry).
    @param private_key: an C{Ed25519PrivateKey}.
    @param lifetime: seconds a token lives at least (at most C{EXPIRY_STEP} more).
    """

    log = Logger()

    def __init__(self, clock, private_key, lifetime=TOKEN_LIFETIME):
        self.clock = clock
        self._key = private_key
        self.lifetime = lifetime
        raw = _raw_public(private_key.public_key())
        self.key_id = key_id(raw)
        self.public_key = _b64(raw)
        self._sign = functools.lru_cache(maxsize=SIGNED_CACHE)(self._sign_uncached)

    @classmethod
    def generate(cls, clock, **kw):
        """A signer with a fresh key kept in memory only (tests, tools)."""
        return cls(clock, Ed25519PrivateKey.generate(), **kw)

    @classmethod
    def from_file(cls, clock, path, **kw):
        """The signer of the key in C{path}, made (mode 0600) if there is none."""
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_mode & 0o077:
                    cls.log.warn("{path} is readable by others than its owner: anyone who "
                                 "reads it can admit any peer to any task (chmod 600 it)",
                                 path=path)
                key = serialization.load_pem_private_key(f.read(), password=None)
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            cls.log.info("made a new admission key in {path}", path=path)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(clock, key, **kw)

    def keys(self):
        """{key id: public key} of this signer alone."""
        return {self.key_id: self.public_key}

    def issue(self, task_id, peer_id):
        """A token admitting C{peer_id} to C{task_id} for C{lifetime} seconds."""
        expiry = int(self.clock.seconds()) + int(self.lifetime)
        return self._sign(task_id, peer_id, -(-expiry // EXPIRY_STEP) * EXPIRY_STEP)

    def _sign_uncached(self, task_id, peer_id, expiry):
        payload = json.dumps({"e": expiry, "k": self.key_id, "p": peer_id, "t": task_id},
                             separators=(",", ":"), sort_keys=True).encode("utf-8")
        return _b64(payload) + "." + _b64(self._key.sign(payload))


def _parse(token):
    """(payload dict, signed bytes, signature) of a well-formed C{token}, else None."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not TOKEN_RE.match(token):
        return None
    body, sig = token.split(".")
    try:
        signed = _unb64(body)
        payload = json.loads(signed)
        signature = _unb64(sig)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or len(signature) != 64:
        return None
    return payload, signed, signature


@implementer(IAdmission)
class AdmissionKeys:
    """The public keys a piece server trusts, and the check of a token at Hello.

    @param clock: an L{IReactorTime}: a token is refused once C{seconds()}
        reaches its expiry.
    """

    log = Logger()

    def __init__(self, clock):
        self.clock = clock
        self._keys = {}         # key id -> Ed25519PublicKey
        self._text = {}         # key id -> its base64url text

    def __len__(self):
        return len(self._keys)

    def keys(self):
        """{key id: public key (base64url)} of every key trusted."""
        return dict(self._text)

    def add(self, kid, public_key):
        """Trust the base64url raw public key C{public_key} under id C{kid}.

        A key whose id does not match it, or past L{MAX_KEYS}, is ignored:
        False; True when it is trusted now.
        """
        if kid in self._keys:
            return self._text[kid] == public_key
        if len(self._keys) >= MAX_KEYS or not isinstance(public_key, str) \
                or not PUBLIC_KEY_RE.match(public_key):
            return False
        try:
            raw = _unb64(public_key)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error):
            return False
        if key_id(raw) != kid:
            self.log.warn("ignoring admission key {kid}: its id does not match it", kid=kid)
            return False
        self._keys[kid] = key
        self._text[kid] = public_key
        return True

    def add_all(self, keys):
        """L{add} every item of the mapping C{keys} (key id -> public key)."""
        for kid, public_key in (keys or {}).items():
            self.add(kid, public_key)

    def verify(self, token, task_id, peer_id):
        """True if C{token} admits C{peer_id} to C{task_id} now."""
        parsed = _parse(token)
        if parsed is None:
            return False
        payload, signed, signature = parsed
        key = self._keys.get(payload.get("k"))
        expiry = payload.get("e")
        if key is None or payload.get("t") != task_id or payload.get("p") != peer_id:
            return False
        if not isinstance(expiry, int) or isinstance(expiry, bool) \
                or self.clock.seconds() >= expiry:
            return False
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            return False
        return True


class PeerAdmission(AdmissionKeys):
    """A peer's admission state: the keys its supernodes gave it (its piece
    server checks tokens with them) and its own latest token per task (its
    piece client presents them)."""

    def __init__(self, clock):
        AdmissionKeys.__init__(self, clock)
        self._tokens = {}       # task id -> token

    def admit(self, task_id, token):
        """Keep C{token} (None: nothing new) as our proof for C{task_id}."""
        if token:
            self._tokens[task_id] = token

    def forget(self, task_id):
        self._tokens.pop(task_id, None)

    def token_for(self, task_id):
        """Our latest token for C{task_id}, or None."""
        return self._tokens.get(task_id)

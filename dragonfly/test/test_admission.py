"""Tests for dragonfly.admission: tokens, keys, the signer's key file, the peer's book."""
import base64
import json
import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dragonfly.admission import (
    EXPIRY_STEP, TOKEN_LIFETIME, AdmissionKeys, AdmissionSigner, PeerAdmission, key_id)
from dragonfly.interfaces import IAdmission

TASK = "a" * 64
OTHER_TASK = "b" * 64
PEER = "peer-1-deadbeef"
T0 = 28_333_333 * EXPIRY_STEP   # a time in 2023, on a whole EXPIRY_STEP


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _payload(token):
    body = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


class TokenTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.signer = AdmissionSigner.generate(self.clock)
        self.keys = AdmissionKeys(self.clock)
        self.keys.add_all(self.signer.keys())

    def test_interface(self):
        """AdmissionKeys and PeerAdmission provide IAdmission."""
        self.assertTrue(verifyObject(IAdmission, self.keys))
        self.assertTrue(verifyObject(IAdmission, PeerAdmission(self.clock)))

    def test_valid(self):
        """A token the signer issued admits its peer to its task."""
        token = self.signer.issue(TASK, PEER)
        self.assertTrue(self.keys.verify(token, TASK, PEER))
        self.assertEqual(_payload(token), {"t": TASK, "p": PEER, "k": self.signer.key_id,
                                           "e": T0 + TOKEN_LIFETIME})

    def test_expiry_rounded_up(self):
        """The expiry is rounded up to a whole EXPIRY_STEP: the tokens of one
        peer and task issued within one step are the same."""
        self.clock.advance(1)
        token = self.signer.issue(TASK, PEER)
        self.assertEqual(_payload(token)["e"], T0 + TOKEN_LIFETIME + EXPIRY_STEP)
        self.clock.advance(EXPIRY_STEP - 1)
        self.assertEqual(self.signer.issue(TASK, PEER), token)
        self.assertNotEqual(self.signer.issue(TASK, "peer-2"), token)
        self.clock.advance(1)
        self.assertNotEqual(self.signer.issue(TASK, PEER), token)

    def test_expired(self):
        """A token is refused from its expiry on, accepted just before."""
        token = self.signer.issue(TASK, PEER)
        self.clock.advance(TOKEN_LIFETIME - 1)
        self.assertTrue(self.keys.verify(token, TASK, PEER))
        self.clock.advance(1)
        self.assertFalse(self.keys.verify(token, TASK, PEER))

    def test_other_task(self):
        """A token for another task is refused."""
        self.assertFalse(self.keys.verify(self.signer.issue(OTHER_TASK, PEER), TASK, PEER))

    def test_other_peer(self):
        """A token naming another peer is refused."""
        self.assertFalse(self.keys.verify(self.signer.issue(TASK, "peer-2"), TASK, PEER))

    def test_forged_signature(self):
        """A payload changed after signing (another task, a later expiry) is refused."""
        token = self.signer.issue(OTHER_TASK, PEER)
        body, sig = token.split(".")
        payload = _payload(token)
        payload["t"] = TASK
        forged = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()) \
            + "." + sig
        self.assertFalse(self.keys.verify(forged, TASK, PEER))
        payload = _payload(token)
        payload["e"] += 3600
        later = _b64(json.dumps(payload).encode()) + "." + sig
        self.clock.advance(TOKEN_LIFETIME)
        self.assertFalse(self.keys.verify(later, OTHER_TASK, PEER))

    def test_unknown_key(self):
        """A token signed by a key the verifier does not trust is refused, even
        when it names a trusted key's id."""
        stranger = AdmissionSigner.generate(self.clock)
        self.assertFalse(self.keys.verify(stranger.issue(TASK, PEER), TASK, PEER))
        stranger.key_id = self.signer.key_id   # claims to be the trusted key
        self.assertFalse(self.keys.verify(stranger.issue(TASK, PEER), TASK, PEER))

    def test_malformed(self):
        """None, non-strings, garbage, truncated and oversized tokens are refused."""
        token = self.signer.issue(TASK, PEER)
        for bad in (None, 42, "", "x", token[:-1], token + "A", token.replace(".", ""),
                    "." + token.split(".")[1], token.split(".")[0] + ".",
                    "a" * 2000 + "." + "b" * 86, "!!!." + "b" * 86,
                    _b64(b"[1,2]") + "." + token.split(".")[1],
                    _b64(b"\xff\xfe") + "." + token.split(".")[1]):
            self.assertFalse(self.keys.verify(bad, TASK, PEER), repr(bad))

    def test_expiry_must_be_an_integer(self):
        """A signed payload whose expiry is not an integer is refused."""
        raw = json.dumps({"e": "never", "k": self.signer.key_id, "p": PEER, "t": TASK},
                         separators=(",", ":")).encode()
        token = _b64(raw) + "." + _b64(self.signer._key.sign(raw))
        self.assertFalse(self.keys.verify(token, TASK, PEER))

    def test_several_keys(self):
        """A verifier trusts every key added to it (a cluster's members)."""
        member = AdmissionSigner.generate(self.clock)
        self.keys.add(member.key_id, member.public_key)
        self.assertTrue(self.keys.verify(member.issue(TASK, PEER), TASK, PEER))
        self.assertTrue(self.keys.verify(self.signer.issue(TASK, PEER), TASK, PEER))
        self.assertEqual(set(self.keys.keys()), {member.key_id, self.signer.key_id})


class KeyTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.keys = AdmissionKeys(self.clock)

    def test_mismatched_id_ignored(self):
        """A key offered under an id that is not its own is not trusted."""
        a, b = AdmissionSigner.generate(self.clock), AdmissionSigner.generate(self.clock)
        self.assertFalse(self.keys.add(a.key_id, b.public_key))
        self.assertEqual(len(self.keys), 0)

    def test_malformed_keys_ignored(self):
        """Keys that are not 32-byte base64url strings are ignored."""
        for bad in (None, 5, "", "x" * 43 + "=", "!" * 43, "A" * 44):
            self.assertFalse(self.keys.add("0" * 16, bad))
        self.assertEqual(len(self.keys), 0)

    def test_key_id(self):
        """A key id is 16 hex digits of the public key's SHA-256."""
        signer = AdmissionSigner.generate(self.clock)
        raw = base64.urlsafe_b64decode(signer.public_key + "=")
        self.assertEqual(signer.key_id, key_id(raw))
        self.assertRegex(signer.key_id, r"\A[0-9a-f]{16}\Z")

    def test_cap(self):
        """At most MAX_KEYS keys are kept."""
        from dragonfly.admission import MAX_KEYS

        for _ in range(MAX_KEYS + 3):
            s = AdmissionSigner.generate(self.clock)
            self.keys.add(s.key_id, s.public_key)
        self.assertEqual(len(self.keys), MAX_KEYS)


class KeyFileTests(SynchronousTestCase):
    def test_made_once_owner_only(self):
        """The first start makes the key file with mode 0600; later starts
        load the same key."""
        path = os.path.join(self.mktemp())
        first = AdmissionSigner.from_file(Clock(), path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = AdmissionSigner.from_file(Clock(), path)
        self.assertEqual((again.key_id, again.public_key), (first.key_id, first.public_key))

    def test_not_ed25519(self):
        """A key file holding another kind of key is refused."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        path = self.mktemp()
        key = ec.generate_private_key(ec.SECP256R1())
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        self.assertRaises(ValueError, AdmissionSigner.from_file, Clock(), path)


class PeerAdmissionTests(SynchronousTestCase):
    def test_tokens(self):
        """The peer keeps its latest token per task; None adds nothing."""
        book = PeerAdmission(Clock())
        self.assertIsNone(book.token_for(TASK))
        book.admit(TASK, "t1")
        book.admit(TASK, None)
        self.assertEqual(book.token_for(TASK), "t1")
        book.admit(TASK, "t2")
        self.assertEqual(book.token_for(TASK), "t2")
        book.forget(TASK)
        self.assertIsNone(book.token_for(TASK))


class KeyFileModeTests(SynchronousTestCase):
    def test_lax_mode_warned(self):
        """A key file others may read is used, with a warning naming it."""
        from twisted.logger import capturedLogs

        path = self.mktemp()
        AdmissionSigner.from_file(Clock(), path)
        os.chmod(path, 0o644)
        with capturedLogs() as events:
            AdmissionSigner.from_file(Clock(), path)
        self.assertEqual([e["path"] for e in events if "chmod 600" in e["log_format"]], [path])

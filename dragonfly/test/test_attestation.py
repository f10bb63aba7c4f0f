"""The supernode's content attestation: given only after its own check passed, and carried to the peer.

A task named by a content digest is attested (C{verified}: the pieces root of
the supernode's copy) in registration and schedule answers once that copy
matched the digest whole -- never while its pieces are published but not yet
checked (lazy pulling publishes them as they land), never after a mismatch.
"""
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control.messages import MessageError, RegisterAnswer, ScheduleAnswer
from dragonfly.digest import piece_digest, pieces_root
from dragonfly.interfaces import PeerInfo
from dragonfly.test.peernodes import DATA as PEER_DATA
from dragonfly.test.peernodes import PIECE as PEER_PIECE
from dragonfly.test.peernodes import URL as PEER_URL
from dragonfly.test.peernodes import NodeMixin
from dragonfly.test.test_cdn import DATA, TASK, URL, CDNTestMixin, DeferredRunner, digests
from dragonfly.test.test_supernode_api import DATA as API_DATA
from dragonfly.test.test_supernode_api import PEER, PIECE, APITestBase

GOOD = "sha256:" + hashlib.sha256(DATA).hexdigest()
ROOT = pieces_root(digests(DATA))


class CDNAttestationTests(CDNTestMixin, SynchronousTestCase):
    def test_never_before_the_check(self):
        """While the pieces of a digest-named task are published but the whole
        content is not checked yet, there is no attestation; once the check
        passed, the root of the very copy that matched."""
        runner = DeferredRunner()
        self.start(runner)
        d = self.cdn.ensure_complete(GOOD, URL)
        published_unverified = False
        for _ in range(200):
            if not runner.calls:
                break
            self.assertIsNone(self.cdn.verified_root(GOOD))
            self.assertEqual(self.cdn.attestation(GOOD), {"verified": None, "attests": True})
            stats = self.scheduler.task_stats(GOOD) if self.scheduler.has_task(GOOD) else None
            if stats and stats["seeded"] == 6:
                published_unverified = True
            d_, f, a, kw = runner.calls.pop(0)
            d_.callback(f(*a, **kw))
        self.successResultOf(d)
        self.assertTrue(published_unverified)
        tf = self.store.get(GOOD)
        self.assertEqual(self.cdn.verified_root(GOOD),
                         pieces_root(tf.digest(i) for i in range(tf.piece_count)))
        self.assertEqual(self.cdn.verified_root(GOOD), ROOT)
        self.assertEqual(self.cdn.attestation(GOOD), {"verified": ROOT, "attests": False})

    def test_never_on_mismatch(self):
        """Content that does not match the digest naming its task is never
        attested, nor promised once the check failed."""
        wrong = "sha256:" + "0" * 64
        self.failureResultOf(self.cdn.ensure_complete(wrong, URL))
        self.assertIsNone(self.cdn.verified_root(wrong))
        self.assertEqual(self.cdn.attestation(wrong), {"verified": None, "attests": False})

    def test_only_digest_named_tasks(self):
        """A task not named by a content digest has nothing to attest, or promise."""
        runner = DeferredRunner()
        self.start(runner)
        d = self.cdn.ensure_complete(TASK, URL)
        self.assertEqual(self.cdn.attestation(TASK), {"verified": None, "attests": False})
        while runner.calls:
            runner.run_all()
        self.successResultOf(d)
        self.assertIsNone(self.cdn.verified_root(TASK))

    def test_gone_with_the_copy(self):
        """Once the verified copy is dropped (reported corrupt and found so, or
        evicted), it is no longer attested; a new fetch is attested only after
        its own check."""
        self.successResultOf(self.cdn.ensure_complete(GOOD, URL))
        self.assertEqual(self.cdn.verified_root(GOOD), ROOT)
        self.store.remove(GOOD)
        self.assertIsNone(self.cdn.verified_root(GOOD))

    def test_restart_checks_before_attesting(self):
        """A supernode restarted over a store holding the task complete checks
        the content again before it attests it."""
        self.successResultOf(self.cdn.ensure_complete(GOOD, URL))
        self.store.close()     # a clean stop: held pieces are not re-hashed at load
        runner = DeferredRunner()
        self.start(runner)
        fetched = len(self.origin.gets("/f"))
        d = self.cdn.ensure_complete(GOOD, URL)
        self.assertTrue(self.store.get(GOOD).is_complete)    # held whole, published
        self.assertTrue(self.scheduler.has_task(GOOD))
        self.assertIsNone(self.cdn.verified_root(GOOD))
        while runner.calls:
            self.assertIsNone(self.cdn.verified_root(GOOD))
            runner.run_all()
        self.successResultOf(d)
        self.assertEqual(len(self.origin.gets("/f")), fetched + 1)   # a revalidation
        self.assertEqual(self.cdn.verified_root(GOOD), ROOT)


API_GOOD = "sha256:" + hashlib.sha256(API_DATA).hexdigest()


class APIAttestationTests(APITestBase):
    def register_digest(self, digest=API_GOOD):
        return self.call("POST", "/api/v1/tasks", {"task_id": digest, "url": "http://origin.test/f",
                                                    "headers": {}, "peer": PEER,
                                                    "digest": digest})

    def test_answers_carry_it(self):
        """Registration and schedule answers for a checked digest-named task
        carry its pieces root as C{verified}."""
        root = pieces_root(piece_digest(API_DATA[i:i + PIECE])
                           for i in range(0, len(API_DATA), PIECE))
        self.assertEqual(self.register_digest()["verified"], root)
        obj = self.call("POST", f"/api/v1/tasks/{API_GOOD}/schedule",
                        {"peer_id": PEER["peer_id"], "want": 1})
        self.assertEqual(obj["verified"], root)

    def test_not_for_other_tasks(self):
        """A task not named by a digest gets no C{verified} in its answers."""
        self.assertNotIn("verified", self.register())

    def test_not_while_unchecked(self):
        """While the CDN has not finished its check, the answers carry none."""
        self.patch(self.cdn, "verified_root", lambda task_id: None)
        self.assertNotIn("verified", self.register_digest())

    def test_promise_while_checking(self):
        """While the check runs, both answers carry C{attests} (and no C{verified})."""
        self.patch(self.cdn, "attestation",
                   lambda task_id: {"verified": None, "attests": True})
        obj = self.register_digest()
        self.assertNotIn("verified", obj)
        self.assertIs(obj["attests"], True)
        obj = self.call("POST", f"/api/v1/tasks/{API_GOOD}/schedule",
                        {"peer_id": PEER["peer_id"], "want": 0})
        self.assertIs(obj["attests"], True)


class MessageTests(SynchronousTestCase):
    SEED = PeerInfo("supernode-x", "127.0.0.1", 1)

    def test_round_trip(self):
        """C{verified} survives both answers' JSON; absent stays None."""
        a = RegisterAnswer("t" * 64, 10, 4, 3, self.SEED, verified=ROOT)
        self.assertEqual(RegisterAnswer.parse(a.to_json()).verified, ROOT)
        self.assertIsNone(RegisterAnswer.parse(RegisterAnswer("t" * 64, 10, 4, 3, self.SEED)
                                               .to_json()).verified)
        self.assertEqual(ScheduleAnswer.parse(ScheduleAnswer(verified=ROOT).to_json()).verified,
                         ROOT)
        self.assertNotIn("verified", ScheduleAnswer().to_json())

    def test_attests_round_trip(self):
        """C{attests} survives both answers' JSON; absent is False, and not sent."""
        a = RegisterAnswer("t" * 64, 10, 4, 3, self.SEED, attests=True)
        self.assertIs(RegisterAnswer.parse(a.to_json()).attests, True)
        self.assertNotIn("attests", RegisterAnswer("t" * 64, 10, 4, 3, self.SEED).to_json())
        self.assertIs(ScheduleAnswer.parse(ScheduleAnswer(attests=True).to_json()).attests, True)
        self.assertIs(ScheduleAnswer.parse(ScheduleAnswer().to_json()).attests, False)
        with self.assertRaises(MessageError):
            ScheduleAnswer.parse({"assignments": [], "done": False, "attests": "yes"})

    def test_bad_value_refused(self):
        """A C{verified} that is not a hex digest is refused."""
        with self.assertRaises(MessageError):
            ScheduleAnswer.parse({"assignments": [], "done": False, "verified": "x"})
        with self.assertRaises(MessageError):
            ScheduleAnswer.parse({"assignments": [], "done": False, "verified": 5})


PEER_ROOT = pieces_root(piece_digest(PEER_DATA[i:i + PEER_PIECE])
                        for i in range(0, len(PEER_DATA), PEER_PIECE))


class PeerAttestationTests(NodeMixin, SynchronousTestCase):
    def test_from_the_registration(self):
        """An attestation in the registration answer is known before the task
        file is handed to the caller (a stream starting then sees it)."""
        node = self.make()
        self.supernode.verified = PEER_ROOT
        seen = []

        def started(tf):
            node.on_verified(tf.task_id, seen.append)
            seen.append("started")
        self.successResultOf(node.download(PEER_URL, on_start=started))
        self.assertEqual(seen, [PEER_ROOT, "started"])

    def test_from_a_schedule_answer(self):
        """An attestation arriving in a schedule answer mid-download reaches
        whoever waits for it; none arrives when the supernode sends none."""
        node = self.make()
        self.pool.manual = True
        seen = []
        d = node.download(PEER_URL, on_start=lambda tf: node.on_verified(tf.task_id, seen.append))
        self.pool.release(1)
        self.assertEqual(seen, [])
        self.supernode.verified = PEER_ROOT
        while self.pool.held:
            self.pool.release(1)
        self.successResultOf(d)
        self.assertEqual(seen, [PEER_ROOT])

    def test_none_without_a_download(self):
        """A task not being downloaded gets no attestation (and no error)."""
        node = self.make()
        seen = []
        node.on_verified("u" * 64, seen.append)()
        self.assertEqual(seen, [])

    def test_promise_known_at_start(self):
        """A promise in the registration answer is known before the task
        file is handed out; none without it."""
        node = self.make()
        self.supernode.attests = True
        seen = []
        self.successResultOf(node.download(
            PEER_URL, on_start=lambda tf: seen.append(node.attests(tf.task_id))))
        self.assertEqual(seen, [True])
        self.assertFalse(node.attests("u" * 64))

    def test_follow_up_brings_the_promised_word(self):
        """The supernode promised, a stream waits, and the final report's
        answer has no word yet: the finished session asks again (report only)
        until it comes, then stops."""
        node = self.make()
        self.supernode.attests = True
        seen = []
        d = node.download(PEER_URL, on_start=lambda tf: node.on_verified(tf.task_id, seen.append))
        self.assertNoResult(d)
        calls = len(self.supernode.schedules)
        self.clock.advance(0.1)
        self.assertEqual(len(self.supernode.schedules), calls + 1)
        self.assertEqual(self.supernode.schedules[-1]["want"], 0)
        self.supernode.verified = PEER_ROOT
        self.clock.advance(0.2)
        self.successResultOf(d)
        self.assertEqual(seen, [PEER_ROOT])
        self.assertEqual(len(self.supernode.schedules), calls + 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_follow_up_bounded(self):
        """A promised word that never comes: the follow-up gives up in time."""
        node = self.make()
        self.supernode.attests = True
        seen = []
        d = node.download(PEER_URL, on_start=lambda tf: node.on_verified(tf.task_id, seen.append))
        for _ in range(40):
            self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(seen, [])

    def test_no_follow_up_without_a_waiter(self):
        """Nobody waits for the word: no follow-up call, the download ends at once."""
        node = self.make()
        self.supernode.attests = True
        self.successResultOf(node.download(PEER_URL))

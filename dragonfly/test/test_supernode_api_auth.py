"""Tests for who may speak for a peer at the supernode API (issue 10): the
per-peer secret of registration on schedule, heartbeat and leave; a peer's
address is the request's source address; failure reports about someone
else's assignment count for nothing. Also L{dragonfly.supernode.peerkeys}."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.supernode.api import SupernodeAPI
from dragonfly.supernode.peerkeys import PeerKeys, WrongSecret
from dragonfly.test.test_supernode_api import PEER, SECRET, TASK, URL, APITestBase

OTHER = {"peer_id": "host-2-abcdef02", "host": "127.0.0.1", "port": 65001}
OTHER_SECRET = "other-peer-secret-0123"


class SecretTests(APITestBase):
    def schedule(self, body, status=200):
        return self.call("POST", f"/api/v1/tasks/{TASK}/schedule", body, status=status)

    def test_register_issues_a_secret(self):
        """When a peer registers without offering a secret, the answer carries a
        fresh random one; offering one makes it the peer's."""
        obj = self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                                  "peer": OTHER, "secret": None})
        self.assertIsInstance(obj["secret"], str)
        self.assertGreaterEqual(len(obj["secret"]), 22)
        self.assertEqual(self.register()["secret"], SECRET)

    def test_schedule_needs_the_secret(self):
        """When a schedule call carries no secret or another peer's, it is refused
        with 403 JSON and changes nothing; with the right one it is served."""
        self.register()
        pid = PEER["peer_id"]
        for secret in (None, OTHER_SECRET):
            obj = self.schedule({"peer_id": pid, "have": [0], "want": 2, "secret": secret},
                                status=403)
            self.assertIn("secret", obj["error"])
        self.assertEqual(self.scheduler.holds(TASK, pid), [])
        self.assertEqual(self.scheduler.task_stats(TASK)["inflight"], 0)
        obj = self.schedule({"peer_id": pid, "want": 2})
        self.assertEqual(len(obj["assignments"]), 2)

    def test_leave_for_another_peer_refused(self):
        """When a caller sends a leave for another peer's id (without that peer's
        secret), it is refused with 403 and the peer stays in the swarm."""
        self.register()
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": OTHER, "secret": OTHER_SECRET})
        for secret in (OTHER_SECRET, None, "x" * 22):
            self.call("POST", f"/api/v1/tasks/{TASK}/leave",
                      {"peer_id": PEER["peer_id"], "secret": secret}, status=403)
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 2)
        self.call("POST", f"/api/v1/tasks/{TASK}/leave", {"peer_id": PEER["peer_id"]})
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 1)

    def test_leave_unknown_peer_is_a_no_op(self):
        """A leave for a peer id the supernode has no secret for answers 200."""
        self.register()
        self.call("POST", f"/api/v1/tasks/{TASK}/leave", {"peer_id": OTHER["peer_id"]})
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 1)

    def test_heartbeat_needs_the_secret(self):
        """A heartbeat with a wrong secret is refused with 403 and refreshes
        nothing; a heartbeat of an id without a secret hears every task unknown."""
        self.register()
        body = {"peer_id": PEER["peer_id"], "tasks": [TASK]}
        self.call("POST", "/api/v1/heartbeat", dict(body, secret=OTHER_SECRET), status=403)
        self.call("POST", "/api/v1/heartbeat", dict(body, secret=None), status=403)
        keys = self.api.signer.keys()
        self.assertEqual(self.call("POST", "/api/v1/heartbeat", body),
                         {"unknown": [], "keys": keys})
        self.assertEqual(self.call("POST", "/api/v1/heartbeat",
                                   {"peer_id": OTHER["peer_id"], "tasks": [TASK]}),
                         {"unknown": [TASK], "keys": keys})

    def test_reregister_needs_the_secret(self):
        """When someone registers a known peer id without its secret, it is
        refused with 403: nobody takes over another peer's id."""
        self.register()
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": PEER, "secret": None}, status=403)
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": PEER, "secret": OTHER_SECRET}, status=403)
        self.register()

    def test_malformed_secret(self):
        """A secret that is not 16-128 URL-safe characters is a 400."""
        self.register()
        for bad in ("short", 5, "x" * 129, "bad secret with spaces"):
            self.call("POST", f"/api/v1/tasks/{TASK}/leave",
                      {"peer_id": PEER["peer_id"], "secret": bad}, status=400)

    def test_foreign_failure_reports_ignored(self):
        """When a peer reports failures about a source it was never assigned,
        the source is not marked bad, whatever the number of reports."""
        self.scheduler.bad_peer_failures = 1
        self.register()
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": OTHER, "secret": OTHER_SECRET})
        self.schedule({"peer_id": OTHER["peer_id"], "have": [0, 1, 2], "secret": OTHER_SECRET})
        failed = [{"index": i, "source": OTHER["peer_id"], "reason": r}
                  for i in range(3) for r in ("fetch", "digest")]
        self.schedule({"peer_id": PEER["peer_id"], "failed": failed})
        self.assertEqual(self.scheduler.stats()["bad_peers"], 0)
        self.assertEqual(self.scheduler.task_stats(TASK)["ignored_failures"], 6)


class AddressTests(APITestBase):
    advertised = {"peer_id": "host-3-abcdef03", "host": "10.66.66.66", "port": 65003}

    def source_host(self):
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": self.advertised})
        self.call("POST", f"/api/v1/tasks/{TASK}/schedule",
                  {"peer_id": self.advertised["peer_id"], "have": [0, 1, 2]})
        self.register()
        obj = self.call("POST", f"/api/v1/tasks/{TASK}/schedule",
                        {"peer_id": PEER["peer_id"], "want": 3})
        [source] = {(a["source"]["host"], a["source"]["port"]) for a in obj["assignments"]}
        return source

    def test_source_address_wins(self):
        """A peer's address is the request's source address, not the host it
        advertises; the advertised port stays."""
        self.assertEqual(self.source_host(), ("127.0.0.1", 65003))

    def test_trust_advertised(self):
        """With trust_advertised, the advertised host is the peer's address."""
        self.api.trust_advertised = True
        self.assertEqual(self.source_host(), ("10.66.66.66", 65003))

    def test_default_is_source_address(self):
        """SupernodeAPI binds peers to their source address unless told otherwise."""
        api = SupernodeAPI(Clock(), self.cdn, self.scheduler, None)
        self.assertFalse(api.trust_advertised)


class PeerKeysTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.keys = PeerKeys(self.clock, ttl=100, token=lambda: "issued-secret-000000")

    def test_issue_and_check(self):
        """A new id gets the offered secret (or a fresh one); check() accepts it,
        refuses others with WrongSecret, and answers None for unknown ids."""
        self.assertEqual(self.keys.register("p1", None), "issued-secret-000000")
        self.assertEqual(self.keys.register("p2", "offered-secret-00000"), "offered-secret-00000")
        self.assertTrue(self.keys.check("p1", "issued-secret-000000"))
        self.assertRaises(WrongSecret, self.keys.check, "p1", "offered-secret-00000")
        self.assertRaises(WrongSecret, self.keys.check, "p1", None)
        self.assertIsNone(self.keys.check("p3", "issued-secret-000000"))
        self.assertRaises(WrongSecret, self.keys.register, "p1", None)
        self.assertEqual(self.keys.register("p1", "issued-secret-000000"), "issued-secret-000000")

    def test_unused_secrets_forgotten(self):
        """A secret unused for ttl seconds is forgotten (on a later registration);
        one in use is kept."""
        self.keys.register("p1", "one-secret-000000000")
        self.keys.register("p2", "two-secret-000000000")
        self.clock.advance(60)
        self.keys.check("p2", "two-secret-000000000")
        self.clock.advance(60)
        self.keys.register("p3", None)
        self.assertIsNone(self.keys.check("p1", "one-secret-000000000"))
        self.assertTrue(self.keys.check("p2", "two-secret-000000000"))
        self.assertEqual(len(self.keys), 2)


class TrustAdvertisedFlagTests(SynchronousTestCase):
    def test_flag(self):
        """--trust-advertised sets the config's trust_advertised; off by default."""
        from dragonfly.supernode import tap
        for argv, want in (([], False), (["--trust-advertised"], True)):
            o = tap.Options()
            o.parseOptions(["--data-dir", self.mktemp()] + argv)
            self.assertIs(o.config.trust_advertised, want)

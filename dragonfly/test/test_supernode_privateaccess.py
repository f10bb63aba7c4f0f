"""Tests of the supernode's admission to private tasks
(dragonfly.supernode.privateaccess through POST /api/v1/tasks): a caller of a
task fetched with someone else's credentials is served only once the origin
accepted the caller's own request."""
from dragonfly.taskid import task_id_for_url
from dragonfly.test.test_supernode_api import DATA, PEER, TASK, URL, APITestBase

TOKEN = "Bearer s3cret"
OTHER = {"peer_id": "other-1-abcdef02", "host": "127.0.0.2", "port": 65001}


def _needs_token(headers, query):
    if headers.get("authorization") == TOKEN:
        return None
    return 403 if "authorization" in headers else 401


class AdmissionTests(APITestBase):

    def setUp(self):
        APITestBase.setUp(self)
        self.origin.auth["/f"] = _needs_token

    def reg(self, headers, peer=PEER, status=200, url=URL, **extra):
        body = dict({"task_id": extra.pop("task_id", TASK), "url": url, "headers": headers,
                     "peer": peer}, **extra)
        return self.call("POST", "/api/v1/tasks", body, status=status)

    def heads(self):
        return [r for r in self.origin.requests if r[0] == "HEAD"]

    def test_second_caller_without_token(self):
        """After the token holder's fetch, a caller without the token, or with a
        wrong one, gets the origin's 401/403 (and is not in the swarm); one with
        the token is admitted after a HEAD with its own headers."""
        self.reg({"Authorization": TOKEN})
        self.assertEqual(self.heads(), [])    # the fetch itself checked the first caller
        obj = self.reg({}, OTHER, status=502)
        self.assertEqual(obj, {"error": "origin answered 401", "origin_status": 401})
        obj = self.reg({"Authorization": "Bearer wrong"}, OTHER, status=502)
        self.assertEqual(obj["origin_status"], 403)
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 1)
        self.reg({"Authorization": TOKEN}, OTHER)
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 2)
        self.assertEqual([h[2].get("authorization") for h in self.heads()],
                         [None, "Bearer wrong", TOKEN])
        self.assertEqual(len(self.origin.gets("/f")), 1)

    def test_public_task_not_checked(self):
        """A task fetched by a request without credentials serves later callers
        (with or without headers) without asking the origin."""
        del self.origin.auth["/f"]
        self.reg({})
        self.reg({"Authorization": "Bearer whatever"}, OTHER)
        self.assertEqual(self.heads(), [])

    def test_filtered_query_checked(self):
        """A task fetched with a query parameter the filter drops (a signed URL)
        admits another caller only if the origin accepts that caller's own URL."""
        self.origin.auth["/f"] = lambda h, q: None if "sig=good" in q else 403
        tid = task_id_for_url(URL, ["sig"])
        self.reg({}, url=URL + "?sig=good", task_id=tid, filter=["sig"])
        obj = self.reg({}, OTHER, url=URL + "?sig=bad", task_id=tid, filter=["sig"], status=502)
        self.assertEqual(obj["origin_status"], 403)
        obj = self.reg({}, OTHER, url=URL, task_id=tid, status=502)
        self.assertEqual(obj["origin_status"], 403)
        self.reg({}, OTHER, url=URL + "?sig=good", task_id=tid, filter=["sig"])

    def test_held_from_before_checked(self):
        """A task held from before this process (or fetched by preheat) is
        private until a public request was admitted: the first caller is
        checked, then public callers are not."""
        del self.origin.auth["/f"]
        self.reg({})
        from dragonfly.supernode.privateaccess import PrivateAccess
        self.api.private_access = PrivateAccess(self.cdn)     # a new process, same store
        self.reg({}, OTHER)
        self.assertEqual(len(self.heads()), 1)
        self.reg({}, OTHER)
        self.assertEqual(len(self.heads()), 1)

    def test_preheat_admits_nobody(self):
        """Preheat with the token warms the cache; a caller without it is refused."""
        r = self.request("POST", "/api/v1/preheat", {"url": URL,
                                                      "headers": {"Authorization": TOKEN}})
        self.assertEqual(r.code, 202)
        self.clock.advance(1)
        self.assertEqual(len(self.origin.gets("/f")), 1)
        obj = self.reg({}, status=502)
        self.assertEqual(obj["origin_status"], 401)
        self.reg({"Authorization": TOKEN})

    def test_head_not_allowed_ranged_get(self):
        """Where HEAD is not allowed, a 1-byte ranged GET checks the caller."""
        self.origin.no_head.add("/f")
        self.reg({"Authorization": TOKEN})
        self.reg({"Authorization": TOKEN}, OTHER)
        ranged = [r for r in self.origin.gets("/f") if r[2].get("range") == "bytes=0-0"]
        self.assertEqual(len(ranged), 1)
        obj = self.reg({}, OTHER, status=502)
        self.assertEqual(obj["origin_status"], 401)

    def test_other_content_refused(self):
        """When the caller's request names other bytes (another length), it is
        refused without an origin status (the peer goes to the origin itself)."""
        self.reg({"Authorization": TOKEN})
        self.origin.files["/f"] = DATA + b"more"
        obj = self.reg({"Authorization": TOKEN}, OTHER, status=502)
        self.assertNotIn("origin_status", obj)
        self.assertIn("not the cached file", obj["error"])

"""Tests for the supernode API's answers to bad input: credentials in URLs,
IPv6 origins, secrets in answers, a malformed request head, an origin that
breaks off mid-body."""
import json

from dragonfly.supernode.api import api_site
from dragonfly.taskid import task_id_for_url
from dragonfly.test.test_httpsite import assert_json_bad_request
from dragonfly.test.test_supernode_api import DATA, PEER, PIECE, SECRET, APITestBase

SECRET_URL = "http://origin.test/f?token=s3cret"
SECRET_TASK = task_id_for_url(SECRET_URL)


class UserinfoTests(APITestBase):
    def test_register_refused(self):
        """A URL with user:pass@ is refused with 400 at once (no origin
        request, no retries); the error names the header to use and hides
        the password."""
        url = "http://u:hunter2@origin.test/f"
        r = self.request("POST", "/api/v1/tasks",
                         {"task_id": task_id_for_url(url), "url": url, "peer": PEER})
        self.assertEqual(r.code, 400)
        error = self.json(r)["error"]
        self.assertIn("-H 'Authorization: ", error)
        self.assertNotIn("hunter2", error)
        self.assertEqual(self.origin.requests, [])

    def test_preheat_refused(self):
        """A preheat of a URL with userinfo is a 400 too."""
        obj = self.call("POST", "/api/v1/preheat", {"url": "http://u:pw@origin.test/f"},
                        status=400)
        self.assertNotIn("pw@", obj["error"])
        self.assertEqual(self.origin.requests, [])


class IPv6Tests(APITestBase):
    def test_register_ipv6_origin(self):
        """An IPv6-literal origin registers like any other (no 500)."""
        url = "http://[::1]:8080/f"
        task = task_id_for_url(url)
        r = self.request("POST", "/api/v1/tasks", {"task_id": task, "url": url, "peer": PEER})
        self.assertEqual(r.code, 200, self.json(r))
        self.assertEqual(self.json(r)["length"], len(DATA))


class RedactionTests(APITestBase):
    def setUp(self):
        APITestBase.setUp(self)
        self.origin.add("/f", DATA, etag='"v1"')

    def test_task_info_redacted(self):
        """GET /api/v1/tasks/<id> shows the URL's query string as <redacted>."""
        self.register(task=SECRET_TASK, url=SECRET_URL)
        obj = self.call("GET", f"/api/v1/tasks/{SECRET_TASK}")
        self.assertEqual(obj["url"], "http://origin.test/f?<redacted>")
        self.assertNotIn("s3cret", json.dumps(obj))

    def test_failed_task_error_redacted(self):
        """A failed task's error quotes no secret either."""
        self.origin.status["/f"] = 404
        self.request("POST", "/api/v1/tasks", {"task_id": SECRET_TASK, "url": SECRET_URL,
                                               "peer": PEER})
        r = self.request("GET", f"/api/v1/tasks/{SECRET_TASK}")
        self.assertNotIn(b"s3cret", self.successResultOf(self.client.content(r)))

    def test_preheat_status_redacted(self):
        """The preheat answers (202 and GET) show the URL redacted."""
        obj = self.call("POST", "/api/v1/preheat", {"url": SECRET_URL}, status=202)
        self.assertEqual(obj["url"], "http://origin.test/f?<redacted>")
        obj = self.call("GET", f"/api/v1/preheat/{obj['id']}")
        self.assertEqual(obj["state"], "done")
        self.assertNotIn("s3cret", json.dumps(obj))


class BrokenBodyTests(APITestBase):
    def test_long_poll_ends_on_cdn_failure(self):
        """When the origin breaks off mid-body again and again, the CDN gives
        up after a short retry and a peer's pending long-poll is answered
        with the 502 at once, not when its wait runs out."""
        self.origin.breaks["/f"] = [PIECE // 2] * 10
        self.register()
        pid = PEER["peer_id"]
        d = self.client.post(f"http://supernode.test/api/v1/tasks/{self.task}/schedule",
                             json={"peer_id": pid, "want": 3, "wait": 30, "secret": SECRET})
        self.client.flush()
        self.assertNoResult(d)
        for _ in range(3):
            self.clock.advance(self.cdn.retry_delay * 2)
            self.client.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 502)
        self.assertIn("could not fetch", self.json(r)["error"])
        self.assertLessEqual(len(self.origin.gets("/f")), 3)
        self.assertEqual(self.scheduler.stats()["waiting"], 0)

    @property
    def task(self):
        from dragonfly.test.test_supernode_api import TASK
        return TASK


class SiteTests(APITestBase):
    def test_malformed_content_length_json(self):
        """A malformed Content-Length gets a JSON 400 from the API's site."""
        assert_json_bad_request(self, api_site(self.api))

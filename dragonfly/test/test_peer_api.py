"""The peer's local API, driven through StubTreq."""
import json
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import PeerMetrics
from dragonfly.peer.api import PeerAPI
from dragonfly.peer.node import NodeDeps, PeerNode
from dragonfly.storage.store import PieceStore
from dragonfly.taskid import task_id_for_url
from dragonfly.test.metricspec import assert_spec_metrics
from dragonfly.test.peerfakes import FakeOrigin, FakePiecePool, FakeSupernode
from dragonfly.test.test_peer_node import ME, PIECE, URL, _Hosts
from dragonfly.runtime.threads import SyncRunner

DATA = b"0123456789abcdef" * 40  # 640 bytes, 10 pieces

JSON = {"Content-Type": "application/json"}


class APITests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.supernode = FakeSupernode(DATA, PIECE)
        self.pool = FakePiecePool(DATA, PIECE)
        self.metrics = PeerMetrics()
        self.origin = FakeOrigin(DATA)
        self.node = PeerNode(NodeDeps(self.clock, self.store,
                                      _Hosts({"sn.test:8002": self.supernode}), self.pool,
                                      self.metrics, SyncRunner(), origin=self.origin),
                             [("sn.test", 8002)], ME)
        self.api = PeerAPI(self.node, self.store, self.metrics, self.clock)
        self.http = StubTreq(self.api.resource())

    def request(self, method, path, **kw):
        if method == "POST":
            kw.setdefault("headers", {"Content-Type": "application/json"})
        d = self.http.request(method, "http://127.0.0.1:65002" + path, **kw)
        self.http.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.http.content(response))
        return response, body

    def download(self, obj):
        r, body = self.request("POST", "/api/v1/download", data=json.dumps(obj).encode())
        return r, [json.loads(x) for x in body.splitlines()]

    def test_healthz(self):
        """GET /healthz answers 200 with a JSON status naming the peer."""
        r, body = self.request("GET", "/healthz")
        self.assertEqual(r.code, 200)
        obj = json.loads(body)
        self.assertEqual(obj["status"], "ok")
        self.assertEqual(obj["peer_id"], ME.peer_id)

    def test_healthz_degraded(self):
        """While the store's disk is full, /healthz still answers 200 but says
        "degraded" with the reason; with the store directory gone, 503."""
        from dragonfly.test.test_storage_diskspace import FakeStatvfs
        self.store.space.statvfs = FakeStatvfs(0)
        self.store.space.refresh()
        r, body = self.request("GET", "/healthz")
        self.assertEqual(r.code, 200)
        obj = json.loads(body)
        self.assertEqual((obj["status"], obj["reasons"]), ("degraded", ["disk full"]))
        os.rename(self.store.root, self.store.root + ".gone")
        r, body = self.request("GET", "/healthz")
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(body)["status"], "unavailable")

    def test_metrics_store(self):
        """/metrics exports the store's used bytes, quota, free space,
        evictions, errors and the downloads served without caching."""
        from dragonfly.test.test_storage_diskspace import FakeStatvfs
        self.metrics.watch_store(self.store)
        self.store.space.statvfs = FakeStatvfs(12345)
        self.store.space.refresh()
        r, body = self.request("GET", "/metrics")
        for line in (b"dragonfly_peer_store_used_bytes 0.0", b"dragonfly_peer_store_quota_bytes 0.0",
                     b"dragonfly_peer_store_free_bytes 12345.0",
                     b"dragonfly_peer_store_evictions_total 0.0",
                     b"dragonfly_peer_store_errors_total 0.0",
                     b"dragonfly_peer_uncached_downloads_total 0.0"):
            self.assertIn(line, body)

    def test_download_uncached(self):
        """When the store cannot hold the file, the download still succeeds: an
        "uncached" line, a final line without a path, and /data streams every
        byte once (the task then gives its space back)."""
        from dragonfly.test.test_storage_diskspace import full_disk_after
        self.store.pass_through = True
        full_disk_after(self, self.store, 2 * PIECE)
        r, lines = self.download({"url": URL})
        task_id = task_id_for_url(URL)
        [said] = [line for line in lines if "uncached" in line and "state" not in line]
        self.assertEqual({k: said[k] for k in ("uncached", "task_id", "length")},
                         {"uncached": True, "task_id": task_id, "length": len(DATA)})
        self.assertIsInstance(said["grant"], str)   # for /data if the task is private
        self.assertEqual({k: v for k, v in lines[-1].items() if k != "grant"},
                         {"state": "done", "uncached": True, "length": len(DATA),
                          "task_id": task_id})
        r, body = self.request("GET", f"/api/v1/tasks/{task_id}/data")
        self.assertEqual((r.code, body), (200, DATA))
        self.assertIsNone(self.store.get(task_id))

    def test_metrics(self):
        """GET /metrics renders the peer counters in Prometheus text format."""
        r, body = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        self.assertIn(b'dragonfly_peer_download_bytes_total{source="peer"}', body)
        self.assertIn(b"dragonfly_peer_upload_bytes_total", body)

    def test_metrics_spec(self):
        """/metrics has every SPEC peer counter and source label, before any traffic."""
        r, body = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        assert_spec_metrics(self, body, "peer")

    def test_download_ndjson(self):
        """POST /api/v1/download streams progress lines, then a done line with the path."""
        self.pool.manual = True
        d = self.http.post("http://127.0.0.1:65002/api/v1/download", headers=JSON,
                           data=json.dumps({"url": URL}).encode())
        self.http.flush()
        while self.pool.held:
            self.pool.release(1)
            self.clock.advance(1)
            self.http.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        lines = [json.loads(x) for x in self.successResultOf(self.http.content(r)).splitlines()]
        final = lines[-1]
        self.assertEqual(final["state"], "done")
        self.assertEqual(final["length"], len(DATA))
        self.assertEqual(final["task_id"], task_id_for_url(URL))
        with open(final["path"], "rb") as f:
            self.assertEqual(f.read(), DATA)
        progress = [x["completed"] for x in lines[:-1]]
        self.assertGreater(len(progress), 2)
        self.assertEqual(progress, sorted(progress))
        self.assertEqual(progress[-1], len(DATA))

    def test_download_limit(self):
        """A "limit" in the request paces that download: its bytes take at
        least size/limit seconds on the daemon's clock."""
        d = self.http.post("http://127.0.0.1:65002/api/v1/download", headers=JSON,
                           data=json.dumps({"url": URL, "limit": 200}).encode())
        self.http.flush()
        body = self.http.content(self.successResultOf(d))
        while not body.called and self.clock.seconds() < 60:
            self.clock.advance(0.05)
            self.http.flush()
        lines = [json.loads(x) for x in self.successResultOf(body).splitlines()]
        self.assertEqual(lines[-1]["state"], "done")
        self.assertGreaterEqual(self.clock.seconds(), len(DATA) / 200)

    def test_download_filter_and_tag(self):
        """filter and tag in the request shape the task id like dfget's."""
        r, lines = self.download({"url": URL + "?sig=1&x=2", "filter": ["sig"], "tag": "t"})
        self.assertEqual(lines[-1]["task_id"], task_id_for_url(URL + "?x=2", [], "t"))

    def test_download_failed_line(self):
        """A failed download ends with a {"state": "failed", "error"} line."""
        self.supernode.register_answer = (502, {"error": "origin answered 404",
                                                "origin_status": 404})
        r, lines = self.download({"url": URL})
        self.assertEqual(r.code, 200)
        self.assertEqual(lines[-1], {"state": "failed", "error": "origin answered 404"})

    def test_malformed_requests(self):
        """Malformed download requests get a 4xx JSON error and start nothing."""
        cases = [b"not json", b"[1]", json.dumps({"url": "file:///etc/passwd"}).encode(),
                 json.dumps({"url": URL, "headers": {"a": 1}}).encode(),
                 json.dumps({"url": URL, "headers": {"a": "x\r\nEvil: 1"}}).encode(),
                 json.dumps({"url": URL, "task_id": "../x"}).encode(),
                 json.dumps({"url": URL, "pattern": "x"}).encode(),
                 json.dumps({"url": URL, "back_source": "no"}).encode(),
                 json.dumps({"url": URL, "limit": -1}).encode(),
                 json.dumps({"url": URL, "limit": "1M"}).encode(),
                 json.dumps({"url": URL, "limit": 1.5}).encode(),
                 json.dumps({"url": URL, "limit": True}).encode(),
                 json.dumps({"url": URL, "task_id": "a" * 64}).encode(),
                 json.dumps({"url": URL, "digest": "sha256:nothex"}).encode()]
        for body in cases:
            r, raw = self.request("POST", "/api/v1/download", data=body)
            self.assertEqual(r.code, 400, body)
            self.assertIn("error", json.loads(raw))
        self.assertEqual(self.supernode.registrations, [])

    def test_userinfo_refused(self):
        """A URL with user:pass@ is refused at once with 400 naming the header
        to use instead; the password is not echoed and nothing starts."""
        r, raw = self.request("POST", "/api/v1/download",
                              data=json.dumps({"url": "http://u:hunter2@origin.test/f"}).encode())
        self.assertEqual(r.code, 400)
        error = json.loads(raw)["error"]
        self.assertIn("Authorization", error)
        self.assertNotIn("hunter2", error)
        self.assertEqual(self.supernode.registrations, [])

    def test_bad_ipv6_literal_refused(self):
        """A malformed IPv6 literal or port is a 400, never a 500."""
        for url in ("http://[::1/f", "http://[::1]:x/f", "http://h.test:99999/f"):
            r, raw = self.request("POST", "/api/v1/download", data=json.dumps({"url": url}).encode())
            self.assertEqual(r.code, 400, url)

    def test_failed_line_redacted(self):
        """An error line quoting the URL shows its query string as <redacted>."""
        self.supernode.register_answer = (502, {"error": "fetch of http://o.test/f?token=s3 failed"})
        r, lines = self.download({"url": URL, "back_source": False})
        self.assertEqual(lines[-1]["state"], "failed")
        self.assertNotIn("token=s3", lines[-1]["error"])

    def test_malformed_content_length_json(self):
        """The peer API's site answers a malformed Content-Length with a JSON 400."""
        from dragonfly.peer.assembly import _api_site
        from dragonfly.test.test_httpsite import assert_json_bad_request
        assert_json_bad_request(self, _api_site(self.node, self.store, self.metrics, self.clock))
    def test_download_by_digest(self):
        """A sha256 digest in the request names the task, and goes to the supernode."""
        digest = "sha256:" + "ab" * 32
        r, lines = self.download({"url": URL, "digest": digest})
        self.assertEqual(lines[-1]["task_id"], digest)
        self.assertEqual(self.supernode.registrations[0]["digest"], digest)

    def test_corrupt_report(self):
        """POST /api/v1/tasks/<id>/corrupt drops the held copy and reports it to
        the supernode; a malformed id is refused."""
        self.download({"url": URL})
        tid = task_id_for_url(URL)
        r, raw = self.request("POST", f"/api/v1/tasks/{tid}/corrupt",
                              data=json.dumps({"reason": "md5 digest mismatch"}).encode())
        self.assertEqual(r.code, 202)
        self.assertIsNone(self.store.get(tid))
        self.assertEqual(self.supernode.corrupt_reports[0][0], tid)
        self.assertEqual(self.supernode.corrupt_reports[0][1]["reason"], "md5 digest mismatch")
        r, raw = self.request("POST", "/api/v1/tasks/..x/corrupt", data=b"{}")
        self.assertEqual(r.code, 400)

    def test_body_cap(self):
        """A request body over the cap is refused with 413."""
        r, raw = self.request("POST", "/api/v1/download",
                              data=json.dumps({"url": URL, "tag": "x" * 70000}).encode())
        self.assertEqual(r.code, 413)
        self.assertIn("error", json.loads(raw))

    def test_not_found_json(self):
        """Unknown paths and wrong methods answer JSON errors."""
        r, raw = self.request("GET", "/nope")
        self.assertEqual(r.code, 404)
        self.assertIn("error", json.loads(raw))
        r, raw = self.request("GET", "/api/v1/download")
        self.assertEqual(r.code, 405)
        self.assertIn("error", json.loads(raw))

    def test_task_data(self):
        """GET /api/v1/tasks/<id>/data streams a held task, whole or a range."""
        self.download({"url": URL})
        tid = task_id_for_url(URL)
        r, body = self.request("GET", f"/api/v1/tasks/{tid}/data")
        self.assertEqual(r.code, 200)
        self.assertEqual(body, DATA)
        r, body = self.request("GET", f"/api/v1/tasks/{tid}/data",
                               headers={"Range": "bytes=100-199"})
        self.assertEqual(r.code, 206)
        self.assertEqual(body, DATA[100:200])
        r, body = self.request("GET", f"/api/v1/tasks/{tid}/data",
                               headers={"Range": "bytes=99999-"})
        self.assertEqual(r.code, 416)
        self.assertFalse(self.store.get(tid).pinned)

    def test_task_data_large(self):
        """A task larger than one read chunk streams completely, in order."""
        big = bytes(range(256)) * 4096  # 1 MiB
        self.supernode.__init__(big, 64 * 1024)
        self.pool.__init__(big, 64 * 1024)
        self.download({"url": URL})
        r, body = self.request("GET", f"/api/v1/tasks/{task_id_for_url(URL)}/data")
        self.assertEqual(body, big)

    def test_task_data_not_held(self):
        """Data of a task not held (or a malformed id) is a 4xx JSON error."""
        r, raw = self.request("GET", "/api/v1/tasks/abc/data")
        self.assertEqual(r.code, 404)
        self.assertIn("error", json.loads(raw))
        r, raw = self.request("GET", "/api/v1/tasks/..%2Fx/data")
        self.assertIn(r.code, (400, 404))


class TaskListTests(SynchronousTestCase):
    """GET /api/v1/tasks and DELETE /api/v1/tasks/<id> (dfctl task ls / rm)."""

    setUp = APITests.setUp
    request = APITests.request
    download = APITests.download

    def test_list_and_remove(self):
        """A held task is listed (URL without its query); DELETE drops it from the
        store, and a second DELETE is a 404."""
        self.download({"url": URL + "?token=secret"})
        tid = task_id_for_url(URL + "?token=secret")
        r, body = self.request("GET", "/api/v1/tasks")
        self.assertEqual(r.code, 200)
        [row] = json.loads(body)["tasks"]
        self.assertEqual((row["task_id"], row["length"], row["completed"], row["complete"],
                          row["downloading"]), (tid, len(DATA), len(DATA), True, False))
        self.assertNotIn("secret", row["url"])
        self.assertIn("<redacted>", row["url"])
        r, body = self.request("DELETE", f"/api/v1/tasks/{tid}")
        self.assertEqual((r.code, json.loads(body)["removed"]), (200, True))
        self.assertIsNone(self.store.get(tid))
        self.assertEqual(json.loads(self.request("GET", "/api/v1/tasks")[1])["tasks"], [])
        r, body = self.request("DELETE", f"/api/v1/tasks/{tid}")
        self.assertEqual(r.code, 404)
        self.assertIn("error", json.loads(body))

    def test_remove_malformed_id(self):
        """DELETE of a malformed task id is a 400 JSON error."""
        r, body = self.request("DELETE", "/api/v1/tasks/..%2Fetc")
        self.assertIn(r.code, (400, 404))
        self.assertIn("error", json.loads(body))

    def test_browser_refused(self):
        """A request with an Origin header, or a Host that is not loopback, is 403."""
        for headers in ({"Origin": "http://evil.test"}, {"Host": "evil.test:65002"}):
            d = self.http.request("GET", "http://127.0.0.1:65002/api/v1/tasks",
                                  headers=headers)
            self.http.flush()
            self.assertEqual(self.successResultOf(d).code, 403, headers)
            d = self.http.request("DELETE", "http://127.0.0.1:65002/api/v1/tasks/" + "a" * 64,
                                  headers=headers)
            self.http.flush()
            self.assertEqual(self.successResultOf(d).code, 403, headers)

    def test_browser_download_starts_nothing(self):
        """A download POST that a web page could send (text/plain or no
        Content-Type, a foreign Host, an Origin) is refused before anything
        starts: no registration with the supernode, no task in the store."""
        body = json.dumps({"url": URL}).encode()
        cases = [({"Content-Type": "text/plain"}, 415), ({}, 415),
                 ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
                 (dict(JSON, Host="attacker.example"), 403),
                 (dict(JSON, Host="attacker.example:65002"), 403),
                 (dict(JSON, Host="127.0.0.1.attacker.example"), 403),
                 (dict(JSON, Origin="http://attacker.example"), 403),
                 (dict(JSON, Origin="null"), 403),
                 ({"Content-Type": "text/plain", "Host": "attacker.example",
                   "Origin": "http://attacker.example"}, 403)]
        for headers, code in cases:
            d = self.http.post("http://127.0.0.1:65002/api/v1/download", headers=headers,
                               data=body)
            self.http.flush()
            r = self.successResultOf(d)
            self.assertEqual(r.code, code, headers)
            self.assertIn("error", json.loads(self.successResultOf(self.http.content(r))))
        self.assertEqual(self.supernode.registrations, [])
        self.assertEqual(self.store.tasks(), [])
        self.assertEqual(list(self.node.active()), [])

    def test_every_route_local_only(self):
        """The loopback rule holds for every route, /healthz and /metrics too."""
        for path in ("/healthz", "/metrics", "/api/v1/tasks", "/nope"):
            r, _ = self.request("GET", path, headers={"Host": "evil.test"})
            self.assertEqual(r.code, 403, path)

    def test_loopback_hosts_served(self):
        """localhost, 127.x.y.z and [::1], with or without a port, are loopback;
        application/json with parameters is JSON."""
        for host in ("localhost", "LOCALHOST:65002", "127.0.0.1", "127.1.2.3:80", "[::1]",
                     "[::1]:65002"):
            r, _ = self.request("GET", "/healthz", headers={"Host": host})
            self.assertEqual(r.code, 200, host)
        r, lines = self.download({"url": URL})
        self.assertEqual(lines[-1]["state"], "done")
        r, raw = self.request("POST", f"/api/v1/tasks/{task_id_for_url(URL)}/corrupt",
                              headers={"Content-Type": "application/json; charset=utf-8"},
                              data=b"{}")
        self.assertEqual(r.code, 202)

    def test_grant_needed(self):
        """A task downloaded with credentials is streamed at /data only with the
        grant the download answer gave (for that task, until it expires); a
        public task needs none (test_data)."""
        r, lines = self.download({"url": URL, "headers": {"Authorization": "Bearer t"}})
        grant = lines[-1]["grant"]
        tid = task_id_for_url(URL)
        path = f"/api/v1/tasks/{tid}/data"
        self.assertEqual(self.request("GET", path)[0].code, 403)
        self.assertEqual(self.request("GET", path, headers={"X-Dragonfly-Grant": "nope"})[0].code,
                         403)
        r, body = self.request("GET", path, headers={"X-Dragonfly-Grant": grant})
        self.assertEqual((r.code, body), (200, DATA))
        self.clock.advance(601)
        self.assertEqual(self.request("GET", path, headers={"X-Dragonfly-Grant": grant})[0].code,
                         403)


class LocalRefusalTests(SynchronousTestCase):
    """The decision table of L{local_refusal}."""

    def refusal(self, method=b"GET", **headers):
        from twisted.web.test.requesthelper import DummyRequest
        from dragonfly.peer.api import local_refusal
        request = DummyRequest([b""])
        request.method = method
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(),
                                                 [value.encode()])
        return local_refusal(request)

    def test_table(self):
        """Served: loopback Host, no Origin, JSON bodies; else 403 or 415."""
        self.assertIsNone(self.refusal(host="127.0.0.1:65002"))
        self.assertIsNone(self.refusal(b"POST", host="localhost",
                                       content_type="application/json"))
        self.assertEqual(self.refusal()[0], 403)   # no Host at all
        self.assertEqual(self.refusal(host="10.0.0.1")[0], 403)
        self.assertEqual(self.refusal(host="localhost.evil.test")[0], 403)
        self.assertEqual(self.refusal(host="127.0.0.1", origin="http://127.0.0.1")[0], 403)
        self.assertEqual(self.refusal(b"POST", host="127.0.0.1",
                                      content_type="text/plain")[0], 415)
        self.assertEqual(self.refusal(b"PUT", host="127.0.0.1")[0], 415)
        self.assertIsNone(self.refusal(b"DELETE", host="127.0.0.1"))

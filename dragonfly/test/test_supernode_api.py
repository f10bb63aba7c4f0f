"""Tests for dragonfly.supernode.api (Klein) through StubTreq."""
import hashlib
import io
import json
import os

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from dragonfly.digest import piece_digest
from dragonfly.interfaces import PeerInfo
from dragonfly.metrics import SupernodeMetrics
from dragonfly.origin import OriginClient
from dragonfly.storage.store import PieceStore
from dragonfly.supernode.api import LimitedRequest, SupernodeAPI
from dragonfly.supernode.cdn import CDN
from dragonfly.supernode.cluster import Cluster
from dragonfly.supernode.preheat import Preheater
from dragonfly.supernode.wakeups import LongPollScheduler
from dragonfly.taskid import task_id_for_url
from dragonfly.test.fakeorigin import FakeOrigin
from dragonfly.test.metricspec import assert_spec_metrics
from dragonfly.runtime.threads import SyncRunner

PIECE = 4096
DATA = os.urandom(PIECE * 2 + 10)     # 3 pieces
URL = "http://origin.test/f"
TASK = task_id_for_url(URL)
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)
PEER = {"peer_id": "host-1-abcdef01", "host": "127.0.0.1", "port": 65000}
#: The secret the test peers offer at registration and send with their calls
#: (added by APITestBase.request to a body that names none).
SECRET = "test-peer-secret-0123"
_PEER_CALLS = ("/api/v1/tasks", "/schedule", "/leave", "/api/v1/heartbeat")


class APITestBase(SynchronousTestCase):
    cluster = None

    def setUp(self):
        self.clock = Clock()
        self.origin = FakeOrigin()
        self.origin.add("/f", DATA, etag='"v1"')
        self.origin_stub = StubTreq(self.origin)
        self.store = PieceStore(self.mktemp(), clock=self.clock, runner=SyncRunner())
        self.scheduler = LongPollScheduler(self.clock)
        self.metrics = SupernodeMetrics()
        self.cdn = CDN(self.clock, self.store, OriginClient(self.clock, self.origin_stub),
                       self.scheduler, PIECE, self.metrics, SyncRunner(), seed=SEED)
        self.preheater = Preheater(self.clock, self.cdn, new_id=iter(f"job{i}" for i in range(99)).__next__)
        self.api = SupernodeAPI(self.clock, self.cdn, self.scheduler, self.metrics,
                                cluster=self.make_cluster(), preheater=self.preheater)
        self.client = StubTreq(self.api.resource())

    def make_cluster(self):
        return None

    def request(self, method, path, body=None, raw=None, headers=None):
        if isinstance(body, dict) and "secret" not in body and path.endswith(_PEER_CALLS):
            body = dict(body, secret=SECRET)
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        d = self.client.request(method, "http://supernode.test" + path, data=raw,
                                headers=headers or {}, allow_redirects=False)
        self.client.flush()
        return self.successResultOf(d)

    def json(self, response):
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return self.successResultOf(self.client.json_content(response))

    def call(self, method, path, body=None, raw=None, status=200):
        r = self.request(method, path, body, raw)
        obj = self.json(r)
        self.assertEqual(r.code, status, obj)
        return obj

    def admitted(self, obj, peer_id=PEER["peer_id"], task=TASK):
        """C{obj}, a schedule answer, less its admission token, which must
        admit C{peer_id} to C{task}."""
        obj = dict(obj)
        self.assertTrue(self.api.admission.verify(obj.pop("token", None), task, peer_id))
        return obj

    def register(self, peer=PEER, task=TASK, url=URL):
        return self.call("POST", "/api/v1/tasks",
                         {"task_id": task, "url": url, "headers": {}, "peer": peer})


class RegisterTests(APITestBase):
    def test_register(self):
        """When a peer registers a task, the answer carries the length, piece
        geometry, the seed and the piece digest algorithm, an admission token for
        the task and the verifying keys, the origin's validators of the copy
        (its strong ETag here), and the peer joins the swarm."""
        obj = self.register()
        token, keys = obj.pop("token"), obj.pop("keys")
        self.assertEqual(keys, self.api.signer.keys())
        self.assertTrue(self.api.admission.verify(token, TASK, PEER["peer_id"]))
        self.assertEqual(obj, {"task_id": TASK, "length": len(DATA), "piece_size": PIECE,
                               "piece_count": 3, "seed": SEED.to_json(),
                               "piece_digest": "blake3", "secret": SECRET, "etag": '"v1"'})
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 1)
        self.assertEqual(len(self.origin.gets("/f")), 1)

    def test_register_names_the_copys_version(self):
        """The registration answer names the validators the CDN recorded for
        its copy (a strong ETag and Last-Modified), which a peer falling back
        to the origin sends in If-Range; a weak ETag is left out (If-Range
        cannot use it), and so are validators the origin did not send."""
        lm = "Sat, 05 Dec 2026 10:00:00 GMT"
        cases = (("/lm", {"etag": '"v2"', "last_modified": lm}, {"etag": '"v2"', "last_modified": lm}),
                 ("/weak", {"etag": 'W/"v3"', "last_modified": lm}, {"last_modified": lm}),
                 ("/none", {}, {}))
        for path, validators, expected in cases:
            self.origin.add(path, DATA, **validators)
            url = "http://origin.test" + path
            obj = self.register(task=task_id_for_url(url), url=url)
            self.assertEqual({k: obj[k] for k in ("etag", "last_modified") if k in obj}, expected)

    def test_register_with_a_range(self):
        """A registration naming the bytes it wants first (C{"range"}) makes a
        new task's first origin request a Range for the pieces covering them,
        the rest after, every byte once; a streaming peer's schedule cursor
        is passed on to the CDN (L{CDN.hurry})."""
        self.call("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "headers": {},
                                            "peer": PEER, "range": [PIECE * 2, PIECE * 2 + 5]})
        self.assertEqual([h.get("range") for _, _, h in self.origin.gets("/f")],
                         [f"bytes={PIECE * 2}-{PIECE * 3 - 1}", f"bytes=0-{PIECE * 2 - 1}"])
        self.assertEqual(self.cdn.status(TASK)["state"], "done")
        hurried = []
        self.patch(self.cdn, "hurry", lambda task, cursor: hurried.append((task, cursor)))
        self.call("POST", f"/api/v1/tasks/{TASK}/schedule",
                  {"peer_id": PEER["peer_id"], "want": 1, "cursor": 1})
        self.assertEqual(hurried, [(TASK, 1)])

    def test_squatted_id_refused(self):
        """A registration naming another URL's task id is refused with 400 JSON
        naming the mismatch; nothing is fetched and no task is created."""
        evil = "http://origin.test/evil"
        self.origin.add("/evil", b"EVIL")
        for body in ({"task_id": TASK, "url": evil, "peer": PEER},
                     {"task_id": TASK, "url": URL, "tag": "v2", "peer": PEER},
                     {"task_id": TASK, "url": evil, "digest": "sha256:" + "0" * 64}):
            r = self.request("POST", "/api/v1/tasks", body)
            self.assertEqual(r.code, 400)
            obj = self.json(r)
            self.assertIn("task_id mismatch", obj["error"])
            self.assertIn(TASK, obj["error"])
        self.assertEqual(self.origin.requests, [])
        self.assertFalse(self.scheduler.has_task(TASK))
        self.assertIsNone(self.store.get(TASK))

    def test_filter_tag_and_digest_derive_the_id(self):
        """The supernode derives the id from the url, filter and tag (or the
        digest) it is sent, and answers with it."""
        self.origin.add("/g", DATA)
        url = "http://origin.test/g?sig=1"
        tid = task_id_for_url(url, ["sig"], "t")
        obj = self.call("POST", "/api/v1/tasks", {"task_id": tid, "url": url, "filter": ["sig"],
                                                  "tag": "t", "peer": PEER})
        self.assertEqual(obj["task_id"], tid)
        digest = "sha256:" + hashlib.sha256(DATA).hexdigest()
        obj = self.call("POST", "/api/v1/tasks", {"task_id": digest, "url": URL,
                                                  "digest": digest, "peer": PEER})
        self.assertEqual(obj["task_id"], digest)

    def test_digest_mismatch_is_final(self):
        """A task named by a digest its URL's content does not match fails with
        409 naming the mismatch (a verdict peers do not retry at the origin),
        and nothing of it is kept."""
        wrong = "sha256:" + "0" * 64
        r = self.request("POST", "/api/v1/tasks", {"task_id": wrong, "url": URL,
                                                   "digest": wrong, "peer": PEER})
        if r.code != 409:
            self.assertEqual(r.code, 200)
            r = self.request("POST", f"/api/v1/tasks/{wrong}/schedule",
                             {"peer_id": PEER["peer_id"], "want": 1})
        self.assertEqual(r.code, 409)
        self.assertIn("content digest mismatch: expected " + wrong, self.json(r)["error"])
        self.assertIsNone(self.store.get(wrong))

    def test_corrupt_report(self):
        """POST /tasks/<id>/corrupt answers 202 and re-verifies the supernode's
        copy: an edited one is dropped (then fetched again on the next
        registration), an intact one kept."""
        self.register()
        self.call("POST", f"/api/v1/tasks/{TASK}/corrupt",
                  {"peer_id": PEER["peer_id"], "reason": "x"}, status=202)
        self.assertIsNotNone(self.store.get(TASK))
        path = self.store.get(TASK).path
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.write(b"\0" * 16)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))   # the seal cannot tell
        self.clock.advance(61)
        self.call("POST", f"/api/v1/tasks/{TASK}/corrupt",
                  {"peer_id": PEER["peer_id"], "reason": "piece 0"}, status=202)
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        self.register()
        with open(self.store.get(TASK).path, "rb") as f:
            self.assertEqual(f.read(), DATA)
        r = self.request("POST", f"/api/v1/tasks/{TASK}/corrupt", {"reason": "x"})
        self.assertEqual(r.code, 400)

    def test_origin_error(self):
        """When the origin answers 404, registering answers 502 with origin_status."""
        self.origin.status["/f"] = 404
        r = self.request("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "peer": PEER})
        self.assertEqual(r.code, 502)
        obj = self.json(r)
        self.assertEqual(obj["origin_status"], 404)
        self.assertIn("404", obj["error"])

    def assertBad(self, body=None, raw=None, status=400, path="/api/v1/tasks", method="POST"):
        r = self.request(method, path, body, raw)
        self.assertEqual(r.code, status)
        obj = self.json(r)
        self.assertIsInstance(obj["error"], str)
        return obj

    def test_malformed_bodies(self):
        """Every malformed request gets a 4xx JSON error, never a 500."""
        ok = {"task_id": TASK, "url": URL, "peer": PEER}
        self.assertBad(raw=b"{not json")
        self.assertBad(raw=b"")
        self.assertBad(raw=b"\xff\xfe")
        self.assertBad(raw=b"[1, 2]")
        self.assertBad(raw=b"[" * 100000 + b"]" * 100000)
        self.assertBad(dict(ok, task_id="../../etc/passwd"))
        self.assertBad(dict(ok, task_id=5))
        self.assertBad(dict(ok, url="ftp://origin.test/f"))
        self.assertBad(dict(ok, url="http:///nohost"))
        self.assertBad(dict(ok, url="http://origin.test/a b"))
        self.assertBad(dict(ok, url=None))
        self.assertBad(dict(ok, headers={"X": "a\r\nB: c"}))
        self.assertBad(dict(ok, headers=["x"]))
        self.assertBad(dict(ok, peer={"peer_id": "p", "host": "h", "port": 0}))
        self.assertBad(dict(ok, peer="x"))
        self.assertEqual(self.origin.requests, [])

    def test_origin_over_max_file_size(self):
        """When the origin announces more than --max-file-size, registering
        answers 413 with a JSON error naming the flag, nothing is reserved,
        and a registration that fits succeeds afterwards."""
        self.cdn.max_file_size = len(DATA) - 1
        obj = self.assertBad({"task_id": TASK, "url": URL, "peer": PEER}, status=413)
        self.assertIn("--max-file-size", obj["error"])
        self.assertIsNone(self.store.get(TASK))
        self.assertFalse(self.scheduler.has_task(TASK))
        self.cdn.max_file_size = len(DATA)
        self.assertEqual(self.register()["length"], len(DATA))

    def test_too_many_peers_from_one_address(self):
        """When one address has as many peers in a task as the scheduler
        allows, the next registration from it gets 429 with a JSON error."""
        self.scheduler.max_peers_per_address = 1
        self.register()
        obj = self.assertBad({"task_id": TASK, "url": URL,
                              "peer": dict(PEER, peer_id="host-1-abcdef02")}, status=429)
        self.assertIn("127.0.0.1", obj["error"])

    def test_too_many_fetches(self):
        """When max_fetches origin fetches are in progress, a new task gets
        429; a task already being fetched is still shared."""
        self.cdn.max_fetches = 1
        self.origin.hold.add("/f")
        self.origin.add("/g", DATA)
        first = self.client.request("POST", "http://supernode.test/api/v1/tasks",
                                    data=json.dumps({"task_id": TASK, "url": URL}).encode())
        self.client.flush()
        self.assertNoResult(first)
        obj = self.assertBad({"task_id": task_id_for_url("http://origin.test/g"),
                              "url": "http://origin.test/g"}, status=429)
        self.assertIn("retry later", obj["error"])
        self.origin.release()
        self.origin_stub.flush()
        self.client.flush()
        self.assertEqual(self.successResultOf(first).code, 200)
        self.assertEqual(self.cdn._fetching, 0)

    def test_oversized_body(self):
        """A body over 1 MiB is refused with 413 before parsing."""
        obj = self.assertBad(raw=b" " * (1 << 20) + b"{}", status=413)
        self.assertIn("larger", obj["error"])

    def test_limited_request_stops_storing(self):
        """The API site's request class stops keeping a body past the cap."""
        req = LimitedRequest.__new__(LimitedRequest)
        req.max_body = 10
        req.content = io.BytesIO()
        req.body_too_large = False
        req._body_seen = 0
        req.handleContentChunk(b"12345")
        req.handleContentChunk(b"678901")
        self.assertTrue(req.body_too_large)
        self.assertEqual(req.content.getvalue(), b"")

    def test_unknown_endpoint_and_method(self):
        """Unknown paths answer 404 JSON; wrong methods 405 JSON."""
        self.assertBad(path="/nope", method="GET", status=404)
        self.assertBad(path="/api/v1/tasks", method="GET", status=405)

    def test_task_info(self):
        """GET /api/v1/tasks/<id> describes a known task; unknown -> 404; bad id -> 400."""
        self.register()
        obj = self.call("GET", f"/api/v1/tasks/{TASK}")
        self.assertEqual((obj["task_id"], obj["url"], obj["length"], obj["piece_count"],
                          obj["seeded"], obj["peers"]), (TASK, URL, len(DATA), 3, 3, 1))
        self.assertBad(path="/api/v1/tasks/" + "a" * 64, method="GET", status=404)
        self.assertBad(path="/api/v1/tasks/-bad", method="GET", status=400)

    def test_healthz_and_metrics(self):
        """/healthz answers 200 JSON once the seed is known (503 before);
        /metrics renders the SPEC counters."""
        self.assertEqual(self.call("GET", "/healthz")["status"], "ok")
        self.register()
        r = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        text = self.successResultOf(self.client.content(r)).decode()
        self.assertIn(f"dragonfly_supernode_origin_bytes_total {float(len(DATA))}", text)
        self.assertIn("dragonfly_supernode_upload_bytes_total", text)
        self.cdn.seed = None
        self.assertEqual(self.call("GET", "/healthz", status=503)["status"], "starting")

    def test_healthz_degraded(self):
        """While the store's disk is full, /healthz answers 200 "degraded" with
        the reason; /metrics exports the store's gauges under dragonfly_supernode_."""
        from dragonfly.test.test_storage_diskspace import FakeStatvfs
        self.store.space.statvfs = FakeStatvfs(0)
        self.store.space.refresh()
        obj = self.call("GET", "/healthz")
        self.assertEqual((obj["status"], obj["reasons"]), ("degraded", ["disk full"]))
        self.metrics.watch_store(self.store)
        r = self.request("GET", "/metrics")
        text = self.successResultOf(self.client.content(r)).decode()
        self.assertIn("dragonfly_supernode_store_free_bytes 0.0", text)
        self.assertIn("dragonfly_supernode_store_evictions_total 0.0", text)

    def test_metrics_spec(self):
        """/metrics has every SPEC supernode counter, before any traffic too."""
        r = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        assert_spec_metrics(self, self.successResultOf(self.client.content(r)), "supernode")

    def test_not_ready(self):
        """Before the piece port is bound, registering answers 503."""
        self.cdn.seed = None
        r = self.request("POST", "/api/v1/tasks", {"task_id": TASK, "url": URL, "peer": PEER})
        self.assertEqual(r.code, 503)


class ScheduleTests(APITestBase):
    def schedule(self, body, status=200, task=TASK):
        return self.call("POST", f"/api/v1/tasks/{task}/schedule", body, status=status)

    def test_assign_and_done(self):
        """A registered peer gets assignments from the seed with sizes and
        digests, reports them, and is then done."""
        self.register()
        obj = self.schedule({"peer_id": PEER["peer_id"], "want": 5})
        got = sorted(a["index"] for a in obj["assignments"])
        self.assertEqual(got, [0, 1, 2])
        for a in obj["assignments"]:
            i = a["index"]
            chunk = DATA[i * PIECE:(i + 1) * PIECE]
            self.assertEqual(a["size"], len(chunk))
            self.assertEqual(a["digest"], piece_digest(chunk))
            self.assertEqual(a["source"], SEED.to_json())
        self.assertFalse(obj["done"])
        obj = self.schedule({"peer_id": PEER["peer_id"], "have": [0, 1, 2], "want": 5})
        self.assertTrue(self.api.admission.verify(obj.pop("token"), TASK, PEER["peer_id"]))
        self.assertEqual(obj, {"assignments": [], "done": True})
        self.call("POST", f"/api/v1/tasks/{TASK}/leave", {"peer_id": PEER["peer_id"]})
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 0)

    def test_fetched_frees_the_seed_slot(self):
        """A piece reported fetched frees the seed's upload slot at once (another
        peer gets an assignment beyond the seed's limit) and stays in flight,
        never held, until reported in have."""
        self.scheduler.seed_max_uploads = 1
        other = dict(PEER, peer_id="host-2-abcdef02", port=65001)
        self.register()
        self.register(peer=other)
        pid, pid2 = PEER["peer_id"], other["peer_id"]
        [a] = self.schedule({"peer_id": pid, "want": 5})["assignments"]
        self.assertEqual(self.schedule({"peer_id": pid2, "want": 5})["assignments"], [])
        self.schedule({"peer_id": pid, "fetched": [a["index"]]})
        [b] = self.schedule({"peer_id": pid2, "want": 5})["assignments"]
        self.assertEqual(b["source"], SEED.to_json())
        self.assertEqual(self.scheduler.task_stats(TASK)["inflight"], 2)
        self.assertEqual(self.scheduler.holds(TASK, pid), [])
        self.schedule({"peer_id": pid, "have": [a["index"]]})
        self.assertEqual(self.scheduler.holds(TASK, pid), [a["index"]])

    def test_bad_schedule_requests(self):
        """Unknown task or peer -> 404; malformed reports -> 400."""
        self.schedule({"peer_id": PEER["peer_id"], "want": 1}, status=404)
        self.register()
        self.schedule({"peer_id": "other-1-00000000", "want": 1}, status=404)
        pid = PEER["peer_id"]
        for body in ({"peer_id": pid, "have": "x"}, {"peer_id": pid, "have": [-1]},
                     {"peer_id": pid, "have": [99]}, {"peer_id": pid, "want": -1},
                     {"peer_id": pid, "want": True}, {"peer_id": pid, "wait": "soon"},
                     {"peer_id": pid, "wait": -1},
                     {"peer_id": pid, "failed": [{"index": 0}]}, {"peer_id": pid, "failed": [1]},
                     {"peer_id": None}):
            self.schedule(body, status=400)
        # A wait that is not a finite number: Python's json writes Infinity/NaN,
        # and 1e999 is plain JSON that parses to infinity.
        for raw, token in ((json.dumps({"peer_id": pid, "wait": float("inf")}), "Infinity"),
                           (json.dumps({"peer_id": pid, "wait": float("nan")}), "NaN"),
                           ('{"peer_id": "%s", "wait": 1e999}' % pid, "1e999")):
            self.assertIn(f'"wait": {token}', raw)     # the case is really sent
            obj = self.call("POST", f"/api/v1/tasks/{TASK}/schedule", raw=raw.encode(), status=400)
            self.assertIn("wait must be a non-negative number", obj["error"])
        self.assertEqual(self.scheduler.stats()["waiting"], 0)
        self.call("POST", "/api/v1/tasks/bad%20id/schedule", {"peer_id": pid}, status=400)

    def test_cursor(self):
        """When a streaming peer sends a cursor, its first assignment is the lowest
        piece from the cursor on; a null cursor means no preference."""
        self.register()
        pid = PEER["peer_id"]
        obj = self.schedule({"peer_id": pid, "want": 2, "cursor": 1})
        self.assertEqual(obj["assignments"][0]["index"], 1)
        self.assertEqual(len(obj["assignments"]), 2)
        obj = self.schedule({"peer_id": pid, "have": [1], "want": 2, "cursor": None})
        self.assertEqual(len(obj["assignments"]), 1)
        obj = self.schedule({"peer_id": pid, "have": [0, 2], "want": 0, "cursor": 3})
        self.assertEqual(self.admitted(obj), {"assignments": [], "done": True})

    def test_queue(self):
        """A streaming peer that asks for a queue gets assignments queued at a
        busy source beyond its upload slots; without the field, the slots only."""
        self.scheduler.max_uploads_per_peer = self.scheduler.stream_queue = 1
        holder = dict(PEER, peer_id="host-2-abcdef02", port=65001)
        self.register()
        self.register(peer=holder)
        pid = PEER["peer_id"]
        self.schedule({"peer_id": holder["peer_id"], "have": [0, 1, 2]})
        obj = self.schedule({"peer_id": pid, "want": 3, "cursor": 0})
        self.assertEqual([a["index"] for a in obj["assignments"]], [0])
        obj = self.schedule({"peer_id": pid, "want": 3, "cursor": 0, "queue": True})
        self.assertEqual([(a["index"], a["source"]["peer_id"]) for a in obj["assignments"]],
                         [(1, holder["peer_id"])])

    def test_bad_cursor(self):
        """When the cursor is not an integer from 0 to the piece count, schedule
        answers 400 and records nothing of the request's report."""
        self.register()
        pid = PEER["peer_id"]
        for cursor in (-1, 4, True, 1.5, "0", [0], {}):
            obj = self.schedule({"peer_id": pid, "have": [0], "want": 1, "cursor": cursor},
                                status=400)
            self.assertIn("cursor", obj["error"])
        self.assertEqual(self.scheduler.holds(TASK, pid), [])
        self.assertEqual(self.scheduler.task_stats(TASK)["inflight"], 0)
        self.schedule({"peer_id": pid, "want": 1, "cursor": 99}, status=404, task="other-task")

    def test_long_poll_wakes_on_new_piece(self):
        """When nothing is assignable, schedule waits until the CDN seeds a
        new piece, then answers with it."""
        self.origin.breaks["/f"] = [PIECE + 5]
        self.register()
        pid = PEER["peer_id"]
        obj = self.schedule({"peer_id": pid, "want": 3})
        self.assertEqual([a["index"] for a in obj["assignments"]], [0])
        d = self.client.post(f"http://supernode.test/api/v1/tasks/{TASK}/schedule",
                             json={"peer_id": pid, "have": [0], "want": 3, "wait": 20, "secret": SECRET})
        self.client.flush()
        self.assertNoResult(d)
        self.clock.advance(self.cdn.retry_delay)   # the CDN resumes and seeds 1 and 2
        self.client.flush()
        obj = self.json(self.successResultOf(d))
        # Woken by the first new piece; piece 2 may come with it or next time.
        self.assertEqual(obj["assignments"][0]["index"], 1)

    def test_long_poll_answers_digest_mismatch(self):
        """A peer long-polling on a task named by a digest (every piece served
        as it landed, the task not complete before the whole content matched)
        gets 409 naming the mismatch as soon as the check fails."""
        from dragonfly.ingest.contenthash import ContentHash
        held = []
        real = ContentHash.digest

        def hold(content):
            gate = Deferred()
            held.append((gate, Deferred.fromCoroutine(real(content))))
            return gate
        self.patch(ContentHash, "digest", hold)
        wrong = "sha256:" + "0" * 64
        self.call("POST", "/api/v1/tasks", {"task_id": wrong, "url": URL, "digest": wrong,
                                            "peer": PEER})
        pid = PEER["peer_id"]
        obj = self.schedule({"peer_id": pid, "want": 3}, task=wrong)
        self.assertEqual(sorted(a["index"] for a in obj["assignments"]), [0, 1, 2])
        self.assertEqual(self.cdn.status(wrong)["state"], "running")   # not complete
        d = self.client.post(f"http://supernode.test/api/v1/tasks/{wrong}/schedule",
                             json={"peer_id": pid, "have": [0, 1], "want": 1, "wait": 20,
                                   "secret": SECRET})
        self.client.flush()
        self.assertNoResult(d)
        (gate, digest), = held
        gate.callback(self.successResultOf(digest))
        self.client.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 409)
        self.assertIn("content digest mismatch: expected " + wrong, self.json(r)["error"])
        self.assertIsNone(self.store.get(wrong))

    def test_long_poll_times_out(self):
        """When nothing becomes assignable, schedule answers empty after `wait` seconds."""
        self.register()
        pid = PEER["peer_id"]
        self.schedule({"peer_id": pid, "want": 3})
        d = self.client.post(f"http://supernode.test/api/v1/tasks/{TASK}/schedule",
                             json={"peer_id": pid, "want": 3, "wait": 5, "secret": SECRET})
        self.client.flush()
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.client.flush()
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.client.flush()
        self.assertEqual(self.admitted(self.json(self.successResultOf(d))), {"assignments": [], "done": False})
        self.assertEqual(self.scheduler.stats()["waiting"], 0)

    def test_wait_is_capped(self):
        """A wait above the maximum is cut to max_wait (30 s): still waiting just
        before 30 s, answered (empty) just after."""
        self.assertEqual(self.api.max_wait, 30)
        self.register()
        pid = PEER["peer_id"]
        self.schedule({"peer_id": pid, "want": 3})
        d = self.client.post(f"http://supernode.test/api/v1/tasks/{TASK}/schedule",
                             json={"peer_id": pid, "want": 3, "wait": 10000, "secret": SECRET})
        self.client.flush()
        self.clock.advance(29.9)
        self.client.flush()
        self.assertNoResult(d)
        self.assertEqual(self.scheduler.stats()["waiting"], 1)
        self.clock.advance(0.2)
        self.client.flush()
        self.assertEqual(self.admitted(self.json(self.successResultOf(d))), {"assignments": [], "done": False})
        self.assertEqual(self.scheduler.stats()["waiting"], 0)

    def test_disconnect_cancels_long_poll(self):
        """When the client goes away during a long-poll, the wait is
        cancelled at once: no scheduler waiter, no timer left."""
        self.register()
        pid = PEER["peer_id"]
        self.schedule({"peer_id": pid, "want": 3})
        request = DummyRequest([])
        d = Deferred.fromCoroutine(self.api._wait_change(request, TASK, 20))
        self.assertEqual(self.scheduler.stats()["waiting"], 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        request.processingFailed(Failure(ConnectionLost()))
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.scheduler.stats()["waiting"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disconnect_frees_the_pollers_slots(self):
        """When a peer's long-poll is dropped by its client (the peer stopped or
        died without leaving), its in-flight assignments end at once: the
        upload slots they hold serve others, not after the assignment timeout."""
        self.register()
        pid = PEER["peer_id"]
        got = self.schedule({"peer_id": pid, "want": 3})["assignments"]
        self.assertEqual(len(got), 3)
        self.assertEqual(self.scheduler.stats()["seed_inflight"], 3)
        request = DummyRequest([])
        d = Deferred.fromCoroutine(self.api._wait_change(request, TASK, 20, pid))
        request.processingFailed(Failure(ConnectionLost()))
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.scheduler.stats()["seed_inflight"], 0)
        self.assertEqual(self.scheduler.task_stats(TASK)["peers"], 1)

    def test_cdn_failure_reported(self):
        """When the CDN's fetch failed for good, schedule answers 502 so the
        peer can go back to the origin instead of waiting."""
        self.origin.breaks["/f"] = [PIECE + 5]
        self.cdn.max_retries = 0
        self.register()
        pid = PEER["peer_id"]
        self.schedule({"peer_id": pid, "want": 3})
        obj = self.schedule({"peer_id": pid, "have": [0], "want": 3, "wait": 5}, status=502)
        self.assertIn("could not fetch", obj["error"])


    def test_cdn_disk_full(self):
        """When the supernode's disk fills up during the CDN fetch (ENOSPC, nothing
        to evict), every waiting peer's schedule answers 507 at once, and the
        failed task's partial gives its space back."""
        from dragonfly.storage import fileio
        real = fileio.hash_and_write

        def full_after_first(fd, views, offset, lock):
            if offset >= PIECE:
                raise OSError(28, "No space left on device")
            return real(fd, views, offset, lock)
        self.patch(fileio, "hash_and_write", full_after_first)
        obj = self.call("POST", "/api/v1/tasks",
                        {"task_id": TASK, "url": URL, "headers": {}, "peer": PEER}, status=507)
        self.assertIn("cache is full", obj["error"])
        obj = self.schedule({"peer_id": PEER["peer_id"], "want": 3, "wait": 5}, status=507)
        self.assertIn("cache is full", obj["error"])
        self.assertIsNone(self.store.get(TASK))
        self.assertIn("disk full", self.store.health())

    def test_cdn_file_larger_than_disk(self):
        """When the origin announces more than the supernode's disk could hold
        even with its cache evicted, registration and every waiting peer's
        schedule answer the same 507 at once, and not a byte is stored."""
        def statvfs(path):
            free = len(DATA) + self.store.min_free - 1
            return os.statvfs_result((1, 1, 1 << 30, free, free, 0, 0, 0, 0, 255))
        self.store.space.statvfs = statvfs
        self.store.space.refresh()
        obj = self.call("POST", "/api/v1/tasks",
                        {"task_id": TASK, "url": URL, "headers": {}, "peer": PEER}, status=507)
        self.assertEqual(obj["error"], f"{len(DATA)} bytes do not fit on the cache's disk")
        obj = self.schedule({"peer_id": PEER["peer_id"], "want": 3, "wait": 5}, status=507)
        self.assertIn("cache is full", obj["error"])
        self.assertIsNone(self.store.get(TASK))
        self.assertEqual(self.store.errors, 0)


class HeartbeatTests(APITestBase):
    def test_heartbeat_keeps_a_finished_peer(self):
        """A peer that heartbeats its tasks is not dropped as silent after the
        peer timeout; one that doesn't is, and the heartbeat then names the task
        as unknown. Malformed heartbeats get 400."""
        self.register()
        pid = PEER["peer_id"]
        for _ in range(4):
            self.clock.advance(self.scheduler.peer_timeout / 2)
            obj = self.call("POST", "/api/v1/heartbeat", {"peer_id": pid, "tasks": [TASK]})
            self.assertEqual(obj, {"unknown": [], "keys": self.api.signer.keys()})
            self.scheduler.expire()
        self.clock.advance(self.scheduler.peer_timeout + 1)
        self.scheduler.expire()
        obj = self.call("POST", "/api/v1/heartbeat", {"peer_id": pid, "tasks": [TASK]})
        self.assertEqual(obj, {"unknown": [TASK], "keys": self.api.signer.keys()})
        for bad in ({"peer_id": pid, "tasks": "x"}, {"peer_id": pid, "tasks": [1]},
                    {"peer_id": pid, "tasks": ["../x"]}, {"tasks": []}):
            self.assertIn("error", self.call("POST", "/api/v1/heartbeat", bad, status=400))


class UploadCutTests(APITestBase):
    def test_cut_report(self):
        """POST /tasks/<id>/cut (an uploader's connection to a receiver ended)
        answers 202 and hands the uploader (as its secret proves) and the
        receiver to the liveness check; a wrong secret gets 403 and an
        unregistered uploader or a supernode without a check nothing;
        a malformed report gets 400."""
        cuts = []

        class Live:
            def cut(self, task_id, uploader, receiver):
                cuts.append((task_id, uploader, receiver))
        self.register()
        path = f"/api/v1/tasks/{TASK}/cut"
        body = {"peer_id": PEER["peer_id"], "receiver": "host-2-abcdef02", "secret": SECRET}
        self.call("POST", path, body, status=202)
        self.assertEqual(cuts, [])                           # no liveness check here
        self.scheduler.liveness = Live()
        self.call("POST", path, body, status=202)
        self.assertEqual(cuts, [(TASK, PEER["peer_id"], "host-2-abcdef02")])
        self.call("POST", path, dict(body, secret="x" * 22), status=403)
        self.call("POST", path, dict(body, peer_id="host-9-abcdef09"), status=202)
        for bad in ({"peer_id": PEER["peer_id"], "secret": SECRET},
                    dict(body, receiver="../x"), dict(body, receiver=5)):
            self.call("POST", path, bad, status=400)
        self.call("POST", "/api/v1/tasks/..x/cut", body, status=400)
        self.assertEqual(len(cuts), 1)


class PreheatTests(APITestBase):
    def test_preheat_file(self):
        """POST /api/v1/preheat answers 202 with an id; the job fetches the
        file into the CDN and GET shows it done."""
        obj = self.call("POST", "/api/v1/preheat", {"url": URL, "headers": {"Authorization": "x"}},
                        status=202)
        self.assertEqual(obj["id"], "job0")
        self.assertEqual(obj["task_id"], TASK)
        obj = self.call("GET", "/api/v1/preheat/job0")
        self.assertEqual(obj["state"], "done")
        self.assertEqual(obj["length"], len(DATA))
        self.assertTrue(self.store.get(TASK).is_complete)
        self.assertEqual(self.origin.gets("/f")[0][2]["authorization"], "x")

    def test_preheat_failure_and_errors(self):
        """A failing preheat shows state failed with the origin status; bad
        requests -> 400, unknown ids -> 404."""
        self.origin.status["/f"] = 403
        self.call("POST", "/api/v1/preheat", {"url": URL}, status=202)
        obj = self.call("GET", "/api/v1/preheat/job0")
        self.assertEqual((obj["state"], obj["origin_status"]), ("failed", 403))
        self.call("POST", "/api/v1/preheat", {"url": "gopher://x/"}, status=400)
        self.call("POST", "/api/v1/preheat", {"type": "video", "url": URL}, status=400)
        self.call("GET", "/api/v1/preheat/nope", status=404)

    def test_preheat_over_max_file_size(self):
        """When a preheated file is larger than --max-file-size, the job fails
        with an error naming the flag and nothing is stored."""
        self.cdn.max_file_size = len(DATA) - 1
        self.call("POST", "/api/v1/preheat", {"url": URL}, status=202)
        obj = self.call("GET", "/api/v1/preheat/job0")
        self.assertEqual(obj["state"], "failed", obj)
        self.assertIn("--max-file-size", obj["error"])
        self.assertIsNone(self.store.get(TASK))

    def test_preheat_image(self):
        """An image preheat fetches the manifest and then every blob, each
        as a task named by its digest."""
        layer = os.urandom(5000)
        config = b'{"architecture":"amd64"}'
        ld = "sha256:" + hashlib.sha256(layer).hexdigest()
        cd = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": cd, "size": len(config)},
            "layers": [{"digest": ld, "size": len(layer)}]}).encode()
        self.origin.add("/v2/lib/app/manifests/1.0", manifest)
        self.origin.add(f"/v2/lib/app/blobs/{ld}", layer)
        self.origin.add(f"/v2/lib/app/blobs/{cd}", config)
        self.call("POST", "/api/v1/preheat", {"image": "reg.test:5000/lib/app:1.0"}, status=202)
        obj = self.call("GET", "/api/v1/preheat/job0")
        self.assertEqual(obj["state"], "done", obj)
        self.assertEqual(sorted(t["task_id"] for t in obj["tasks"]), sorted([ld, cd]))
        self.assertTrue(self.store.get(ld).is_complete)
        self.assertIn("application/vnd.oci.image.manifest.v1+json",
                      self.origin.gets("/v2/lib/app/manifests/1.0")[0][2]["accept"])


class ClusterRedirectTests(APITestBase):
    def make_cluster(self):
        c = Cluster(self.clock, None, ["10.0.0.2:8002", "10.0.0.3:8002"], self_name="10.0.0.1:8002")
        return c

    def test_non_owner_redirects(self):
        """A supernode that does not own a task answers 307 with the owner;
        a request marked redirected is served anyway."""
        cluster = self.api.cluster
        url = next(u for u in (f"{URL}{i}" for i in range(100))
                   if cluster.owner(task_id_for_url(u)) is not None)
        task = task_id_for_url(url)
        self.origin.add(url[len("http://origin.test"):], DATA)
        r = self.request("POST", "/api/v1/tasks", {"task_id": task, "url": url, "peer": PEER})
        self.assertEqual(r.code, 307)
        owner = cluster.owner(task)
        self.assertEqual(self.json(r), {"error": f"task {task} belongs to supernode {owner}",
                                        "owner": owner})
        self.assertEqual(r.headers.getRawHeaders("location"), [f"http://{owner}/api/v1/tasks"])
        self.assertEqual(self.origin.requests, [])
        self.call("POST", "/api/v1/tasks",
                  {"task_id": task, "url": url, "peer": PEER, "redirected": True})
        mine = next(u for u in (f"{URL}{i}" for i in range(100))
                    if cluster.owner(task_id_for_url(u)) is None)
        self.origin.add(mine[len("http://origin.test"):], DATA)
        self.register(task=task_id_for_url(mine), url=mine)


class ApiSiteTests(SynchronousTestCase):

    def test_access_log_skips_successful_schedules(self):
        """Successful schedule calls stay out of the access log; failed ones
        and every other request are logged."""
        from twisted.web import server
        from dragonfly.supernode.api import ApiSite
        logged = []
        self.patch(server.Site, "log", lambda site, request: logged.append(
            (request.path, request.code)))
        site = ApiSite(None, parsePOSTFormSubmission=False)
        for path, code in [(b"/api/v1/tasks/t/schedule", 200),
                           (b"/api/v1/tasks/t/schedule", 404),
                           (b"/api/v1/tasks", 200)]:
            request = DummyRequest([])
            request.path, request.code = path, code
            site.log(request)
        self.assertEqual(logged, [(b"/api/v1/tasks/t/schedule", 404), (b"/api/v1/tasks", 200)])

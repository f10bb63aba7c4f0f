"""Tests for dragonfly.control.messages: round trips, every malformed field, fuzzing."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control import messages as m
from dragonfly.control import preheat as pm
from dragonfly.control.messages import MessageError
from dragonfly.interfaces import Assignment, PeerInfo
from dragonfly.taskid import task_id_for_url

TASK = "a" * 64
PEER = PeerInfo("host-1-abcdef01", "127.0.0.1", 65000)
SEED = PeerInfo("supernode-127.0.0.1:8001", "127.0.0.1", 8001)
DIGEST = "0123456789abcdef" * 4
ASSIGNMENT = Assignment(3, 4096, DIGEST, SEED)

EXAMPLES = [
    m.RegisterRequest(task_id_for_url("http://origin.test/f"), "http://origin.test/f",
                      {"X-A": "1"}, PEER),
    m.RegisterRequest(task_id_for_url("https://origin.test/f?q=1"), "https://origin.test/f?q=1",
                      {}, None, redirected=True),
    m.RegisterAnswer(TASK, 10, 4, 3, SEED, "blake3"),
    m.RegisterAnswer(TASK, 0, 4, 0, SEED, "blake3"),
    m.RegisterRequest(task_id_for_url("http://o/f?a=1&b=2", ["a"], "t"), "http://o/f?a=1&b=2",
                      {}, PEER, filters=("a",), tag="t"),
    m.RegisterRequest("sha256:" + "0" * 64, "http://o/v2/a/blobs/x", {}, PEER,
                      digest="sha256:" + "0" * 64),
    m.ScheduleRequest("p-1", (0, 2), (m.FailedPiece(1, "q-2"),), 5, 2.5, 1),
    m.ScheduleRequest("p-1"),
    m.ScheduleRequest("p-1", want=2, seed_only=True),
    m.ScheduleRequest("p-1", (0,), (), 2, 2.0, fetched=(3, 5)),
    m.ScheduleRequest("p-1", (), (), 8, 2.0, 3, queue=True),
    m.ScheduleAnswer((ASSIGNMENT,), False),
    m.ScheduleAnswer((), True),
    m.ScheduleAnswer((), False, token="eyJ9." + "A" * 86),
    m.RegisterAnswer(TASK, 10, 4, 3, SEED, "blake3", secret="s" * 22, token="eyJ9." + "A" * 86,
                     keys={"0123456789abcdef": "A" * 43}),
    m.RegisterAnswer(TASK, 10, 4, 3, SEED, etag='"v1-abc"',
                     last_modified="Sat, 05 Dec 2026 10:00:00 GMT"),
    m.RegisterAnswer(TASK, 10, 4, 3, SEED, last_modified="Sat, 05 Dec 2026 10:00:00 GMT"),
    m.HeartbeatRequest("p-1", (TASK, "other")),
    m.HeartbeatAnswer(("other",)),
    m.HeartbeatAnswer((), {"0123456789abcdef": "A" * 43}),
    m.LeaveRequest("p-1"),
    m.LeaveAnswer(),
    m.CorruptReport("p-1", "piece 3 failed its digest"),
    m.UploadCut("p-1", "p-2", "s" * 22),
    m.UploadCut("p-1", "p-2"),
    m.TaskInfo(TASK),
    m.TaskInfo(TASK, "http://o/f", 10, 4, 3, 3, 2, "done", "boom", 404, 1),
    m.ErrorAnswer("boom"),
    m.ErrorAnswer("origin answered 404", origin_status=404),
    m.ErrorAnswer.owner_redirect(TASK, "10.0.0.2:8002"),
    pm.PreheatRequest("file", "http://o/f", {"A": "b"}, task_id_for_url("http://o/f")),
    pm.PreheatRequest("image", "https://reg/v2/lib/app/manifests/1", {}, None, "linux/arm64/v8"),
    pm.PreheatStatus("job0", "done", "file", "http://o/f", 1.5, TASK, 10, None, 2.0),
    pm.PreheatStatus("job1", "failed", "image", "https://reg/v2/a/manifests/1", 1, None, None,
                    [{"task_id": "sha256:" + "0" * 64, "state": "failed"}], 3, "no", 403),
]


class RoundTripTests(SynchronousTestCase):

    def test_round_trip(self):
        """Every message parses back from its JSON (through bytes) to an equal message."""
        for msg in EXAMPLES:
            obj = json.loads(msg.serialize())
            self.assertEqual(obj, msg.to_json())
            self.assertEqual(type(msg).parse(obj), msg, obj)

    def test_wire_format(self):
        """The bodies are the ones the supernode has always spoken: field names,
        order and optional fields."""
        req = m.ScheduleRequest("p-1", [0], [(1, "q-2")], 3, 20.0)
        self.assertEqual(req.serialize(), b'{"peer_id":"p-1","have":[0],"failed":'
                         b'[{"index":1,"source":"q-2"}],"want":3,"wait":20.0}')
        self.assertEqual(m.ScheduleRequest("p", cursor=0).to_json()["cursor"], 0)
        # "fetched" only when there are any: an older supernode sees what it always saw
        self.assertEqual(m.ScheduleRequest("p", fetched=(4,)).to_json()["fetched"], [4])
        self.assertNotIn("fetched", m.ScheduleRequest("p", have=(4,)).to_json())
        # "queue" only when asked for; absent (an older peer) reads as no queue
        self.assertIs(m.ScheduleRequest("p", cursor=2, queue=True).to_json()["queue"], True)
        self.assertNotIn("queue", m.ScheduleRequest("p", cursor=2).to_json())
        self.assertIs(m.ScheduleRequest.parse({"peer_id": "p", "cursor": 2}).queue, False)
        self.assertEqual(list(EXAMPLES[0].to_json()), ["task_id", "url", "headers", "peer"])
        self.assertEqual(list(EXAMPLES[2].to_json()), [
            "task_id", "length", "piece_size", "piece_count", "seed", "piece_digest"])
        self.assertEqual(m.ErrorAnswer.owner_redirect("t", "h:1").to_json(),
                         {"error": "task t belongs to supernode h:1", "owner": "h:1"})
        self.assertEqual(m.LeaveAnswer().serialize(), b"{}")
        self.assertEqual(m.TaskInfo("t").to_json(), {
            "task_id": "t", "url": None, "length": None, "piece_size": None,
            "piece_count": None, "seeded": 0, "peers": 0, "state": "unknown"})

    def test_defaults(self):
        """Absent optional fields take their documented defaults: an empty
        report, no cursor, an older supernode's sha256 digests, a computed
        piece count, no preference of redirect."""
        self.assertEqual(m.ScheduleRequest.parse({"peer_id": "p", "cursor": None}),
                         m.ScheduleRequest("p"))
        answer = m.RegisterAnswer.parse({"task_id": TASK, "length": 9, "piece_size": 4,
                                         "seed": SEED.to_json()})
        self.assertEqual((answer.piece_count, answer.piece_digest), (3, "sha256"))
        req = m.RegisterRequest.parse({"task_id": task_id_for_url("http://o/f"),
                                       "url": "http://o/f"})
        self.assertEqual((req.headers, req.peer, req.redirected), ({}, None, False))

    def test_validators_optional(self):
        """A registration answer names the origin's validators of the
        supernode's copy only when it has them: an older supernode's answer
        (none) parses with both None, and an answer without them has neither
        field."""
        answer = m.RegisterAnswer.parse({"task_id": TASK, "length": 9, "piece_size": 4,
                                         "seed": SEED.to_json()})
        self.assertEqual((answer.etag, answer.last_modified), (None, None))
        out = m.RegisterAnswer(TASK, 9, 4, 3, SEED).to_json()
        self.assertNotIn("etag", out)
        self.assertNotIn("last_modified", out)

    def test_sendable_validators(self):
        """The supernode sends a strong ETag and a Last-Modified the peer will
        accept; a weak ETag (no use in If-Range) or a value the peer would
        refuse (a control byte, too long) is left out, not the whole answer
        made unreadable."""
        lm = "Sat, 05 Dec 2026 10:00:00 GMT"
        self.assertEqual(m.sendable_validators('"x"', lm), {"etag": '"x"', "last_modified": lm})
        self.assertEqual(m.sendable_validators('W/"x"', lm), {"etag": None, "last_modified": lm})
        self.assertEqual(m.sendable_validators('"x\ny"', "a" * 2000),
                         {"etag": None, "last_modified": None})
        self.assertEqual(m.sendable_validators(None, None), {"etag": None, "last_modified": None})
        for etag, last_modified in (('"x"', lm), ('W/"x"', "\x01")):
            out = m.RegisterAnswer(TASK, 9, 4, 3, SEED,
                                   **m.sendable_validators(etag, last_modified)).to_json()
            m.RegisterAnswer.parse(json.loads(json.dumps(out)))   # the peer reads it

    def test_headers_cleaned(self):
        """Hop-by-hop headers of a registration are dropped, others kept."""
        req = m.RegisterRequest.parse({"task_id": task_id_for_url("http://o/f"),
                                       "url": "http://o/f", "headers": {"Connection": "x", "Authorization": "y"}})
        self.assertEqual(req.headers, {"Authorization": "y"})

    def test_preheat_normalised(self):
        """A preheat names a file (its task id derived from the URL, filter and
        tag) or an image (by reference or manifest URL)."""
        from dragonfly.taskid import task_id_for_url
        req = pm.PreheatRequest.parse({"url": "http://o/f?a=1&b=2", "filter": "a", "tag": "t"})
        self.assertEqual(req.task_id, task_id_for_url("http://o/f?a=1&b=2", ["a"], "t"))
        req = pm.PreheatRequest.parse({"image": "reg.test:5000/lib/app:1.0", "insecure": True})
        self.assertEqual((req.kind, req.url),
                         ("image", "http://reg.test:5000/v2/lib/app/manifests/1.0"))
        self.assertEqual(pm.parse_image_reference("reg.io/a/b")[1:], ("a/b", "latest"))

    def test_assignment_fits_the_task(self):
        """A registration answer accepts an assignment of one of its pieces with
        that piece's size (the last one short), and refuses any other."""
        answer = m.RegisterAnswer(TASK, 10, 4, 3, SEED)
        for index, size in ((0, 4), (1, 4), (2, 2)):
            a = Assignment(index, size, DIGEST, SEED)
            self.assertIs(answer.check_assignment(a), a)
        for index, size, field in ((3, 4, "index"), (2, 4, "size"), (0, 2, "size")):
            with self.assertRaises(MessageError) as cm:
                answer.check_assignment(Assignment(index, size, DIGEST, SEED))
            self.assertEqual(cm.exception.field, field)

    def test_bad_assignments_set_aside(self):
        """A schedule answer keeps its good assignments and sets each bad one
        aside with the error naming its field."""
        good = ASSIGNMENT.to_json()
        answer = m.ScheduleAnswer.parse({"assignments": [
            good, dict(good, digest="XYZ"), dict(good, index=-1), "x"], "done": False})
        self.assertEqual(answer.assignments, (ASSIGNMENT,))
        self.assertEqual([e.field for e in answer.rejected], ["digest", "index", ""])


def _bad(message, base, **changes):
    obj = dict(base)
    for k, v in changes.items():
        if v is _DROP:
            obj.pop(k, None)
        else:
            obj[k] = v
    return message, obj


_DROP = object()
REG = EXAMPLES[0].to_json()
ANS = EXAMPLES[2].to_json()
SCH = {"peer_id": "p-1", "have": [0], "failed": [], "want": 1, "wait": 1}
A = ASSIGNMENT.to_json()

# (message, body, the field the error must name)
MALFORMED = [
    (_bad(m.RegisterRequest, REG, task_id="../../etc/passwd"), "task_id"),
    (_bad(m.RegisterRequest, REG, task_id=5), "task_id"),
    (_bad(m.RegisterRequest, REG, task_id=_DROP), "task_id"),
    (_bad(m.RegisterRequest, REG, task_id=task_id_for_url("http://origin.test/good")), "task_id"),
    (_bad(m.RegisterRequest, REG, tag="other"), "task_id"),
    (_bad(m.RegisterRequest, REG, digest="sha256:" + "0" * 64), "task_id"),
    (_bad(m.RegisterRequest, REG, digest="md5:" + "0" * 32), "digest"),
    (_bad(m.RegisterRequest, REG, digest="sha256:XYZ"), "digest"),
    (_bad(m.RegisterRequest, REG, filter=[1]), "filter"),
    (_bad(m.RegisterRequest, REG, tag=["t"]), "tag"),
    (_bad(m.RegisterRequest, REG, url="ftp://origin.test/f"), "url"),
    (_bad(m.RegisterRequest, REG, url="http:///nohost"), "url"),
    (_bad(m.RegisterRequest, REG, url="http://origin.test/a b"), "url"),
    (_bad(m.RegisterRequest, REG, url="http://o:99999/"), "url"),
    (_bad(m.RegisterRequest, REG, url="http://o/" + "a" * 9000), "url"),
    (_bad(m.RegisterRequest, REG, url=None), "url"),
    (_bad(m.RegisterRequest, REG, headers={"X": "a\r\nB: c"}), "headers"),
    (_bad(m.RegisterRequest, REG, headers={"X Y": "a"}), "headers"),
    (_bad(m.RegisterRequest, REG, headers=["x"]), "headers"),
    (_bad(m.RegisterRequest, REG, headers={f"H{i}": "v" for i in range(65)}), "headers"),
    (_bad(m.RegisterRequest, REG, headers={"H": "v" * 40000}), "headers"),
    (_bad(m.RegisterRequest, REG, peer={"peer_id": "p", "host": "h", "port": 0}), "peer"),
    (_bad(m.RegisterRequest, REG, peer={"peer_id": "-p", "host": "h", "port": 1}), "peer"),
    (_bad(m.RegisterRequest, REG, peer="x"), "peer"),
    (_bad(m.RegisterRequest, REG, redirected="yes"), "redirected"),
    (_bad(m.RegisterAnswer, ANS, task_id=None), "task_id"),
    (_bad(m.RegisterAnswer, ANS, token="a b.c"), "token"),
    (_bad(m.RegisterAnswer, ANS, token=5), "token"),
    (_bad(m.RegisterAnswer, ANS, token="a" * 2000 + "." + "A" * 86), "token"),
    (_bad(m.RegisterAnswer, ANS, keys=["k"]), "keys"),
    (_bad(m.RegisterAnswer, ANS, keys={"nothex": "A" * 43}), "keys"),
    (_bad(m.RegisterAnswer, ANS, keys={"0123456789abcdef": 5}), "keys"),
    (_bad(m.RegisterAnswer, ANS, keys={f"{i:016x}": "A" * 43 for i in range(65)}), "keys"),
    (_bad(m.ScheduleAnswer, {"assignments": [], "done": True}, token="x"), "token"),
    (_bad(m.RegisterAnswer, ANS, length=-1), "length"),
    (_bad(m.RegisterAnswer, ANS, length=True), "length"),
    (_bad(m.RegisterAnswer, ANS, length="10"), "length"),
    (_bad(m.RegisterAnswer, ANS, piece_size=0), "piece_size"),
    (_bad(m.RegisterAnswer, ANS, piece_size=_DROP), "piece_size"),
    (_bad(m.RegisterAnswer, ANS, piece_count=4), "piece_count"),
    (_bad(m.RegisterAnswer, ANS, piece_digest=7), "piece_digest"),
    (_bad(m.RegisterAnswer, ANS, seed=None), "seed"),
    (_bad(m.RegisterAnswer, ANS, etag='"a"\r\nX-Injected: 1'), "etag"),
    (_bad(m.RegisterAnswer, ANS, etag=5), "etag"),
    (_bad(m.UploadCut, {"peer_id": "p-1", "receiver": "p-2"}, receiver=None), "receiver"),
    (_bad(m.UploadCut, {"peer_id": "p-1", "receiver": "p-2"}, receiver="../x"), "receiver"),
    (_bad(m.UploadCut, {"peer_id": "p-1", "receiver": "p-2"}, peer_id=7), "peer_id"),
    (_bad(m.RegisterAnswer, ANS, etag=""), "etag"),
    (_bad(m.RegisterAnswer, ANS, etag='"' + "a" * 1100 + '"'), "etag"),
    (_bad(m.RegisterAnswer, ANS, last_modified="Sat,\x0005 Dec"), "last_modified"),
    (_bad(m.RegisterAnswer, ANS, last_modified=["x"]), "last_modified"),
    (_bad(m.ScheduleRequest, SCH, peer_id=None), "peer_id"),
    (_bad(m.ScheduleRequest, SCH, have="x"), "have"),
    (_bad(m.ScheduleRequest, SCH, have=[-1]), "have"),
    (_bad(m.ScheduleRequest, SCH, have=[1.5]), "have"),
    (_bad(m.ScheduleRequest, SCH, fetched="x"), "fetched"),
    (_bad(m.ScheduleRequest, SCH, fetched=[-1]), "fetched"),
    (_bad(m.ScheduleRequest, SCH, fetched=[True]), "fetched"),
    (_bad(m.ScheduleRequest, SCH, fetched=[0] * (m.MAX_LIST + 1)), "fetched"),
    (_bad(m.ScheduleRequest, SCH, have=[0] * (m.MAX_LIST + 1)), "have"),
    (_bad(m.ScheduleRequest, SCH, failed=[{"index": 0}]), "failed source"),
    (_bad(m.ScheduleRequest, SCH, failed=[{"index": -1, "source": "q"}]), "failed"),
    (_bad(m.ScheduleRequest, SCH, failed=[1]), "failed"),
    (_bad(m.ScheduleRequest, SCH, failed={}), "failed"),
    (_bad(m.ScheduleRequest, SCH, want=-1), "want"),
    (_bad(m.ScheduleRequest, SCH, want=True), "want"),
    (_bad(m.ScheduleRequest, SCH, want=m.MAX_WANT + 1), "want"),
    (_bad(m.ScheduleRequest, SCH, wait="soon"), "wait"),
    (_bad(m.ScheduleRequest, SCH, wait=-1), "wait"),
    (_bad(m.ScheduleRequest, SCH, wait=float("inf")), "wait"),
    (_bad(m.ScheduleRequest, SCH, wait=float("nan")), "wait"),
    (_bad(m.ScheduleRequest, SCH, wait=False), "wait"),
    (_bad(m.ScheduleRequest, SCH, cursor=-1), "cursor"),
    (_bad(m.ScheduleRequest, SCH, cursor=True), "cursor"),
    (_bad(m.ScheduleRequest, SCH, cursor=1.5), "cursor"),
    (_bad(m.ScheduleRequest, SCH, cursor="0"), "cursor"),
    (_bad(m.ScheduleAnswer, {"assignments": [], "done": False}, assignments=None), "assignments"),
    (_bad(m.ScheduleAnswer, {"assignments": [], "done": False}, done=_DROP), "done"),
    (_bad(m.ScheduleAnswer, {"assignments": [], "done": False}, done=1), "done"),
    (_bad(m.HeartbeatRequest, {"peer_id": "p", "tasks": []}, peer_id=_DROP), "peer_id"),
    (_bad(m.HeartbeatRequest, {"peer_id": "p", "tasks": []}, tasks="x"), "tasks"),
    (_bad(m.HeartbeatRequest, {"peer_id": "p", "tasks": []}, tasks=[1]), "tasks"),
    (_bad(m.HeartbeatRequest, {"peer_id": "p", "tasks": []}, tasks=["../x"]), "tasks"),
    (_bad(m.HeartbeatRequest, {"peer_id": "p", "tasks": []},
          tasks=["t"] * (m.MAX_HEARTBEAT_TASKS + 1)), "tasks"),
    (_bad(m.HeartbeatAnswer, {"unknown": []}, unknown=None), "unknown"),
    (_bad(m.HeartbeatAnswer, {"unknown": []}, unknown=[None]), "unknown"),
    (_bad(m.LeaveRequest, {"peer_id": "p"}, peer_id="a b"), "peer_id"),
    (_bad(m.CorruptReport, {"peer_id": "p"}, peer_id=_DROP), "peer_id"),
    (_bad(m.CorruptReport, {"peer_id": "p"}, reason=5), "reason"),
    (_bad(m.CorruptReport, {"peer_id": "p"}, reason="x" * 2000), "reason"),
    (_bad(m.TaskInfo, {"task_id": "t"}, task_id=None), "task_id"),
    (_bad(m.TaskInfo, {"task_id": "t"}, length=-1), "length"),
    (_bad(m.TaskInfo, {"task_id": "t"}, seeded="1"), "seeded"),
    (_bad(m.TaskInfo, {"task_id": "t"}, peers=None), "peers"),
    (_bad(m.TaskInfo, {"task_id": "t"}, url=1), "url"),
    (_bad(m.TaskInfo, {"task_id": "t"}, state=None), "state"),
    (_bad(m.TaskInfo, {"task_id": "t"}, origin_status=99), "origin_status"),
    (_bad(m.TaskInfo, {"task_id": "t"}, done_peers=-1), "done_peers"),
    (_bad(m.ErrorAnswer, {"error": "x"}, error=_DROP), "error"),
    (_bad(m.ErrorAnswer, {"error": "x"}, origin_status="404"), "origin_status"),
    (_bad(m.ErrorAnswer, {"error": "x"}, owner="no port"), "owner"),
    (_bad(m.ErrorAnswer, {"error": "x"}, owner=5), "owner"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, url="gopher://x/"), "url"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, type="video"), "type"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, task_id="../x"), "task_id"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, task_id="a" * 64), "task_id"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, filter=[1]), "filter"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, tag=5), "tag"),
    (_bad(pm.PreheatRequest, {"url": "http://o/f"}, headers="x"), "headers"),
    (_bad(pm.PreheatRequest, {"image": "reg.io/a:1"}, image="noregistry"), "image"),
    (_bad(pm.PreheatRequest, {"image": "reg.io/a:1"}, image="reg.io/A:1"), "image"),
    (_bad(pm.PreheatRequest, {"image": "reg.io/a:1"}, image="reg.io/a@sha256:1"), "image"),
    (_bad(pm.PreheatRequest, {"image": "reg.io/a:1"}, platform="linux"), "platform"),
    (_bad(pm.PreheatRequest, {"type": "image", "url": "https://reg/v2/a/manifests/1"},
          url="https://reg/a"), "url"),
    (_bad(pm.PreheatStatus, EXAMPLES[-1].to_json(), id=None), "id"),
    (_bad(pm.PreheatStatus, EXAMPLES[-1].to_json(), created=None), "created"),
    (_bad(pm.PreheatStatus, EXAMPLES[-1].to_json(), finished="x"), "finished"),
    (_bad(pm.PreheatStatus, EXAMPLES[-1].to_json(), tasks=["x"]), "tasks"),
    (_bad(pm.PreheatStatus, EXAMPLES[-1].to_json(), length=-1), "length"),
    ((m.ScheduleRequest, {"peer_id": "p", "seed_only": "yes"}), "seed_only"),
    ((m.ScheduleRequest, {"peer_id": "p", "cursor": 0, "queue": 1}), "queue"),
]


class MalformedTests(SynchronousTestCase):

    def test_every_malformed_field_rejected(self):
        """Each malformed field is refused with one MessageError (a ValueError)
        that names the field, in its attribute and in its message."""
        for (message, body), field in MALFORMED:
            with self.assertRaises(MessageError, msg=(message.__name__, body)) as cm:
                message.parse(body)
            self.assertIsInstance(cm.exception, ValueError)
            self.assertEqual(cm.exception.field, field, (message.__name__, body))
            self.assertIn(field.split()[0], str(cm.exception))

    def test_not_an_object(self):
        """A body that is not a JSON object is refused by every message."""
        for cls in {type(msg) for msg in EXAMPLES}:
            for body in (None, [], "x", 1):
                self.assertRaises(MessageError, cls.parse, body)

    def test_bad_assignment_fields(self):
        """parse_assignment names the field of a malformed assignment."""
        for change, field in ((dict(index=True), "index"), (dict(size=0), "size"),
                              (dict(digest=DIGEST.upper()), "digest"),
                              (dict(source={"peer_id": "x"}), "source")):
            with self.assertRaises(MessageError) as cm:
                m.parse_assignment(dict(A, **change))
            self.assertEqual(cm.exception.field, field)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
MESSAGES = sorted({type(msg) for msg in EXAMPLES}, key=lambda c: c.__name__)


def _mutations(msg):
    """Bodies near a valid one: one field replaced by an arbitrary JSON value."""
    obj = msg.to_json()
    return st.tuples(st.sampled_from(sorted(obj) or ["x"]), json_values).map(
        lambda kv: {**obj, kv[0]: kv[1]})


class FuzzTests(SynchronousTestCase):

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(MESSAGES), json_values)
    def test_parse_arbitrary_json(self, cls, obj):
        """parse() of any JSON value gives a message or a MessageError, nothing else;
        what parses serializes to a body that parses to the same message."""
        self._check(cls, obj)

    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from(EXAMPLES).flatmap(lambda msg: st.tuples(st.just(type(msg)),
                                                                    _mutations(msg))))
    def test_parse_mutated_bodies(self, pair):
        """A valid body with one field replaced by any JSON value parses or is
        refused with MessageError; never another exception."""
        self._check(*pair)

    def _check(self, cls, obj):
        try:
            msg = cls.parse(obj)
        except MessageError:
            return
        again = cls.parse(json.loads(msg.serialize()))
        self.assertEqual(again.to_json(), msg.to_json())


class RegisterRangeTests(SynchronousTestCase):
    """The bytes a registering peer wants first (C{"range"})."""

    URL = "http://origin.test/f"

    def body(self, **extra):
        obj = {"task_id": task_id_for_url(self.URL), "url": self.URL, "headers": {}}
        obj.update(extra)
        return obj

    def test_round_trip(self):
        """A wanted range survives serialize/parse; absent means None."""
        req = m.RegisterRequest.parse(self.body(range=[10, 20]))
        self.assertEqual(req.want, (10, 20))
        self.assertEqual(m.RegisterRequest.parse(json.loads(req.serialize())).want, (10, 20))
        self.assertIsNone(m.RegisterRequest.parse(self.body()).want)
        self.assertNotIn("range", m.RegisterRequest.parse(self.body()).to_json())

    def test_refused(self):
        """A range that is not two ordered non-negative integers is refused, naming the field."""
        for bad in ([1], [5, 2], [-1, 3], ["0", 1], {"a": 1}, [0, True]):
            e = self.assertRaises(MessageError, m.RegisterRequest.parse, self.body(range=bad))
            self.assertEqual(e.field, "range")

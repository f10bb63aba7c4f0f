"""Tests for the peer secret and failure reasons in the peer<->supernode
messages, and for the peer's supernode client keeping its secret per
supernode (issue 10)."""
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.control.client import SupernodeClient
from dragonfly.control.messages import (
    FailedPiece, HeartbeatRequest, LeaveRequest, MessageError, RegisterAnswer,
    RegisterRequest, ScheduleRequest)
from dragonfly.taskid import task_id_for_url
from dragonfly.test.test_control_client import (
    GOOD, ME, REGISTER, SN1, SN2, TASK, _Hosts, _Scripted)

SECRET = "abcdefghijklmnopqrstuv"


class MessageTests(SynchronousTestCase):
    def test_secret_round_trip(self):
        """Every call of a registered peer, and registration and its answer,
        carry the secret; without one there is no secret field."""
        for msg in (ScheduleRequest("p-1", secret=SECRET), HeartbeatRequest("p-1", (), SECRET),
                    LeaveRequest("p-1", SECRET),
                    RegisterRequest(task_id_for_url("http://o/f"), "http://o/f", {}, ME,
                                    secret=SECRET)):
            self.assertEqual(msg.to_json()["secret"], SECRET)
            self.assertEqual(type(msg).parse(msg.to_json()), msg)
        self.assertNotIn("secret", LeaveRequest("p-1").to_json())
        answer = RegisterAnswer.parse(dict(GOOD, secret=SECRET))
        self.assertEqual(answer.secret, SECRET)
        self.assertEqual(RegisterAnswer.parse(answer.to_json()), answer)

    def test_bad_secret(self):
        """A secret that is not 16-128 URL-safe characters does not parse."""
        for bad in ("short", 7, "a b" * 8, "x" * 129):
            self.assertRaises(MessageError, LeaveRequest.parse, {"peer_id": "p-1", "secret": bad})

    def test_failure_reason(self):
        """A failed entry may carry a reason ("digest": failed verification);
        none means a failed fetch; an unknown reason does not parse."""
        req = ScheduleRequest("p-1", (), (FailedPiece(1, "s-1", "digest"), (2, "s-2")))
        obj = req.to_json()
        self.assertEqual(obj["failed"], [{"index": 1, "source": "s-1", "reason": "digest"},
                                         {"index": 2, "source": "s-2"}])
        self.assertEqual(ScheduleRequest.parse(obj).failed,
                         (FailedPiece(1, "s-1", "digest"), FailedPiece(2, "s-2", "fetch")))
        obj["failed"][0]["reason"] = "sabotage"
        self.assertRaises(MessageError, ScheduleRequest.parse, obj)


class ClientSecretTests(SynchronousTestCase):
    def test_answer_secret_kept_per_supernode(self):
        """The client offers its own secret; the secret a supernode's answer
        names is the one later calls to that supernode carry."""
        sn1 = _Scripted(tasks=(200, dict(GOOD, secret=SECRET)),
                        schedule=(200, {"assignments": [], "done": False}),
                        heartbeat=(200, {"unknown": []}), leave=(200, {}))
        sn2 = _Scripted(tasks=(200, GOOD), heartbeat=(200, {"unknown": []}))
        hosts = _Hosts({"sn1.test:8002": sn1, "sn2.test:8002": sn2})
        client = SupernodeClient(Clock(), hosts, [SN1, SN2])
        d = Deferred.fromCoroutine(client.register(REGISTER))
        hosts.flush()
        self.assertEqual(self.successResultOf(d)[1].secret, SECRET)
        self.assertEqual(sn1.requests[0][1]["secret"], client.secret)
        self.assertEqual(client.secrets, {SN1: SECRET})
        d = Deferred.fromCoroutine(client.schedule(SN1, TASK, ScheduleRequest(ME.peer_id)))
        hosts.flush()
        self.successResultOf(d)
        client.joined(TASK, SN1)
        client.joined("t2", SN2)
        d = Deferred.fromCoroutine(client.heartbeat(ME.peer_id))
        hosts.flush()
        self.successResultOf(d)
        hosts.flush()
        self.successResultOf(client.leave(TASK, ME.peer_id))
        self.assertEqual([b["secret"] for _, b in sn1.requests[1:]], [SECRET] * 3)
        self.assertEqual(sn2.requests[0][1]["secret"], client.secret)

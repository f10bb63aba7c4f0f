"""Tests of the mirror's blobs (dragonfly.dfdaemon.blobs): layers sent from the
peer, verified against their digest, with the client's socket pacing the swarm."""
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPullProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.server import Site
from zope.interface import implementer

from dragonfly.dfdaemon.blobs import BlobSink
from dragonfly.metrics import sample
from dragonfly.test.mirrorfakes import BLOB, DIGEST, REALM, FakeTaskFile, MirrorTestMixin


class BlobTests(MirrorTestMixin, SynchronousTestCase):
    def test_blob_through_p2p(self):
        """When a client GETs a blob, the bytes come from P2P (task id = digest,
        URL = upstream blob URL, the client's Authorization passed on), with
        Content-Length and Docker-Content-Digest; the registry only answers
        a HEAD access check."""
        self.registry.token = b"t0k"
        response = self.get(f"/v2/library/app/blobs/{DIGEST}",
                            headers={b"authorization": [b"Bearer t0k"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(response.length, len(BLOB))
        self.assertEqual(response.headers.getRawHeaders(b"docker-content-digest"), [DIGEST.encode()])
        self.assertEqual(self.peer.downloads, [{
            "url": f"http://registry.example:5000/v2/library/app/blobs/{DIGEST}",
            "headers": {"Authorization": "Bearer t0k"}, "task_id": DIGEST, "want": None}])
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD"])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_blob_bytes_total"), len(BLOB))
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob", "code": "200"}), 1)

    def test_blob_via_ns(self):
        """When ?ns= picks another allowed registry, the P2P URL points at it."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}?ns=other.example")
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(self.peer.downloads[0]["url"],
                         f"https://other.example/v2/library/app/blobs/{DIGEST}")

    def test_access_denied_by_registry(self):
        """When the registry refuses the client (no token), the client gets the
        registry's own 401 challenge and body; the swarm is not asked."""
        self.registry.token = b"t0k"
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [REALM])
        self.assertIn(b"UNAUTHORIZED", self.body(response))
        self.assertEqual(self.peer.downloads, [])

    def test_unknown_blob(self):
        """When the registry does not have the blob, the client gets its 404."""
        missing = "sha256:" + "1" * 64
        response = self.get(f"/v2/library/app/blobs/{missing}")
        self.assertEqual(response.code, 404)
        self.assertIn(b"BLOB_UNKNOWN", self.body(response))
        self.assertEqual(self.peer.downloads, [])

    def test_verified_copy_not_hashed_again(self):
        """When a complete copy matched its digest once, the next GET of that
        same copy is not hashed again; once its file changed (not intact),
        it is."""
        from dragonfly.dfdaemon import blobsink
        hashers = []
        real = blobsink.BlobHasher
        self.patch(blobsink, "BlobHasher", lambda *a: hashers.append(a) or real(*a))
        tf = FakeTaskFile(DIGEST, "u", len(BLOB))
        tf.is_complete = True
        intact = [True]
        tf.intact = lambda: intact[0]
        record = self.peer.download

        def download(url, on_start=None, **kw):
            record(url, **kw)
            on_start.callback(tf)
            return defer.succeed(tf)
        self.peer.download = download
        for changed, expected in [(False, 1), (False, 1), (True, 2)]:
            intact[0] = not changed
            response = self.get(f"/v2/library/app/blobs/{DIGEST}")
            self.assertEqual(self.body(response), BLOB)
            self.assertEqual(len(hashers), expected)

    def test_digest_mismatch_aborts(self):
        """When the bytes from P2P do not match the digest, the response is cut
        off (the client sees a failed transfer, never a complete one)."""
        self.peer.serve[DIGEST] = b"X" * len(BLOB)
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 200)
        d = response.content()
        self.pump()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob-corrupt", "code": "502"}), 1)

    def test_digest_mismatch_drops_and_reports(self):
        """A whole blob that does not match its digest is dropped by the peer,
        which reports it (self-healing: the next pull fetches it again)."""
        self.peer.serve[DIGEST] = b"X" * len(BLOB)
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        d = response.content()
        self.pump()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual([t for t, _ in self.peer.dropped], [DIGEST])
        self.assertIn(DIGEST, self.peer.dropped[0][1])

    def test_p2p_failure_falls_back_to_registry(self):
        """When the swarm cannot provide the blob, it is relayed from the registry."""
        self.peer.fail = Exception("no supernode")
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD", "GET"])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "blob-direct", "code": "200"}), 1)

    def test_streams_as_pieces_arrive(self):
        """When only the start of the blob is available, the client already has
        the headers and those bytes; the rest follows as it arrives."""
        self.peer.available = 300
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", unbuffered=True)
        self.assertEqual(response.code, 200)
        got = []
        done = defer.Deferred()

        from twisted.internet.protocol import Protocol

        class Collect(Protocol):
            def dataReceived(self, data):
                got.append(data)

            def connectionLost(self, reason):
                done.callback(reason.value)

        response.deliverBody(Collect())
        self.pump()
        # All available bytes but the held-back tail are there already.
        self.assertEqual(b"".join(got), BLOB[:300])
        self.assertNoResult(done)
        self.peer.release()
        self.pump()
        self.assertEqual(b"".join(got), BLOB)
        self.assertIsInstance(self.successResultOf(done), ResponseDone)

    def test_range(self):
        """When the client asks for a byte range, it gets 206 with that window."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", headers={b"range": [b"bytes=5-104"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(self.body(response), BLOB[5:105])
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes 5-104/%d" % len(BLOB)])
        response = self.get(f"/v2/library/app/blobs/{DIGEST}",
                            headers={b"range": [b"bytes=%d-" % len(BLOB)]})
        self.assertEqual(response.code, 416)

    def test_blob_head_passthrough(self):
        """When a client HEADs a blob, the registry's answer (size) comes back."""
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", method="HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"%d" % len(BLOB)])
        self.assertEqual(self.peer.downloads, [])
        self.assertEqual([r["method"] for r in self.registry.requests], ["HEAD"])

    def test_client_disconnect_stops_stream(self):
        """When the client goes away mid-blob, the stream from the swarm is stopped."""
        self.peer.available = 200
        site = Site(self.mirror.resource())
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /v2/library/app/blobs/%s HTTP/1.1\r\nHost: m\r\n\r\n"
                           % DIGEST.encode())
        self.pump()
        self.assertIn(b"200 OK", transport.value())
        [stream] = self.peer.streams
        self.assertFalse(stream.stopped)
        proto.connectionLost(ConnectionRefusedError("gone"))
        self.assertTrue(stream.stopped)


@implementer(IPullProducer)
class _CountingPull:
    def __init__(self):
        self.resumes = 0
        self.stopped = False

    def resumeProducing(self):
        self.resumes += 1

    def stopProducing(self):
        self.stopped = True


class _FakeRequest:
    def __init__(self):
        self.channel = object()
        self.producer = None
        self.written = []

    def registerProducer(self, producer, streaming):
        assert self.producer is None and streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.written.append(data)


class BlobSinkTests(SynchronousTestCase):
    def test_pull_producer_paced_by_client(self):
        """When the client's socket is full (paused), no more chunks are asked
        for; when it drains, exactly one more is."""
        request = _FakeRequest()
        sink = BlobSink(request, DIGEST, len(BLOB))
        pull = _CountingPull()
        sink.registerProducer(pull, False)
        self.assertIs(request.producer, sink)
        self.assertEqual(pull.resumes, 1)
        sink.write(BLOB[:10])
        self.assertEqual(pull.resumes, 2)
        sink.pauseProducing()
        sink.write(BLOB[10:20])
        self.assertEqual(pull.resumes, 2)
        sink.resumeProducing()
        self.assertEqual(pull.resumes, 3)
        sink.stopProducing()
        self.assertTrue(pull.stopped)
        self.assertIsNone(request.producer)

    def test_verifies_whole_blob(self):
        """When all bytes arrive and match, verified() is true; a wrong byte or
        a short or long stream makes it false."""
        for data, ok in [(BLOB, True), (BLOB[:-1] + b"!", False), (BLOB[:-1], False),
                         (BLOB + b"x", False)]:
            sink = BlobSink(_FakeRequest(), DIGEST, len(BLOB))
            sink.write(data)
            self.assertEqual(self.successResultOf(sink.check()), ok)

    def test_window(self):
        """When a window is set, only those bytes are written but all are hashed."""
        request = _FakeRequest()
        sink = BlobSink(request, DIGEST, len(BLOB), first=7, last=20)
        for i in range(0, len(BLOB), 9):
            sink.write(BLOB[i:i + 9])
        self.assertEqual(b"".join(request.written), BLOB[7:18])  # the tail is held back
        self.assertTrue(self.successResultOf(sink.check()))
        self.successResultOf(sink.release())
        self.assertEqual(b"".join(request.written), BLOB[7:21])

"""The mirror's blob stream-out over a real loopback socket: the ordered stream's
file ranges through BlobSink and FileSender (sendfile), gated by the digest."""
import hashlib
import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.server import Site
from zope.interface import implementer

from dragonfly.dfdaemon import blobs, blobsink
from dragonfly.dfdaemon.mirror import RegistryMirror
from dragonfly.dfdaemon.upstream import Upstreams
from dragonfly.interfaces import IDownloader
from dragonfly.metrics import PeerMetrics
from dragonfly.peer.stream import OrderedPushProducer
from dragonfly.runtime.threads import SyncRunner
from dragonfly.test.test_mirror_blobsink import _Task

PIECE = 1024 * 1024
BLOB = os.urandom(5 * PIECE + 4321)     # several sendfile waits on loopback
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class _HeldTask(_Task):
    """A task held complete in a real file, as the ordered stream reads it."""

    is_complete = True

    def __init__(self, data):
        _Task.__init__(self, data)
        self.task_id = DIGEST
        self.length = len(data)
        self.piece_size = PIECE

    def piece_range(self, index):
        off = index * PIECE
        return off, min(PIECE, self.length - off)

    def readable(self, index):
        return True

    has = readable

    def consumed(self, index):
        pass

    def intact(self):
        return True


@implementer(IDownloader)
class _Peer:
    def __init__(self, task):
        self.task = task
        self.dropped = []
        self.streams = []

    def download(self, url, on_start=None, **kw):
        on_start.callback(self.task)
        return defer.succeed(self.task)

    def stream(self, task_file, consumer, start=0, end=None):
        end = task_file.length if end is None else end
        producer = OrderedPushProducer(lambda task_id: None, task_file, consumer, start, end)
        self.streams.append(producer)
        producer.start()
        return producer.done

    def drop_corrupt(self, task_id, reason):
        self.dropped.append(task_id)
        return defer.succeed(None)


class SendfileMirrorTests(TestCase):
    async def serve(self, data, complete=True):
        task = _HeldTask(data)
        task.is_complete = complete
        self.addCleanup(task.close)
        peer = _Peer(task)
        upstreams = Upstreams.from_options("http://registry.example:5000", (),
                                           ("registry.example:5000",))
        mirror = RegistryMirror(reactor, None, peer, upstreams, PeerMetrics(),
                                check_access=False, runner=SyncRunner())
        sends = []
        real = blobsink.BlobSink._send_range

        def send_range(sink, fd, offset, length):
            sends.append((offset, length))
            return real(sink, fd, offset, length)
        self.patch(blobsink.BlobSink, "_send_range", send_range)
        self.senders = []
        real_sender = blobs.FileSender

        def sender(*args, **kw):
            self.senders.append(real_sender(*args, **kw))
            return self.senders[-1]
        self.patch(blobs, "FileSender", sender)
        port = reactor.listenTCP(0, Site(mirror.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        url = b"http://127.0.0.1:%d/v2/library/app/blobs/%s" % (port.getHost().port,
                                                                DIGEST.encode())
        response = await Agent(reactor, pool=pool).request(b"GET", url)
        return task, peer, response, sends

    async def test_blob_sent_by_sendfile(self):
        """When the client is plain HTTP over TCP, the blob goes out as file
        ranges (sendfile while it is still coming in), exactly the blob's
        bytes, the last 64 KiB after the digest matched; the task file is given back."""
        task, peer, response, sends = await self.serve(BLOB, complete=False)
        self.assertEqual(response.code, 200)
        body = await readBody(response)
        self.assertEqual(body, BLOB)
        self.assertEqual(sum(n for _, n in sends), len(BLOB))
        self.assertEqual(sends[-1], (len(BLOB) - blobsink.HOLD, blobsink.HOLD))
        self.assertEqual(peer.dropped, [])
        self.assertEqual([s._view for s in self.senders], [None])
        await _until(lambda: task.pins == 0)

    async def test_cached_blob_copied_for_a_local_client(self):
        """When the blob is held whole and the client is on this host, the
        same ranges go through the sender's copy path: the same bytes, the
        last 64 KiB still after the digest matched."""
        task, peer, response, sends = await self.serve(BLOB)
        body = await readBody(response)
        self.assertEqual(body, BLOB)
        self.assertEqual(sum(n for _, n in sends), len(BLOB))
        self.assertEqual(sends[-1], (len(BLOB) - blobsink.HOLD, blobsink.HOLD))
        self.assertEqual(len(self.senders), 1)
        self.assertIsNotNone(self.senders[0]._view)
        await _until(lambda: task.pins == 0)

    async def test_corrupt_blob_never_complete(self):
        """When the held file does not match the digest, the client's
        transfer fails (never a complete body) and the copy is dropped."""
        bad = bytearray(BLOB)
        bad[3 * PIECE] ^= 1
        task, peer, response, sends = await self.serve(bytes(bad))
        self.assertEqual(response.code, 200)
        with self.assertRaises(ResponseFailed):
            await readBody(response)
        self.assertEqual(sum(n for _, n in sends), len(BLOB) - blobsink.HOLD)
        self.assertEqual(peer.dropped, [DIGEST])
        await _until(lambda: task.pins == 0)


async def _until(predicate, timeout=10.0):
    from twisted.internet import task as ttask
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await ttask.deferLater(reactor, 0.01, lambda: None)



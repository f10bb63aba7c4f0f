"""PeerNode, the facade: downloads shared by their callers, heartbeats, the settings.

The node runs against a fake supernode (Klein over StubTreq) and an in-memory
piece pool (L{dragonfly.test.peernodes}); the parts have their own modules:
test_peer_node_supernodes, _session, _backsource, _stream, _wakeup.
"""
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import sample
from dragonfly.peer.node import DownloadError, NodeSettings
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peernodes import (  # noqa: F401 (ME, PIECE, URL, _Hosts: other tests')
    DATA, ME, PIECE, URL, NodeMixin, _Hosts)


class DownloadTests(NodeMixin, SynchronousTestCase):

    def test_download_from_seed(self):
        """When the supernode assigns every piece from its seed, the node fetches, verifies
        and writes them all, counts them as supernode bytes and reports them as held."""
        node = self.make()
        progress = []
        tf = self.successResultOf(node.download(URL, on_progress=lambda c, n: progress.append(c)))
        self.assertTrue(tf.is_complete)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(tf.task_id, task_id_for_url(URL))
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "supernode"}), len(DATA))
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "peer"}), 0)
        self.assertEqual(self.supernode.have, set(range(tf.piece_count)))
        self.assertEqual(progress[-1], len(DATA))
        reg = self.supernode.registrations[0]
        self.assertEqual(reg["peer"], ME.to_json())
        self.assertEqual(reg["url"], URL)
        self.assertFalse(tf.pinned)
        self.assertEqual(self.origin.calls, [])

    def test_complete_task_returns_at_once(self):
        """When the store already holds the whole task, download() returns it without
        asking the supernode."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        n = len(self.supernode.registrations)
        self.clock.advance(100)
        tf2 = self.successResultOf(node.download(URL))
        self.assertIs(tf, tf2)
        self.assertEqual(len(self.supernode.registrations), n)
        self.assertEqual(tf2.last_access, 100)

    def test_concurrent_downloads_share(self):
        """When two callers download the same task at once, one download serves both."""
        node = self.make()
        self.pool.manual = True
        d1 = node.download(URL)
        d2 = node.download(URL)
        self.assertEqual(len(self.supernode.registrations), 1)
        while self.pool.held:
            self.pool.release()
        tf1, tf2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIs(tf1, tf2)
        self.assertEqual(len(self.supernode.registrations), 1)
        self.assertEqual(len(self.pool.fetches), tf1.piece_count)

    def test_pinned_while_downloading(self):
        """While a download runs its task is pinned (GC keeps it); afterwards it is not."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        tf = self.store.get(task_id_for_url(URL))
        self.assertTrue(tf.pinned)
        while self.pool.held:
            self.pool.release()
        self.successResultOf(d)
        self.assertFalse(tf.pinned)

    def test_one_caller_cancels(self):
        """When one of two callers cancels, the other still gets the file; when the last
        caller cancels, the download stops and leaves the swarm."""
        node = self.make()
        self.pool.manual = True
        d1 = node.download(URL)
        d2 = node.download(URL)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(node.active(), [task_id_for_url(URL)])
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(node.active(), [])
        self.assertEqual(len(self.supernode.leaves), 1)
        self.assertTrue(all(d.called for d, _ in self.pool.held))

    def hold_leaves(self):
        """Leave calls wait until the returned Deferred fires."""
        gate = Deferred()
        post = self.hosts.post

        def held(url, **kw):
            if not url.endswith("/leave"):
                return post(url, **kw)
            d = Deferred()
            gate.addCallback(lambda _: post(url, **kw).chainDeferred(d))
            return d
        self.hosts.post = held
        return gate

    def test_shutdown_waits_for_the_downloads_leave(self):
        """When the node stops during a download, the leave call the stopped
        download makes is answered before shutdown fires (the HTTP pool
        closes after it, or the supernode keeps counting the dead peer's
        assignments for their timeout)."""
        node = self.make()
        self.pool.manual = True
        d = node.download(URL)
        self.assertEqual(node.active(), [task_id_for_url(URL)])
        gate = self.hold_leaves()
        stopped = node.shutdown()
        self.failureResultOf(d, DownloadError)
        self.assertNoResult(stopped)
        self.assertEqual(self.supernode.leaves, [])
        gate.callback(None)
        self.hosts.flush()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(self.supernode.leaves), 1)

    def test_shutdown_leave_unanswered(self):
        """When a leave call hangs, shutdown fires after leave_timeout anyway."""
        node = self.make(leave_timeout=2.0)
        self.pool.manual = True
        node.download(URL).addErrback(lambda f: None)
        self.hold_leaves()
        stopped = node.shutdown()
        self.clock.advance(1.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(stopped))

    def test_task_id_and_headers_passed(self):
        """A content digest names the task; the id, the digest it is derived
        from and the origin headers go to the supernode as given."""
        node = self.make()
        tid = "sha256:" + "ab" * 32
        tf = self.successResultOf(node.download(URL, headers={"Authorization": "x"}, task_id=tid,
                                                digest=tid))
        self.assertEqual(tf.task_id, tid)
        self.assertEqual(self.supernode.registrations[0]["task_id"], tid)
        self.assertEqual(self.supernode.registrations[0]["digest"], tid)
        self.assertEqual(self.supernode.registrations[0]["headers"], {"Authorization": "x"})

    def test_task_id_must_be_derived(self):
        """A task id that is not the one derived from the URL, filters, tag and
        digest fails at once: no registration, no download."""
        node = self.make()
        for kw in ({"task_id": "sha256:" + "ab" * 32},
                   {"task_id": task_id_for_url(URL), "tag": "t"},
                   {"digest": "sha256:XY"}):
            f = self.failureResultOf(node.download(URL, **kw), DownloadError)
            self.assertTrue(str(f.value))
        self.assertEqual(self.supernode.registrations, [])

    def test_answer_for_another_task_refused(self):
        """A registration answer naming another task is never used for this one."""
        node = self.make()
        sn = self.supernode
        sn.register_answer = (200, {
            "task_id": "b" * 64, "length": len(sn.data), "piece_size": sn.piece_size,
            "piece_count": len(sn.pieces), "seed": sn.seed.to_json(), "piece_digest": "blake3"})
        d = node.download(URL, back_source=False)
        f = self.failureResultOf(d, DownloadError)
        self.assertIn("b" * 64, str(f.value))

    def test_bad_arguments(self):
        """Bad URLs, task ids and patterns fail at once with a DownloadError."""
        node = self.make()
        for kw in ({"url": "ftp://x/y"}, {"url": URL, "task_id": "../etc"},
                   {"url": URL, "pattern": "magic"}):
            f = self.failureResultOf(node.download(**kw), DownloadError)
            self.assertTrue(str(f.value))
        self.assertEqual(self.supernode.registrations, [])

    def test_empty_file(self):
        """A zero-length file completes with no pieces to fetch."""
        node = self.make(data=b"")
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(tf.length, 0)
        self.assertTrue(tf.is_complete)


class HeartbeatTests(NodeMixin, SynchronousTestCase):

    def test_heartbeat_names_finished_tasks(self):
        """After a download, heartbeat() tells the supernode the node still
        holds the task; a task the supernode answers as unknown is forgotten
        (no more heartbeats, no leave for it)."""
        node = self.make()
        tf = self.successResultOf(node.download(URL))
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.assertEqual(self.supernode.heartbeats,
                         [{"peer_id": ME.peer_id, "tasks": [tf.task_id],
                           "secret": node._supernodes.secret}])
        self.supernode.forgotten.add(tf.task_id)
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.assertEqual(len(self.supernode.heartbeats), 2)
        self.successResultOf(node.leave(tf.task_id))
        self.assertEqual(self.supernode.leaves, [])


class NodeSettingsTests(SynchronousTestCase):

    def test_clamped_and_frozen(self):
        """NodeSettings clamps concurrency to at least 1 and max_buffered to at
        least 0, and cannot be changed once made."""
        s = NodeSettings(concurrency=0, max_buffered=-5)
        self.assertEqual((s.concurrency, s.max_buffered), (1, 0))
        with self.assertRaises(Exception):
            s.concurrency = 4

    def test_node_defaults(self):
        """A PeerNode made without settings uses the NodeSettings defaults."""
        from dragonfly.peer.node import PeerNode
        node = self.make_node()
        self.assertEqual(node.settings, NodeSettings())
        self.assertIsInstance(node, PeerNode)

    def make_node(self):
        from twisted.internet.task import Clock

        from dragonfly.peer.node import NodeDeps, PeerNode
        return PeerNode(NodeDeps(Clock(), None, None, None, None, None), [], ME)

    def test_peer_info_replaceable(self):
        """Replacing node.peer_info (the service does, once the piece port is
        bound) changes what the supernode calls send."""
        from dragonfly.interfaces import PeerInfo
        node = self.make_node()
        other = PeerInfo(ME.peer_id, "192.0.2.1", 4000)
        node.peer_info = other
        self.assertIs(node.peer_info, other)


class PeerInfoTests(NodeMixin, SynchronousTestCase):

    def test_calls_carry_current_peer_info(self):
        """After node.peer_info is replaced, registration names the new
        PeerInfo and schedule, heartbeat and leave calls its peer id."""
        from dragonfly.interfaces import PeerInfo
        node = self.make()
        other = PeerInfo("other-2-00000000", "192.0.2.1", 4000)
        node.peer_info = other
        tf = self.successResultOf(node.download(URL))
        self.assertEqual([r["peer"] for r in self.supernode.registrations], [other.to_json()])
        self.assertEqual({b["peer_id"] for b in self.supernode.schedules}, {other.peer_id})
        self.successResultOf(Deferred.fromCoroutine(node.heartbeat()))
        self.assertEqual(self.supernode.heartbeats[-1]["peer_id"], other.peer_id)
        self.successResultOf(node.leave(tf.task_id))
        self.assertEqual(self.supernode.leaves[-1], (tf.task_id, {
            "peer_id": other.peer_id, "secret": node._supernodes.secret}))


class JoiningTests(SynchronousTestCase):
    """The Download shared by a task's callers, on its own."""

    def make(self):
        from twisted.internet.task import Clock

        from dragonfly.metrics import PeerMetrics
        from dragonfly.peer.joining import Download
        self.metrics = PeerMetrics()
        dl = Download("t", URL, {}, "p2p", True, Clock(), self.metrics)
        dl.run = Deferred()
        return dl

    def test_last_caller_cancels_run(self):
        """When every caller has cancelled and no stream reads, the run is cancelled."""
        dl = self.make()
        d1, d2 = dl.join(), dl.join()
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertFalse(dl.run.called)
        d2.cancel()
        self.failureResultOf(d2, CancelledError)
        self.failureResultOf(dl.run, CancelledError)

    def test_start_hooks_and_failure(self):
        """on_start hooks get the task file when it is set; a late caller gets it
        at once; a failure reaches every caller as a DownloadError."""
        from twisted.python.failure import Failure

        class TF:
            length, completed_bytes, pinned = 10, 0, 0

            def pin(self):
                self.pinned += 1

            def unpin(self):
                self.pinned -= 1

            def abandon(self):
                self.abandoned = True
        dl = self.make()
        started, progress = [], []
        d = dl.join(on_start=started.append, on_progress=lambda c, n: progress.append((c, n)))
        tf = TF()
        dl.set_task_file(tf)
        self.assertEqual((started, progress, tf.pinned), ([tf], [(0, 10)], 1))
        late = []
        d2 = dl.join(on_start=late.append)
        self.assertEqual(late, [tf])
        dl.finish(Failure(ValueError("boom")))
        f = self.failureResultOf(d, DownloadError)
        self.assertIn("boom", str(f.value))
        self.failureResultOf(d2, DownloadError)
        self.assertEqual(tf.pinned, 0)
        self.assertTrue(tf.abandoned)   # the store may take its partial back
        self.assertEqual(sample(self.metrics, "dragonfly_peer_downloads_total",
                                {"result": "failed"}), 1)
        self.flushLoggedErrors(ValueError)

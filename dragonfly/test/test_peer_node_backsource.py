"""Back-to-source: the origin body cut into pieces in the store (or spooled first)."""
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import sample
from dragonfly.origin import OriginError
from dragonfly.peer.backsource import OriginEvents, SpoolEvents
from dragonfly.peer.node import DownloadError
from dragonfly.taskid import task_id_for_url
from dragonfly.test.peerfakes import FakeOrigin
from dragonfly.test.peernodes import DATA, PIECE, URL, NodeMixin, _RefusingClient


class BackSourceTests(NodeMixin, SynchronousTestCase):

    def test_back_to_source_bounded_writes(self):
        """When the origin body streams faster than the disk, at most two piece
        writes are pending at once and the origin waits for one to finish:
        memory stays at a few pieces whatever the file size."""
        from twisted.internet.defer import Deferred as D

        class Manual:
            def __init__(self):
                self.calls, self.max = [], 0

            def run(self, f, *a, **kw):
                d = D()
                self.calls.append((d, f, a, kw))
                self.max = max(self.max, len(self.calls))
                return d

        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA, chunk=200),
                         piece_size=PIECE)
        runner = Manual()
        self.store.runner = runner
        d = node.download(URL)
        while runner.calls:
            self.assertLessEqual(len(runner.calls), 2)
            rd, f, a, kw = runner.calls.pop(0)
            rd.callback(f(*a, **kw))
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(runner.max, 2)

    def test_origin_error_reported(self):
        """When back-to-source meets an origin error, the download fails with it."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(error=OriginError(403)))
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertEqual(str(f.value), "origin answered 403")
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_origin_over_max_file_size(self):
        """When the origin announces more than max_file_size, back-to-source
        fails naming --max-file-size and creates nothing in the store."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA),
                         max_file_size=len(DATA) - 1)
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("--max-file-size", str(f.value))
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_origin_over_quota(self):
        """When the announced length could never fit the cache quota, back-to-source
        fails at once and evicts nothing."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA))
        self.store.quota = len(DATA) - 1
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("do not fit in the cache", str(f.value))
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_origin_without_length_over_max_file_size(self):
        """When an origin body without a length grows past max_file_size, the
        spooled download fails naming the flag and nothing is stored."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA, unknown_length=True),
                         max_file_size=len(DATA) - 1)
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("--max-file-size", str(f.value))
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_swarm_length_over_max_file_size(self):
        """When the supernode announces a task larger than max_file_size, the
        peer creates nothing for it and the download fails naming the flag."""
        node = self.make(max_file_size=len(DATA) - 1)
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("--max-file-size", str(f.value))
        self.assertIsNone(self.store.get(task_id_for_url(URL)))

    def test_origin_without_length(self):
        """When the origin gives no length, the body is spooled, then cut into pieces."""
        node = self.make(client=_RefusingClient(), origin=FakeOrigin(DATA, unknown_length=True))
        tf = self.successResultOf(node.download(URL))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertTrue(tf.is_complete)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_resumed_range_without_total_length(self):
        """When the pieces held of a task are resumed with a Range the origin
        answers 206 without the file's length ("bytes N-M/*"), the body is the
        rest of that file: the task keeps its length and gets every byte, not a
        new task made of the tail alone."""
        origin = FakeOrigin(DATA, unknown_length=True)
        real = origin.get

        def star_range(*a, **kw):
            def total_unknown(r):
                r.body_length = len(DATA) - r.offset   # as OriginClient says for "/*"
                return r
            return real(*a, **kw).addCallback(total_unknown)
        origin.get = star_range
        node = self.make(client=_RefusingClient(), origin=origin)
        held = 3
        tf = self.store.create(task_id_for_url(URL), URL, len(DATA), PIECE, etag='"e1"')
        for i in range(held):
            self.successResultOf(tf.write_new_piece(i, DATA[i * PIECE:(i + 1) * PIECE]))
        got = self.successResultOf(node.download(URL))
        self.assertEqual([offset for _, _, offset in origin.calls], [held * PIECE])
        self.assertEqual(got.length, len(DATA))
        self.assertEqual(self.read_all(got), DATA)
        self.assertTrue(got.is_complete)

    def whole_body_origin(self, data, validator):
        """A FakeOrigin over C{data} that answers every request, Range or not,
        with 200 and the whole body under the ETag C{validator} (None: none)."""
        from dragonfly.test.peerfakes import _FakeOriginResponse
        origin = FakeOrigin(data)

        def whole(url, headers=None, offset=0, etag=None, last_modified=None):
            origin.calls.append((url, dict(headers or {}), offset))
            r = _FakeOriginResponse(data, 0, origin.chunk)
            r.etag = validator
            return succeed(r)
        origin.get = whole
        return origin

    def hold_v1(self, pieces, etag=None):
        """A task of DATA's length holding C{pieces} of DATA (version 1)."""
        tf = self.store.create(task_id_for_url(URL), URL, len(DATA), PIECE, etag=etag)
        for i in pieces:
            self.successResultOf(tf.write_new_piece(i, DATA[i * PIECE:(i + 1) * PIECE]))
        return tf

    def test_whole_body_without_validators_replaces_held(self):
        """When a resumed back-to-source is answered 200 (the whole body again)
        by an origin without validators, the new body is the file: the pieces
        held from the earlier download are replaced, never mixed with the rest
        of another version."""
        v2 = bytes(b ^ 0x5A for b in DATA)
        node = self.make(client=_RefusingClient(), origin=self.whole_body_origin(v2, None))
        self.hold_v1([0, 1, 2])
        got = self.successResultOf(node.download(URL, pattern="source"))
        self.assertEqual(self.read_all(got), v2)
        self.assertTrue(got.is_complete)

    def test_whole_body_held_pieces_not_a_prefix(self):
        """Held pieces after a missing first piece (from the swarm, say) are
        replaced too when a 200 without validators brings the whole body."""
        v2 = bytes(b ^ 0x5A for b in DATA)
        node = self.make(client=_RefusingClient(), origin=self.whole_body_origin(v2, None))
        self.hold_v1([2, 5])
        got = self.successResultOf(node.download(URL, pattern="source"))
        self.assertEqual(self.read_all(got), v2)

    def test_whole_body_other_or_weak_etag_replaces_held(self):
        """A 200 under another ETag, or a weak one, replaces the held pieces."""
        v2 = bytes(b ^ 0x5A for b in DATA)
        for held, answered in (('"v1"', '"v2"'), ('W/"v1"', 'W/"v1"')):
            node = self.make(client=_RefusingClient(),
                             origin=self.whole_body_origin(v2, answered))
            self.hold_v1([0, 1], etag=held)
            got = self.successResultOf(node.download(URL, pattern="source"))
            self.assertEqual(self.read_all(got), v2, (held, answered))

    def test_whole_body_same_strong_etag_keeps_held(self):
        """A 200 under the strong ETag the held pieces came with is the same
        bytes: the held pieces stay (skipped, not rewritten)."""
        node = self.make(client=_RefusingClient(), origin=self.whole_body_origin(DATA, '"v1"'))
        tf = self.hold_v1([0, 1, 2], etag='"v1"')
        got = self.successResultOf(node.download(URL, pattern="source"))
        self.assertIs(got, tf)
        self.assertEqual(self.read_all(got), DATA)
        self.assertEqual(sample(self.metrics, "dragonfly_peer_download_bytes_total",
                                {"source": "origin"}), len(DATA))

    def test_resume_without_validators_asks_whole_file(self):
        """When pieces held from an earlier download have no validators (no
        strong ETag, no Last-Modified: nothing for If-Range), the origin is
        asked for the whole file, not the rest by Range (a 206 could be the
        rest of another version); the whole body replaces the held pieces."""
        v2 = bytes(b ^ 0x5A for b in DATA)
        origin = FakeOrigin(v2)
        node = self.make(client=_RefusingClient(), origin=origin)
        self.hold_v1([0, 1, 2])
        got = self.successResultOf(node.download(URL, pattern="source"))
        self.assertEqual([offset for _, _, offset in origin.calls], [0])
        self.assertEqual(self.read_all(got), v2)

    def test_resume_with_validator_asks_the_rest(self):
        """Pieces held from an earlier download under a strong ETag or a
        Last-Modified are resumed with a Range (the origin checks If-Range)."""
        for validators in ({"etag": '"e1"'}, {"last_modified": "Mon, 01 Jan 2024 00:00:00 GMT"}):
            origin = FakeOrigin(DATA)
            node = self.make(client=_RefusingClient(), origin=origin)
            tf = self.store.create(task_id_for_url(URL), URL, len(DATA), PIECE, **validators)
            for i in range(3):
                self.successResultOf(tf.write_new_piece(i, DATA[i * PIECE:(i + 1) * PIECE]))
            got = self.successResultOf(node.download(URL, pattern="source"))
            self.assertEqual([offset for _, _, offset in origin.calls], [3 * PIECE], validators)
            self.assertEqual(self.read_all(got), DATA)

    def test_origin_short_body(self):
        """When the origin's body ends early, the download fails and is not complete."""
        origin = FakeOrigin(DATA)
        real = origin.get

        def short(*a, **kw):
            d = real(*a, **kw)

            def cut(r):
                r._data = r._data[:-10]
                return r
            return d.addCallback(cut)
        origin.get = short
        node = self.make(client=_RefusingClient(), origin=origin)
        f = self.failureResultOf(node.download(URL), DownloadError)
        self.assertIn("short", str(f.value))
        self.assertFalse(self.store.get(task_id_for_url(URL)).is_complete)

    def test_pattern_source(self):
        """pattern="source" always fetches from the origin, never the supernode."""
        node = self.make()
        tf = self.successResultOf(node.download(URL, pattern="source"))
        self.assertEqual(self.read_all(tf), DATA)
        self.assertEqual(self.supernode.registrations, [])

    def test_limit_paces_the_origin_body(self):
        """A caller's limit paces the origin's body too: N bytes at R bytes/s
        take at least N/R seconds."""
        node = self.make()
        d = node.download(URL, pattern="source", limit=200)
        while not d.called and self.clock.seconds() < 60:
            self.clock.advance(0.05)
        tf = self.successResultOf(d)
        self.assertEqual(self.read_all(tf), DATA)
        self.assertGreaterEqual(self.clock.seconds(), len(DATA) / 200)
        self.assertLess(self.clock.seconds(), len(DATA) / 200 + 1)


class _Counter:
    def __init__(self):
        self.value = 0

    def labels(self, **kw):
        self.labelled = kw
        return self

    def inc(self, n):
        self.value += n


class _Metrics:
    def __init__(self):
        self.download_bytes = _Counter()


class _Download:
    def __init__(self):
        self.arrived = []
        self.sources = {"origin": 0}

    def piece_arrived(self, index, nbytes, source):
        self.arrived.append((index, nbytes, source))


class _Task:
    piece_count = 4
    piece_size = 10
    length = 35


class OriginEventsTests(SynchronousTestCase):
    """The ingest pipeline's reports, as a peer download hears them."""

    def test_stored_and_skipped(self):
        """A new piece is announced with its bytes; a held one only counts them."""
        metrics, dl = _Metrics(), _Download()
        events = OriginEvents(metrics, dl)
        events.received(7)
        events.stored(_Task(), 2, 10, "d")
        events.skipped(1, 10)
        self.assertEqual(dl.arrived, [(2, 10, "origin")])
        self.assertEqual(metrics.download_bytes.value, 10)
        self.assertEqual(metrics.download_bytes.labelled, {"source": "origin"})
        self.assertEqual(dl.sources["origin"], 0)

    def test_spool_counts_on_receipt(self):
        """A spooled body counts every chunk as it arrives; its pieces add no bytes."""
        metrics, dl = _Metrics(), _Download()
        events = SpoolEvents(metrics, dl)
        events.received(7)
        events.stored(_Task(), 0, 10, "d")
        self.assertEqual(dl.arrived, [(0, 0, "origin")])
        self.assertEqual(metrics.download_bytes.value, 7)
        self.assertEqual(dl.sources["origin"], 7)

    def test_errors(self):
        """A body that does not fit the task fails the download with a plain reason."""
        events = OriginEvents(_Metrics(), _Download())
        tf = _Task()
        self.assertIsInstance(events.misaligned(5), DownloadError)
        self.assertEqual(str(events.misaligned(5)), "origin resumed at 5, not a piece boundary")
        self.assertEqual(str(events.overflow(tf)),
                         "origin sent more bytes than the task's length")
        self.assertEqual(str(events.short(tf, 20)), "origin body ended 2 piece(s) short")
        self.assertEqual(str(events.short(tf, 15)), "origin body ended 3 piece(s) short")

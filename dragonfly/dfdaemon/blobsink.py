"""BlobSink: a blob's bytes from the peer's ordered stream to the client, digest-gated.

To the blob source (L{dragonfly.peer.stream.OrderedPushProducer}) it is a
consumer; to the request it is a push producer, so the client's socket
paces the swarm end to end. Pieces held in the store come as file ranges
(C{send_file}) when the client's connection is plain TCP: they go from the
page cache to the socket with sendfile (L{dragonfly.runtime.sendfile}),
never through a Python buffer; otherwise, and for pieces passed through a
full store, they come as bytes (C{write}) and go through the request.

The whole blob is hashed on the way by a L{BlobHasher} in a thread, in
parallel with the sending, and the window's final bytes wait for it: a
client never receives a complete response for a corrupt blob.

Unless the supernode attests the blob (L{BlobSink.attest}, docs/design.md
"The mirror's trust chain"): its own copy matched the digest whole, and the
attestation names that copy's piece digests (their pieces root). From then
on nothing is hashed here, and the final bytes wait for the task file's own
piece digests -- each the BLAKE3 of bytes verified before they were stored
-- to give the same root: then this file holds the bytes that matched. Bytes
not in the store (pieces passed through a full store) end the trust; a root
that differs (a piece from elsewhere whose bytes differ) means hashing
whatever was skipped, from the file, before the final bytes go.

Or once the supernode promises that attestation (L{BlobSink.defer}: it is
still fetching the blob and checks the whole of it, so the word comes only
after its last piece): nothing is hashed meanwhile either, and at the end
the sink waits up to L{ATTEST_WAIT} seconds for the word. If it came and the
file's piece digests give its root, the final bytes go with nothing hashed
here; otherwise (no word in time, a root that differs, bytes passed through,
the file gone) the whole blob is hashed from the file before they go. The
promise itself is never trusted: it only decides when the hashing is done.
"""
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from dragonfly.dfdaemon.blobhash import BlobHasher
from dragonfly.digest import pieces_root
from dragonfly.httpio import abort, describe, unregister
from dragonfly.runtime.threads import SyncRunner

__all__ = ["BlobSink", "GONE", "HOLD", "StreamFailed", "stream_checked"]

#: L{stream_checked}'s answer when the client has its answer already (it left,
#: or the stream broke after the headers and the response was cut).
GONE = "gone"


class StreamFailed(Exception):
    """The peer's stream failed before any byte reached the client."""

#: Bytes at the end of a digest-gated window sent only once the digest matched.
HOLD = 64 * 1024

#: Seconds a deferred sink (L{BlobSink.defer}) waits at the end for the
#: promised attestation before it hashes the blob from the file itself.
ATTEST_WAIT = 5.0

#: L{BlobSink}'s trust while an attestation is promised, not given.
_PROMISED = "promised"


@implementer(IConsumer, IPushProducer)
class BlobSink:
    """Receives a blob's bytes in order, hashes all of them, sends a window to the client.

    @param whole: True: the source sends the whole blob, hashed here, and the
        window's end is held back until it matches C{digest}; False: it sends
        only the window (bytes of pieces already verified by their piece
        digests), not hashed.
    @param known_good: with C{whole}, this very copy of the blob matched its
        digest before (and is sealed): not hashed again, nothing held back.
    @param runner: the L{dragonfly.interfaces.IRunner} hashing the blob
        (default inline).
    @param sender: a L{dragonfly.runtime.sendfile.FileSender} on the
        client's socket, or None: no C{send_file}, every byte through C{write}.
    @param parts: a L{dragonfly.dfdaemon.multipart.Parts} (several windows
        sent as one multipart answer; bytes only, no C{sender}) or None.
    @param task_file: the task file the blob comes from (what an attested
        blob is checked against, and where skipped bytes are hashed from).
    @param on_hashed: called with the number of bytes queued for hashing.
    @param clock: an C{IReactorTime} to wait for a promised attestation
        with (None: a deferred sink does not wait).

    A pull producer (one chunk per C{resumeProducing}) is driven here
    directly -- one chunk asked for after each chunk written, none while the
    client's socket is full -- rather than by Twisted's C{_PullToPush},
    whose cooperator would spin while the producer waits for pieces.
    """

    def __init__(self, request, digest, length, first=0, last=None, on_bytes=None,
                 whole=True, known_good=False, runner=None, sender=None, parts=None,
                 task_file=None, on_hashed=None, clock=None):
        algo, _, self.expected = digest.partition(":")
        self.whole = whole
        self.gated = whole and not known_good
        self._hasher = BlobHasher(runner or SyncRunner(), algo) if self.gated else None
        self.request = request
        self.length = length
        self.first = first
        self.last = length - 1 if last is None else last
        self.offset = 0 if whole else first
        self.producer = None
        self.streaming = False
        self._registered = False
        self._paused = False
        self._pulling = False
        self._again = False
        self._on_bytes = on_bytes or (lambda n: None)
        self.overflow = False
        self.closed = False
        self._held = None         # the held-back tail: bytes, or (fd, offset, length)
        self._sender = sender
        self.parts = parts
        self._task = None         # the task file pinned while its fd is in use
        self._task_file = task_file
        self._trust = None        # the attested pieces root: nothing hashed meanwhile
        self._hashed_to = 0       # bytes [0, _hashed_to) of the blob fed to the hasher
        self._on_hashed = on_hashed or (lambda n: None)
        self._clock = clock
        self._waiting = None      # the end's wait for a promised attestation
        self._fd = None
        #: Held pieces as file ranges (see L{dragonfly.peer.stream}), or None.
        self.send_file = self._send_file if sender is not None else None

    # IConsumer, for the blob source

    def registerProducer(self, producer, streaming):
        if self.closed:
            producer.stopProducing()
            return
        self.producer = producer
        self.streaming = bool(streaming)
        if not self._registered and self.request.channel is not None:
            self.request.registerProducer(self, True)
            self._registered = True
        if self.streaming:
            if self._paused:
                producer.pauseProducing()
        else:
            self._pull()

    def unregisterProducer(self):
        self.producer = None
        if self._registered:
            self._registered = False
            unregister(self.request)

    def _take(self, n):
        """Account for the source's next C{n} bytes: the part of the window
        they cover as (lo, hi), or None when the source sent too much."""
        end = self.offset + n
        if end > (self.length if self.whole else self.last + 1):
            self.overflow = True
            self.close()
            return None
        lo, hi = max(self.first, self.offset), min(self.last + 1, end)
        self.offset = end
        return lo, max(lo, hi)

    def write(self, data):
        if self.closed:
            return
        start = self.offset
        window = self._take(len(data))
        if window is None:
            return
        if self._hasher is not None:
            self._hash_bytes(data, start)
        lo, hi = window
        if hi > lo:
            chunk = data if (lo == start and hi == self.offset) else bytes(
                memoryview(data)[lo - start:hi - start])
            if hi == self.last + 1 and self.gated:
                # The window's final bytes wait for the digest.
                self._held = chunk
            else:
                self._send_bytes(chunk, lo)
        if self.producer is not None and not self.streaming:
            self._pull()

    def _send_bytes(self, chunk, at=None):
        if self.parts is not None:
            out, sent = self.parts.cut(at, chunk)
            for part in out:
                self.request.write(part)
            self._on_bytes(sent)
            return
        self.request.write(chunk)
        self._on_bytes(len(chunk))

    def _send_file(self, task_file, offset, length):
        """Send C{length} bytes of the (held) task file from C{offset}: a
        Deferred firing once they are in the client's socket."""
        if self.closed:
            return succeed(None)
        if offset != self.offset:
            self.overflow = True     # not in order: a bug upstream, never sent
            self.close()
            return succeed(None)
        window = self._take(length)
        if window is None:
            return succeed(None)
        fd = self._file(task_file)
        if self._hasher is not None and self._trust is None:
            self._catch_up(offset)
            self._hasher.feed_file(fd, offset, length)
            self._hashed(offset + length)
        lo, hi = window
        if hi == self.last + 1 and self.gated and hi > lo:
            cut = max(lo, hi - HOLD)
            self._held = (fd, cut, hi - cut)
            hi = cut
        if hi <= lo:
            return succeed(None)
        return self._send_range(fd, lo, hi - lo)

    def _send_range(self, fd, offset, length):
        self.request.write(b"")   # the headers go first (no-op once sent)
        d = self._sender.send(fd, offset, length)

        def sent(_):
            self.request.sentLength += length
            self._on_bytes(length)
        return d.addCallback(sent)

    # the digest: hashed here, or attested by the supernode

    def attest(self, root):
        """The supernode attests the blob: its copy, whose pieces root is
        C{root}, matched the digest whole. Nothing more is hashed here."""
        if self._hasher is not None and not self.closed and root is not None:
            self._trust = root
            self._stop_waiting()

    def defer(self):
        """The supernode promised to attest the blob once its check passes:
        hash nothing until the end, then wait for the word (L{check})."""
        if self._hasher is not None and not self.closed and self._trust is None \
                and self._hashed_to == 0:
            self._trust = _PROMISED

    def _await_attestation(self):
        """A Deferred firing once the attestation came, the sink closed, or
        L{ATTEST_WAIT} seconds passed."""
        d = self._waiting = Deferred()
        call = self._clock.callLater(ATTEST_WAIT, self._stop_waiting)

        def done(result):
            if call.active():
                call.cancel()
            return result
        return d.addBoth(done)

    def _stop_waiting(self):
        d, self._waiting = self._waiting, None
        if d is not None:
            d.callback(None)

    def _hash_bytes(self, data, start):
        if self._trust is not None and self._in_store(start, len(data)):
            return
        # Bytes of a piece not in the store (passed through): never attested.
        self._trust = None
        self._catch_up(start)
        self._hasher.feed_bytes(data)
        self._hashed(start + len(data))

    def _in_store(self, offset, length):
        tf = self._task_file
        if tf is None or not length:
            return tf is not None
        size = tf.piece_size
        return all(tf.has(i) for i in range(offset // size, (offset + length - 1) // size + 1))

    def _catch_up(self, upto):
        """Hash the bytes skipped while trusting, [_hashed_to, upto), from the file."""
        if self._hashed_to < upto:
            self._hasher.feed_file(self._file(self._task_file), self._hashed_to,
                                   upto - self._hashed_to)
            self._hashed(upto)

    def _hashed(self, upto):
        self._on_hashed(upto - self._hashed_to)
        self._hashed_to = upto

    def _attested(self):
        """Do the task file's own piece digests give the attested root? (It
        must hold every piece, and be sealed and unchanged.)"""
        tf = self._task_file
        if tf is None or self._trust is _PROMISED or tf.length != self.length or getattr(tf, "removed", False) \
                or not tf.is_complete or not tf.intact():
            return False
        return pieces_root(tf.digest(i) for i in range(tf.piece_count)) == self._trust

    def _file(self, task_file):
        if self._task is None:
            task_file.pin()
            self._task = task_file
            try:
                self._fd = task_file.fileno()
            except Exception:
                self._unpin()
                raise
        return self._fd

    def _unpin(self):
        task, self._task = self._task, None
        self._fd = None
        if task is not None:
            task.unpin()

    # IPushProducer, for the request

    def pauseProducing(self):
        self._paused = True
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self.producer is None:
            return
        if self.streaming:
            self.producer.resumeProducing()
        else:
            self._pull()

    def stopProducing(self):
        self.close()

    def _pull(self):
        """Ask a pull producer for its next chunk, without recursing per chunk."""
        if self._pulling:
            self._again = True
            return
        self._pulling = True
        try:
            while not (self._paused or self.closed or self.producer is None):
                self._again = False
                self.producer.resumeProducing()
                if not self._again:
                    break
        finally:
            self._pulling = False

    def check(self):
        """A Deferred firing True when the window is complete and, for a gated
        whole blob, every byte came and the blob matches its digest; False
        otherwise. It fails when hashing failed (a read error)."""
        complete = self.offset == (self.length if self.whole else self.last + 1)
        if self.overflow or not complete:
            return succeed(False)
        if self._hasher is None:
            return succeed(True)
        if self._trust is _PROMISED and self._clock is not None:
            return self._await_attestation().addCallback(lambda _: self._verdict())
        return self._verdict()

    def _verdict(self):
        """check() for a complete gated whole blob: attested, else hashed."""
        if self.closed:
            return succeed(False)     # the client left while we waited
        if self._trust is not None:
            if self._attested():
                return succeed(True)
            self._trust = None      # not this copy: hash what was skipped
            try:
                self._catch_up(self.length)
            except Exception:  # noqa: BLE001 - the file is gone: a read error
                return fail()
        return self._hasher.hexdigest().addCallback(lambda got: got == self.expected)

    def release(self):
        """Send the held-back final bytes (call only once check() said True);
        a Deferred firing once they are written."""
        held, self._held = self._held, None
        if isinstance(held, tuple):
            return self._send_range(*held)
        if held:
            self._send_bytes(held)
        return succeed(None)

    def close(self):
        """Stop accepting bytes and stop the producer (client gone, or an
        error); give back the sendfile descriptor and, once the hasher is
        done with it, the task file."""
        if self.closed:
            return
        self.closed = True
        self._stop_waiting()
        producer, self.producer = self.producer, None
        self.unregisterProducer()
        if self._sender is not None:
            self._sender.stop()
        if self._hasher is not None and self._task is not None:
            self._hasher.hexdigest().addBoth(lambda _: self._unpin())
        else:
            self._unpin()
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:  # noqa: BLE001 - already stopped is fine
                pass

    def finish(self):
        """The response is complete: give back what close() gives back."""
        self.close()


async def stream_checked(peer, ex, sink, task_file, log, what, failed_kind=None):
    """Run the peer's ordered stream of C{task_file} (the sink's window, or
    the whole file for a whole sink) into C{sink}, then its digest check.

    Returns True (every byte came and, for a gated sink, the digest matched:
    the caller releases the tail and finishes), False (a mismatch), None (the
    hashing failed: a read error) or L{GONE} (the client left, or the stream
    broke after the headers: the response was cut, with C{ex.kind} set to
    C{failed_kind} if given). Raises L{StreamFailed} when the stream failed
    before the first byte (the caller still owns the answer). C{what} names
    the file in the log (a digest or a redacted URL).
    """
    whole = sink.whole
    stream = peer.stream(task_file, sink, 0 if whole else sink.first,
                         None if whole else sink.last + 1)
    ex.on_gone.append(stream.cancel)
    try:
        await stream
    except Exception as e:  # noqa: BLE001
        sink.close()
        if ex.gone:
            return GONE
        log.warn("P2P stream of {what} failed after {offset} bytes: {error}",
                 what=what, offset=sink.offset, error=describe(e))
        if not ex.request.startedWriting:
            raise StreamFailed(describe(e))
        if failed_kind is not None:
            ex.kind = failed_kind
        abort(ex.request)
        return GONE
    sink.unregisterProducer()
    try:
        ok = await sink.check()
    except Exception as e:  # noqa: BLE001 - a read error while hashing
        log.warn("hashing {what} failed: {error}", what=what, error=describe(e))
        ok = None
    return GONE if ex.gone else ok

"""The swarm path of a download: register, then schedule and fetch until complete.

L{join_swarm} leaves a stale membership, registers the task at a supernode
(L{dragonfly.control.client.SupernodeClient}), prepares the task file and
runs a L{SwarmSession}: it loops on schedule calls (reporting the pieces it
got and the sources that failed it, asking for as many assignments as it has
free fetch slots plus a small queue), fetches assigned pieces concurrently
through the piece pool, checks each piece's digest I{before} it is written
(a mismatch is never written and is reported as a failure of its source),
and registers again when the supernode forgot it. Pieces held from an
earlier download are confirmed, not trusted: reported only once an
assignment's digest matches them (L{StalePieces} when one does not). It raises
L{SupernodeUnavailable} when the swarm cannot finish the task (the caller
then goes to the origin) and L{DownloadError} on a supernode's verdict about
the task (L{TaskRefused}: final, the origin is not asked either). Requests
and answers are the L{dragonfly.control.messages} classes; an assignment is
accepted only if the registration answer says it names a piece of the task.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.control.client import (
    Moved, NotRegistered, SourceFailed, SupernodeUnavailable, TaskRefused)
from dragonfly.control.messages import FailedPiece, MessageError, ScheduleRequest
from dragonfly.digest import piece_digest
from dragonfly.peer.backsource import check_size
from dragonfly.peer.errors import DownloadError, StalePieces, describe
from dragonfly.peer.register import prepare_task_file, register
from dragonfly.peer.wakeup import Signal
from dragonfly.protocol import codec
from dragonfly.storage.errors import DigestMismatch

__all__ = ["join_swarm", "SwarmSession", "REPORT_BATCH"]


async def join_swarm(dl, deps, settings, client, me):
    """Download C{dl} through its swarm: the complete task file.

    @param deps: the node's L{NodeDeps} (store, piece pool, runner, metrics, clock).
    @param client: the node's L{SupernodeClient}.
    @param me: a callable returning this peer's current L{PeerInfo}.
    """
    if dl.task_id in client.members:
        # We finished this task once and the store has lost it since (GC,
        # a file edited through a hard link): the supernode still counts
        # us as holding its pieces until we leave.
        await client.leave(dl.task_id, me().peer_id)
    addr, info = await register(client, dl, me())
    check_size(info.length, settings.max_file_size, deps.store)
    tf = prepare_task_file(deps.store, dl, info)
    if not tf.is_complete:
        # Held from an earlier download, perhaps of another version of the
        # file: each piece stays only once the swarm's digest of it matches.
        dl.unconfirmed.update(tf.completed())
    session = SwarmSession(dl, tf, addr, info, client=client, me=me, pool=deps.piece_pool,
                           runner=deps.runner, metrics=deps.metrics, clock=deps.clock,
                           settings=settings)
    client.joined(dl.task_id, addr)
    try:
        await session.run()
    except BaseException as e:
        # We failed or were stopped: stop being listed as a source.
        client.leave(dl.task_id, me().peer_id)
        if isinstance(e, DownloadError) and deps.store.get(dl.task_id) is tf \
                and (not tf.is_complete or isinstance(e, StalePieces)):
            # A verdict on the task (its content does not match its digest, the
            # origin refused it, pieces held of another version): keep none of
            # its pieces for a later download.
            deps.store.remove(dl.task_id)
        raise
    if tf.uncached:
        # Passed through (the cache was full): this host does not share it.
        client.leave(dl.task_id, me().peer_id)
    return tf


#: Seconds a finished session keeps asking for a promised attestation a
#: stream waits for (see SwarmSession._follow_attestation).
ATTEST_FOLLOW = 4.5

#: Pieces a busy session gathers before a report-only call (see SwarmSession._may_gather).
REPORT_BATCH = 2


class SwarmSession:
    """One task's swarm download after registration: schedule, fetch, report.

    It works through exactly what it is handed: the L{Download} (task id,
    URL, stream cursors, C{piece_arrived}), the task file, the supernode at
    C{addr} and its L{RegisterAnswer} C{info}, the supernode C{client}
    (schedule, register again, C{joined}), C{me} (a callable returning this
    peer's L{PeerInfo}), the piece C{pool}, the
    C{runner} (digests when the pool has no C{fetch_piece}), C{metrics},
    the C{clock} and the node's L{NodeSettings}.
    """

    log = Logger()

    def __init__(self, dl, tf, addr, info, *, client, me, pool, runner, metrics, clock,
                 settings):
        self.dl = dl
        self.tf = tf
        self.addr = addr
        self.info = info
        self.seed_id = info.seed.peer_id
        self.client = client
        self.me = me
        self.pool = pool
        self.runner = runner
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        self.in_flight = {}          # index -> (Assignment, Deferred)
        self.queue = []              # Assignments not started yet
        self.have = self._held()
        self.news_from = None        # the source of the first piece in fetched/have, if fetched
        self.failed = []             # (index, source peer id)
        self.fetched = []            # bytes arrived, not yet reported (see _bytes_arrived)
        self.checking = set()        # in_flight pieces whose bytes arrived (hash and write)
        self.failures = {}           # index -> count
        self.fatal = None
        self.event = Signal(self.clock)
        self.last_progress = self.clock.seconds()
        self.registrations = 1
        self.errors = 0
        self.polling = False         # a long-poll is outstanding
        self.reporting = None        # the Deferred of a report-only call in flight
        self.told_seed = False       # the seed was asked to re-verify its copy
        # Fetches at once: --concurrency, but never more piece bytes in memory
        # than max_buffered (each fetch holds at most about one piece).
        self.slots = settings.concurrency
        if settings.max_buffered:
            self.slots = max(1, min(self.slots, settings.max_buffered // max(1, tf.piece_size)))

    def _complete(self):
        # Held (or passed through when the cache is full), each held piece the swarm's.
        return self.tf.is_delivered and not self.dl.unconfirmed

    def _held(self):
        """The pieces held that may be reported: not those still unconfirmed."""
        return [i for i in self.tf.completed() if i not in self.dl.unconfirmed]

    def _confirm(self, a):
        """Assignment C{a} names a piece held from an earlier download: it is
        ours if it is the swarm's (same digest); else the whole copy goes."""
        if self.tf.digest(a.index) != a.digest:
            self.fatal = StalePieces(
                f"the pieces held of task {self.dl.task_id} from an earlier download are "
                f"another version of the file (piece {a.index} differs): dropped, "
                "download it again")
            return
        self.dl.unconfirmed.discard(a.index)
        self._news(a.index)

    async def run(self):
        forget = self.tf.on_drained(self.event.fire)   # passed-through memory freed
        try:
            await self._loop()
        finally:
            forget()
            self.queue.clear()   # (before the cancels: a fetch ending starts the queued)
            if self.reporting is not None:
                self.reporting.cancel()
            for a, d in list(self.in_flight.values()):
                d.cancel()
            self.in_flight.clear()
        # Tell the supernode what we hold now (best effort): it makes us a source.
        if self.have or self.failed:
            try:
                await self._schedule(0, 0)
            except Exception as e:
                self.log.debug("final report for {task} failed: {why}",
                               task=self.dl.task_id, why=describe(e))
        await self._follow_attestation()

    async def _follow_attestation(self):
        """The supernode promised to attest the task and a stream waits for
        it, but the final answer did not bring it (its check of the last
        piece may end just after our report): ask again a few times, report
        only, for at most about L{ATTEST_FOLLOW} seconds in all."""
        delay, spent = 0.1, 0.0
        while self.dl.awaits_attestation() and self.tf.is_complete and spent < ATTEST_FOLLOW:
            await deferLater(self.clock, delay, lambda: None)
            spent += delay
            delay = min(delay * 2, 1.0)
            try:
                await self._schedule(0, 0)
            except Exception as e:
                self.log.debug("attestation follow-up for {task} failed: {why}",
                               task=self.dl.task_id, why=describe(e))
                return

    async def _loop(self):
        settings = self.settings
        while True:
            if self.fatal is not None:
                raise self.fatal
            if self._complete():
                return
            self._start_fetches()
            want = self._want()
            nothing_to_say = want == 0 and not (self.have or self.failed or self.fetched)
            if nothing_to_say or (want < REPORT_BATCH and self._may_gather()):
                await self.event.wait(self.settings.stall_timeout)
                self._check_stall()
                continue
            if want == 0:
                wait = 0
            elif self.in_flight or self.queue:
                wait = settings.busy_wait
            else:
                wait = settings.schedule_wait
            started = self.clock.seconds()
            try:
                self.polling = wait > 0
                try:
                    answer = await self._schedule(want, wait)
                finally:
                    self.polling = False
            except Moved as e:
                await self._reregister("the supernode is stopping", prefer=e.owner)
                continue
            except NotRegistered:
                await self._reregister("the supernode forgot this peer")
                continue
            except TaskRefused as e:
                raise DownloadError(str(e)) from e
            except (DownloadError, CancelledError, SourceFailed):
                raise
            except Exception as e:
                self.errors += 1
                self.log.warn("schedule for {task} at {sn} failed ({n}): {why}",
                              task=self.dl.task_id, sn=f"{self.addr[0]}:{self.addr[1]}",
                              n=self.errors, why=describe(e))
                if self.errors >= settings.schedule_retries:
                    await self._reregister(f"scheduling failed: {describe(e)}")
                else:
                    await self.event.wait(min(8.0, 0.5 * 2 ** self.errors))
                continue
            self.errors = 0
            added = self._accept(answer)
            if self.fatal is not None:
                raise self.fatal
            if self._complete():
                return
            if added:
                self.last_progress = self.clock.seconds()
                continue
            self._check_stall()
            # Nothing new for us: don't hammer a supernode that answered at once.
            elapsed = self.clock.seconds() - started
            if elapsed < settings.min_poll_interval:
                await self.event.wait(settings.min_poll_interval - elapsed)

    def _want(self):
        """Assignments to ask for: a fetch slot each (and C{queue_depth} more).

        A piece being hashed and written holds its fetch slot (its bytes are
        in memory) but is off the wire: its successor is asked for now and
        waits queued, started as the piece lands (L{_start_fetches}). While
        a stream reads the task, C{slots} more: the supernode queues them at
        their sources (the request's C{queue}; an older one gives none), and
        each starts as soon as a piece on the wire is in, not a control round
        trip later.
        """
        receiving = len(self.in_flight) - len(self.checking)
        depth = self.slots + self.settings.queue_depth + (self.slots if self.dl.readers else 0)
        want = max(0, depth - receiving - len(self.queue))
        # Never ask for more than is left unassigned: with everything in
        # flight, a long-poll would only delay our reports and our end.
        unassigned = (self.tf.piece_count - len(self.tf.completed()) + len(self.dl.unconfirmed)
                      - len(self.in_flight) - len(self.queue))
        want = min(want, max(0, unassigned))
        if not want and not self.in_flight and self.tf.pass_full():
            want = 1   # what the streams wait for is not among those queued
        return want

    def _check_stall(self):
        if self.in_flight or self.tf.pass_full():   # (waiting for a stream to drain it)
            return
        idle = self.clock.seconds() - self.last_progress
        if idle >= self.settings.stall_timeout:
            raise SupernodeUnavailable(f"no piece arrived for {idle:.0f}s")

    async def _reregister(self, why, prefer=None):
        if self.registrations >= self.settings.max_registrations:
            raise SupernodeUnavailable(why)
        self.registrations += 1
        self.log.info("registering {task} again: {why}", task=self.dl.task_id, why=why)
        dl = self.dl
        addr, info = await register(self.client, dl, self.me(), prefer)
        if info.length != self.tf.length or info.piece_size != self.tf.piece_size:
            raise SupernodeUnavailable("the task changed while we downloaded it")
        self.addr = addr
        self.info = info
        self.client.joined(dl.task_id, addr)
        self.seed_id = info.seed.peer_id
        self.errors = 0
        # Everything we hold is news to a (possibly different) supernode; the
        # failures we had not reported were about the registration it forgot
        # (e.g. a copy it dropped as corrupt): not news about its sources now.
        self.have = self._held()
        self.news_from = None
        self.failed = []
        self.fetched = []
        self.queue.clear()

    async def _schedule(self, want, wait):
        have, self.have = self.have, []
        failed, self.failed = self.failed, []
        fetched, self.fetched = self.fetched, []
        done = set(have).union(f.index for f in failed)
        fetched = [i for i in fetched if i not in done]
        cursor = None
        queue = bool(self.dl.readers)
        if queue:
            # Someone streams this task in order: the lowest piece a stream
            # waits for; the supernode hands out the next pieces from there first.
            cursor = min(r.cursor for r in self.dl.readers)
        try:
            request = ScheduleRequest(self.me().peer_id, tuple(have), tuple(failed),
                                      want, wait, cursor, seed_only=self.dl.pattern == "cdn",
                                      fetched=tuple(fetched), queue=queue)
            answer = await self.client.schedule(self.addr, self.dl.task_id, request)
        except NotRegistered:
            raise
        except BaseException:
            # Not delivered (as far as we know), or refused: send again next time.
            if have or fetched:
                self.news_from = None   # (news that waited: no more gathering)
            self.have = have + self.have
            self.failed = failed + self.failed
            self.fetched = fetched + self.fetched
            raise
        self.dl.attest(answer.verified)   # the supernode's check passed since
        self.dl.promise(answer.attests)
        return answer

    def _accept(self, answer):
        tf = self.tf
        for e in answer.rejected:
            self.log.warn("ignoring a bad assignment for {task}: {why}",
                          task=self.dl.task_id, why=str(e))
        added = 0
        taken = set(self.in_flight) | {a.index for a in self.queue}
        for a in answer.assignments:
            try:
                self.info.check_assignment(a)
            except MessageError as e:
                self.log.warn("ignoring a bad assignment for {task}: {why}",
                              task=self.dl.task_id, why=str(e))
                continue
            if tf.delivered(a.index):
                if a.index in self.dl.unconfirmed:
                    self._confirm(a)
                    added += 1   # progress: ask for the next at once
                else:
                    self._news(a.index)
                continue
            if a.index in taken:
                continue
            taken.add(a.index)
            self.queue.append(a)
            added += 1
        self._start_fetches()
        return added

    def _room(self):
        """A fetch may start: a slot each, held until the piece lands. For a
        streamed task only the pieces on the wire hold one, those being
        hashed and written one more (at most twice C{max_buffered}): its
        client waits for the next piece, not for our runner."""
        if self.dl.readers:
            return len(self.in_flight) - len(self.checking) < self.slots \
                and len(self.in_flight) < 2 * self.slots
        return len(self.in_flight) < self.slots

    def _start_fetches(self):
        while self.queue and self._room():
            # (with the cache full, only the pieces streams wait for: see pass_wants)
            a = next((a for a in self.queue if self.tf.pass_wants(a.index)), None)
            if a is None:
                break
            self.queue.remove(a)
            if self.tf.delivered(a.index) or a.index in self.in_flight:
                continue
            d = Deferred.fromCoroutine(self._fetch(a))
            d.addErrback(lambda f: f.trap(CancelledError) and None)
            if not d.called:
                self.in_flight[a.index] = (a, d)

    async def _fetch(self, a):
        tf = self.tf
        reason = None
        started = self.clock.seconds()
        try:
            await self.dl.pace.wait(a.size)   # the callers' --limit, if any
            pool = self.pool
            fetch_piece = getattr(pool, "fetch_piece", None)
            if fetch_piece is not None:
                # The body as the chunks received (no join, no copy); hashed
                # and written in one runner call, which writes nothing unless
                # the digest matches.
                d = fetch_piece(a.source, self.dl.task_id, a.index, a.size, hashed=False)
            else:
                d = pool.fetch(a.source, self.dl.task_id, a.index, a.size)
            d.addTimeout(self.settings.piece_timeout, self.clock)
            try:
                got = await d
            except DeferredTimeoutError:
                reason = "timeout"
                raise
            if fetch_piece is not None:
                data, size = got.chunks, got.nbytes
            else:
                data, size = got, len(got)
            if size != a.size:
                reason = "short"
                raise ValueError(f"got {size} bytes, want {a.size}")
            self._bytes_arrived(a.index, a.source.peer_id)
            try:
                if fetch_piece is not None:
                    await tf.write_verified_piece(a.index, data, a.digest)
                else:
                    digest = await self.runner.run(piece_digest, data)
                    if digest != a.digest:
                        raise DigestMismatch(a.digest, digest)
                    await tf.write_trusted_piece(a.index, data, digest)
            except DigestMismatch:
                reason = "digest"
                self._seed_corrupt(a)
                raise
            except Exception as e:
                self.fatal = DownloadError(f"cannot store piece {a.index}: {describe(e)}")
                return
            del data, got
            source = "supernode" if a.source.peer_id == self.seed_id else "peer"
            self.metrics.piece_seconds.labels(source=source).observe(
                max(0.0, self.clock.seconds() - started))
            # (reported even when passed through: the supernode frees its source's
            # slot; an uncached task leaves the swarm at its end, see join_swarm)
            self._news(a.index, a.source.peer_id)
            self.last_progress = self.clock.seconds()
            self.registrations = 1
            self.dl.piece_arrived(a.index, size, source)
        except CancelledError:
            raise
        except Exception as e:
            if reason is None and getattr(e, "code", None) == codec.BUSY:
                reason = "busy"
            self._failed(a, reason or "fetch", describe(e))
        finally:
            self.in_flight.pop(a.index, None)
            self.checking.discard(a.index)
            if self.failed and self.clock is not None:
                # Fetches failing together (one stalled source, or several
                # timed out at once) go in one report: the supernode must not
                # hand a failed piece to a source about to be reported too.
                self.clock.callLater(0, self._after_piece)
            else:
                self._after_piece()

    def _news(self, index, source=None):
        """Piece C{index} is ours now (fetched from C{source}): it goes in the next report."""
        if not (self.have or self.fetched):
            self.news_from = source
        self.have.append(index)

    def _after_piece(self):
        """A fetch ended (landed or failed): its slot is free. A queued
        assignment starts now, not when the loop next runs: the loop may be
        waiting on a long-poll, which the supernode may answer only once
        this queued piece arrives (its source's slots are all ours)."""
        if self.fatal is None:
            self._start_fetches()
        self.event.fire()
        self._report_now()

    def _bytes_arrived(self, index, source):
        """Piece C{index}'s bytes are in (hash and write next): tell the
        supernode in the next call, which frees the source's upload slot, so
        the next assignment from it is queued here before this one lands.

        The schedule calls follow the arrivals (L{_may_gather} counts them);
        the pieces held since the last call go along with them.
        """
        self.checking.add(index)
        if not (self.have or self.fetched):
            self.news_from = source
        self.fetched.append(index)
        self.event.fire()
        self._report_now()

    def _seed_corrupt(self, a):
        """A piece from the supernode's own copy failed its digest: ask it (once
        per session) to re-verify that copy, which it drops when wrong."""
        if a.source.peer_id != self.seed_id or self.told_seed:
            return
        self.told_seed = True
        self.client.report_corrupt(self.dl.task_id, self.me().peer_id,
                                   f"piece {a.index} from the seed failed its digest", self.addr)

    def _report_now(self):
        """While our long-poll is out, report news in a separate call at once.

        The supernode may be waiting for exactly this report (a source freed,
        a piece we now hold) before it can answer the long-poll.
        """
        if not self.polling or self.reporting is not None \
                or not (self.have or self.failed or self.fetched):
            return
        if self._may_gather():
            return
        d = self.reporting = Deferred.fromCoroutine(self._schedule(0, 0))

        def done(result):
            self.reporting = None
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    return None
                self.log.debug("report for {task} failed: {why}",
                               task=self.dl.task_id, why=describe(result))
                return None
            self._report_now()
            return None
        d.addBoth(done)

    def _may_gather(self):
        """True when the news so far (one piece's bytes arrived) can wait for the next.

        Reporting each piece alone costs two round trips per piece while a
        long-poll is out (the report frees one source slot, then the poll
        answers with one assignment) and one otherwise. Pairs halve that,
        but only where waiting costs nobody: while the source of the first
        piece waiting to be told is still sending us another piece (a stream
        from one source: its uplink stays busy with us, and its next piece
        lands soon). The arrivals set the pace (they free the slots); the
        pieces held since go along with them. Anywhere else (a swarm: every
        source sends us one piece; on 100 Mbit links the next lands ~0.3 s
        later) the source would keep an upload slot, and the others would
        not learn we hold the piece, until then: report at once. Nothing
        landed yet (a free fetch slot only), failures, two arrivals, or a
        pipeline about to run dry: ask or report now.
        """
        if self.failed or len(self.fetched) >= REPORT_BATCH:
            return False
        if not (self.fetched or self.have) or self.news_from is None:
            return False
        if len(self.in_flight) + len(self.queue) <= 1:
            return False
        return any(a.source.peer_id == self.news_from
                   for index, (a, _d) in self.in_flight.items() if index not in self.checking)

    def _failed(self, a, reason, why):
        self.metrics.piece_failures.labels(reason=reason).inc()
        self.log.warn("piece {index} of {task} from {source} failed: {why}",
                      index=a.index, task=self.dl.task_id, source=a.source.peer_id, why=why)
        self.failed.append(FailedPiece(a.index, a.source.peer_id, reason))
        n = self.failures[a.index] = self.failures.get(a.index, 0) + 1
        if n >= self.settings.max_piece_failures:
            self.fatal = SupernodeUnavailable(
                f"piece {a.index} failed from {n} sources (last: {why})")


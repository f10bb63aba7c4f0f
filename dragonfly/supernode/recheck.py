"""Checking a seeded task's content: its content digest, and when a holder reports it corrupt.

A task named by a content digest (L{dragonfly.taskid.digest_named}: an OCI
blob, C{dfget --digest}) is complete only once its whole content matched:
the CDN hashes it as the body arrives (L{dragonfly.ingest.contenthash}) and
falls back to L{check_content} (the file hashed in the runner, in bounded
reads) when that hash is unusable; a mismatch fails the task with
L{ContentMismatch} and the CDN keeps nothing of it.

A peer, the mirror or dfget that finds a complete task's bytes wrong drops
its copy and reports it (C{POST /api/v1/tasks/<id>/corrupt}). The supernode
then re-hashes its own copy in the runner (every piece against its digest,
and the whole content against the digest a task may be named by) and, when
it is wrong, has the CDN drop it so the next registration fetches it again.
Reports cost at most one runner thread: one task is re-verified at a time,
each at most once per L{RECHECK_INTERVAL}, and only tasks held complete.
"""
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dragonfly.storage.verify import bad_pieces, content_digest
from dragonfly.taskid import digest_named

__all__ = ["Rechecker", "RECHECK_INTERVAL", "ContentMismatch", "check_content"]

#: Seconds between two re-verifications of one task.
RECHECK_INTERVAL = 60.0


class ContentMismatch(Exception):
    """A task named by a content digest whose bytes do not match it (final)."""


async def check_content(runner, tf, digest):
    """Hash C{tf}'s data file in C{runner}; L{ContentMismatch} unless it is C{digest}."""
    got = await runner.run(content_digest, tf.path, tf.length, digest.partition(":")[0])
    if got != digest:
        raise ContentMismatch(f"content digest mismatch: expected {digest}, got {got}")


class Rechecker:
    """Re-verifies reported tasks of C{store} with C{runner}.

    @param clock: IReactorTime (the rate limit).
    @param busy: C{busy(task_id)} -> True while the CDN fetches the task (it
        is checked as it lands anyway).
    @param drop: C{drop(task_id, tf)}: forget the corrupt task (store,
        scheduler, the CDN's job).
    """

    log = Logger()

    def __init__(self, clock, store, runner, busy, drop, interval=RECHECK_INTERVAL):
        self._clock = clock
        self._store = store
        self._runner = runner
        self._busy = busy
        self._drop = drop
        self.interval = interval
        self._last = {}          # task_id -> when it was last re-verified
        self.running = None      # the task being re-verified

    def recheck(self, task_id, reason=""):
        """A Deferred firing True when our copy of C{task_id} was wrong (and
        dropped), False when it is intact or was left alone."""
        tf = self._store.get(task_id)
        now = self._clock.seconds()
        if self._busy(task_id) or tf is None or tf.removed or not tf.is_complete \
                or self.running is not None \
                or now - self._last.get(task_id, -self.interval) < self.interval:
            return succeed(False)
        self._last[task_id] = now
        self.log.info("task {task_id} reported corrupt ({why}): re-verifying our copy",
                      task_id=task_id, why=reason or "no reason given")
        return Deferred.fromCoroutine(self._recheck(task_id, tf))

    def prune(self):
        """Forget the rate-limit stamps that no longer limit anything."""
        now = self._clock.seconds()
        for task_id, when in list(self._last.items()):
            if now - when >= self.interval:
                del self._last[task_id]

    async def _recheck(self, task_id, tf):
        digests = [tf.digest(i) for i in range(tf.piece_count)]
        wanted = digest_named(task_id)
        got = None
        tf.pin()
        self.running = task_id
        try:
            bad = await self._runner.run(bad_pieces, tf.path, tf.piece_size, tf.length, digests)
            if not bad and wanted is not None:
                got = await self._runner.run(content_digest, tf.path, tf.length)
        finally:
            tf.unpin()
            self.running = None
        if not bad and got in (None, wanted):
            self.log.info("task {task_id}: our copy is intact", task_id=task_id)
            return False
        why = f"pieces {bad[:8]} fail their digests" if bad else f"content is {got}, not {wanted}"
        self.log.warn("task {task_id}: our copy is corrupt ({why}); dropping it to fetch it "
                      "again", task_id=task_id, why=why)
        self._drop(task_id, tf)
        return True

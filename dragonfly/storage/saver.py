"""When a task's meta.json is written: the debounced saver of one task.

A piece landing does not rewrite meta.json each time: the saver writes at the
latest after C{every_pieces} new pieces or C{every_seconds} seconds (a timer
on the injected clock), and at once when told to (the task completed, its
validators changed, flush/close). A save serializes the task's current
metadata (L{dragonfly.storage.meta}) and replaces the file atomically; a
failed save is logged and retried with the next one. Once stopped (the task
was removed) it never writes again.
"""
import os

from twisted.logger import Logger

from dragonfly.storage import fileio
from dragonfly.storage.meta import serialize


class MetaSaver:
    """Saves C{snapshot()} (a TaskMeta) to C{path}, debounced on C{clock}."""

    log = Logger()

    def __init__(self, path, snapshot, clock, every_pieces, every_seconds, task_id,
                 can_schedule=True):
        self.path = path
        self._snapshot = snapshot
        self._clock = clock
        self._every_pieces = every_pieces
        self._every_seconds = every_seconds
        self._task_id = task_id
        self._can_schedule = can_schedule
        self.dirty = False
        self._unsaved = 0
        self._last_saved = clock.seconds()
        self._call = None
        self._stopped = False

    def changed(self, pieces=0, now=False):
        """Something to save changed (C{pieces} new pieces); save now if
        C{now} or a limit is reached, else make sure the timer runs."""
        self.dirty = True
        self._unsaved += pieces
        if (now or self._unsaved >= self._every_pieces
                or self._clock.seconds() - self._last_saved >= self._every_seconds):
            self.save()
        elif self._call is None and self._can_schedule:
            self._call = self._clock.callLater(self._every_seconds, self._timed_save)

    def _timed_save(self):
        self._call = None
        self.save()

    def cancel(self):
        """Drop the pending timed save, if any."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def save(self):
        """Write meta.json now (temp file + rename). Errors are logged, not raised;
        returns True when saved."""
        self.cancel()
        if self._stopped:
            return False
        try:
            fileio.replace_file(self.path, serialize(self._snapshot()))
        except OSError as e:
            self.log.error("cannot save metadata of {task_id} in {path}: {err}",
                           task_id=self._task_id, path=os.path.dirname(self.path), err=e)
            return False
        self.dirty = False
        self._unsaved = 0
        self._last_saved = self._clock.seconds()
        return True

    def flush(self):
        """Save now if anything changed since the last save."""
        if self.dirty:
            self.save()

    def stop(self):
        """Never save again (the task is gone)."""
        self._stopped = True
        self.cancel()

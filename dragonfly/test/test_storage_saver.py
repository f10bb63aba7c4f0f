"""Tests for dragonfly.storage.saver: when a task's meta.json is written."""
import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage.meta import TaskMeta
from dragonfly.storage.saver import MetaSaver


class MetaSaverTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "meta.json")
        self.clock = Clock()
        self.url = "u0"
        self.saver = MetaSaver(self.path, self.snapshot, self.clock, every_pieces=3,
                               every_seconds=10, task_id="t")

    def snapshot(self):
        return TaskMeta("t", self.url, 0, 1, (), b"")

    def saved_url(self):
        if not os.path.exists(self.path):
            return None
        with open(self.path) as f:
            return json.load(f)["url"]

    def test_debounced_by_count_and_time(self):
        """Changes are saved once every_pieces pieces have come, or every_seconds
        after the first unsaved change, whichever is first; no timer is left."""
        self.saver.changed(pieces=1)
        self.saver.changed(pieces=1)
        self.assertIsNone(self.saved_url())
        self.saver.changed(pieces=1)
        self.assertEqual(self.saved_url(), "u0")
        self.url = "u1"
        self.saver.changed(pieces=1)
        self.clock.advance(9.9)
        self.assertEqual(self.saved_url(), "u0")
        self.clock.advance(0.1)
        self.assertEqual(self.saved_url(), "u1")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_now_and_flush(self):
        """changed(now=True) saves at once; flush() saves only when something changed."""
        self.saver.changed(now=True)
        self.assertEqual(self.saved_url(), "u0")
        self.url = "u1"
        self.saver.flush()
        self.assertEqual(self.saved_url(), "u0")
        self.saver.dirty = True
        self.saver.flush()
        self.assertEqual(self.saved_url(), "u1")

    def test_stopped_never_saves(self):
        """After stop(), nothing is written and the timer is gone."""
        self.saver.changed(pieces=1)
        self.saver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.saver.save())
        self.saver.changed(now=True)
        self.assertIsNone(self.saved_url())

    def test_failed_save_logged_and_kept_dirty(self):
        """When the file cannot be written, save() logs it and returns False;
        the change stays pending for the next save."""
        os.rmdir(self.dir)
        self.assertFalse(self.saver.save())
        self.saver.changed()
        self.assertTrue(self.saver.dirty)
        os.makedirs(self.dir)
        self.saver.flush()
        self.assertEqual(self.saved_url(), "u0")

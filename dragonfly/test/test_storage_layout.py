"""Tests for dragonfly.storage.layout: on-disk names and the shared value checks."""
import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage import layout


class LayoutTests(SynchronousTestCase):
    def test_task_key_and_dir(self):
        """A task's key is the hex sha256 of its id; its directory is root/<key[:2]>/<key>."""
        key = layout.task_key("../../etc/passwd")
        self.assertEqual(key, hashlib.sha256(b"../../etc/passwd").hexdigest())
        self.assertEqual(layout.entry_dir("/r", key), os.path.join("/r", key[:2], key))
        self.assertTrue(layout.is_prefix_dir_name(key[:2]))
        self.assertTrue(layout.is_entry_name(key[:2], key))
        self.assertFalse(layout.is_entry_name("00" if key[:2] != "00" else "11", key))
        for name in ("A0", "0", "000", ".."):
            self.assertFalse(layout.is_prefix_dir_name(name))
        self.assertFalse(layout.is_entry_name(key[:2], key.upper()))

    def test_trash_path(self):
        """trash_path names a fresh hidden entry directly under root."""
        a, b = layout.trash_path("/r"), layout.trash_path("/r")
        self.assertNotEqual(a, b)
        self.assertEqual(os.path.dirname(a), "/r")
        self.assertTrue(os.path.basename(a).startswith(layout.TRASH_PREFIX))

    def test_good_task_id(self):
        """A task id is a non-empty str of at most MAX_TASK_ID characters that encodes to UTF-8."""
        for good in ("t", "x" * layout.MAX_TASK_ID, "\u00e9", "a/../b"):
            self.assertTrue(layout.good_task_id(good))
        for bad in ("", None, 5, b"t", "x" * (layout.MAX_TASK_ID + 1), "\udcff"):
            self.assertFalse(layout.good_task_id(bad))

    def test_value_checks(self):
        """is_int and is_num refuse bools (and is_num non-finite floats);
        is_hex_digest wants 64 lower-case hex digits."""
        self.assertTrue(layout.is_int(3))
        self.assertFalse(layout.is_int(True))
        self.assertFalse(layout.is_int(3.0))
        self.assertTrue(layout.is_num(3.5))
        for bad in (True, float("nan"), float("inf"), "1", None):
            self.assertFalse(layout.is_num(bad))
        self.assertTrue(layout.is_hex_digest("ab" * 32))
        for bad in ("AB" * 32, "ab" * 31, "zz" * 32, None, "ab" * 32 + "\n"):
            self.assertFalse(layout.is_hex_digest(bad))

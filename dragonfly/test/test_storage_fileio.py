"""Tests for dragonfly.storage.fileio: the blocking file operations of the store."""
import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage import fileio
from dragonfly.storage.errors import CorruptEntry, DigestMismatch, StoreError
from dragonfly.test.storefakes import pdigest


class PieceIOTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.fd = fileio.create_data(self.path, 8)
        self.addCleanup(os.close, self.fd)
        self.lock = threading.Lock()

    def test_create_data_sparse_full_length(self):
        """create_data makes a zero-filled file of the given length."""
        self.assertEqual(os.pread(self.fd, 16, 0), b"\0" * 8)

    def test_hash_and_write(self):
        """hash_and_write writes the chunks in order and returns their digest."""
        views = fileio.as_views([b"ab", bytearray(b"cd")])
        self.assertEqual(fileio.hash_and_write(self.fd, views, 4, self.lock), pdigest(b"abcd"))
        self.assertEqual(os.pread(self.fd, 8, 0), b"\0" * 4 + b"abcd")

    def test_verify_and_write(self):
        """verify_and_write writes only bytes that hash to the digest; others raise
        DigestMismatch and leave the file as it was."""
        views = fileio.as_views(b"abcd")
        e = self.assertRaises(DigestMismatch, fileio.verify_and_write, self.fd, views, 0,
                              pdigest(b"wxyz"), self.lock)
        self.assertEqual((e.expected, e.got), (pdigest(b"wxyz"), pdigest(b"abcd")))
        self.assertEqual(os.pread(self.fd, 8, 0), b"\0" * 8)
        fileio.verify_and_write(self.fd, views, 0, pdigest(b"abcd"), self.lock)
        self.assertEqual(os.pread(self.fd, 4, 0), b"abcd")

    def test_pread_all_short(self):
        """pread_all returns exactly the bytes asked for, or raises StoreError
        when the file ends first."""
        fileio.pwrite_all(self.fd, b"abcdefgh", 0, self.lock)
        self.assertEqual(fileio.pread_all(self.fd, 3, 2), b"cde")
        self.assertRaises(StoreError, fileio.pread_all, self.fd, 4, 6)


class EntryFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "meta.json")

    def test_replace_file(self):
        """replace_file leaves the new body under the name and no temp file."""
        fileio.replace_file(self.path, b"one")
        fileio.replace_file(self.path, b"two")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(os.listdir(self.dir), ["meta.json"])

    def test_remove_stale_temp(self):
        """remove_stale_temp deletes a leftover temp file and accepts its absence."""
        with open(self.path + ".tmp", "wb") as f:
            f.write(b"{")
        fileio.remove_stale_temp(self.path)
        fileio.remove_stale_temp(self.path)
        self.assertEqual(os.listdir(self.dir), [])

    def test_read_small_file(self):
        """read_small_file returns a regular file's bytes and refuses a missing,
        oversized or non-regular one with CorruptEntry."""
        self.assertRaises(CorruptEntry, fileio.read_small_file, self.path, 10)
        with open(self.path, "wb") as f:
            f.write(b"0123456789")
        self.assertEqual(fileio.read_small_file(self.path, 10), b"0123456789")
        self.assertRaises(CorruptEntry, fileio.read_small_file, self.path, 9)
        link = os.path.join(self.dir, "link")
        os.symlink(self.path, link)
        self.assertRaises(CorruptEntry, fileio.read_small_file, link, 10)
        self.assertRaises(CorruptEntry, fileio.read_small_file, self.dir, 10)

    def test_data_file_stat(self):
        """data_file_stat accepts only a regular file of the task's length."""
        data = os.path.join(self.dir, "data")
        self.assertRaises(CorruptEntry, fileio.data_file_stat, data, 4)
        with open(data, "wb") as f:
            f.write(b"abcd")
        self.assertEqual(fileio.data_file_stat(data, 4).st_size, 4)
        self.assertRaises(CorruptEntry, fileio.data_file_stat, data, 5)

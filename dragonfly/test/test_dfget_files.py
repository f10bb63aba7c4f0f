"""dfget.files: the umask, placing a file without sharing it, output paths."""
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import cli, files
from dragonfly.dfget.options import DfgetError, parse
from dragonfly.test.dfgetsupport import DATA, SHA, RunMixin
from dragonfly.test.test_peer_node import URL


class FilesTests(RunMixin, SynchronousTestCase):

    def test_umask_read_without_changing_it(self):
        """_umask() reports the process umask and leaves it as it was."""
        from dragonfly.dfget.files import _umask
        old = os.umask(0o027)
        try:
            self.assertEqual(_umask(), 0o027)
            self.assertEqual(os.umask(0o027), 0o027)
        finally:
            os.umask(old)

    def test_place_without_sharing(self):
        """place() never links a file it may not share: a private copy, digest of
        what was written."""
        self.patch(files, "_may_share", lambda st: False)
        src = os.path.join(self.dir, "src")
        with open(src, "wb") as f:
            f.write(DATA)
        how, got = files.place(src, self.out, "sha256")
        self.assertIn(how, ("copy", "reflink"))
        self.assertFalse(os.path.samefile(src, self.out))
        self.assertEqual(got, SHA)

    def test_missing_output_dir(self):
        """An output directory that does not exist is an error before any download."""
        code = cli.main([URL, "-O", os.path.join(self.dir, "nope", "f"), "--daemon", "none"],
                        stdout=self.stdout, stderr=self.stderr, signals=False,
                        embedded=lambda *a: self.fail("no download expected"))
        self.assertIn("does not exist", self.check_fails(code))

    def test_output_is_a_directory_name(self):
        """-O DIR puts the URL's basename in DIR; a FILE that is a directory is refused."""
        opts = parse([URL, "-O", self.dir])
        self.assertEqual(files.output_path(opts), os.path.join(self.dir, "blob.bin"))
        os.makedirs(os.path.join(self.dir, "blob.bin"))
        e = self.assertRaises(DfgetError, files.check_output, files.output_path(opts))
        self.assertIn("is a directory", str(e))


class KeepModeTests(SynchronousTestCase):
    """An existing output keeps its mode (files.publish, files.place(mode=))."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.out = os.path.join(self.dir, "out")
        self.src = os.path.join(self.dir, "src")
        with open(self.src, "wb") as f:
            f.write(DATA)
        os.chmod(self.src, 0o644)

    def test_publish_keeps_mode(self):
        """publish() gives the new file the mode of the one it replaces."""
        import stat
        with open(self.out, "wb") as f:
            f.write(b"old")
        os.chmod(self.out, 0o640)
        tmp = self.out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"new")
        os.chmod(tmp, 0o600)
        files.publish(tmp, self.out)
        self.assertEqual(stat.S_IMODE(os.stat(self.out).st_mode), 0o640)
        self.assertIsNone(files.existing_mode(os.path.join(self.dir, "none")))
        self.assertIsNone(files.existing_mode(self.dir))

    def test_no_link_to_another_mode(self):
        """place() links only to a file of the mode asked for; else it copies."""
        self.patch(files, "_reflink", lambda fin, fout: False)
        self.patch(files, "_umask", lambda: 0o022)
        how, _ = files.place(self.src, self.out, None, mode=0o600)
        self.assertEqual(how, "copy")
        os.unlink(self.out)
        how, _ = files.place(self.src, self.out, None, mode=0o644)
        self.assertEqual(how, "link")

"""Tests for dragonfly.nodeoptions: the flag rows and checks the daemons share."""
import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly import nodeoptions
from dragonfly.config import parse_rate


class CheckTests(SynchronousTestCase):

    def assertUsage(self, f, *args, match):
        e = self.assertRaises(usage.UsageError, f, *args)
        self.assertIn(match, str(e))

    def test_check_host(self):
        """An IP address (brackets dropped) or a host name passes; anything else
        is refused naming the flag."""
        self.assertEqual(nodeoptions.check_host("advertise", " 10.0.0.1 "), "10.0.0.1")
        self.assertEqual(nodeoptions.check_host("advertise", "[::1]"), "::1")
        self.assertEqual(nodeoptions.check_host("advertise", "node-1.example"), "node-1.example")
        for bad in ("a b", "", None, "x" * 254):
            self.assertUsage(nodeoptions.check_host, "advertise", bad,
                             match="--advertise: not a host name or address")

    def test_flag_size(self):
        """A size or rate parses; a bad one names the flag."""
        self.assertEqual(nodeoptions.flag_size("cache-size", "1K"), 1024)
        self.assertEqual(nodeoptions.flag_size("upload-limit", "2M", parse_rate), 2 << 20)
        self.assertUsage(nodeoptions.flag_size, "cache-size", "lots", match="--cache-size: ")

    def test_flag_seconds(self):
        """Seconds are finite and non-negative."""
        self.assertEqual(nodeoptions.flag_seconds("cache-ttl", "1.5"), 1.5)
        self.assertUsage(nodeoptions.flag_seconds, "cache-ttl", "soon",
                         match="--cache-ttl must be a number of seconds, not 'soon'")
        for bad in ("-1", "inf", "nan"):
            self.assertUsage(nodeoptions.flag_seconds, "cache-ttl", bad,
                             match="--cache-ttl must be a non-negative number of seconds")

    def test_flag_int(self):
        """An integer within its bounds."""
        self.assertEqual(nodeoptions.flag_int("concurrency", "8", 1, 256), 8)
        self.assertUsage(nodeoptions.flag_int, "concurrency", "x", 1, 256,
                         match="--concurrency must be an integer, not 'x'")
        self.assertUsage(nodeoptions.flag_int, "concurrency", "0", 1, 256,
                         match="--concurrency must be from 1 to 256")

    def test_check_data_dir(self):
        """The data dir is made absolute; empty or unwritable is refused."""
        d = self.mktemp()
        self.assertEqual(nodeoptions.check_data_dir(d), os.path.abspath(d))
        for empty in ("", "  ", None):
            self.assertUsage(nodeoptions.check_data_dir, empty,
                             match="--data-dir must not be empty")
        f = self.mktemp()
        open(f, "w").close()
        self.assertUsage(nodeoptions.check_data_dir, os.path.join(f, "x"),
                         match="not a directory")

    def test_check_log_format(self):
        """text or json, any case."""
        self.assertEqual(nodeoptions.check_log_format("JSON"), "json")
        self.assertUsage(nodeoptions.check_log_format, "xml",
                         match="--log-format must be text or json, not 'xml'")

    def test_check_port_file(self):
        """None when not given; else absolute, in a directory that exists."""
        self.assertIsNone(nodeoptions.check_port_file(None))
        self.assertIsNone(nodeoptions.check_port_file(""))
        p = self.mktemp()
        self.assertEqual(nodeoptions.check_port_file(p), os.path.abspath(p))
        self.assertUsage(nodeoptions.check_port_file, "/nonexistent-dir/x",
                         match="--port-file: directory /nonexistent-dir does not exist")


class SharedRowsTests(SynchronousTestCase):

    def test_both_daemons_list_the_shared_rows(self):
        """The supernode's and the peer's options carry the same rows for the
        flags they share."""
        from dragonfly.peer.tap import PeerOptions
        from dragonfly.supernode.tap import Options

        for row in (nodeoptions.CACHE_SIZE, nodeoptions.CACHE_TTL, nodeoptions.LOG_FORMAT,
                    nodeoptions.PORT_FILE):
            self.assertIn(row, Options.optParameters)
            self.assertIn(row, PeerOptions.optParameters)

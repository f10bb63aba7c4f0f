"""Tests for dragonfly.config: sizes, rates, addresses and TOML-backed options."""
import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dragonfly import config
from dragonfly.config import (
    ConfigOptions, from_string, load_toml, parse_hostport, parse_hostports, parse_rate,
    parse_size)

K, M, G, T = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4


class ParseSizeTests(SynchronousTestCase):
    def test_units(self):
        """When a size has K/M/G/T (any case, optional B or iB), it is a power of 1024."""
        cases = {"0": 0, "512": 512, "512B": 512, "4K": 4 * K, "4k": 4 * K, "4KB": 4 * K,
                 "4KiB": 4 * K, "4M": 4 * M, "4mib": 4 * M, "2G": 2 * G, "1T": T,
                 " 8 M ": 8 * M, "1.5K": 1536, "0.5M": M // 2, "1.1T": int(1.1 * T)}
        for text, want in cases.items():
            self.assertEqual(parse_size(text), want, text)

    def test_ints(self):
        """When a size is already an int, it is returned as is (TOML numbers)."""
        self.assertEqual(parse_size(4096), 4096)
        self.assertEqual(parse_size(0), 0)

    def test_exact(self):
        """When a fractional size is given, the result is exact, not float-rounded."""
        self.assertEqual(parse_size("1.1T"), 1209462790553)  # 1.1 * 2**40, truncated
        self.assertEqual(parse_size("3.3G"), 3543348019)

    def test_rejects(self):
        """When a size is malformed or negative, UsageError says so."""
        for bad in ["", "M", "4X", "4 MM", "-1", "-4M", "4iB", "1e3", "4M4", "0x10", "nan",
                    "4.M", ".5M", True, False, -1, None, "4\n4"]:
            self.assertRaises(usage.UsageError, parse_size, bad)

    def test_error_message(self):
        """When a size is malformed, the message quotes the value and shows examples."""
        e = self.assertRaises(usage.UsageError, parse_size, "lots")
        self.assertIn("'lots'", str(e))
        self.assertIn("4M", str(e))


class ParseRateTests(SynchronousTestCase):
    def test_rates(self):
        """When a rate is given, it is bytes per second with 1024-based suffixes; 0 is unlimited."""
        self.assertEqual(parse_rate("0"), 0)
        self.assertEqual(parse_rate(0), 0)
        self.assertEqual(parse_rate("10M"), 10 * M)
        self.assertEqual(parse_rate("100K"), 100 * K)
        self.assertRaises(usage.UsageError, parse_rate, "fast")
        self.assertRaises(usage.UsageError, parse_rate, "-1K")


class ParseHostPortTests(SynchronousTestCase):
    def test_host_port(self):
        """When HOST:PORT is given, it splits into (host, int port)."""
        self.assertEqual(parse_hostport("127.0.0.1:8002"), ("127.0.0.1", 8002))
        self.assertEqual(parse_hostport(" example.com:1 "), ("example.com", 1))
        self.assertEqual(parse_hostport("h:65535"), ("h", 65535))

    def test_ipv6(self):
        """When an IPv6 address is in brackets, the port follows; bare IPv6 needs a default port."""
        self.assertEqual(parse_hostport("[::1]:8002"), ("::1", 8002))
        self.assertEqual(parse_hostport("[::1]", 80), ("::1", 80))
        self.assertEqual(parse_hostport("::1", 80), ("::1", 80))
        self.assertEqual(parse_hostport("fe80::1%eth0", 80), ("fe80::1%eth0", 80))
        self.assertRaises(usage.UsageError, parse_hostport, "::1:8002")
        self.assertRaises(usage.UsageError, parse_hostport, "[::1]")
        self.assertRaises(usage.UsageError, parse_hostport, "[::1")
        self.assertRaises(usage.UsageError, parse_hostport, "[::1]x", 80)
        self.assertRaises(usage.UsageError, parse_hostport, "[::1]:")
        self.assertRaises(usage.UsageError, parse_hostport, "[host]:80")

    def test_default_port(self):
        """When no port is given, the default is used, or UsageError if there is none."""
        self.assertEqual(parse_hostport("host", 8002), ("host", 8002))
        self.assertRaises(usage.UsageError, parse_hostport, "host")

    def test_rejects(self):
        """When the host or port is malformed or out of range, UsageError."""
        for bad in [":80", "h:0", "h:65536", "h:-1", "h:x", "h:8_0", "h:+80", "h: 80",
                    "h:", "a b:80", "h/x:80", "user@h:80", "", "h:123456"]:
            self.assertRaises(usage.UsageError, parse_hostport, bad)

    def test_hostports(self):
        """When a comma list or a list is given, each item is parsed; empty items are skipped."""
        self.assertEqual(parse_hostports("a:1,b:2"), [("a", 1), ("b", 2)])
        self.assertEqual(parse_hostports(" a:1 , ,b:2, "), [("a", 1), ("b", 2)])
        self.assertEqual(parse_hostports(["a:1", "[::1]:2"]), [("a", 1), ("::1", 2)])
        self.assertEqual(parse_hostports("a,b", 8002), [("a", 8002), ("b", 8002)])
        self.assertEqual(parse_hostports(""), [])
        self.assertRaises(usage.UsageError, parse_hostports, "a:1,b")


class TomlTests(SynchronousTestCase):
    def test_from_string(self):
        """When TOML text is valid, it parses; when not, UsageError."""
        self.assertEqual(from_string('a = 1\nb = "x"'), {"a": 1, "b": "x"})
        self.assertRaises(usage.UsageError, from_string, "a = ")

    def test_load_toml(self):
        """When the file is missing or bad, UsageError names it."""
        path = self.mktemp()
        e = self.assertRaises(usage.UsageError, load_toml, path)
        self.assertIn(path, str(e))
        with open(path, "w") as f:
            f.write("x = [")
        e = self.assertRaises(usage.UsageError, load_toml, path)
        self.assertIn("bad TOML", str(e))
        with open(path, "w") as f:
            f.write('cache-size = "1G"\n')
        self.assertEqual(load_toml(path), {"cache-size": "1G"})


class Options(ConfigOptions):
    role = "testrole"
    optParameters = [
        ["data-dir", None, "/var/lib/dragonfly/test", "Where data goes."],
        ["cache-size", None, "1G", "Cache quota."],
        ["supernodes", None, "127.0.0.1:8002", "Supernodes."],
        ["workers", "w", 4, "Worker count.", int],
    ]
    optFlags = [["verbose", "v", "Say more."], ["no-back-source", None, "Never go to the origin."]]
    listOptions = ("allow-registry",)

    def postOptions(self):
        self.applyConfig()


class CustomList(ConfigOptions):
    listOptions = ("header",)

    def opt_header(self, value):
        """A header (repeatable)."""
        self["header"].append(value.strip())

    def opt_quiet(self):
        """Be quiet."""
        self["quiet"] = True


class ConfigOptionsTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def setUp(self):
        # No /etc/dragonfly/testrole.toml on a test machine; make sure.
        self.assertFalse(os.path.exists("/etc/dragonfly/testrole.toml"))

    def test_constructs(self):
        """When a subclass is instantiated, it works like usage.Options with defaults."""
        o = Options()
        o.parseOptions([])
        self.assertEqual(o["data-dir"], "/var/lib/dragonfly/test")
        self.assertEqual(o["workers"], 4)
        self.assertEqual(o["verbose"], 0)
        self.assertEqual(o["allow_registry"], [])
        self.assertIsNone(o["config"])
        self.assertIn("--config", str(o))
        self.assertIn("--allow-registry", str(o))

    def test_file_beats_default(self):
        """When the file sets a value and no flag does, the file's value is used (coerced like a flag)."""
        path = self.write('data-dir = "/srv/d"\ncache_size = "2G"\nworkers = 9\nverbose = true\n'
                          'supernodes = ["a:1", "b:2"]\nallow-registry = ["r1", "r2:5000"]\n')
        o = Options()
        o.parseOptions(["--config", path])
        self.assertEqual(o["data-dir"], "/srv/d")
        self.assertEqual(o["cache-size"], "2G")
        self.assertEqual(o["workers"], 9)
        self.assertEqual(o["verbose"], 1)
        self.assertEqual(o["supernodes"], "a:1,b:2")
        self.assertEqual(o["allow_registry"], ["r1", "r2:5000"])

    def test_flag_beats_file(self):
        """When a flag and the file both set an option, the flag wins, for parameters, flags and lists."""
        path = self.write('data-dir = "/file"\nworkers = 9\nverbose = false\n'
                          'allow_registry = "from-file"\ncache-size = "2G"\n')
        o = Options()
        o.parseOptions(["--data-dir=/flag", "-w", "3", "--verbose",
                        "--allow-registry", "x", "--allow-registry=y", "--config", path])
        self.assertEqual(o["data-dir"], "/flag")
        self.assertEqual(o["workers"], 3)
        self.assertEqual(o["verbose"], 1)
        self.assertEqual(o["allow_registry"], ["x", "y"])
        self.assertEqual(o["cache-size"], "2G")  # not on the command line: file wins
        self.assertTrue(o.wasGiven("data-dir"))
        self.assertTrue(o.wasGiven("data_dir"))
        self.assertFalse(o.wasGiven("cache-size"))

    def test_flag_equal_to_default_still_wins(self):
        """When a flag is given with the default value, the file still does not override it."""
        path = self.write('data-dir = "/file"\n')
        o = Options()
        o.parseOptions(["--data-dir", "/var/lib/dragonfly/test", "--config", path])
        self.assertEqual(o["data-dir"], "/var/lib/dragonfly/test")

    def test_file_list_string(self):
        """When a list option is a single string in the file, it becomes a one-item list."""
        o = Options()
        o.parseOptions([])
        o.applyMapping({"allow-registry": "only"})
        self.assertEqual(o["allow_registry"], ["only"])

    def test_unknown_key(self):
        """When the file has an unknown setting, UsageError names it and the file."""
        path = self.write('data-dir = "/x"\nbogus = 1\n')
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])
        self.assertIn("bogus", str(e))
        self.assertIn(path, str(e))

    def test_bad_values(self):
        """When a file value has the wrong type, UsageError, not a silent misconfiguration."""
        for mapping in [{"verbose": "yes"}, {"workers": "many"}, {"allow-registry": 5},
                        {"allow-registry": [{"a": 1}]}, {"data-dir": {"x": 1}},
                        {"supernodes": [["a"]]}]:
            o = Options()
            o.parseOptions([])
            self.assertRaises(usage.UsageError, o.applyMapping, mapping)

    def test_not_from_file(self):
        """When the file names config, help or version, it is an unknown setting."""
        for key in ("config", "help", "version"):
            o = Options()
            o.parseOptions([])
            self.assertRaises(usage.UsageError, o.applyMapping, {key: "x"})

    def test_bad_file(self):
        """When --config names a missing or malformed file, UsageError."""
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", self.mktemp()])
        path = self.write("data-dir = ")
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])

    def test_default_config_path(self):
        """When --config is absent, /etc/dragonfly/<role>.toml is read if it exists."""
        seen = []
        path = self.write('data-dir = "/from-default"\n')
        real_exists = os.path.exists
        self.patch(config.os.path, "exists",
                   lambda p: seen.append(p) or (True if p == "/etc/dragonfly/testrole.toml"
                                                else real_exists(p)))
        real_load = config.load_toml
        self.patch(config, "load_toml",
                   lambda p: real_load(path if p == "/etc/dragonfly/testrole.toml" else p))
        o = Options()
        o.parseOptions([])
        self.assertIn("/etc/dragonfly/testrole.toml", seen)
        self.assertEqual(o["data-dir"], "/from-default")

    def test_no_default_file(self):
        """When --config is absent and there is no default file, defaults stand."""
        o = Options()
        o.parseOptions([])
        self.assertEqual(o["cache-size"], "1G")

    def test_custom_list_handler(self):
        """When a subclass defines opt_<list option>, it is used for flags; the file still fills it."""
        o = CustomList()
        o.parseOptions(["--header", " A: 1 "])
        o.applyMapping({"header": ["B: 2"]})
        self.assertEqual(o["header"], ["A: 1"])
        p = CustomList()
        p.parseOptions([])
        p.applyMapping({"header": ["B: 2"], "quiet": True})
        self.assertEqual(p["header"], ["B: 2"])
        self.assertTrue(p["quiet"])

    def test_switch_handler_false(self):
        """When a no-argument opt_ handler is set false in the file, it is not called."""
        o = CustomList()
        o.parseOptions([])
        o.applyMapping({"quiet": False})
        self.assertNotIn("quiet", o)
        self.assertRaises(usage.UsageError, o.applyMapping, {"quiet": "yes"})

    def test_bad_flag_value(self):
        """When a command-line parameter fails its coerce, UsageError (and the file is not consulted)."""
        self.assertRaises(usage.UsageError, Options().parseOptions, ["-w", "lots"])

    def test_not_a_table(self):
        """When applyMapping gets something other than a dict, UsageError."""
        o = Options()
        o.parseOptions([])
        self.assertRaises(usage.UsageError, o.applyMapping, ["a"])

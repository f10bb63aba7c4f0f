"""dfget --recursive: listing parsing, path safety and the walk, with scripted listings."""
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget import recursive
from dragonfly.dfget.options import DfgetError, OptionsError, parse
from dragonfly.dfget.recursive import Refused, parse_listing, relative_path, walk

BASE = "http://o.test/tree/"

NGINX = b"""<html><head><title>Index of /tree/</title></head><body>
<h1>Index of /tree/</h1><hr><pre><a href="../">../</a>
<a href="sub/">sub/</a>                                  05-Dec-2026 10:00       -
<a href="a%20b.bin">a b.bin</a>                          05-Dec-2026 10:00     123
<a href="c.txt">c.txt</a>                                05-Dec-2026 10:00       9
</pre><hr></body></html>"""

APACHE = b"""<html><body><h1>Index of /tree</h1><table>
<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td><a href="/">Parent Directory</a></td></tr>
<tr><td><a href="x.bin">x.bin</a></td></tr>
<tr><td><a href="/tree/deep/">deep/</a></td></tr>
</table></body></html>"""

JSON = json.dumps([{"name": "j.bin", "type": "file", "size": 3},
                   {"name": "dir one", "type": "directory"}]).encode()


class ListingTests(SynchronousTestCase):

    def test_nginx_html(self):
        """nginx autoindex: every href in order, the parent link included."""
        self.assertEqual(parse_listing(NGINX, "text/html"),
                         ["../", "sub/", "a%20b.bin", "c.txt"])

    def test_json(self):
        """nginx JSON autoindex: names quoted, directories with a trailing slash."""
        self.assertEqual(parse_listing(JSON, "application/json"), ["j.bin", "dir%20one/"])
        self.assertRaises(DfgetError, parse_listing, b"[oops", "application/json")

    def test_navigation_skipped(self):
        """Parent, self and sort links, and Apache's absolute parent link, are skipped."""
        for href in ("../", "..", "./", "?C=N;O=D", "#top", "/", "/tree/", "http://o.test/"):
            self.assertIsNone(relative_path(BASE, href), href)

    def test_entries(self):
        """Relative, absolute-path and absolute-URL entries under the start resolve."""
        self.assertEqual(relative_path(BASE, "a%20b.bin"), (BASE + "a%20b.bin", "a b.bin"))
        self.assertEqual(relative_path(BASE, "sub/"), (BASE + "sub/", "sub/"))
        self.assertEqual(relative_path(BASE, "/tree/deep/"), (BASE + "deep/", "deep/"))
        self.assertEqual(relative_path(BASE, BASE + "x/y.bin"), (BASE + "x/y.bin", "x/y.bin"))

    def test_escapes_refused(self):
        """Entries that would leave the output directory or the start URL are refused:
        .. segments (plain or percent-encoded), absolute paths elsewhere, other hosts,
        encoded slashes and backslashes."""
        for href in ("../../etc/passwd", "sub/../../x", "..%2f..%2fetc%2fpasswd",
                     "%2e%2e/x", "/etc/passwd", "http://evil.test/tree/x",
                     "a%2fb", "a\\..\\b", "sub//x", "x%00y", "/tree/%2e%2e/secret"):
            self.assertRaises(Refused, relative_path, BASE, href)


class WalkTests(SynchronousTestCase):

    PAGES = {
        BASE: (NGINX, "text/html"),
        BASE + "sub/": (APACHE.replace(b"/tree/deep/", b"/tree/sub/deep/"), "text/html"),
        BASE + "sub/deep/": (JSON, "application/json"),
        BASE + "sub/deep/dir%20one/": (b"[]", "application/json"),
    }

    def fetch(self, url, headers):
        body, ctype = self.PAGES[url]
        return body, ctype, url

    def files(self, level=0, accept=None, reject=None, pages=None):
        warnings = []
        got = list(walk(BASE, {}, level, accept, reject, warnings.append, fetch=self.fetch))
        return [rel for _, rel in got], warnings

    def test_all_levels(self):
        """Every file of every level, relative to the start, directories walked once."""
        got, warnings = self.files()
        self.assertEqual(got, ["a%20b.bin", "c.txt", "sub/x.bin", "sub/deep/j.bin"])
        self.assertEqual(warnings, [])

    def test_level_limit(self):
        """--level N walks N directory levels (the start is level 1)."""
        self.assertEqual(self.files(level=1)[0], ["a%20b.bin", "c.txt"])
        self.assertEqual(self.files(level=2)[0], ["a%20b.bin", "c.txt", "sub/x.bin"])

    def test_regexes(self):
        """--accept-regex and --reject-regex match the whole URL of files."""
        import re
        self.assertEqual(self.files(accept=re.compile(r"\.bin$"))[0],
                         ["a%20b.bin", "sub/x.bin", "sub/deep/j.bin"])
        self.assertEqual(self.files(reject=re.compile(r"/sub/"))[0], ["a%20b.bin", "c.txt"])

    def test_refused_entry_warned(self):
        """A crafted ../ entry is reported, the rest of the listing still walked."""
        self.PAGES = dict(self.PAGES)
        self.PAGES[BASE] = (NGINX + b'<a href="../../etc/passwd">x</a>', "text/html")
        got, warnings = self.files(level=1)
        self.assertEqual(got, ["a%20b.bin", "c.txt"])
        self.assertEqual(len(warnings), 1)
        self.assertIn("../../etc/passwd", warnings[0])


class RunTests(SynchronousTestCase):

    def test_run_places_files_and_fails_on_refusal(self):
        """run() downloads each file as its own task under the output directory, keeping
        relative paths; a refused entry makes it fail after the others."""
        root = os.path.abspath(self.mktemp())
        opts = parse([BASE, "--recursive", "-O", root, "--level", "0"])
        pages = dict(WalkTests.PAGES)
        pages[BASE] = (NGINX + b'<a href="%2e%2e/x">x</a>', "text/html")
        calls = []

        def one(file_opts, out):
            calls.append((file_opts["url"], out, file_opts["task_id"]))
        self.patch(recursive, "_fetch", lambda url, headers: (pages[url][0], pages[url][1], url))
        err = io.StringIO()
        with self.assertRaises(DfgetError) as cm:
            recursive.run(opts, one, err)
        self.assertIn("1 listing entry refused", str(cm.exception))
        self.assertEqual([c[1] for c in calls],
                         [os.path.join(root, p) for p in ("a b.bin", "c.txt", "sub/x.bin",
                                                          "sub/deep/j.bin")])
        self.assertEqual(len({c[2] for c in calls}), 4)
        self.assertTrue(os.path.isdir(os.path.join(root, "sub", "deep")))
        self.assertIn("warning", err.getvalue())

    def test_options(self):
        """--level and the regexes are checked; --recursive takes no digest or stdout."""
        o = parse([BASE, "--recursive", "--accept-regex", r"\.bin$"])
        self.assertEqual((o["recursive"], o["level_n"]), (True, 5))
        for argv in ([BASE, "--level", "-1"], [BASE, "--level", "x"],
                     [BASE, "--accept-regex", "("], [BASE, "--recursive", "-O", "-"],
                     [BASE, "--recursive", "--md5", "a" * 32]):
            self.assertRaises(OptionsError, parse, argv)

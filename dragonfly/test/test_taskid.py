"""Tests for dragonfly.taskid: how URLs and digests name tasks."""
import hashlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.taskid import (
    is_oci_digest, new_peer_id, strip_query, task_id_for_url, validate_peer_id,
    validate_task_id)


class ValidateTests(SynchronousTestCase):
    def test_accepts(self):
        """When an id matches the documented pattern, it is returned unchanged."""
        for good in ["a", "A9", "0" * 64, "sha256:" + "ab" * 32, "host-1.example-123-deadbeef",
                     "x_y.z:1", "a" * 128, "supernode-127.0.0.1:8002"]:
            self.assertEqual(validate_task_id(good), good)
            self.assertEqual(validate_peer_id(good), good)

    def test_rejects(self):
        """When an id is empty, too long, starts with a symbol or holds path/space characters, ValueError."""
        for bad in ["", "a" * 129, "-a", ".a", ":a", "_a", "a/b", "../x", "a b", "a\n",
                    "a\0", "\u00e9", "a%2f", "a\\b", None, 5, b"abc", ["a"]]:
            self.assertRaises(ValueError, validate_task_id, bad)

    def test_trailing_newline(self):
        """When an id ends with a newline, it is refused (no $-matches-before-newline slip)."""
        self.assertRaises(ValueError, validate_task_id, "abc\n")


class OCIDigestTests(SynchronousTestCase):
    def test_digests(self):
        """When a string is sha256:<64 hex> or sha512:<128 hex> (lower case), it is an OCI digest."""
        self.assertTrue(is_oci_digest("sha256:" + "0a" * 32))
        self.assertTrue(is_oci_digest("sha512:" + "f" * 128))
        for bad in ["sha256:" + "0A" * 32, "sha256:" + "0" * 63, "sha256:" + "0" * 65,
                    "md5:" + "0" * 32, "sha512:" + "0" * 64, "sha256:" + "0" * 64 + "\n",
                    "", None, 7]:
            self.assertFalse(is_oci_digest(bad), bad)

    def test_digest_is_valid_task_id(self):
        """When a task id is an OCI sha256 digest, validate_task_id accepts it."""
        d = "sha256:" + "0a" * 32
        self.assertEqual(validate_task_id(d), d)


class StripQueryTests(SynchronousTestCase):
    def test_no_filters(self):
        """When no filters are given, the URL is unchanged."""
        url = "http://o/f?b=2&a=1&x"
        self.assertEqual(strip_query(url), url)
        self.assertEqual(strip_query(url, ()), url)

    def test_removes_named(self):
        """When filters name parameters, those go and the rest stay byte for byte in order."""
        self.assertEqual(
            strip_query("http://o/f?b=%20x&token=1&a=1+2&Expires=9&x", ("token", "Expires")),
            "http://o/f?b=%20x&a=1+2&x")

    def test_repeated_and_encoded_names(self):
        """When a filtered name repeats or is percent-encoded, every occurrence goes."""
        self.assertEqual(strip_query("http://o/f?sig=1&a=2&sig=3&%73ig=4", ["sig"]),
                         "http://o/f?a=2")

    def test_all_removed(self):
        """When every parameter is filtered, no '?' is left."""
        self.assertEqual(strip_query("http://o/f?sig=1", ["sig"]), "http://o/f")

    def test_no_query(self):
        """When the URL has no query, it is unchanged."""
        self.assertEqual(strip_query("http://o/f", ["sig"]), "http://o/f")

    def test_fragment_and_prefix(self):
        """When a parameter only starts with a filtered name, it stays; fragments stay."""
        self.assertEqual(strip_query("http://o/f?signature=1&sig=2#frag", ["sig"]),
                         "http://o/f?signature=1#frag")


class TaskIdForURLTests(SynchronousTestCase):
    def test_sha256_of_url(self):
        """When no filter or tag is given, the task id is the sha256 hex of the URL."""
        url = "http://example.com/a/b.bin?x=1"
        self.assertEqual(task_id_for_url(url), hashlib.sha256(url.encode()).hexdigest())
        self.assertRegex(task_id_for_url(url), r"\A[0-9a-f]{64}\Z")
        self.assertEqual(validate_task_id(task_id_for_url(url)), task_id_for_url(url))

    def test_filters_make_same_task(self):
        """When URLs differ only in filtered parameters, they name the same task."""
        a = task_id_for_url("http://o/f?a=1&token=abc", filters=["token"])
        b = task_id_for_url("http://o/f?a=1&token=xyz", filters=["token"])
        c = task_id_for_url("http://o/f?a=1", filters=["token"])
        self.assertEqual(a, b)
        self.assertEqual(a, c)
        self.assertNotEqual(task_id_for_url("http://o/f?a=1&token=abc"),
                            task_id_for_url("http://o/f?a=1&token=xyz"))

    def test_unfiltered_params_matter(self):
        """When URLs differ in a parameter that is not filtered, the tasks differ."""
        self.assertNotEqual(task_id_for_url("http://o/f?a=1", filters=["t"]),
                            task_id_for_url("http://o/f?a=2", filters=["t"]))

    def test_tag(self):
        """When a tag is given, the id is sha256(url + NUL + tag) and differs per tag."""
        url = "http://o/f"
        self.assertEqual(task_id_for_url(url, tag="v1"),
                         hashlib.sha256(b"http://o/f\0v1").hexdigest())
        self.assertNotEqual(task_id_for_url(url, tag="v1"), task_id_for_url(url, tag="v2"))
        self.assertNotEqual(task_id_for_url(url, tag="v1"), task_id_for_url(url))
        self.assertEqual(task_id_for_url(url, tag=""), task_id_for_url(url))

    def test_unicode_url(self):
        """When the URL has non-ASCII characters, it is hashed as UTF-8."""
        url = "http://o/\u00e9t\u00e9"
        self.assertEqual(task_id_for_url(url), hashlib.sha256(url.encode("utf-8")).hexdigest())


class PeerIdTests(SynchronousTestCase):
    def test_shape(self):
        """A new peer id is '<host>-<pid>-<8 hex>' and passes validate_peer_id."""
        pid = new_peer_id()
        self.assertEqual(validate_peer_id(pid), pid)
        m = re.match(r"\A(.+)-(\d+)-([0-9a-f]{8})\Z", pid)
        self.assertIsNotNone(m)
        self.assertEqual(int(m.group(2)), os.getpid())

    def test_unique(self):
        """When several peer ids are made, they differ."""
        self.assertEqual(len({new_peer_id() for _ in range(50)}), 50)

    def test_odd_hostname(self):
        """When the hostname has odd characters or is empty, the peer id is still valid."""
        import socket
        for name in ["my host/with:odd*chars", "", "\u00e9" * 200, "-leading"]:
            self.patch(socket, "gethostname", lambda name=name: name)
            pid = new_peer_id()
            self.assertEqual(validate_peer_id(pid), pid, name)


class FilterStringTests(SynchronousTestCase):
    def test_comma_string(self):
        """When filters is a comma-separated string (as --filter gives it), it names parameters, not letters."""
        self.assertEqual(strip_query("http://o/f?s=1&a=2&token=3&x=4", "token, x"),
                         "http://o/f?s=1&a=2")
        self.assertEqual(task_id_for_url("http://o/f?a=1&t=2", filters="t"),
                         task_id_for_url("http://o/f?a=1"))


class DeriveTests(SynchronousTestCase):
    def test_url_filter_tag(self):
        """Without a digest, the id is task_id_for_url's: the URL less the
        filtered parameters, plus the tag; ids dfget and the mirror used stay valid."""
        from dragonfly.taskid import derive_task_id
        url = "http://o/f?sig=1&x=2"
        self.assertEqual(derive_task_id(url), task_id_for_url(url))
        self.assertEqual(derive_task_id(url, ["sig"], "t"), task_id_for_url("http://o/f?x=2", [], "t"))
        self.assertNotEqual(derive_task_id(url, (), "t"), derive_task_id(url))

    def test_digest_names_the_task(self):
        """A sha256 content digest is the id itself, whatever the URL, filters
        or tag (the same layer behind two registries is one task)."""
        from dragonfly.taskid import derive_task_id
        d = "sha256:" + "ab" * 32
        self.assertEqual(derive_task_id("http://a/v2/x/blobs/" + d, digest=d), d)
        self.assertEqual(derive_task_id("http://b/other", ["q"], "t", d), d)
        self.assertEqual(derive_task_id("http://o/f", digest=""), task_id_for_url("http://o/f"))

    def test_bad_digest(self):
        """A digest that is not sha256:<64 lower-case hex> is refused."""
        from dragonfly.taskid import derive_task_id
        for bad in ["sha256:" + "AB" * 32, "sha256:abc", "md5:" + "0" * 32,
                    "sha512:" + "0" * 128, 5, ["sha256:" + "0" * 64]]:
            self.assertRaises(ValueError, derive_task_id, "http://o/f", (), "", bad)

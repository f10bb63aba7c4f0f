"""Tests for dragonfly.storage.meta: the pure, versioned meta.json codec."""
import json

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.storage.errors import BadMeta, CorruptEntry, UnknownMetaVersion
from dragonfly.storage.meta import (
    MAX_META_BYTES, META_VERSION, TaskMeta, is_held, parse, reader_for, serialize)
from dragonfly.test.storefakes import pdigest

D0, D2 = pdigest(b"piece 0"), pdigest(b"piece 2")


def sample(**changes):
    fields = dict(task_id="t-1", url="http://o/f", length=10, piece_size=4,
                  digests=(D0, None, D2), held=bytes([0b10100000]), etag='"e"',
                  last_modified="Mon", created=100, last_access=107.5, sealed=(10, 123))
    fields.update(changes)
    return TaskMeta(**fields)


def body(**changes):
    """A valid version 2 body with C{changes} applied (a value of ... deletes the key)."""
    doc = json.loads(serialize(sample()))
    for k, v in changes.items():
        if v is ...:
            del doc[k]
        else:
            doc[k] = v
    return json.dumps(doc).encode("utf-8")


class SerializeTests(SynchronousTestCase):
    def test_round_trip(self):
        """When a TaskMeta is serialized and parsed back, it is equal to itself."""
        for meta in (sample(), sample(sealed=None, etag=None, last_modified=None),
                     sample(length=0, digests=(), held=b"")):
            self.assertEqual(parse(serialize(meta)), meta)

    def test_current_version_compact(self):
        """serialize writes the current version as compact JSON, with the held
        bitmap in hex (piece 0 the top bit) and the seal as a list."""
        out = serialize(sample())
        self.assertNotIn(b" ", out)
        doc = json.loads(out)
        self.assertEqual(doc["version"], META_VERSION)
        self.assertEqual(META_VERSION, 2)
        self.assertEqual(doc["held"], "a0")
        self.assertEqual(doc["digests"], [D0, None, D2])
        self.assertEqual(doc["sealed"], [10, 123])
        self.assertIsNone(json.loads(serialize(sample(sealed=None)))["sealed"])

    def test_geometry_helpers(self):
        """piece_count rounds up; is_held reads the bitmap."""
        meta = sample()
        self.assertEqual(meta.piece_count, 3)
        self.assertEqual([is_held(meta.held, i) for i in range(3)], [True, False, True])


class ParseTests(SynchronousTestCase):
    def test_valid(self):
        """A valid version 2 body parses into its fields (lists become tuples)."""
        meta = parse(body())
        self.assertEqual(meta, sample())
        self.assertIsInstance(meta.digests, tuple)
        self.assertIsInstance(meta.sealed, tuple)

    def test_missing_seal(self):
        """A version 2 body saved before seals existed parses with sealed None."""
        self.assertIsNone(parse(body(sealed=...)).sealed)

    def test_clean_flag(self):
        """The clean-shutdown flag round-trips; absent (an older file) reads as
        false; anything but a boolean is refused."""
        self.assertTrue(parse(serialize(sample(clean=True))).clean)
        self.assertFalse(parse(body(clean=...)).clean)
        for bad in (1, "true", None):
            self.assertRaises(BadMeta, parse, body(clean=bad))

    def test_unknown_fields_ignored(self):
        """Fields the reader does not know are ignored."""
        self.assertEqual(parse(body(extra={"x": 1})), sample())

    def test_malformed(self):
        """When the body is not JSON, not UTF-8, not an object, too deep or too
        large, parse raises BadMeta."""
        for bad in (b"", b"\x00{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null",
                    body()[:20], b"[" * 100000 + b"]" * 100000,
                    b" " * (MAX_META_BYTES + 1)):
            self.assertRaises(BadMeta, parse, bad)

    def test_retired_version(self):
        """A version 1 body (sha256 piece digests) is refused as a version no
        longer read, saying why."""
        e = self.assertRaises(UnknownMetaVersion, parse, body(version=1))
        self.assertIn("sha256", str(e))

    def test_unknown_version(self):
        """A newer, missing or non-integer version is refused with UnknownMetaVersion."""
        for version in (3, 0, -1, None, "2", 2.0, True, [2], ...):
            self.assertRaises(UnknownMetaVersion, parse, body(version=version))

    def test_schema_from_version(self):
        """reader_for maps version 2 to its reader and refuses the others."""
        self.assertEqual(reader_for(2)(json.loads(body())), sample())
        self.assertRaises(UnknownMetaVersion, reader_for, 1)
        self.assertRaises(UnknownMetaVersion, reader_for, 99)
        self.assertTrue(issubclass(UnknownMetaVersion, BadMeta))
        self.assertTrue(issubclass(BadMeta, CorruptEntry))

    def test_bad_fields(self):
        """When any field has the wrong type, size or value, parse raises BadMeta."""
        cases = [dict(task_id=""), dict(task_id=5), dict(task_id="x" * 2000), dict(task_id=...),
                 dict(url=None), dict(length="10"), dict(length=-1), dict(length=True),
                 dict(piece_size=0), dict(piece_size=4.0),
                 dict(digests=[D0, None]), dict(digests=["zz", None, None]),
                 dict(digests=[D0.upper(), None, D2]), dict(digests="x"),
                 dict(held="a0a0"), dict(held="nothex"), dict(held=None), dict(held="a8"),
                 dict(held="e0"), dict(etag=5), dict(last_modified=["Mon"]),
                 dict(created=None), dict(last_access="now"), dict(created=float("nan")),
                 dict(last_access=float("inf")), dict(sealed="x"), dict(sealed=[1]),
                 dict(sealed=[1, "2"]), dict(sealed=[True, 2])]
        for change in cases:
            self.assertRaises(BadMeta, parse, body(**change))

    def test_held_without_digest(self):
        """A piece marked held must have a digest."""
        e = self.assertRaises(BadMeta, parse, body(digests=[D0, None, None]))
        self.assertIn("piece 2", str(e))

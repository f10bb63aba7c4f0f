"""The meta.json codec: a task's saved metadata <-> bytes, versioned. Pure: no I/O.

A meta.json body is a JSON object whose ``version`` says how to read the rest;
L{reader_for} maps a version to its reader, and a version we do not read
(older, retired, or newer) is refused with L{UnknownMetaVersion}. Version 2
(BLAKE3 piece digests; version 1 had sha256 ones, which a supernode no longer
sends, so such a task is dropped and fetched again) holds ``task_id``,
``url``, ``length``, ``piece_size``, the hex digest of each piece (``null``
until known), a bitmap of the pieces held (hex, piece 0 is the top bit of the
first byte; a held piece always has a digest), ``etag``, ``last_modified``,
``created`` and ``last_access`` (the clock's seconds) and ``sealed`` (the data
file's size and mtime in ns once complete, else ``null``; absent in older
files) and ``clean`` (true only in the save a clean shutdown wrote last; absent
in older files, read as false: after an unclean stop the held pieces are
re-verified against their digests before they are served again).
L{serialize} always writes the current version.
"""
import json
from dataclasses import dataclass
from typing import Optional, Tuple

from dragonfly.storage.errors import BadMeta, UnknownMetaVersion
from dragonfly.storage.layout import good_task_id, is_hex_digest, is_int, is_num

#: The version L{serialize} writes. 2: BLAKE3 piece digests.
META_VERSION = 2
#: A meta.json larger than this is not ours.
MAX_META_BYTES = 64 << 20

#: Versions we once wrote and no longer read, and why.
_RETIRED = {1: "its piece digests are sha256, not BLAKE3"}


@dataclass(frozen=True)
class TaskMeta:
    """What meta.json records of one task (see the module docstring)."""

    task_id: str
    url: str
    length: int
    piece_size: int
    digests: Tuple[Optional[str], ...]
    held: bytes
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    created: float = 0
    last_access: float = 0
    sealed: Optional[Tuple[int, int]] = None
    clean: bool = False

    @property
    def piece_count(self):
        return -(-self.length // self.piece_size)


def is_held(bitmap, index):
    """True if piece C{index} is set in held bitmap C{bitmap}."""
    return bool(bitmap[index >> 3] & (0x80 >> (index & 7)))


def serialize(meta):
    """The meta.json body (current version) of TaskMeta C{meta}."""
    return json.dumps({
        "version": META_VERSION,
        "task_id": meta.task_id,
        "url": meta.url,
        "length": meta.length,
        "piece_size": meta.piece_size,
        "digests": list(meta.digests),
        "held": meta.held.hex(),
        "etag": meta.etag,
        "last_modified": meta.last_modified,
        "created": meta.created,
        "last_access": meta.last_access,
        "sealed": list(meta.sealed) if meta.sealed else None,
        "clean": bool(meta.clean),
    }, separators=(",", ":")).encode("utf-8")


def parse(body):
    """The TaskMeta of meta.json body C{body} (bytes); L{BadMeta} if it is not
    one we can use, L{UnknownMetaVersion} (a BadMeta) for a version we do not read."""
    if len(body) > MAX_META_BYTES:
        raise BadMeta(f"meta.json is {len(body)} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadMeta(f"unreadable meta.json: {e}")
    if not isinstance(doc, dict):
        raise BadMeta("meta.json is not an object")
    return reader_for(doc.get("version"))(doc)


def reader_for(version):
    """The reader (JSON object -> TaskMeta) of meta.json version C{version}."""
    reader = _READERS.get(version) if is_int(version) else None
    if reader is not None:
        return reader
    why = _RETIRED.get(version) if is_int(version) else None
    if why is not None:
        raise UnknownMetaVersion(f"meta.json version {version} is no longer read: {why}")
    raise UnknownMetaVersion(f"unknown meta.json version {version!r}")


def _read_v2(doc):
    task_id = doc.get("task_id")
    if not good_task_id(task_id):
        raise BadMeta("bad task id")
    url, length, piece_size = doc.get("url"), doc.get("length"), doc.get("piece_size")
    if not isinstance(url, str) or not is_int(length) or length < 0:
        raise BadMeta("bad url or length")
    if not is_int(piece_size) or piece_size <= 0:
        raise BadMeta("bad piece size")
    count = -(-length // piece_size)
    digests = _read_digests(doc.get("digests"), count)
    held = _read_held(doc.get("held"), count, digests)
    etag, last_modified = doc.get("etag"), doc.get("last_modified")
    if not all(v is None or isinstance(v, str) for v in (etag, last_modified)):
        raise BadMeta("bad validators")
    created, last_access = doc.get("created"), doc.get("last_access")
    if not is_num(created) or not is_num(last_access):
        raise BadMeta("bad timestamps")
    sealed = doc.get("sealed")
    if sealed is not None:
        if not (isinstance(sealed, list) and len(sealed) == 2 and all(is_int(v) for v in sealed)):
            raise BadMeta("bad seal")
        sealed = tuple(sealed)
    clean = doc.get("clean", False)
    if not isinstance(clean, bool):
        raise BadMeta("bad clean flag")
    return TaskMeta(task_id, url, length, piece_size, digests, held, etag, last_modified,
                    created, last_access, sealed, clean)


def _read_digests(digests, count):
    if not isinstance(digests, list) or len(digests) != count or not all(
            d is None or is_hex_digest(d) for d in digests):
        raise BadMeta("bad digests")
    return tuple(digests)


def _read_held(text, count, digests):
    try:
        held = bytes.fromhex(text)
    except (TypeError, ValueError):
        raise BadMeta("bad held bitmap")
    if len(held) != -(-count // 8):
        raise BadMeta("held bitmap of the wrong size")
    if count % 8 and held and held[-1] & (0xFF >> (count % 8)):
        raise BadMeta("held bitmap names pieces past the end")
    for i in range(count):
        if digests[i] is None and is_held(held, i):
            raise BadMeta(f"piece {i} held without a digest")
    return held


_READERS = {2: _read_v2}

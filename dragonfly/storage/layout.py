"""Where a task lives on disk and what a good name or value looks like.

A task's directory is ``root/<h[:2]>/<h>`` with ``h = sha256(task_id)`` in
hex, so nothing that came from the network ever becomes part of a path; it
holds ``data`` and ``meta.json``. Removed entries are renamed to
``root/.trash-<random>`` first. The value checks here (task ids, integers,
hex digests) are shared by the metadata codec, the task file and the store.
"""
import hashlib
import math
import os
import re

META_NAME = "meta.json"
DATA_NAME = "data"
TRASH_PREFIX = ".trash-"
MAX_TASK_ID = 1024

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_PREFIX = re.compile(r"\A[0-9a-f]{2}\Z")


def task_key(task_id):
    """The hex sha256 of C{task_id}: the only name a task has on disk."""
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest()


def entry_dir(root, key):
    """The directory of the task whose key is C{key}: root/<key[:2]>/<key>."""
    return os.path.join(root, key[:2], key)


def trash_path(root):
    """A fresh name under C{root} to move a removed entry to before deleting it."""
    return os.path.join(root, TRASH_PREFIX + os.urandom(8).hex())


def is_prefix_dir_name(name):
    """True for a first-level directory name (two lower-case hex digits)."""
    return bool(_PREFIX.match(name))


def is_entry_name(prefix, name):
    """True for an entry directory name (a key) under prefix directory C{prefix}."""
    return bool(_HEX64.match(name)) and name[:2] == prefix


def good_task_id(task_id):
    """True for a non-empty str of at most MAX_TASK_ID characters that encodes to UTF-8."""
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID:
        return False
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_hex_digest(value):
    """True for a lower-case hex piece digest (L{dragonfly.digest})."""
    return isinstance(value, str) and bool(_HEX64.match(value))


def is_int(v):
    """True for an int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    """True for a finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

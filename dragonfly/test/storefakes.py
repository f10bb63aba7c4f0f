"""Shared by the storage tests: a piece store in a temp directory, a runner
whose calls run only when a test says so, and deterministic test bytes."""
import hashlib
import json

from twisted.internet.defer import Deferred, maybeDeferred

from dragonfly.digest import piece_digest
from dragonfly.runtime.threads import SyncRunner
from dragonfly.storage.store import PieceStore

TID = "a" * 64


def pdigest(data):
    return piece_digest(data)


def blob(length, seed=b"x"):
    """Deterministic bytes of C{length}."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:length])


class ManualRunner:
    """An IRunner whose calls run only when the test says so (work 'in flight')."""

    def __init__(self):
        self.pending = []

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self.pending.append((f, args, kwargs, d))
        return d

    def run_next(self):
        f, args, kwargs, d = self.pending.pop(0)
        maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def run_all(self):
        while self.pending:
            self.run_next()


class StoreMixin:
    def make_store(self, root=None, runner=None, **kw):
        if root is None:
            root = self.root
        kw.setdefault("clock", self.clock)
        store = PieceStore(root, runner=runner or SyncRunner(), **kw)
        self.addCleanup(store.close)
        return store

    def write_all(self, task, data):
        for i in range(task.piece_count):
            off, n = task.piece_range(i)
            chunk = data[off:off + n]
            self.successResultOf(task.write_trusted_piece(i, chunk, pdigest(chunk)))

    def read_meta(self, task):
        with open(task.meta_path) as f:
            return json.load(f)

    def meta_held(self, task):
        held = bytes.fromhex(self.read_meta(task)["held"])
        return [i for i in range(task.piece_count) if held[i >> 3] & (0x80 >> (i & 7))]

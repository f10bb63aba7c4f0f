"""A trace of the warm mirror's pipeline inside one dfdaemon (bench.mirrortrace).

Loaded only when this directory is first on a twistd's PYTHONPATH and
DFTRACE_OUT names a file: wraps a few methods of the peer's session, the
piece client, the store's writes, the ordered stream and the mirror's file
sender to record (monotonic seconds, event, value) in memory, and writes
them as JSON lines to DFTRACE_OUT at exit. Never loaded by the product.

Experiment switches (round six, bench/README.md): DFTRACE_SLOTS=N (N fetch
slots), DFTRACE_NOGATHER=1 (every arrival reported alone), DFTRACE_QUEUE=1
(a streamed task asks for its slots again beyond the free ones; the product's
own behaviour from branch mirq6 on, with the supernode's queue: a no-op there).
"""
import atexit
import json
import os
import time

_OUT = os.environ.get("DFTRACE_OUT")
EVENTS = []


def _ev(kind, value=None):
    EVENTS.append((time.monotonic(), kind, value))


def _dump():
    with open(_OUT, "w") as f:
        for e in EVENTS:
            f.write(json.dumps(e) + "\n")


def _wrap(cls, name, before=None, after=None, deferred_end=None):
    orig = getattr(cls, name)

    def wrapper(self, *a, **kw):
        if before is not None:
            before(self, *a, **kw)
        r = orig(self, *a, **kw)
        if after is not None:
            after(self, r, *a, **kw)
        if deferred_end is not None and hasattr(r, "addBoth"):
            tag = deferred_end(self, *a, **kw)

            def end(x):
                _ev(tag[0], tag[1])
                return x
            r.addBoth(end)
        return r
    setattr(cls, name, wrapper)


def _install():
    from dragonfly.peer import session, stream, joining
    from dragonfly.protocol import client
    from dragonfly.storage import fileio, taskfile
    from dragonfly.runtime import sendfile

    S = session.SwarmSession

    def acc(self, answer):
        _ev("answer", [a.index for a in answer.assignments])
    _wrap(S, "_accept", before=acc)
    _wrap(S, "_schedule", before=lambda self, want, wait: _ev("sched", [want, wait, len(self.fetched), len(self.have)]),
          deferred_end=lambda self, want, wait: ("sched_end", [want, wait]))
    _wrap(S, "_bytes_arrived", before=lambda self, i, s: _ev("arrived", i))
    orig_fetch = S._fetch

    async def fetch(self, a):
        _ev("start", [a.index, len(self.in_flight), len(self.checking), len(self.queue)])
        return await orig_fetch(self, a)
    S._fetch = fetch
    _wrap(joining.Download, "piece_arrived", before=lambda self, i, n, s: _ev("landed", i))

    P = client.PieceClientProtocol
    _wrap(P, "_consume", before=lambda self, n: _ev("rx", n))
    _wrap(P, "fetch", before=lambda self, index, *a, **k: _ev("req", index))

    T = taskfile.TaskFile
    _wrap(T, "_run_write", before=lambda self, index, *a, **k: _ev("wq", index))
    for name in ("verify_and_write",):
        f = getattr(fileio, name)

        def make(f, name):
            def g(fd, views, offset, *a, **k):
                _ev("w0", offset)
                try:
                    return f(fd, views, offset, *a, **k)
                finally:
                    _ev("w1", offset)
            return g
        setattr(fileio, name, make(f, name))

    O = stream.OrderedPushProducer
    _wrap(O, "pauseProducing", before=lambda self: _ev("paused"))
    _wrap(O, "resumeProducing", before=lambda self: _ev("resumed"))
    orig_wait = O._wait

    async def wait(self, d):
        tf = self._tf
        _ev("swait", [self._offset, bool(tf.readable(self._offset // tf.piece_size))
                      if self._offset < self._end else True])
        try:
            return await orig_wait(self, d)
        finally:
            _ev("swait_end", self._offset)
    O._wait = wait

    F = sendfile.FileSender
    _wrap(F, "send", before=lambda self, fd, off, n: _ev("sf", [off, n]),
          deferred_end=lambda self, fd, off, n: ("sf_end", [off, n]))
    orig_sf = F._sendfile

    def sf(self, job):
        n = orig_sf(self, job)
        _ev("sfcall", n)
        return n
    F._sendfile = sf


def _slots():
    from dragonfly.peer import session
    n = int(os.environ["DFTRACE_SLOTS"])
    init = session.SwarmSession.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.slots = n
    session.SwarmSession.__init__ = patched


def _nogather():
    from dragonfly.peer import session
    session.SwarmSession._may_gather = lambda self: False


def _queue():
    """While a stream reads the task, ask for C{slots} assignments beyond the
    free slots (round six's "Q": the peer's half of keeping the wire full)."""
    from dragonfly.peer import session
    orig = session.SwarmSession._want

    def want(self):
        if not self.dl.readers:
            return orig(self)
        tf, dl = self.tf, self.dl
        receiving = len(self.in_flight) - len(self.checking)
        w = max(0, 2 * self.slots + self.settings.queue_depth - receiving - len(self.queue))
        left = (tf.piece_count - len(tf.completed()) + len(dl.unconfirmed)
                - len(self.in_flight) - len(self.queue))
        return min(w, max(0, left))
    session.SwarmSession._want = want


if _OUT:
    try:
        if os.environ.get("DFTRACE_QUEUE"):
            _queue()
        if os.environ.get("DFTRACE_SLOTS"):
            _slots()
        if os.environ.get("DFTRACE_NOGATHER"):
            _nogather()
        _install()
        atexit.register(_dump)
    except Exception as e:  # noqa: BLE001
        with open(_OUT + ".err", "w") as f:
            f.write(repr(e))

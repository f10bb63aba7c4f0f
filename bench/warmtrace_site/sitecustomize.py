"""Timestamps of one warm download, for bench.warmtrace (issue 20, round six).

Put this directory first on PYTHONPATH of the processes to trace and set
DFTRACE=FILE: every Python process started so then appends lines
"MONOTONIC PID EVENT ARGS" to FILE (CLOCK_MONOTONIC is one clock for all
processes of the host). It wraps, as they are imported, private methods of
the peer's session, the piece client, the task file and the API, and
dfget's daemon client: an instrument for the code as it stands, not an
interface; nothing of it runs without DFTRACE.
"""
import importlib.abc
import os
import sys
import time
_PATH = os.environ.get("DFTRACE")
if _PATH:
    _f = open(_PATH, "a", buffering=1)
    _pid = os.getpid()
    _name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "?"
    def T(ev, *a):
        _f.write("%.6f %d %s %s\n" % (time.monotonic(), _pid, ev, " ".join(map(str, a))))
    T("pystart", _name, " ".join(sys.argv[1:3]))
    def _cpu(tag):
        r = os.times(); T(tag, "%.3f %.3f" % (r.user, r.system))
    import atexit; atexit.register(lambda: _cpu("exit"))

    def patch_session(m):
        S = m.SwarmSession
        reg = m.register
        async def register(*a, **k):
            T("reg0"); r = await reg(*a, **k); T("reg1"); return r
        m.register = register
        sched = S._schedule
        async def _schedule(self, want, wait):
            n = (len(self.have), len(self.fetched), len(self.failed))
            T("s0", want, wait, "have=%d fetched=%d failed=%d" % n, "infl=%d chk=%d q=%d" % (len(self.in_flight), len(self.checking), len(self.queue)))
            ans = await sched(self, want, wait)
            T("s1", want, wait, len(ans.assignments), " ".join(str(a.index) for a in ans.assignments))
            return ans
        S._schedule = _schedule
        fetch = S._fetch
        async def _fetch(self, a):
            T("f0", a.index)
            try:
                return await fetch(self, a)
            finally:
                T("f1", a.index)
        S._fetch = _fetch
        ba = S._bytes_arrived
        def _bytes_arrived(self, index, source):
            T("arr", index); return ba(self, index, source)
        S._bytes_arrived = _bytes_arrived
        news = S._news
        def _news(self, index, source=None):
            T("held", index); return news(self, index, source)
        S._news = _news
        run = S.run
        async def srun(self):
            T("run0"); _cpu("cpu_run0")
            try: return await run(self)
            finally: T("run1"); _cpu("cpu_run1")
        S.run = srun

    def patch_cs(m):
        Q = m.RequestQueue
        p = Q._piece
        def _piece(self, msg):
            T("hdr", msg.index); return p(self, msg)
        Q._piece = _piece
        bd = Q._body_done
        def _body_done(self, req):
            T("last", req.index); return bd(self, req)
        Q._body_done = _body_done
        sm = Q._send_more
        def _send_more(self, after):
            out = sm(self, after)
            for x in out:
                if type(x).__name__ == "Send": T("send", len(x.data))
            return out
        Q._send_more = _send_more
        sub = Q.submit
        def submit(self, req):
            T("submit", req.index); return sub(self, req)
        Q.submit = submit

    def patch_client(m):
        P = m.PieceClientProtocol
        cm = P.connectionMade
        def connectionMade(self):
            T("connmade"); return cm(self)
        P.connectionMade = connectionMade

    def patch_fileio(m):
        v = m.verify_and_write
        def verify_and_write(fd, views, offset, *a, **k):
            T("w0", offset >> 20)
            try: return v(fd, views, offset, *a, **k)
            finally: T("w1", offset >> 20)
        m.verify_and_write = verify_and_write

    def patch_tf(m):
        C = m.TaskFile
        wv = C.write_verified_piece
        def write_verified_piece(self, index, data, digest):
            T("wv0", index)
            d = wv(self, index, data, digest)
            d.addBoth(lambda r: (T("wv1", index), r)[1])
            return d
        C.write_verified_piece = write_verified_piece

    def patch_api(m):
        A = m.PeerAPI
        dl = A._download
        async def _download(self, request, params):
            T("api0"); _cpu("cpu_api0"); m0 = set(sys.modules); T("mods0", len(m0)); import threading as th; T("threads0", th.active_count())
            try: return await dl(self, request, params)
            finally:
                T("api1"); _cpu("cpu_api1"); T("newmods", sorted(set(sys.modules) - m0)); T("threads1", th.active_count())
        A._download = _download

    def patch_via(m):
        C = m.DaemonClient
        d = C.download
        def download(self, *a, **k):
            T("dl0")
            try: return d(self, *a, **k)
            finally: T("dl1")
        C.download = download
        al = C.alive
        def alive(self, *a, **k):
            T("alive0"); 
            try: return al(self, *a, **k)
            finally: T("alive1")
        C.alive = alive

    def patch_cli(m):
        T("cli_imported")

    PATCH = {"dragonfly.peer.session": patch_session, "dragonfly.protocol.clientstate": patch_cs,
             "dragonfly.protocol.client": patch_client, "dragonfly.storage.fileio": patch_fileio,
             "dragonfly.storage.taskfile": patch_tf, "dragonfly.peer.api": patch_api,
             "dragonfly.dfget.viadaemon": patch_via, "dragonfly.dfget.cli": patch_cli}

    class _Loader(importlib.abc.Loader):
        def __init__(self, inner, fn): self.inner, self.fn = inner, fn
        def create_module(self, spec): return self.inner.create_module(spec)
        def exec_module(self, module):
            self.inner.exec_module(module); self.fn(module)
    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            fn = PATCH.get(name)
            if fn is None: return None
            for f in sys.meta_path:
                if f is self: continue
                spec = f.find_spec(name, path, target) if hasattr(f, "find_spec") else None
                if spec is not None:
                    spec.loader = _Loader(spec.loader, fn); return spec
            return None
    sys.meta_path.insert(0, _Finder())

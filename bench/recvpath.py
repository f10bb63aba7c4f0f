"""The receiving peer's data path alone: CPU seconds per GiB of two ways to take
piece bodies from a socket into a task file (issue 20, branch psplice).

A sender process pushes a file over loopback TCP with ``sendfile``; a fresh
receiver process per run takes it as pieces and reports its own CPU (user +
sys, ``getrusage``) from the accepted connection to the last piece stored and
hashed. Every piece digest is checked against the source's afterwards.

- ``now``: what a peer does today (``protocol/client.py``, ``storage/fileio.py``):
  Twisted's reactor reads 512 KiB per read with the receive low-water mark set
  to what the piece still owes, keeps the body as the bytes ``recv`` gave, and
  each whole piece is hashed (BLAKE3) and written in 256 KiB ``pwrite``\\ s in the
  reactor's thread pool (4 threads); the transport is paused while 4 pieces
  wait (the peer's 16 MiB).
- ``splice``: the supernode's origin ingest (``ingest/splice.py``) applied to
  piece bodies: per piece, a thread moves the bytes with ``splice(2)`` socket
  -> pipe (1 MiB) -> task file at the piece's offset, then reads the piece back
  in 1 MiB ``preadv``\\ s and hashes it.
- ``raw``: ``now`` without Twisted (a ``poll``/``recv`` loop, the same runner
  threads): how much of ``now`` is the reactor.
- ``into`` (issue 20, round five, branch recvinto): ``now`` with the
  transport's ``doRead`` replaced while a body is owed: ``recv_into`` straight
  into a piece-sized buffer (at most what the body still owes, so possibly
  more than 512 KiB a read; the same low-water mark), the first 13 bytes of
  each piece through a plain ``recv`` with the low-water mark at 1 (as a
  Piece header would be), buffers
  from a pool of 6 reused once nothing else holds them, one runner call per
  piece hashing the single buffer and writing it.
- ``into512``: ``into`` with every ``recv_into`` capped at 512 KiB.
- ``intoon``: ``into`` with the body's first ``recv_into`` right after the
  header's read, in the same ``doRead``, instead of after the next poll.
- ``write``: the store's write alone, no socket: each piece read from the
  (cached) source, then ``fileio.pwrite_all`` (256 KiB ``pwrite``\ s); the CPU
  counted is the writing thread's around ``pwrite_all`` only (``RUSAGE_THREAD``).

How the task file is made before the first piece (``--alloc``, issue 20 round
five, branch prealloc): ``sparse`` (today's ``storage/fileio.create_data``:
``ftruncate``), ``falloc`` (``ftruncate`` then ``fallocate(2)`` mode 0 over the
whole length: every block reserved as an unwritten extent, no delayed
allocation at write time, the extents converted to written after writeback),
``keep`` (``fallocate(FALLOC_FL_KEEP_SIZE)`` first, then ``ftruncate``).

The writeback is counted too: the driver runs ``sync`` before each run and
again after it (the receiver leaves its file in place, so its dirty pages are
written out rather than dropped by the unlink), and records the CPU the
kernel's own threads used meanwhile (``kthread_s``: kworkers doing the
flush, ext4's block allocation at writeback and the unwritten-extent
conversion, jbd2, ksoftirqd; from ``/proc/*/stat`` of every ``PF_KTHREAD``)
and the whole machine's busy time (``machine_user_s``, ``machine_sys_s``:
``/proc/stat``, so it includes other processes on a shared machine).

    python -m bench.recvpath                          # 1 GiB, 4M/2M/1M, 5 rounds
    python -m bench.recvpath --size 64M --pieces 4M --rounds 1   # smoke run
    python -m bench.recvpath --modes now --alloc sparse,falloc,keep   # preallocation
    python -m bench.recvpath --modes now --alloc sparse,falloc --perf /tmp/rp-perf   # and where it goes

Runs alternate (now, splice, raw, now, ..., each allocation in turn; ``--modes
now,into``). Wall time is not reported: on loopback it says nothing about
either side alone.
"""
import argparse
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import threading
import time

from bench.procs import cpu_times, make_file

MODES = ("now", "splice", "raw", "into", "into512", "intoon")
EXTRA_MODES = ("write",)
ALLOCS = ("sparse", "falloc", "keep")
FALLOC_FL_KEEP_SIZE = 1
PF_KTHREAD = 0x00200000
HZ = os.sysconf("SC_CLK_TCK")
READ = 512 * 1024      # protocol/client.py READ_SIZE
WAITING = 4            # pieces received but not yet written (16 MiB of 4 MiB pieces)

SENDER = r"""
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = os.open(sys.argv[2], os.O_RDONLY)
size, off = os.fstat(fd).st_size, 0
while off < size:
    off += os.sendfile(s.fileno(), fd, off, size - off)
s.close()
"""


def _size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _digests(path, piece):
    from dragonfly.digest import piece_digest
    out = []
    with open(path, "rb") as f:
        while True:
            b = f.read(piece)
            if not b:
                return out
            out.append(piece_digest(b))


# -- the receiver (a child process per run) ----------------------------------

def _stored(reactor, digests, count):
    """A Receiver's C{_written(digest, index)}: a piece stored; the transport
    resumed if it waited on the runner; the reactor stopped after the last."""
    def _written(self, digest, index):
        digests[index] = digest
        self.waiting -= 1
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        if len(digests) == count:
            reactor.stop()
    return _written


def _serve(reactor, factory, start_sender, digests, count):
    """Listen with C{factory}, start the sender, run until every piece is
    stored: the pieces' digests in order."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    start_sender(port.getHost().port)
    reactor.run()
    return [digests[i] for i in range(count)]


def _now(start_sender, fd, size, piece):
    from twisted.internet import reactor, threads
    from twisted.internet.protocol import Factory, Protocol

    from dragonfly.runtime.tuning import tune_receiver
    from dragonfly.storage import fileio

    reactor.suggestThreadPoolSize(4)
    lock = threading.Lock()
    count = -(-size // piece)
    digests = {}

    class Receiver(Protocol):
        def connectionMade(self):
            self.lowat = tune_receiver(self.transport, READ)
            self.off, self.parts, self.got = 0, [], 0
            self.want = min(piece, size)
            self.waiting, self.paused = 0, False
            self.lowat.set(min(self.want, READ))

        def dataReceived(self, data):
            view = memoryview(data)
            while view:
                n = min(len(view), self.want - self.got)
                self.parts.append(view[:n])
                view, self.got = view[n:], self.got + n
                if self.got == self.want:
                    self._piece_done()
            if self.want:
                self.lowat.set(min(self.want - self.got, READ) or 1)

        def _piece_done(self):
            parts, off = self.parts, self.off
            self.off += self.got
            self.parts, self.got = [], 0
            self.want = min(piece, size - self.off)
            self.waiting += 1
            d = threads.deferToThread(fileio.hash_and_write, fd, fileio.as_views(parts), off, lock)
            d.addCallback(self._written, off // piece)
            if self.waiting >= WAITING:
                self.paused = True
                self.transport.pauseProducing()

        _written = _stored(reactor, digests, count)

    return _serve(reactor, Factory.forProtocol(Receiver), start_sender, digests, count)


def _into(start_sender, fd, size, piece, cap=None, straight_on=False):
    from errno import EWOULDBLOCK

    from twisted.internet import main, reactor, threads
    from twisted.internet.protocol import Factory, Protocol

    from dragonfly.runtime.tuning import tune_receiver
    from dragonfly.storage import fileio

    reactor.suggestThreadPoolSize(4)
    lock = threading.Lock()
    count = -(-size // piece)
    digests = {}
    pool = []

    def take(n):
        for i in range(len(pool)):
            if sys.getrefcount(pool[i]) == 2 and len(pool[i]) >= n:   # the list + the argument
                return pool[i]
        buf = bytearray(piece)
        if len(pool) < 6:
            pool.append(buf)
        return buf

    class Receiver(Protocol):
        def connectionMade(self):
            self.lowat = tune_receiver(self.transport, READ)
            self.sock = self.transport.socket
            self.transport.doRead = self.doRead
            self.off = 0
            self.waiting, self.paused = 0, False
            self._next()

        def _next(self):
            self.want = min(piece, size - self.off)
            self.got = 0
            self.view = memoryview(take(self.want))[:self.want] if self.want else None
            self.lowat.set(1)   # as between frames: any byte of the next header

        def doRead(self):
            got, want = self.got, self.want
            try:
                if got < 13:   # the header's read
                    data = self.sock.recv(13 - got)
                    if not data:
                        return main.CONNECTION_DONE
                    n = len(data)
                    self.view[got:got + n] = data
                    self.got = got = got + n
                    if got < 13:
                        return None
                    self.lowat.set(min(want - got, READ))
                    if not straight_on:
                        return None
                    # the body's first read at once, not after another poll
                end = want if cap is None else min(want, got + cap)
                n = self.sock.recv_into(self.view[got:end])
            except OSError as e:
                return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
            if not n:
                return main.CONNECTION_DONE
            self.got = got = got + n
            if got == want:
                self._piece_done()
            else:
                n = min(want - got, READ)
                if n != self.lowat.value:
                    self.lowat.set(n)
            return None

        def _piece_done(self):
            view, off = self.view, self.off
            self.view = None
            self.off += self.want
            self.waiting += 1
            d = threads.deferToThread(fileio.hash_and_write, fd, [view], off, lock)
            del view
            d.addCallback(self._written, off // piece)
            if self.off < size:
                self._next()
            if self.waiting >= WAITING:
                self.paused = True
                self.transport.pauseProducing()

        _written = _stored(reactor, digests, count)

    return _serve(reactor, Factory.forProtocol(Receiver), start_sender, digests, count)


def _accept(start_sender):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    start_sender(listener.getsockname()[1])
    sock, _ = listener.accept()
    listener.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _raw(start_sender, fd, size, piece):
    import queue

    from dragonfly.storage import fileio

    sock = _accept(start_sender)
    jobs, room, lock, digests = queue.Queue(), threading.Semaphore(WAITING), threading.Lock(), {}

    def runner():
        for parts, off in iter(jobs.get, None):
            digests[off // piece] = fileio.hash_and_write(fd, fileio.as_views(parts), off, lock)
            room.release()

    workers = [threading.Thread(target=runner) for _ in range(4)]
    for w in workers:
        w.start()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    off, lowat, carry = 0, 1, None
    while off < size:
        room.acquire()
        want, parts, got = min(piece, size - off), [], 0
        while got < want:
            if carry is None:
                n = min(want - got, READ)
                if n != lowat:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
                    lowat = n
                poller.poll()
                data = sock.recv(READ)
                if not data:
                    raise SystemExit("the sender closed early")
                carry = memoryview(data)
            n = min(len(carry), want - got)
            parts.append(carry[:n])
            carry, got = carry[n:] or None, got + n
        jobs.put((parts, off))
        off += want
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.join()
    return [digests[i] for i in range(len(digests))]


class _Raw:
    """What L{dragonfly.ingest.splice}'s piece functions read of a RawBody."""

    stopping = False
    idle_timeout = 30

    def __init__(self, sock, pipe):
        self.sockobj, self.sock, self._pipe = sock, sock.fileno(), pipe

    def pipe(self):
        return self._pipe


def _splice(start_sender, fd, size, piece):
    import fcntl

    from dragonfly.ingest import splice

    sock = _accept(start_sender)
    r, w = os.pipe()
    os.set_blocking(w, False)
    fcntl.fcntl(w, 1031, splice.PIPE_BYTES)   # F_SETPIPE_SZ
    raw, lock, buf = _Raw(sock, (r, w)), threading.Lock(), bytearray(splice.READ_BACK)
    digests = []

    def one(off, length):
        splice._splice_bytes(raw, b"", fd, off, length, lock)
        digests.append(splice._hash_back(buf, fd, off, length, None))

    for off in range(0, size, piece):
        t = threading.Thread(target=one, args=(off, min(piece, size - off)))
        t.start()
        t.join()
    return digests


def _fallocate(fd, mode, length):
    """fallocate(2) through libc (the os module has only posix_fallocate,
    which glibc emulates by writing where the filesystem lacks it)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.fallocate64
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if call(fd, mode, 0, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def make_target(dst, size, alloc):
    """The task file as C{alloc} says; (fd, seconds and CPU-s the making took)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if alloc == "keep":
        _fallocate(fd, FALLOC_FL_KEEP_SIZE, size)
    os.ftruncate(fd, size)
    if alloc == "falloc":
        _fallocate(fd, 0, size)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return fd, t1 - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def kthread_cpu():
    """CPU seconds used so far by the kernel's threads, by name (the part before '/' or digits)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                text = f.read()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[6]) & PF_KTHREAD:
            name = comm.split("/")[0].rstrip("0123456789-")
            out[name] = out.get(name, 0) + (int(rest[11]) + int(rest[12])) / HZ
    return out


def _write(src, fd, size, piece):
    """Mode C{write}: (digests, user, sys) of the writing thread inside pwrite_all."""
    from dragonfly.digest import piece_digest
    from dragonfly.storage import fileio

    lock, digests, user, system = threading.Lock(), [], 0.0, 0.0
    sfd = os.open(src, os.O_RDONLY)
    try:
        for off in range(0, size, piece):
            data = os.pread(sfd, min(piece, size - off), off)
            digests.append(piece_digest(data))
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            fileio.pwrite_all(fd, data, off, lock)
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            user += r1.ru_utime - r0.ru_utime
            system += r1.ru_stime - r0.ru_stime
    finally:
        os.close(sfd)
    return digests, user, system


def receive(mode, piece, src, dst, alloc="sparse"):
    """One run in this process: {"mode", "piece", "alloc", "user_s", "sys_s",
    "alloc_s", "alloc_cpu_s", "digests"}. The file stays (the driver syncs it)."""
    from dragonfly.runtime.tuning import tune_allocator
    tune_allocator()   # as the peer's piece client pool does
    size = os.path.getsize(src)
    fd, alloc_s, alloc_cpu_s = make_target(dst, size, alloc)
    if mode == "write":
        try:
            digests, user, system = _write(src, fd, size, piece)
        finally:
            os.close(fd)
        return {"mode": mode, "piece": piece, "alloc": alloc, "user_s": user, "sys_s": system,
                "alloc_s": alloc_s, "alloc_cpu_s": alloc_cpu_s, "digests": digests}
    started = []

    def start_sender(port):
        started.append(subprocess.Popen([sys.executable, "-c", SENDER, str(port), src]))
        started.append(resource.getrusage(resource.RUSAGE_SELF))
    try:
        modes = {"now": _now, "splice": _splice, "raw": _raw, "into": _into,
                 "into512": lambda *a: _into(*a, cap=READ),
                 "intoon": lambda *a: _into(*a, straight_on=True)}
        digests = modes[mode](start_sender, fd, size, piece)
        end = resource.getrusage(resource.RUSAGE_SELF)
        started[0].wait()
    finally:
        os.close(fd)
    begin = started[1]
    return {"mode": mode, "piece": piece, "alloc": alloc, "user_s": end.ru_utime - begin.ru_utime,
            "sys_s": end.ru_stime - begin.ru_stime, "alloc_s": alloc_s,
            "alloc_cpu_s": alloc_cpu_s, "digests": digests}


def _one_run(mode, piece, src, dst, alloc, perf=None):
    """A receiver process and the writeback of its file; the run's figures.
    C{perf}: record the receiver (and its sender) with C{perf record -g} there."""
    argv = [sys.executable, "-m", "bench.recvpath", "--receive", mode, str(piece), src, dst, alloc]
    if perf:
        os.makedirs(perf, exist_ok=True)
        name = "%s-%s-%d-%d.data" % (mode, alloc, piece >> 20, len(os.listdir(perf)))
        argv = ["perf", "record", "-q", "-g", "-F", "999", "-o", os.path.join(perf, name), "--"] + argv
    os.sync()
    k0, m0 = kthread_cpu(), cpu_times()
    try:
        out = subprocess.run(argv, check=True, capture_output=True)
        t0 = time.perf_counter()
        os.sync()   # the file's writeback, in the kernel's flusher threads
        sync_s = time.perf_counter() - t0
        k1, m1 = kthread_cpu(), cpu_times()
    finally:
        if os.path.exists(dst):
            os.unlink(dst)
    run = json.loads(out.stdout)
    kthreads = {k: round(v - k0.get(k, 0), 3) for k, v in k1.items() if v - k0.get(k, 0) > 0}
    run.update(sync_s=sync_s, kthread_s=sum(kthreads.values()), kthreads=kthreads,
               machine_user_s=(m1["user"] + m1["nice"] - m0["user"] - m0["nice"]) / HZ,
               machine_sys_s=sum(m1[k] - m0[k] for k in ("system", "irq", "softirq")) / HZ)
    return run


# -- the driver ----------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.recvpath", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="bytes sent per run (default 1G)")
    ap.add_argument("--pieces", default="4M,2M,1M", help="piece sizes (default 4M,2M,1M)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per mode and piece size")
    ap.add_argument("--modes", default="now,splice,raw,into,intoon",
                    help="any of %s (default: all but into512 and write)"
                    % ",".join(MODES + EXTRA_MODES))
    ap.add_argument("--alloc", default="sparse",
                    help="how the task file is made, any of %s (default sparse)" % ",".join(ALLOCS))
    ap.add_argument("--workdir", default="/var/tmp/dragonfly-bench")
    ap.add_argument("--results", help="write every run's figures there as JSON")
    ap.add_argument("--perf", metavar="DIR", help="run each receiver under `perf record -g`, "
                    "one file per run in DIR (its CPU figures then include perf's own overhead)")
    ap.add_argument("--receive", nargs=5, metavar=("MODE", "PIECE", "SRC", "DST", "ALLOC"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.receive:
        mode, piece, src, dst, alloc = args.receive
        print(json.dumps(receive(mode, int(piece), src, dst, alloc)))
        return 0
    allocs = args.alloc.split(",")
    if set(allocs) - set(ALLOCS):
        ap.error("--alloc: one of %s" % ",".join(ALLOCS))
    if set(args.modes.split(",")) - set(MODES + EXTRA_MODES):
        ap.error("--modes: any of %s" % ",".join(MODES + EXTRA_MODES))
    size = _size(args.size)
    src = make_file(os.path.join(args.workdir, "files", "recvpath-%d.bin" % size), size, seed=7)
    dst = os.path.join(args.workdir, "recvpath-out.bin")
    runs = []
    for piece in (_size(p) for p in args.pieces.split(",")):
        want = _digests(src, piece)
        for i in range(args.rounds):
            for mode in args.modes.split(","):
                for alloc in allocs:
                    run = _one_run(mode, piece, src, dst, alloc, args.perf)
                    if run.pop("digests") != want:
                        raise SystemExit("%s %s %d: the stored pieces differ from the source" % (
                            mode, alloc, piece))
                    gib = (1 << 30) / size
                    run["cpu_s_per_gib"] = (run["user_s"] + run["sys_s"]) * gib
                    run["kthread_s_per_gib"] = run["kthread_s"] * gib
                    run["load"] = os.getloadavg()[0]
                    runs.append(run)
                    print("%-6s %-6s %2d MiB pieces: user %.3f sys %.3f -> %.3f CPU-s/GiB; "
                          "kernel threads %.3f; machine user %.2f sys %.2f; alloc %.4f s; "
                          "sync %.2f s (load %.1f)" % (
                              mode, alloc, piece >> 20, run["user_s"], run["sys_s"],
                              run["cpu_s_per_gib"], run["kthread_s"], run["machine_user_s"],
                              run["machine_sys_s"], run["alloc_s"], run["sync_s"], run["load"]),
                          flush=True)
    print("\nmedian CPU-s per GiB: receiver (kernel threads)")
    for piece in sorted({r["piece"] for r in runs}, reverse=True):
        cells = []
        for m in args.modes.split(","):
            for a in allocs:
                sel = [r for r in runs if r["piece"] == piece and r["mode"] == m and r["alloc"] == a]
                cells.append("%s/%s %.3f (%.3f)" % (
                    m, a, statistics.median(r["cpu_s_per_gib"] for r in sel),
                    statistics.median(r["kthread_s_per_gib"] for r in sel)))
        print("  %2d MiB: %s" % (piece >> 20, ", ".join(cells)))
    print("median user / sys CPU-s per GiB")
    for piece in sorted({r["piece"] for r in runs}, reverse=True):
        cells = []
        for m in args.modes.split(","):
            mine = [r for r in runs if r["piece"] == piece and r["mode"] == m]
            cells.append("%s %.3f / %.3f" % (m, statistics.median(
                [r["user_s"] * (1 << 30) / size for r in mine]), statistics.median(
                [r["sys_s"] * (1 << 30) / size for r in mine])))
        print("  %2d MiB: %s" % (piece >> 20, ", ".join(cells)))
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"file_bytes": size, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

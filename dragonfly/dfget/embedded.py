"""dfget's embedded peer: the download when no peer daemon answers (Twisted).

L{dragonfly.dfget.cli} runs this under C{react} after it found no daemon.
The embedded peer lives for the length of the download: its pieces go to a
temporary directory next to the output file, and a piece server on an
ephemeral port lets other peers fetch from it meanwhile. When the download is
done it leaves the swarm, and its data file is renamed to FILE (after the
C{--digest} check).
"""
import os
import shutil
import sys
import tempfile

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.dfget import files
from dragonfly.dfget.options import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
                                     DfgetError, default_output, error_line)

__all__ = ["Dfget", "main", "run"]


class Dfget:
    """One dfget run. Everything it touches is injected (tests pass fakes)."""

    log = Logger()

    def __init__(self, reactor, options, stdout=None, stderr=None, environ=None,
                 http_client=None, runner=None, isatty=None, embedded_factory=None):
        self.reactor = reactor
        self.opts = options
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.environ = environ if environ is not None else os.environ
        self._http = http_client
        self._runner = runner
        self._isatty = isatty
        self._embedded_factory = embedded_factory or self._make_embedded
        self._cleanups = []       # (callable) run at the end, in reverse
        self._temp_paths = set()  # removed on failure / interruption
        self._temp_dirs = set()
        self.bar = None
        self.result_path = None

    # -- plumbing --------------------------------------------------------------

    @property
    def runner(self):
        if self._runner is None:
            from dragonfly.runtime.threads import ThreadRunner

            self._runner = ThreadRunner(self.reactor, max_threads=2, name="dfget-io")
        return self._runner

    @property
    def http(self):
        if self._http is None:
            from twisted.web.client import HTTPConnectionPool

            from dragonfly.control.http import make_control_client

            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.retryAutomatically = False
            self._cleanups.append(pool.closeCachedConnections)
            # The embedded peer's supernode calls, as a daemon peer makes them.
            self._http = make_control_client(self.reactor, pool)
        return self._http

    def _progress(self, completed, length):
        if self.bar is not None:
            self.bar.update(completed, length)

    def _want_bar(self):
        if self.opts["quiet"]:
            return False
        if self._isatty is not None or self.opts.get("showbar"):
            return bool(self._isatty or self.opts.get("showbar"))
        try:
            return self.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    # -- the run ---------------------------------------------------------------

    async def run(self, out):
        """Download into C{out} (a checked L{files.output_path}); return C{out}."""
        if self._want_bar():
            from dragonfly.dfget.progress import ProgressBar

            name = os.path.basename(out) if out != "-" else default_output(self.opts["url"])
            self.bar = ProgressBar(self.stderr, self.reactor, label=name[:30])
        try:
            await self._via_embedded(out)
            if self.bar is not None:
                self.bar.finish()
        except BaseException:
            if self.bar is not None:
                self.bar.abort()
            raise
        finally:
            await self._cleanup()
        return out

    async def _cleanup(self):
        for path in list(self._temp_paths):
            try:
                await self.runner.run(files.remove, path)
            except OSError:
                pass
            self._temp_paths.discard(path)
        cleanups, self._cleanups = self._cleanups, []
        for c in reversed(cleanups):
            try:
                r = c()
                if isinstance(r, Deferred):
                    await r
            except Exception:
                self.log.failure("cleanup")
        for d in list(self._temp_dirs):
            await self.runner.run(shutil.rmtree, d, True)
            self._temp_dirs.discard(d)

    def cleanup_now(self):
        """Synchronous last-resort cleanup (reactor shutting down: Ctrl-C)."""
        files.remove_temps(self._temp_paths, self._temp_dirs)

    # -- embedded peer -----------------------------------------------------------

    def _make_embedded(self, data_dir):
        """(node, start, stop) for an embedded peer keeping its pieces in C{data_dir}:
        the peer of L{dragonfly.peer.assembly.build_peer}, without its API, with a
        piece port on an ephemeral port of the advertised address."""
        from dragonfly.peer.assembly import PeerConfig, build_peer, ephemeral_listen

        o = self.opts
        advertise = o["advertise"] or self.environ.get("DFGET_ADVERTISE") or "127.0.0.1"
        config = PeerConfig(supernodes=o["supernode_list"], advertise=advertise,
                            piece_listen=ephemeral_listen(advertise), data_dir=data_dir,
                            download_limit=o["limit_bps"], allow_origin=o["allow_origin"],
                            deny_origin=o["deny_origin"], tls=_tls_files(o))
        # With mutual TLS the peer's own supernode client presents our certificate.
        peer = build_peer(self.reactor, config, runner=self.runner,
                          http_client=self.http if config.tls is None else None,
                          api=False, user_agent="dfget")
        return peer.node, peer.start, peer.stop

    async def _via_embedded(self, out):
        o = self.opts
        base = os.path.dirname(out) if out != "-" else self.environ.get("TMPDIR") or None
        data_dir = await self.runner.run(tempfile.mkdtemp, prefix=".dfget-", dir=base)
        self._temp_dirs.add(data_dir)
        node, start, stop = self._embedded_factory(data_dir)
        stopped = []

        async def stop_once():
            if not stopped:
                stopped.append(True)
                await stop()
        self._cleanups.append(lambda: Deferred.fromCoroutine(stop_once()))
        await start()
        from dragonfly.peer.node import DownloadError
        try:
            tf = await node.download(o["url"], headers=o["header_map"], task_id=o["task_id"],
                                     pattern=o["pattern"], back_source=not o["no-back-source"],
                                     on_progress=self._progress, filters=o["filters"],
                                     tag=o["tag"] or "", digest=o["content_digest"])
        except DownloadError as e:
            raise DfgetError(str(e))
        path, length = tf.path, tf.length
        # Leave the swarm and stop serving: the data file is ours to take.
        await stop_once()
        if not await self.runner.run(os.path.exists, path) and length == 0:
            await self.runner.run(lambda: open(path, "wb").close())
        spec = self.opts["digest_spec"]
        algo = spec[0] if spec else None
        if out == "-":
            if spec:
                files.check_digest(spec, await self.runner.run(files.hash_file, path, algo))
            await self.runner.run(files.write_to, path, self.stdout)
            return
        tmp = files.temp_name(out)
        self._temp_paths.add(tmp)
        try:
            await self.runner.run(os.rename, path, tmp)
            moved = True
        except OSError:
            moved = False  # another filesystem after all (a bind mount): copy
        if moved:
            got = await self.runner.run(files.hash_file, tmp, algo) if spec else None
        else:
            _, got = await self.runner.run(files.place, path, tmp, algo)
        size = await self.runner.run(os.path.getsize, tmp)
        if size != length:
            raise DfgetError(f"downloaded {size} bytes, expected {length}")
        if spec:
            files.check_digest(spec, got)
        await self.runner.run(files.publish, tmp, out)
        self._temp_paths.discard(tmp)
        self.result_path = out



def _tls_files(opts):
    """The embedded peer's checked L{dragonfly.tls.TLSFiles}, or None;
    L{DfgetError} (exit 2) when they cannot be used."""
    if not opts.get("tls_files"):
        return None
    from dragonfly.tls import TLSError, TLSFiles, load_material

    tls = TLSFiles(*opts["tls_files"])
    try:
        load_material(tls)
    except TLSError as e:
        raise DfgetError(str(e), EXIT_USAGE)
    return tls


def describe(failure):
    v = failure.value
    if isinstance(v, DfgetError):
        return str(v)
    if isinstance(v, (TimeoutError, CancelledError)):
        return "timed out"
    reasons = getattr(v, "reasons", None)
    if reasons:
        return "; ".join(describe(r) if isinstance(r, Failure) else str(r) for r in reasons)
    text = str(v)
    return f"{type(v).__name__}: {text}" if text else type(v).__name__


async def _main(reactor, opts, out, stdout, stderr, environ, timeout=None,
                setup_logging=True, **kw):
    if opts["verbose"] and setup_logging:
        from twisted.logger import globalLogBeginner

        from dragonfly.logsetup import make_observer
        globalLogBeginner.beginLoggingTo([make_observer("text", stderr, "debug")],
                                         redirectStandardIO=False)
    job = Dfget(reactor, opts, stdout=stdout, stderr=stderr, environ=environ, **kw)
    interrupted = []

    def on_shutdown():
        if not done.called:
            interrupted.append(True)
            _interrupted.append(True)
            job.cleanup_now()
            done.cancel()
    done = Deferred.fromCoroutine(job.run(out))
    if timeout is None:
        timeout = opts["timeout_s"]
    if timeout:
        done.addTimeout(timeout, reactor)
    trigger = None
    if hasattr(reactor, "addSystemEventTrigger"):
        trigger = reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        await done
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        f = Failure()
        if interrupted:
            msg, code = "interrupted", EXIT_INTERRUPTED
        elif f.check(TimeoutError, CancelledError) and timeout:
            msg, code = f"timed out after {opts['timeout_s']:g} seconds", EXIT_FAILED
        else:
            msg = describe(f)
            code = e.code if isinstance(e, DfgetError) else EXIT_FAILED
            if not isinstance(e, (DfgetError,)):
                Logger().failure("dfget failed", f)
        try:
            stderr.write(error_line(msg))
            stderr.flush()
        except Exception:
            pass
        raise SystemExit(code)
    finally:
        if trigger is not None:
            reactor.removeSystemEventTrigger(trigger)
    return EXIT_OK


def main(reactor, opts, out, stdout=None, stderr=None, environ=None, **kw):
    """The embedded download as a react() main -> Deferred (SystemExit on failure).

    C{opts} come from L{dragonfly.dfget.options.parse}; C{out} is a checked
    output path; C{timeout} (seconds, default C{opts["timeout_s"]}) is what is
    left of --timeout.
    """
    return Deferred.fromCoroutine(_main(
        reactor, opts, out, stdout if stdout is not None else sys.stdout,
        stderr if stderr is not None else sys.stderr,
        environ if environ is not None else os.environ, **kw))


_interrupted = []


def run(opts, out, timeout=None):
    """Run the embedded download in this process's reactor; exits the process."""
    from twisted.internet.task import react

    try:
        react(lambda reactor: main(reactor, opts, out, timeout=timeout))
    except SystemExit as e:
        if _interrupted and not e.code:
            sys.exit(EXIT_INTERRUPTED)
        raise

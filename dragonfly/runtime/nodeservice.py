"""L{NodeService}: the service plumbing a supernode and a peer share.

It owns the listeners (started by hand, one after another, in the order they
were added, each awaited before the next), the log line for each bound port
("<role> <label> listening on HOST:PORT", the address inside the format string
so it is greppable in text and JSON logs), the port file (written atomically
once the node is ready, removed on stop), readiness (L{whenReady}), start
failure, the store's load and GC timer, the twistd log observer, and the
order of stopping. A role subclasses it and fills in the hooks: what a bound
port means to it, what goes in the port file besides the ports, and what it
stops before and after its listeners close.

Listening is part of starting. The listeners bind first, before the store is
loaded or any child service starts, so a second instance started on the ports
of a running one touches nothing of it. An endpoint that cannot listen is
said in one line ("cannot listen on tcp:8002: Address already in use") and
the node does not run: when the bind failed while C{startService} ran (every
TCP, SSL and UNIX endpoint binds at once) C{startService} raises
L{CannotListen}, which twistd turns into exit status 1, daemonised or not;
a bind that fails later stops the reactor and the process exits with 1 once
it has shut down.
"""
import json
import os
import sys

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.logger import Logger

from dragonfly.runtime.daemon import (CannotListen, ListeningService, listen_failure_reason,
                                      safe_timer)

__all__ = ["NodeService", "bound_address", "hostport"]


def bound_address(port, default_host="127.0.0.1"):
    """(host, port) of a listening port; C{default_host} when it has no host;
    (path, None) for a unix socket."""
    addr = port.getHost()
    name = getattr(addr, "name", None)
    if name is not None:
        return os.fsdecode(name), None
    host = getattr(addr, "host", None) or default_host
    return host, getattr(addr, "port", 0)


def hostport(host, port):
    """C{HOST:PORT}, with an IPv6 host in brackets; C{unix:PATH} for a socket."""
    if port is None:
        return f"unix:{host}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeService(service.MultiService):
    """A daemon's MultiService: listeners in order, port file, readiness, stop.

    C{config} needs C{port_file}; C{store} needs C{load}, C{gc}, C{close}
    and C{root}. Subclasses set L{role} and add their
    listeners with L{add_listener} in the order they must come up.
    """

    log = Logger()
    role = "node"

    def __init__(self, reactor, config, store, metrics=None, runner=None, closers=(),
                 log_observer=None):
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.config = config
        self.store = store
        self.metrics = metrics
        self.runner = runner
        self.log_observer = log_observer
        self._closers = list(closers)
        self.addresses = {}
        self._listeners = []
        self._ready = []
        self._failed = None
        self._starting = False
        self._loaded = False
        self._children_started = False
        self._wrote_port_file = False
        #: True once a part of the stop failed (logged); twistd then exits 1.
        self.stop_failed = False

    def add_timer(self, interval, f, name):
        """A child L{safe_timer} calling C{f} every C{interval} seconds on our reactor."""
        return safe_timer(interval, f, self.reactor, name, self.log).setServiceParent(self)

    def add_listener(self, name, endpoint, factory, label=None):
        """Listen on C{endpoint} after the listeners added before; its port goes
        in the port file under C{name} and is logged as "<role> <label> listening
        on ..."."""
        if self.running:
            raise RuntimeError("add listeners before the service starts")
        s = ListeningService(endpoint, factory, name)
        s.parent = self      # started by hand, in order; not a child
        self._listeners.append((name, label or name, s))
        return s

    def setServiceParent(self, parent):
        # Under twistd the parent is the Application: offer our log observer
        # (--log-format json) the supported way, as its ILogObserver component.
        service.MultiService.setServiceParent(self, parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)

    def whenReady(self):
        """A Deferred firing with L{ready_result} once every listener is bound,
        failing with the reason if the start failed."""
        if self._failed is not None:
            return fail(self._failed)
        if len(self.addresses) == len(self._listeners):
            return succeed(self.ready_result())
        d = Deferred()
        self._ready.append(d)
        return d

    def ready_result(self):
        """What L{whenReady} fires with: C{{name: (host, port)}}."""
        return dict(self.addresses)

    def gc(self):
        """Drop what the store's quota and TTL say must go; returns bytes freed."""
        freed = self.store.gc()
        if freed:
            self.log.info("store gc freed {freed} bytes", freed=freed)
        return freed

    def after_load(self):
        """Hook: runs once the listeners are bound and the store loaded,
        before the children start."""

    def listener_bound(self, name, host, port):
        """Hook: listener C{name} is bound (before its "listening on" line)."""

    def port_file_body(self):
        """The port file's JSON object: C{{name: port, ..., "pid": pid}} (a
        unix socket's path instead of its port)."""
        body = {name: addr[0] if addr[1] is None else addr[1]
                for name, addr in self.addresses.items()}
        body["pid"] = os.getpid()
        return body

    def startService(self):
        """Bind, load, start the children, then say ready; raise L{CannotListen}
        (or the store's error) when that fails before this returns."""
        service.Service.startService(self)
        self._starting = True
        try:
            Deferred.fromCoroutine(self._start()).addErrback(self._start_failed)
        finally:
            self._starting = False
        if self._failed is not None:
            self.running = False
            raise self._failed

    async def _start(self):
        for name, label, s in self._listeners:
            await self._bind(name, label, s)
        try:
            self.store.load()
        except Exception:
            self.log.failure("loading the piece store at {root}", root=self.store.root)
            raise
        self._loaded = True
        self.after_load()
        self._children_started = True
        for child in list(self):
            child.startService()
        self._write_port_file()
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(self.ready_result())

    async def _bind(self, name, label, s):
        """Start listener C{s}; log its address; L{CannotListen} if it cannot."""
        s.privilegedStartService()
        s.startService()
        try:
            port = await s.whenListening()
        except Exception as e:
            raise CannotListen(s.description, listen_failure_reason(e)) from e
        host, bound = bound_address(port)
        self.addresses[name] = (host, bound)
        self.listener_bound(name, host, bound)
        addr = hostport(host, bound)
        self.log.info(f"{self.role} {label} listening on " + addr, address=addr)

    def _write_port_file(self):
        path = self.config.port_file
        if not path:
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(self.port_file_body()) + "\n")
            os.replace(tmp, path)
            self._wrote_port_file = True
        except OSError as e:
            self.log.error("cannot write port file {path}: {err}", path=path, err=e)

    def _start_failed(self, f):
        # Without its ports a node is useless: say why, stop what is bound.
        self._failed = f.value
        if f.check(CannotListen):
            self.log.error(str(f.value).replace("{", "{{").replace("}", "}}"),
                           endpoint=f.value.endpoint, reason=f.value.reason)
        else:
            self.log.failure(f"{self.role} failed to start", f)
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(f)
        for _, _, s in self._listeners:
            if s.running:
                s.stopService()
        if not self._starting:
            self._stop_process()

    def _stop_process(self):
        """After startService returned: stop a running reactor, and exit 1
        once it has shut down (twistd itself would exit 0)."""
        stop = getattr(self.reactor, "stop", None)
        if stop is None or not getattr(self.reactor, "running", False):
            return
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        self.reactor.callLater(0, stop)

    def before_unlisten(self):
        """Hook: Deferreds of role work started before the listeners close."""
        return []

    def after_unlisten(self):
        """Hook: Deferreds of role work started once the listeners and the
        children stopped."""
        return []

    def stopService(self):
        early = [d for d in self.before_unlisten() if isinstance(d, Deferred)]
        ds = list(early)
        for _, _, s in reversed(self._listeners):
            if s.running:
                ds.append(s.stopService())
        service.Service.stopService(self)
        if self._children_started:   # as MultiService does, each child's outcome kept
            ds.extend(maybeDeferred(child.stopService) for child in reversed(list(self)))
        ds.extend(self.after_unlisten())
        return self._release(ds, early)

    def _release(self, ds, early=()):
        """Run the closers once the Deferreds in C{early} (the role's work
        before the listeners close, e.g. a peer's leave calls, which go out
        through the pools the closers close) settled; close the store, remove
        the port file; a DeferredList over those and C{ds}. A failing closer
        is logged and does not stop the others; any failure sets
        L{stop_failed}."""
        def closer_failed(failure):
            self._stop_failure("closing", failure)

        def run_closers(_):
            closed = []
            for close in self._closers:
                try:
                    d = close()
                except Exception:
                    self._stop_failure("closing")
                    continue
                if isinstance(d, Deferred):
                    closed.append(d.addErrback(closer_failed))
            return DeferredList(closed, consumeErrors=True)
        ds.append(DeferredList(list(early), consumeErrors=True).addCallback(run_closers))
        try:
            if self._loaded:    # never save over the store of another instance
                self.store.close()
        except Exception:
            self._stop_failure("closing the store")
        if self._wrote_port_file:
            try:
                os.unlink(self.config.port_file)
            except OSError:
                pass
        done = DeferredList([d for d in ds if isinstance(d, Deferred)], consumeErrors=True)
        return done.addCallback(self._stopped)

    def _stopped(self, results):
        for ok, result in results:
            if not ok:
                self._stop_failure("stopping", result)
        return results

    def _stop_failure(self, what, failure=None):
        """Log a failure of the stop (the current exception without C{failure})."""
        self.stop_failed = True
        self.log.failure(f"{self.role} {what}", failure)


def _exit_failed():
    """The process's end after a late start failure: exit status 1."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)

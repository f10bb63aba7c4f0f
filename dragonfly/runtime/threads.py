"""Run blocking disk and hashing work off the reactor thread, with a bound."""
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from dragonfly.interfaces import IRunner


@implementer(IRunner)
class ThreadRunner:
    """A bounded thread pool tied to a reactor's lifetime."""

    def __init__(self, reactor, max_threads=4, name="dragonfly-io"):
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)
        self._started = False

    def start(self):
        if not self._started:
            self._started = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self):
        if self._started:
            self._started = False
            self._pool.stop()

    def run(self, f, *args, **kwargs):
        self.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)


@implementer(IRunner)
class SyncRunner:
    """Runs work inline: for tests and tiny jobs."""

    def run(self, f, *args, **kwargs):
        return maybeDeferred(f, *args, **kwargs)

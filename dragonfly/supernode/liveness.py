"""The supernode's own check of a peer reported failing: is its piece port there?

An asker's report that a fetch from a peer failed is that asker's word; the
supernode acts on it for that asker only (L{dragonfly.supernode.reports}).
Whether the peer is dead for everyone is the supernode's call:
L{LivenessCheck} connects to the peer's piece address (a TCP connect,
aborted as soon as it succeeds: no byte is sent) and only a refused
connection (nothing listens there: the process is gone) counts, through
L{dragonfly.supernode.scheduler.Scheduler.unreachable}, which also requires
the peer to have made no call since the check began. A connection that
succeeds, times out or fails otherwise proves nothing and changes nothing.
Checks begin on an asker's failure report (L{check}, through the scheduler),
on a long-poll whose client went away (C{LongPollScheduler.abandoned}), and
when a connection of a peer with assignments in flight to our own piece
server ends (L{lost}: a peer killed while it fetched from the seed, which
nobody may ever report as a source), and when a peer says its upload to a
receiver was cut (L{cut}: a peer killed while it fetched from other peers
only, whose uploaders' slots it would otherwise hold until the assignment
timeout; nobody else sees it die).

What a lying reporter can do: make the supernode knock on the piece port of
a peer it had an assignment from (an asker's report), or of a peer that has
an assignment in flight from the reporter itself (an uploader's cut; the
reporter is who its registration secret says, and the receiver must be
one the supernode sent to it), at most once per C{interval} per address
and C{max_checks} at once over all addresses. It cannot make a live,
listening peer look dead, so it cannot free the upload slots a live peer's
fetches hold: only the supernode's own refused connection, with no call
from that peer since the check began, ends them. A verdict on a live peer
(e.g. a firewall rejecting the supernode alone) lasts until that peer's
next call; a cut report adds no verdict of its own, only a knock.
"""
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dragonfly.protocol.pool import default_endpoint

__all__ = ["LivenessCheck", "CHECK_TIMEOUT", "CHECK_INTERVAL", "MAX_CHECKS", "CUT_DELAY"]

#: Seconds a check's connection attempt may take (running out proves nothing).
CHECK_TIMEOUT = 3.0
#: Seconds between two checks of one piece address.
CHECK_INTERVAL = 10.0
#: Checks in flight at once; a report beyond them is not checked.
MAX_CHECKS = 16
#: Seconds between an uploader's cut report and the check it asks for (L{LivenessCheck.cut}).
CUT_DELAY = 0.5
#: Addresses remembered (their last check's time) before the old ones are dropped.
_REMEMBER = 4096


class _Hangup(Protocol):
    """Connected: that is all we wanted to know."""

    def connectionMade(self):
        self.transport.abortConnection()


class LivenessCheck:
    """Checks the piece ports of peers reported failing (see the module docstring).

    @param scheduler: the L{Scheduler} told about a refused port (C{unreachable}).
    @param clock: IReactorTime (and IReactorTCP when C{connect} is None).
    @param connect: C{(host, port) -> Deferred} firing once connected, failing
        with C{ConnectionRefusedError} when refused (default: a TCP endpoint).
    """

    log = Logger()

    def __init__(self, scheduler, clock, connect=None, timeout=CHECK_TIMEOUT,
                 interval=CHECK_INTERVAL, max_checks=MAX_CHECKS, cut_delay=CUT_DELAY):
        self.scheduler = scheduler
        self.clock = clock
        self.timeout = timeout
        self.interval = interval
        self.max_checks = max_checks
        self.cut_delay = cut_delay
        self._cuts = set()      # (task_id, receiver) whose check waits (cut)
        if connect is None:
            def connect(host, port):
                endpoint = default_endpoint(clock, host, port, timeout)
                return endpoint.connect(Factory.forProtocol(_Hangup))
        self._connect = connect
        self._last = {}         # (host, port) -> when its last check began
        self._running = set()   # (host, port) being checked
        self.checks = 0         # checks begun
        self.refused = 0        # checks that found nothing listening

    def lost(self, task_id, peer_id):
        """A connection of C{peer_id} to our piece server for C{task_id}
        ended: check it if it has assignments in flight (a peer killed while
        fetching from the seed holds pieces nobody else may fetch from it)."""
        info = self.scheduler.fetching_peer(task_id, peer_id)
        if info is not None:
            self.check(info)

    def cut(self, task_id, uploader_id, receiver_id):
        """The peer C{uploader_id} says its upload connection to
        C{receiver_id} for C{task_id} ended: check the receiver, in
        C{cut_delay} seconds, if it then has an assignment in flight from
        that uploader (its death would hold the uploader's slot, which the
        scheduler counts busy, until the assignment timeout). Any other
        receiver is left alone: the report is the uploader's word, and it
        only concerns the uploader's own slots.

        Why the delay: the uploader sees the connection end while the dying
        process's files are being closed, its listening socket maybe among
        the last, and a connect that the kernel still completes proves
        nothing (the address is then not checked again for C{interval}).
        At most C{max_checks} such checks wait at once, one per receiver."""
        key = (task_id, receiver_id)
        if key in self._cuts or len(self._cuts) >= self.max_checks:
            return
        if self.scheduler.fetching_peer(task_id, receiver_id, source_id=uploader_id) is None:
            return

        def later():
            self._cuts.discard(key)
            info = self.scheduler.fetching_peer(task_id, receiver_id, source_id=uploader_id)
            if info is not None:
                self.check(info)
        self._cuts.add(key)
        self.clock.callLater(self.cut_delay, later)

    def check(self, info):
        """Check the piece port of C{info} (a L{PeerInfo}) unless it was
        checked within C{interval} or C{max_checks} checks run: the Deferred
        of the check (firing with True when the port refused), or None."""
        key = (info.host, info.port)
        now = self.clock.seconds()
        last = self._last.get(key)
        if (key in self._running or len(self._running) >= self.max_checks
                or last is not None and now - last < self.interval):
            return None
        if len(self._last) >= _REMEMBER:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[key] = now
        self._running.add(key)
        self.checks += 1
        try:
            d = self._connect(info.host, info.port)
        except Exception:
            d = defer.fail()
        d.addTimeout(self.timeout, self.clock)

        def refused(failure):
            if not failure.check(ConnectionRefusedError):
                self.log.debug("checking {peer} at {host}:{port}: {why}", peer=info.peer_id,
                               host=info.host, port=info.port, why=failure.getErrorMessage())
                return False
            self.refused += 1
            tasks = self.scheduler.unreachable(info.peer_id, info, now)
            if tasks:
                self.log.info("peer {peer} refuses connections at {host}:{port}: no source "
                              "and its assignments ended in {n} task(s) until it calls again",
                              peer=info.peer_id, host=info.host, port=info.port, n=tasks)
            return True

        def done(result):
            self._running.discard(key)
            if isinstance(result, Failure):
                self.log.failure("checking {peer}", result, peer=info.peer_id)
                return False
            return result
        return d.addCallbacks(lambda _: False, refused).addBoth(done)

"""Private content: when a caller must show the origin its own request first.

A task id is derived from the URL less its C{--filter} parameters, a tag or a
digest (L{dragonfly.taskid}); it never covers request headers. So when the
request that fetched a task carried something the origin may check and the
id leaves out -- a header outside L{HARMLESS_HEADERS} (C{Authorization},
C{Cookie}, C{Proxy-Authorization}, an API key header, ...) or a query
parameter dropped by C{--filter} -- the task is I{private}: another caller
of the same id is served only once the origin accepted that caller's own
request (L{dragonfly.origin.OriginClient.probe}: a C{HEAD}, or a 1-byte
ranged C{GET} where C{HEAD} is not allowed, with the caller's URL and
headers). L{omits_checked} says whether a request makes its task private;
L{judge} is the decision table for the origin's answer to the probe.

The rule is applied where a caller would otherwise be served without its
own request reaching the origin: the supernode's registration of a task
someone else's request fetched (L{dragonfly.supernode.privateaccess}), and the
peer's local callers of a task it holds or is downloading for someone else
(L{dragonfly.peer.node}). The caller whose request makes the fetch is
checked by that fetch. Preheat fetches like a caller but serves nobody: it
admits no one by itself.
"""
from collections import OrderedDict
from urllib.parse import unquote_plus, urlsplit

from dragonfly.origin import OriginError, OriginRefused
from dragonfly.redact import redact_text

__all__ = ["HARMLESS_HEADERS", "omits_checked", "Verdict", "judge", "probe_failed",
           "FetchedBy", "check_caller"]

#: Request headers that change no origin's access decision (content
#: negotiation, client identification, caching hints). Any other header a
#: caller sends may be a credential.
HARMLESS_HEADERS = frozenset({
    "accept", "accept-language", "user-agent", "cache-control", "pragma", "x-request-id"})


def omits_checked(url, headers, filters=()):
    """Does the task id of this request leave out something the origin may
    check (a non-harmless header, or a query parameter that C{filters} drops)?"""
    if any(name.lower() not in HARMLESS_HEADERS for name in (headers or {})):
        return True
    if isinstance(filters, str):
        filters = filters.split(",")
    drop = {f.strip() for f in filters or () if f.strip()}
    if not drop:
        return False
    try:
        query = urlsplit(url).query
    except ValueError:
        return True
    return any(unquote_plus(seg.partition("=")[0]) in drop
               for seg in query.split("&") if seg)


class Verdict:
    """The outcome of a probe: C{admitted}, else C{status} (the origin's
    refusal, e.g. 401, or None) and C{reason} (one line for the caller)."""

    def __init__(self, admitted, status=None, reason=None):
        self.admitted = admitted
        self.status = status
        self.reason = reason

    def __repr__(self):
        return f"Verdict({self.admitted!r}, {self.status!r}, {self.reason!r})"


ADMITTED = Verdict(True)


def judge(status, length, etag, last_modified, task_length, task_etag=None,
          task_last_modified=None):
    """The L{Verdict} for the origin's answer (C{status}, the file's C{length},
    C{etag}, C{last_modified}) to a caller's probe of a task of
    C{task_length} bytes with the given validators.

    Admitted: a 2xx whose length is the task's and whose validators, where
    both sides have one, are the task's. A non-2xx is the origin's refusal,
    given back with its status; a 2xx for other content is refused without a
    status (the caller's request names other bytes than the task's).
    """
    if not 200 <= status < 300:
        return Verdict(False, status, f"origin answered {status}")
    if length is None or length != task_length:
        return Verdict(False, None, "the origin's answer to this request is not the cached "
                                    f"file ({length} bytes, not {task_length})")
    if etag and task_etag and _weakless(etag) != _weakless(task_etag):
        return Verdict(False, None, "the origin's answer to this request has another ETag "
                                    "than the cached file")
    if last_modified and task_last_modified and last_modified != task_last_modified:
        return Verdict(False, None, "the origin's answer to this request has another "
                                    "Last-Modified than the cached file")
    return ADMITTED


def probe_failed(reason):
    """The L{Verdict} when the probe got no answer (unreachable, refused by
    the egress policy, timed out): not admitted."""
    return Verdict(False, None, f"cannot check this request with the origin: {reason}")


def _weakless(etag):
    return etag[2:] if etag.startswith("W/") else etag


class FetchedBy:
    """Per task id: was the request whose fetch brought its bytes private?

    Only what happened in this process is known; a task not recorded (held
    from a previous run, fetched by preheat) counts as private. Bounded: the
    oldest records go first (they then count as private again).
    """

    def __init__(self, limit=100_000):
        self._private = OrderedDict()
        self.limit = limit

    def record(self, task_id, private):
        self._private[task_id] = bool(private)
        self._private.move_to_end(task_id)
        while len(self._private) > self.limit:
            self._private.popitem(last=False)

    def needs_check(self, task_id):
        """Must a caller who did not fetch C{task_id} itself be checked?"""
        return self._private.get(task_id, True)

    def forget(self, task_id):
        self._private.pop(task_id, None)


async def check_caller(origin, url, headers, task_file, fetched_by=None):
    """The L{Verdict} for a caller of C{task_file} (held, or being fetched for
    someone else) whose request is C{url} and C{headers}: the origin's
    answer to the caller's own probe (L{judge}). An admitted caller whose
    request is public (L{omits_checked}) shows the task public: it is
    recorded in C{fetched_by} so later callers are not checked."""
    try:
        probe = await origin.probe(url, headers)
    except OriginRefused:
        raise   # the egress policy's own refusal, as for a fetch
    except OriginError as e:
        return probe_failed(redact_text(str(e.message)))
    verdict = judge(probe.status, probe.length, probe.etag, probe.last_modified,
                    task_file.length, getattr(task_file, "etag", None),
                    getattr(task_file, "last_modified", None))
    if verdict.admitted and fetched_by is not None and not omits_checked(url, headers):
        fetched_by.record(task_file.task_id, False)
    return verdict

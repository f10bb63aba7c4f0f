"""Who may join a private task: the supernode's side of L{dragonfly.privacy}.

A registration is served without asking the origin when its own request
makes the fetch (nothing held, no fetch running: L{PrivateAccess.needs_check}
records whether that request was private), or when the task's bytes came
in this process through a public request. Otherwise -- the task was
fetched by a request carrying credentials or filtered query parameters, by
preheat, or before this process started -- the caller is admitted only once
the origin accepted the caller's own request (L{PrivateAccess.admit}); its
refusal reaches the peer as C{502 {"error": "origin answered 401",
"origin_status": 401}}, which dfget shows as its error line.
"""
from dragonfly.origin import OriginError
from dragonfly.privacy import FetchedBy, check_caller, omits_checked

__all__ = ["PrivateAccess"]


class PrivateAccess:
    """The revalidation decision for registrations at one supernode.

    @param cdn: the L{dragonfly.supernode.cdn.CDN} (its store, status and origin).
    """

    def __init__(self, cdn, fetched_by=None):
        self.cdn = cdn
        self.fetched_by = fetched_by if fetched_by is not None else FetchedBy()

    def _caller_fetches(self, task_id):
        """Will an ensure() of C{task_id} now fetch with the caller's request?"""
        if self.cdn.store.get(task_id) is not None:
            return False
        status = self.cdn.status(task_id)
        return status is None or status.get("state") == "failed"

    def needs_check(self, request):
        """Call before C{cdn.ensure}: must this registration (a
        L{dragonfly.control.messages.RegisterRequest}) be checked with the
        origin once the task file is known?"""
        if self._caller_fetches(request.task_id):
            self.fetched_by.record(request.task_id,
                                   omits_checked(request.url, request.headers, request.filters))
            return False
        return self.fetched_by.needs_check(request.task_id)

    def fetch_admits_no_one(self, task_id):
        """Call before a fetch that serves no caller (preheat) asks the CDN for
        C{task_id}: if that will fetch, the task counts as private (whatever an
        earlier public fetch of it recorded), since the preheat's request is no
        caller's and may carry credentials."""
        if self._caller_fetches(task_id):
            self.fetched_by.forget(task_id)

    async def admit(self, request, task_file):
        """Return once the origin accepted the caller's request for
        C{task_file}; else raise L{OriginError} (the origin's status, if it
        answered, and one line saying why)."""
        verdict = await check_caller(self.cdn.origin, request.url, request.headers, task_file,
                                     self.fetched_by)
        if not verdict.admitted:
            raise OriginError(verdict.status, verdict.reason)

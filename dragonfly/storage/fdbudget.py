"""The store's file-descriptor budget: at most C{max_open} data files open at once.

Each task keeps its data file open once used (opened lazily). Before a task
opens one, L{FdBudget.make_room} closes the least recently used idle ones
while the budget is full; a busy or pinned task's fd is never closed under its
user, so the budget can be exceeded while that many are in use.

An owner (a TaskFile) offers C{can_close()} and C{close_fd()}, and reports
its own opens and closes with L{used} and L{closed}.
"""


class FdBudget:
    """Least-recently-used open data files, bounded by C{max_open}."""

    def __init__(self, max_open):
        self.max_open = max(1, max_open)
        self._open = {}     # owner -> None, in least-recently-used order

    def __len__(self):
        return len(self._open)

    def used(self, owner):
        """C{owner}'s fd is open and was just used."""
        self._open.pop(owner, None)
        self._open[owner] = None

    def closed(self, owner):
        """C{owner}'s fd was closed."""
        self._open.pop(owner, None)

    def make_room(self):
        """Close idle fds, least recently used first, until one more fits."""
        if len(self._open) < self.max_open:
            return
        for owner in list(self._open):
            if len(self._open) < self.max_open:
                break
            if owner.can_close():
                owner.close_fd()

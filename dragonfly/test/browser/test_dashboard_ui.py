"""The supernode's dashboard in a real browser, during a real download.

An origin (throttled, so the download takes a few seconds), a supernode and
three peers run as processes (L{dragonfly.test.integration.harness}); a
headless Chromium opens ``/ui`` before the downloads start and the test
reads the rendered DOM over the DevTools protocol while three dfgets run:
the task appears with its progress, the piece grid has one row per peer,
and it reaches 100% without a reload. Screenshots go to
``$DRAGONFLY_ARTIFACTS`` (``make test-browser``: ``.artifacts/``).

Run by ``make test-browser`` and by CI's ``make test FAIL_ON_SKIP=1``
(both set ``DRAGONFLY_BROWSER_TESTS=1``). Without
Chromium the test skips with a loud reason, except in CI
(``DRAGONFLY_REQUIRE_BROWSER=1`` or ``CI`` set), where that is a failure.
"""
import os
import shutil
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from dragonfly.test.browser.cdp import DevTools, chromium_argv, find_chromium, page_websocket
from dragonfly.test.integration.harness import HTTP, MiB, Proc, Swarm, poll_until, with_logs

PEERS = 3
SIZE = 24 * MiB          # 24 pieces of 1 MiB
ORIGIN_RATE = 4 * MiB    # bytes/s: the download lasts a few seconds

#: What the test reads of the page: the tasks' rows, the grid's peer rows,
#: and the page's load time (unchanged = never reloaded).
STATE = """(() => ({
  loaded: performance.timeOrigin,
  status: document.querySelector('#status').textContent,
  tasks: [...document.querySelectorAll('#tasks tr[data-task-id]')].map((r) => ({
    id: r.dataset.taskId, state: r.dataset.state,
    progress: +r.querySelector('td.progress').dataset.progress,
    origin: +r.querySelector('td.origin-progress').dataset.progress})),
  rows: [...document.querySelectorAll('#grid .row.peer')].map((r) => r.dataset.peerId),
  held: [...document.querySelectorAll('#grid .row.peer')].map((r) => +r.dataset.held),
  peers: document.querySelectorAll('#peers tr[data-peer-id]').length,
}))()"""


def _required():
    return bool(os.environ.get("DRAGONFLY_REQUIRE_BROWSER") or os.environ.get("CI"))


def artifacts_dir(fallback):
    path = os.environ.get("DRAGONFLY_ARTIFACTS") or fallback
    os.makedirs(path, exist_ok=True)
    return path


class DashboardBrowserTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        if not os.environ.get("DRAGONFLY_BROWSER_TESTS"):
            raise unittest.SkipTest("browser tests run by `make test-browser` "
                                    "(DRAGONFLY_BROWSER_TESTS=1)")
        self.chromium = find_chromium()
        if self.chromium is None:
            reason = ("CHROMIUM NOT FOUND: the dashboard's browser test did NOT run "
                      "(apt-get install chromium, or set DRAGONFLY_CHROMIUM)")
            if _required():
                self.fail(reason)
            sys.stderr.write(f"\n*** {reason} ***\n")
            raise unittest.SkipTest(reason)

    async def open_page(self, swarm, url):
        """Chromium on C{url}; its DevTools session (closed and killed on cleanup)."""
        profile = swarm.path("chromium-profile")
        browser = Proc("chromium", chromium_argv(self.chromium, profile, url), swarm.workdir)
        self.addCleanup(lambda: Deferred.fromCoroutine(browser.stop(reactor, grace=5)))
        self.addCleanup(shutil.rmtree, profile, True)
        ws = await poll_until(reactor, lambda: deferToThread(page_websocket, profile), 60,
                              "Chromium's DevTools port", check=browser.check_alive)
        page = await deferToThread(DevTools, ws)
        self.addCleanup(page.close)
        return page

    @with_logs()
    async def test_live_swarm(self):
        """While peers download a file, /ui shows the task and its progress,
        one grid row per peer, and reaches 100% without a reload."""
        http = HTTP(reactor)
        self.addCleanup(http.close)
        self.swarm = swarm = Swarm(reactor, self.mktemp(), http)
        self.addCleanup(swarm.stop)
        await swarm.start_origin({"big.bin": SIZE}, rate=ORIGIN_RATE)
        sn = await swarm.start_supernode(piece_size="1M")
        peers = [await swarm.start_peer() for _ in range(PEERS)]
        page = await self.open_page(swarm, sn.api + "/ui")

        def state():
            return deferToThread(page.evaluate, STATE)
        first = await poll_until(reactor, lambda: state().addCallback(
            lambda s: s if s["status"].startswith("live") else None), 60, "the page to go live")
        self.assertEqual(first["tasks"], [], "a task before any download started")

        runs = [swarm.start_dfget(swarm.origin_url("big.bin"), peer=p) for p in peers]
        out = artifacts_dir(swarm.workdir)
        seen = []

        async def progressed():
            s = await state()
            seen.append(s)
            # Mid-download (the grid half filled in): the picture in the docs.
            if s["tasks"] and len(s["rows"]) == PEERS and 30 <= s["tasks"][0]["progress"] < 100 \
                    and not os.path.exists(os.path.join(out, "dashboard-live.png")):
                await deferToThread(page.screenshot, os.path.join(out, "dashboard-live.png"))
            # The grid is drawn a moment after the task list: wait for both.
            return (s["tasks"] and s["tasks"][0]["progress"] == 100 and len(s["rows"]) == PEERS
                    and s["held"] == [SIZE // MiB] * PEERS)
        await poll_until(reactor, progressed, 120, "the dashboard to show 100%", interval=0.2)
        await deferToThread(page.screenshot, os.path.join(out, "dashboard.png"))
        for run in runs:
            result = await swarm.wait_dfget(run)
            self.assertEqual(result.code, 0, repr(result))

        with_task = [s for s in seen if s["tasks"]]
        progress = [s["tasks"][0]["progress"] for s in with_task]
        self.assertTrue(any(p < 100 for p in progress),
                        f"the page never showed the download in progress: {progress}")
        # Once every peer has joined (the swarm's size is fixed), it only grows.
        settled = [s["tasks"][0]["progress"] for s in with_task if s["peers"] == PEERS]
        self.assertEqual(settled, sorted(settled), f"progress went backwards: {settled}")
        last = seen[-1]
        self.assertEqual(len(last["tasks"]), 1)
        self.assertEqual(last["tasks"][0]["origin"], 100)
        self.assertEqual(len(set(last["rows"])), PEERS, "one grid row per peer")
        self.assertEqual(last["held"], [SIZE // MiB] * PEERS)
        self.assertEqual(last["peers"], PEERS)
        self.assertEqual({s["loaded"] for s in seen} | {first["loaded"]}, {first["loaded"]},
                         "the page reloaded")
        self.assertTrue(os.path.getsize(os.path.join(out, "dashboard.png")) > 10000)

"""dfctl against scripted HTTP servers on loopback (stdlib servers in threads)."""
import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfctl import cli
from dragonfly.dfctl.supernodes import preheat_body

TID = "a" * 64


class Scripted:
    """A loopback HTTP server answering from C{routes}: (method, path) -> a list of
    (status, body, headers) used in turn (the last one repeats). Records requests."""

    def __init__(self, routes):
        self.routes = {k: list(v) for k, v in routes.items()}
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                owner.requests.append((self.command, self.path, body))
                script = owner.routes.get((self.command, self.path))
                if not script:
                    status, payload, headers = 404, {"error": "not found"}, {}
                else:
                    status, payload, headers = script.pop(0) if len(script) > 1 else script[0]
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class DfctlTests(SynchronousTestCase):

    def serve(self, routes):
        s = Scripted(routes)
        self.addCleanup(s.close)
        return s

    def run_dfctl(self, argv):
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(argv, stdout=out, stderr=err, sleep=lambda s: None)
        return code, out.getvalue(), err.getvalue()

    def test_task_ls_and_rm(self):
        """task ls shows the peer's tasks (text or --json); task rm removes each id and
        fails with the peer's reason for one it does not hold."""
        row = {"task_id": TID, "url": "http://o/f", "length": 3 << 20, "completed": 3 << 20,
               "complete": True, "downloading": False, "last_access": 1.0}
        peer = self.serve({("GET", "/api/v1/tasks"): [(200, {"tasks": [row]}, {})],
                           ("DELETE", f"/api/v1/tasks/{TID}"):
                               [(200, {"removed": True}, {}), (404, {"error": "task not held"}, {})]})
        base = ["--peer", "http://" + peer.address]
        code, out, _ = self.run_dfctl(["task", "ls"] + base)
        self.assertEqual(code, 0)
        self.assertIn(TID, out)
        self.assertIn("3.0M", out)
        self.assertIn("complete", out)
        code, out, _ = self.run_dfctl(["task", "ls", "--json"] + base)
        self.assertEqual(json.loads(out), {"tasks": [row]})
        code, out, _ = self.run_dfctl(["task", "rm", TID, "--json"] + base)
        self.assertEqual((code, json.loads(out)), (0, {"removed": [TID]}))
        code, out, err = self.run_dfctl(["task", "rm", TID] + base)
        self.assertEqual(code, 1)
        self.assertIn("task not held", err)
        code, _, err = self.run_dfctl(["task", "rm", "../x"] + base)
        self.assertEqual(code, 2)

    def test_preheat_wait_follows_owner(self):
        """preheat --wait follows the owner redirect, polls the owner's job until done,
        shows progress on stderr and exits 0."""
        owner = self.serve({
            ("POST", "/api/v1/preheat"): [(202, {"id": "j1", "state": "pending"}, {})],
            ("GET", "/api/v1/preheat/j1"): [(200, {"id": "j1", "state": "running"}, {}),
                                            (200, {"id": "j1", "state": "done",
                                                   "length": 10}, {})]})
        first = self.serve({("POST", "/api/v1/preheat"): [
            (307, {"error": "task belongs to another", "owner": owner.address},
             {"location": f"http://{owner.address}/api/v1/preheat"})]})
        code, out, err = self.run_dfctl(["preheat", "http://o.test/f?sig=1", "-H", "X-A: 1",
                                         "--filter", "sig", "--wait",
                                         "--supernodes", first.address])
        self.assertEqual(code, 0, err)
        self.assertIn("running", err)
        self.assertIn("done", out)
        [(_, _, body)] = [r for r in owner.requests if r[0] == "POST"]
        self.assertEqual(body, {"url": "http://o.test/f?sig=1", "headers": {"X-A": "1"},
                                "filter": ["sig"], "redirected": True})

    def test_preheat_failure(self):
        """A failed preheat exits 1 with its error on stderr; --json still prints it."""
        sn = self.serve({
            ("POST", "/api/v1/preheat"): [(202, {"id": "j2", "state": "running"}, {})],
            ("GET", "/api/v1/preheat/j2"): [(200, {"id": "j2", "state": "failed",
                                                   "error": "origin said 404"}, {})]})
        code, out, err = self.run_dfctl(["preheat", "reg.test/app:1", "--wait",
                                         "--supernodes", sn.address])
        self.assertEqual(code, 1)
        self.assertIn("origin said 404", err)
        code, out, err = self.run_dfctl(["preheat", "reg.test/app:1", "--wait", "--json",
                                         "--supernodes", sn.address])
        self.assertEqual((code, json.loads(out)["job"]["state"]), (1, "failed"))

    def test_preheat_refused_and_unreachable(self):
        """A 4xx refusal is an error naming the reason; with no supernode up, too."""
        sn = self.serve({("POST", "/api/v1/preheat"):
                         [(403, {"error": "origin not allowed: 10.0.0.1"}, {})]})
        code, _, err = self.run_dfctl(["preheat", "http://10.0.0.1/x", "--supernodes",
                                       sn.address])
        self.assertEqual(code, 1)
        self.assertIn("origin not allowed", err)
        code, _, err = self.run_dfctl(["preheat", "http://o/x", "--supernodes", "127.0.0.1:1"])
        self.assertEqual(code, 1)
        self.assertIn("no supernode took the preheat", err)

    def test_preheat_body(self):
        """URLs become file preheats, REGISTRY/NAME:TAG image preheats; bad input is usage."""
        args = cli.parser().parse_args(["preheat", "reg.test:5000/lib/app@sha256:" + "b" * 64,
                                        "--insecure"])
        self.assertEqual(preheat_body(args)["image"], "reg.test:5000/lib/app@sha256:" + "b" * 64)
        self.assertTrue(preheat_body(args)["insecure"])
        for argv in (["preheat", "nothing"], ["preheat", "http://o/x", "-H", "bad"]):
            self.assertEqual(self.run_dfctl(argv + ["--supernodes", "127.0.0.1:1"])[0], 2)

    def test_cluster(self):
        """cluster lists each supernode and the members they name, with health and task
        counts; a member that does not answer makes it exit 1."""
        metrics = (b"# TYPE dragonfly_supernode_tasks gauge\ndragonfly_supernode_tasks 3.0\n"
                   b"dragonfly_supernode_peers 5.0\n"
                   b"dragonfly_supernode_origin_bytes_total 1024.0\n")
        sn = self.serve({("GET", "/metrics"): [(200, metrics, {})]})
        sn.routes[("GET", "/healthz")] = [(200, {"status": "ok", "cluster": {
            "self": sn.address, "members": {sn.address: "alive",
                                            "127.0.0.1:1": "dead"}}}, {})]
        code, out, _ = self.run_dfctl(["cluster", "--json", "--supernodes", sn.address])
        self.assertEqual(code, 1)
        rows = {r["address"]: r for r in json.loads(out)["supernodes"]}
        me = rows["http://" + sn.address]
        self.assertEqual((me["health"], me["tasks"], me["peers"], me["origin_bytes"]),
                         ("ok", 3, 5, 1024))
        self.assertEqual(rows["http://127.0.0.1:1"]["health"], "down")
        sn.routes[("GET", "/healthz")] = [(200, {"status": "ok"}, {})]
        code, out, err = self.run_dfctl(["cluster", "--supernodes", sn.address])
        self.assertEqual(code, 0, err)
        self.assertIn("tasks=3", out)

    def test_usage(self):
        """No command, or an unknown one, is a usage error (2)."""
        self.assertEqual(self.run_dfctl([])[0], 2)
        self.assertEqual(self.run_dfctl(["frobnicate"])[0], 2)
        self.assertEqual(self.run_dfctl(["task", "ls", "--tls-cert", "x"])[0], 2)

    def test_no_twisted(self):
        """dfctl imports neither Twisted nor any role package."""
        code = ("import sys; from dragonfly.dfctl import cli; "
                "bad = [m for m in sys.modules if m.split('.')[0] == 'twisted' or "
                "m.startswith(('dragonfly.peer', 'dragonfly.supernode', 'dragonfly.dfdaemon', "
                "'dragonfly.dfget'))]; print(bad)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        self.assertEqual(out.stdout.strip(), "[]")

"""Tests of the mirror's routing (dragonfly.dfdaemon.routes): which requests it
takes, where each goes, and what it answers itself."""
import json

from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import sample
from dragonfly.test.metricspec import assert_spec_metrics
from dragonfly.test.mirrorfakes import DIGEST, MANIFEST_TYPE, MirrorTestMixin


class RoutesTests(MirrorTestMixin, SynchronousTestCase):
    def test_ns_selects_allowed_upstream(self):
        """When ?ns= names an allowed registry, the request goes to that registry."""
        self.get("/v2/library/app/manifests/v1?ns=other.example",
                 headers={b"accept": [MANIFEST_TYPE]})
        self.assertEqual(self.agent.urls,
                         [(b"GET", b"https://other.example/v2/library/app/manifests/v1")])
        self.assertEqual(self.registry.requests[0]["headers"][b"host"], [b"other.example"])

    def test_ns_other_host_refused(self):
        """When ?ns= names a registry that is not allowed, the mirror answers 403
        and contacts nobody."""
        response = self.get("/v2/library/app/manifests/v1?ns=evil.example")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.error_of(response), "DENIED")
        self.assertEqual(self.agent.urls, [])
        self.assertEqual(sample(self.metrics, "dragonfly_mirror_requests_total",
                                {"kind": "refused", "code": "403"}), 1)

    def test_absolute_url_refused(self):
        """When a client uses the mirror as an HTTP proxy (absolute URL or CONNECT),
        it gets 403 and nothing is contacted."""
        out = self.raw(b"GET http://evil.example/v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 403"), out)
        out = self.raw(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 403"), out)
        self.assertEqual(self.agent.urls, [])

    def test_methods(self):
        """When a client pushes through the mirror (issue 14: the mirror is no
        longer read-only) the request goes to the upstream; a method the
        registry API does not use gets 405 and contacts nobody."""
        response = self.get("/v2/library/app/blobs/uploads/", method="POST")
        self.assertEqual(response.code, 202)
        self.assertEqual(self.agent.urls, [
            (b"POST", b"http://registry.example:5000/v2/library/app/blobs/uploads/")])
        response = self.get("/v2/library/app/blobs/uploads/", method="OPTIONS")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"),
                         [b"GET, HEAD, POST, PUT, PATCH, DELETE"])
        self.assertEqual(len(self.agent.urls), 1)

    def test_bad_paths(self):
        """When the path is not a registry path or smuggles traversal or escapes,
        the mirror answers 4xx JSON and contacts nobody."""
        for path, code in [("/v3/x", 404), ("/", 404), ("/v2/a/../../etc/passwd", 400),
                           ("/v2/a//b/manifests/x", 400), ("/v2/a%2F..%2Fb/manifests/x", 400)]:
            response = self.get(path)
            self.assertEqual(response.code, code, path)
            self.error_of(response)
        self.assertEqual(self.agent.urls, [])

    def test_metrics_spec(self):
        """The dfdaemon's /metrics has every SPEC peer counter and source label."""
        response = self.get("/metrics")
        self.assertEqual(response.code, 200)
        assert_spec_metrics(self, self.body(response), "dfdaemon")

    def test_healthz_and_metrics(self):
        """When asked on the mirror port, /healthz answers 200 JSON and /metrics
        the Prometheus text with the mirror counters."""
        response = self.get("/healthz")
        self.assertEqual(response.code, 200)
        obj = json.loads(self.body(response))
        self.assertEqual(obj["status"], "ok")
        self.assertEqual(obj["upstreams"][0]["url"], "http://registry.example:5000")
        self.get("/v2/")
        response = self.get("/metrics")
        self.assertEqual(response.code, 200)
        text = self.body(response).decode()
        self.assertIn('dragonfly_mirror_requests_total{code="200",kind="passthrough"} 1.0', text)
        self.assertIn("dragonfly_peer_download_bytes_total", text)

    def test_healthz_degraded(self):
        """When the cache reports "degraded" (a full disk), the mirror's /healthz
        still answers 200 with the reasons; "unavailable" answers 503."""
        report = {"status": "degraded", "reasons": ["disk full"]}
        self.mirror.routes.health = lambda: report
        response = self.get("/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(self.body(response))["reasons"], ["disk full"])
        report = {"status": "unavailable", "reasons": ["store directory /x is gone"]}
        self.assertEqual(self.get("/healthz").code, 503)

    def test_malformed_digest(self):
        """When the digest is malformed, the client gets 400 DIGEST_INVALID and
        neither the registry nor the swarm is asked."""
        for ref in ["sha256:zz", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63]:
            response = self.get(f"/v2/library/app/blobs/{ref}")
            self.assertEqual(response.code, 400, ref)
            self.assertEqual(self.error_of(response), "DIGEST_INVALID")
        response = self.get(f"/v2/Library/App/blobs/{DIGEST}")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.error_of(response), "NAME_INVALID")
        self.assertEqual(self.agent.urls, [])
        self.assertEqual(self.peer.downloads, [])

"""Tests of the mirror's pass-through (dragonfly.dfdaemon.passthrough): requests
relayed to the upstream registry and its answers relayed back."""
import hashlib

from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from dragonfly.test.mirrorfakes import MANIFEST, MANIFEST_TYPE, MIRROR, REALM, MirrorTestMixin


class PassthroughTests(MirrorTestMixin, SynchronousTestCase):
    def test_repeated_accept_lines_reach_upstream(self):
        """When a client sends several Accept lines (as skopeo does), the upstream
        gets every one of them, in order, as separate values; and the manifest
        comes back with its status, headers and body unchanged."""
        accepts = [b"application/vnd.docker.distribution.manifest.v2+json",
                   MANIFEST_TYPE, b"application/vnd.oci.image.index.v1+json"]
        headers = Headers({b"accept": accepts, b"user-agent": [b"skopeo/1.9.3"],
                           b"x-custom": [b"a", b"b"]})
        response = self.get("/v2/library/app/manifests/v1", headers=headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), MANIFEST)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [MANIFEST_TYPE])
        self.assertEqual(response.headers.getRawHeaders(b"docker-content-digest"),
                         [b"sha256:" + hashlib.sha256(MANIFEST).hexdigest().encode()])
        [seen] = self.registry.requests
        self.assertEqual(seen["method"], "GET")
        self.assertEqual(seen["uri"], "/v2/library/app/manifests/v1")
        self.assertEqual([a.encode() if isinstance(a, str) else a for a in seen["headers"][b"accept"]],
                         accepts)
        self.assertEqual(seen["headers"][b"x-custom"], [b"a", b"b"])
        self.assertEqual(seen["headers"][b"user-agent"], [b"skopeo/1.9.3"])
        self.assertEqual(seen["headers"][b"host"], [b"registry.example:5000"])
        self.assertEqual(self.agent.urls, [(b"GET", b"http://registry.example:5000/v2/library/app/manifests/v1")])

    def test_challenge_passed_back(self):
        """When the upstream answers 401 with a Bearer challenge, the client gets
        the same status, WWW-Authenticate header and body."""
        self.registry.token = b"t0k"
        response = self.get("/v2/")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [REALM])
        self.assertIn(b"UNAUTHORIZED", self.body(response))

    def test_authorization_forwarded(self):
        """When the client sends Authorization, the upstream receives it unchanged."""
        self.registry.token = b"t0k"
        response = self.get("/v2/", headers={b"authorization": [b"Bearer t0k"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.registry.requests[0]["headers"][b"authorization"], [b"Bearer t0k"])
        self.assertEqual(response.headers.getRawHeaders(b"docker-distribution-api-version"),
                         [b"registry/2.0"])

    def test_query_kept_ns_removed(self):
        """When containerd adds ?ns=, the mirror strips it and keeps every other
        query parameter as sent."""
        response = self.get("/v2/library/app/tags/list?n=10&ns=registry.example:5000&last=a%2Fb")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.registry.requests[0]["uri"], "/v2/library/app/tags/list?n=10&last=a%2Fb")

    def test_redirect_handed_to_client(self):
        """When the upstream answers a redirect on a passthrough request, the
        client gets the redirect (status and Location), not its target."""
        self.registry.redirect_manifests = True
        response = self.get("/v2/library/app/manifests/v1")
        self.assertEqual(response.code, 307)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"https://storage.example/m"])
        self.assertEqual(len(self.agent.urls), 1)

    def test_upstream_unreachable(self):
        """When the upstream cannot be reached, the client gets 502 JSON."""
        self.agent.fail = ConnectionRefusedError("nope")
        response = self.get("/v2/")
        self.assertEqual(response.code, 502)
        self.assertEqual(self.error_of(response), "UNAVAILABLE")

    def test_upstream_timeout(self):
        """When the upstream does not answer within the header timeout, the client
        gets 504."""
        self.agent.hang = True
        d = self.client.get(MIRROR + "/v2/")
        self.pump()
        self.assertNoResult(d)
        self.clock.advance(31)
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)

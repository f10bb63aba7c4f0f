"""Tests of the mirror's access check (dragonfly.dfdaemon.access): only a
final 2xx from the registry that describes the blob lets a client have a
layer from the swarm; redirects are followed without the client's
credentials leaving the registry's origin."""
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from dragonfly.dfdaemon.access import Access, judge_final
from dragonfly.test.mirrorfakes import BLOB, DIGEST, MirrorTestMixin

AUTH = {b"authorization": [b"Bearer t0k"]}


class _Response:
    def __init__(self, code, **headers):
        self.code = code
        self.headers = Headers({k.replace("_", "-").encode(): [v.encode()]
                                for k, v in headers.items()})


class JudgeFinalTests(SynchronousTestCase):
    """The decision table for the registry's final answer."""

    def test_table(self):
        """2xx with a Content-Length (and a matching digest, if named) is access;
        a 3xx, 4xx, 5xx, a web page, another digest or no length is not."""
        n = str(len(BLOB))
        ok = judge_final(_Response(200, content_length=n), DIGEST)
        self.assertTrue(ok.allowed)
        self.assertEqual(ok.length, len(BLOB))
        self.assertTrue(judge_final(_Response(200, content_length=n, docker_content_digest=DIGEST,
                                              content_type="application/octet-stream"),
                                    DIGEST).allowed)
        for response in (_Response(302, location="https://sso.example/", content_length="0"),
                         _Response(304, content_length=n), _Response(401, content_length=n),
                         _Response(403, content_length=n), _Response(404, content_length=n),
                         _Response(500, content_length=n),
                         _Response(200, content_length=n, content_type="text/html; charset=x"),
                         _Response(200, content_length=n, docker_content_digest="sha256:" + "0" * 64),
                         _Response(200), _Response(200, content_length="-1")):
            self.assertFalse(judge_final(response, DIGEST).allowed, response.code)

    def test_matches(self):
        """An allowed answer matches only the blob's own length."""
        self.assertTrue(Access(True, 5).matches(5))
        self.assertFalse(Access(True, 5).matches(6))
        self.assertFalse(Access(False, 5).matches(5))


class MirrorAccessTests(MirrorTestMixin, SynchronousTestCase):

    def test_login_redirect_grants_nothing(self):
        """A registry behind single sign-on answers anonymous requests with 302
        to a login page (which answers 200): after an authorised pull, an
        anonymous pull gets the 302 and no blob byte, and the swarm is not asked."""
        self.registry.token = b"t0k"
        self.registry.login_redirect = True
        response = self.get(f"/v2/library/app/blobs/{DIGEST}", headers=AUTH)
        self.assertEqual(self.body(response), BLOB)
        self.assertEqual(len(self.peer.downloads), 1)
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"),
                         [b"https://sso.example/login?next=/v2/"])
        self.assertNotIn(BLOB[:20], self.body(response))
        self.assertEqual(len(self.peer.downloads), 1)

    def test_blob_store_redirect_followed_without_credentials(self):
        """A registry that redirects blobs to a store's signed URL still grants
        access (the store's final 200), and the client's Authorization does not
        go to the store."""
        self.registry.token = b"t0k"
        self.registry.blob_redirect = (307, b"https://storage.example/sig/blobs/")
        response = self.get(f"/v2/library/app/blobs/{DIGEST}",
                            headers=dict(AUTH, cookie=[b"session=1"]))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.body(response), BLOB)
        hops = [url for method, url in self.agent.urls if method == b"HEAD"]
        self.assertEqual(hops[-1], b"https://storage.example/sig/blobs/" + DIGEST.encode())
        store = self.registry.requests[-1]
        self.assertNotIn(b"authorization", store["headers"])
        self.assertNotIn(b"cookie", store["headers"])
        self.assertEqual(self.registry.requests[0]["headers"][b"authorization"], [b"Bearer t0k"])

    def test_length_mismatch_refused(self):
        """When the registry's final 2xx gives another length than the blob's,
        the client gets the registry's answer, not the swarm's bytes."""
        self.registry.blob_redirect = (302, b"https://storage.example/x/blobs/")
        self.registry.blobs[DIGEST] = b"not the layer"
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertNotEqual(self.body(response), BLOB)
        self.assertEqual(response.code, 302)

    def test_redirect_loop_refused(self):
        """A redirect loop is a refusal, after a bounded number of hops."""
        self.registry.blob_redirect = (302, b"/v2/library/app/blobs/")
        response = self.get(f"/v2/library/app/blobs/{DIGEST}")
        self.assertEqual(response.code, 302)
        self.assertEqual(self.peer.downloads, [])
        self.assertLessEqual(len([m for m, _ in self.agent.urls if m == b"HEAD"]), 6)

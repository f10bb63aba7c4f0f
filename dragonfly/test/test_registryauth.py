"""Image preheat from a registry with token auth (dragonfly.supernode.registryauth),
through the supernode API with a StubTreq registry and token service."""
import base64
import hashlib
import json
import os
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.origin import OriginError, OriginRefused
from dragonfly.supernode.registryauth import RegistryAuth, parse_challenge
from dragonfly.test.test_supernode_api import PEER, APITestBase

BASIC = "Basic " + base64.b64encode(b"alice:wonderland").decode()
REALM = "https://auth.test/token"
CHALLENGE = ('Bearer realm="https://auth.test/token",service="reg.test",'
             'scope="repository:lib/app:pull,push"')
LAYER = os.urandom(5000)
CONFIG = b'{"architecture":"amd64"}'
LD = "sha256:" + hashlib.sha256(LAYER).hexdigest()
CD = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"digest": CD, "size": len(CONFIG)},
    "layers": [{"digest": LD, "size": len(LAYER)}]}).encode()
IMAGE_PATHS = ("/v2/lib/app/manifests/1.0", f"/v2/lib/app/blobs/{LD}", f"/v2/lib/app/blobs/{CD}")


class ChallengeTests(SynchronousTestCase):
    def test_quoted_commas_and_escapes(self):
        """Quoted values keep their commas and lose their escapes; the scheme
        and names come back in lower case."""
        self.assertEqual(parse_challenge(CHALLENGE), ("bearer", {
            "realm": REALM, "service": "reg.test", "scope": "repository:lib/app:pull,push"}))
        self.assertEqual(parse_challenge('BEARER Realm="a\\"b", error=insufficient_scope'),
                         ("bearer", {"realm": 'a"b', "error": "insufficient_scope"}))
        self.assertEqual(parse_challenge('Basic realm="Registry Realm"'),
                         ("basic", {"realm": "Registry Realm"}))
        self.assertEqual(parse_challenge("Bearer"), ("bearer", {}))

    def test_bad_challenges(self):
        for bad in ("", "   ", 'Bearer realm="open', "Bearer =x", "Bearer realm=a b=c",
                    "Be@rer realm=x", None):
            self.assertRaises(ValueError, parse_challenge, bad)


class GuardedRealmTests(SynchronousTestCase):
    def test_refused_at_connect(self):
        """A realm the origin client's connect-time guard refuses (no egress
        check first) fails the exchange with the refusal, naming the realm."""
        asked = []

        class Origin:
            def get(self, url, headers):
                asked.append((url, headers))
                return fail(OriginRefused("origin not allowed: 127.0.0.1:5001 is loopback"))
        auth = RegistryAuth(Origin(), "https://reg.test", "lib/app", {"Authorization": BASIC})
        error = OriginError(401)
        error.challenge = CHALLENGE
        f = self.failureResultOf(Deferred.fromCoroutine(auth.answer(error)), OriginRefused)
        self.assertIn("origin not allowed: 127.0.0.1:5001", f.value.message)
        self.assertIn("token realm https://auth.test/token", f.value.message)
        self.assertEqual(asked, [(REALM + "?service=reg.test&scope=repository%3Alib%2Fapp%3Apull",
                                  {"Accept": "application/json", "Authorization": BASIC})])


class TokenPreheatTests(APITestBase):
    """A registry that wants a Bearer token from its token service (the realm),
    which wants Basic credentials (alice) for a pull token."""

    def setUp(self):
        APITestBase.setUp(self)
        self.tokens = ["tok-1", "tok-2", "tok-3"]
        self.valid = set()
        self.token_answer = lambda token: {"token": token}
        self.issued = []
        self.origin.add("/v2/lib/app/manifests/1.0", MANIFEST)
        self.origin.add(f"/v2/lib/app/blobs/{LD}", LAYER)
        self.origin.add(f"/v2/lib/app/blobs/{CD}", CONFIG)
        for path in IMAGE_PATHS:
            self.origin.auth[path] = self._registry_auth
            self.origin.challenge[path] = CHALLENGE
        self.origin.auth["/token"] = self._token_auth
        self.origin.files["/token"] = b""

    def _registry_auth(self, headers, query):
        auth = headers.get("authorization", "")
        return None if auth.startswith("Bearer ") and auth[7:] in self.valid else 401

    def _token_auth(self, headers, query):
        if headers.get("authorization") != BASIC:
            return 401
        token = self.tokens.pop(0)
        self.issued.append(parse_qs(query))
        self.valid.add(token)
        self.origin.files["/token"] = json.dumps(self.token_answer(token)).encode()
        return None

    def preheat(self, headers=None, image="reg.test:5000/lib/app:1.0", **extra):
        body = dict({"image": image, "headers": {"Authorization": BASIC} if headers is None
                     else headers}, **extra)
        self.call("POST", "/api/v1/preheat", body, status=202)
        return self.call("GET", "/api/v1/preheat/job0")

    def registry_requests(self):
        return [r for r in self.origin.requests if r[1] != "/token"]

    def test_token_exchange(self):
        """A 401 with a Bearer challenge: the realm is asked with the service
        and a pull scope for the repository and the caller's Basic credentials;
        the manifest and both blobs then go with the token, and the registry
        never sees the Basic credentials."""
        job = self.preheat()
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(self.issued,
                         [{"service": ["reg.test"], "scope": ["repository:lib/app:pull"]}])
        self.assertEqual([r[2].get("authorization") for r in self.origin.gets("/token")], [BASIC])
        first, *rest = self.registry_requests()
        self.assertNotIn("authorization", first[2])
        self.assertEqual({r[2].get("authorization") for r in rest}, {"Bearer tok-1"})
        self.assertEqual({r[1] for r in rest}, set(IMAGE_PATHS))
        self.assertTrue(self.store.get(LD).is_complete)
        self.assertTrue(self.store.get(CD).is_complete)
        self.assertNotIn("tok-1", json.dumps(job))

    def test_access_token(self):
        """A token service that answers only C{access_token} (OAuth style) works too."""
        self.token_answer = lambda token: {"access_token": token, "expires_in": 60}
        self.assertEqual(self.preheat()["state"], "done")

    def test_anonymous_token(self):
        """Without credentials the realm is asked anonymously (Docker Hub's public images)."""
        self.origin.auth["/token"] = lambda headers, query: (
            self._token_auth(dict(headers, authorization=BASIC), query)
            if "authorization" not in headers else 401)
        job = self.preheat(headers={})
        self.assertEqual(job["state"], "done", job)
        self.assertNotIn("authorization", self.origin.gets("/token")[0][2])

    def test_token_expiring_mid_preheat(self):
        """When the blobs refuse the token the manifest was fetched with, the
        exchange is made once more and the blobs are fetched with the new token;
        a second refusal is the job's failure."""
        original = self._registry_auth

        def blobs_refuse_first_token(headers, query):
            if headers.get("authorization") == "Bearer tok-1" and self.origin.requests[-1][1] \
                    != "/v2/lib/app/manifests/1.0":
                return 401
            return original(headers, query)
        for path in IMAGE_PATHS:
            self.origin.auth[path] = blobs_refuse_first_token
        job = self.preheat()
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(len(self.issued), 2)
        self.assertEqual({t["state"] for t in job["tasks"]}, {"done"})
        self.assertEqual(self.origin.gets(f"/v2/lib/app/blobs/{LD}")[-1][2]["authorization"],
                         "Bearer tok-2")

    def test_token_refused_twice_fails(self):
        """A blob that keeps refusing fresh tokens: two exchanges, then the job fails with 401."""
        self.origin.auth[f"/v2/lib/app/blobs/{LD}"] = lambda headers, query: 401
        job = self.preheat()
        self.assertEqual((job["state"], job["origin_status"]), ("failed", 401), job)
        self.assertEqual(len(self.issued), 2)

    def test_wrong_credentials(self):
        """The token service's 401 is the job's failure, with a message saying so."""
        job = self.preheat(headers={"Authorization": "Basic " + base64.b64encode(b"a:b").decode()})
        self.assertEqual((job["state"], job["origin_status"]), ("failed", 401), job)
        self.assertIn("registry token service https://auth.test/token answered 401", job["error"])
        self.assertIn("credentials", job["error"])
        self.assertEqual(self.issued, [])

    def test_token_service_errors(self):
        """A 500 and an answer without a token are clear failures."""
        self.origin.status["/token"] = 503
        job = self.preheat()
        self.assertEqual(job["state"], "failed")
        self.assertIn("registry token service https://auth.test/token answered 503", job["error"])
        del self.origin.status["/token"]
        self.token_answer = lambda token: {"nothing": token}
        self.call("POST", "/api/v1/preheat", {"image": "reg.test:5000/lib/app:1.0",
                                              "headers": {"Authorization": BASIC}}, status=202)
        job = self.call("GET", "/api/v1/preheat/job1")
        self.assertEqual(job["state"], "failed")
        self.assertIn("answered no token", job["error"])

    def test_challenge_without_realm(self):
        for path in IMAGE_PATHS:
            self.origin.challenge[path] = 'Bearer service="reg.test"'
        job = self.preheat()
        self.assertEqual((job["state"], job["origin_status"]), ("failed", 401))
        self.assertIn("names no realm", job["error"])
        self.assertEqual(self.origin.gets("/token"), [])

    def test_plain_http_realm_of_an_https_registry(self):
        """An https registry naming an http realm: no credentials go there."""
        for path in IMAGE_PATHS:
            self.origin.challenge[path] = 'Bearer realm="http://auth.test/token",service="s"'
        job = self.preheat()
        self.assertEqual(job["state"], "failed")
        self.assertIn("plain http while the registry is https", job["error"])
        self.assertEqual(self.origin.gets("/token"), [])
        # A plain-http registry (--insecure) may have a plain-http realm.
        self.call("POST", "/api/v1/preheat", {"image": "reg.test:5000/lib/app:1.0",
                                              "insecure": True,
                                              "headers": {"Authorization": BASIC}}, status=202)
        self.assertEqual(self.call("GET", "/api/v1/preheat/job1")["state"], "done")

    def test_realm_refused_by_egress(self):
        """The realm comes from the registry: the egress policy is asked about it,
        and its refusal is the job's failure; nothing is sent there."""
        class Egress:
            def check_url(self, url):
                if "auth.test" in url:
                    return fail(OriginRefused("origin not allowed: auth.test (10.0.0.1) is "
                                              "denied by --deny-origin 10.0.0.0/8"))
                return succeed(None)
        self.preheater.egress = Egress()
        job = self.preheat()
        self.assertEqual(job["state"], "failed")
        self.assertIn("origin not allowed: auth.test", job["error"])
        self.assertIn("token realm https://auth.test/token", job["error"])
        self.assertEqual(self.origin.gets("/token"), [])

    def test_callers_own_bearer_token_is_kept(self):
        """A caller's own Bearer token is sent as it is, and no exchange is made."""
        self.valid.add("pasted")
        job = self.preheat(headers={"Authorization": "Bearer pasted"})
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(self.origin.gets("/token"), [])
        self.valid.discard("pasted")
        self.store.remove(LD)
        self.call("POST", "/api/v1/preheat", {"image": "reg.test:5000/lib/app:1.0",
                                              "headers": {"Authorization": "Bearer pasted"}},
                  status=202)
        job = self.call("GET", "/api/v1/preheat/job1")
        self.assertEqual((job["state"], job["origin_status"]), ("failed", 401))

    def test_basic_registry(self):
        """A registry that asks for Basic itself (WWW-Authenticate: Basic) gets
        the caller's credentials on the second request."""
        for path in IMAGE_PATHS:
            self.origin.auth[path] = lambda headers, query: (
                None if headers.get("authorization") == BASIC else 401)
            self.origin.challenge[path] = 'Basic realm="Registry Realm"'
        job = self.preheat()
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(self.origin.gets("/token"), [])

    def test_preheated_blob_is_private(self):
        """A blob preheated with a token is private content: a registration
        whose own request the registry refuses gets the registry's 401, one whose
        token the registry accepts is served from the cache."""
        self.assertEqual(self.preheat()["state"], "done")
        url = f"https://reg.test:5000/v2/lib/app/blobs/{LD}"
        gets_before = len(self.origin.gets(f"/v2/lib/app/blobs/{LD}"))
        r = self.request("POST", "/api/v1/tasks", {
            "task_id": LD, "digest": LD, "url": url, "headers": {}, "peer": PEER})
        self.assertEqual(r.code, 502, self.json(r))
        self.assertEqual(self.json(r).get("origin_status"), 401)
        obj = self.call("POST", "/api/v1/tasks", {
            "task_id": LD, "digest": LD, "url": url, "headers": {"Authorization": "Bearer tok-1"},
            "peer": PEER})
        self.assertEqual(obj["length"], len(LAYER))
        self.assertEqual(len(self.origin.gets(f"/v2/lib/app/blobs/{LD}")), gets_before,
                         "the registration fetched the blob again")

    def test_failure_message_has_no_credentials(self):
        """Neither the Basic credentials nor a token appear in the job's answer."""
        self.origin.auth[f"/v2/lib/app/blobs/{LD}"] = lambda headers, query: 403
        job = self.preheat()
        self.assertEqual(job["state"], "failed")
        text = json.dumps(job)
        self.assertNotIn(BASIC.split()[1], text)
        self.assertNotIn("tok-1", text)


    def test_preheat_makes_a_public_task_private_again(self):
        """A blob once fetched by a public registration, dropped from the cache,
        then preheated with a token counts as private again: a registration
        without credentials gets the registry's 401."""
        self.preheater.private_access = self.api.private_access
        url = f"https://reg.test:5000/v2/lib/app/blobs/{LD}"
        self.api.private_access.fetched_by.record(LD, False)   # as a public fetch left it
        self.assertEqual(self.preheat()["state"], "done")
        r = self.request("POST", "/api/v1/tasks", {
            "task_id": LD, "digest": LD, "url": url, "headers": {}, "peer": PEER})
        self.assertEqual(r.code, 502, self.json(r))

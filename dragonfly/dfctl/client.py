"""dfctl's HTTP: JSON calls to a peer's local API or a supernode, standard library only.

One blocking C{http.client} connection per call, like dfget's daemon path:
dfctl is a short-lived command, and importing Twisted would cost more than
its few requests. L{Endpoint} speaks to one base URL (http, or https with an
optional client certificate for the mTLS fleets) and raises L{CtlError} with
one readable line for every failure (unreachable, non-JSON, a 4xx/5xx
answer, whose C{{"error"}} text it carries).
"""
import http.client
import json
import ssl
from urllib.parse import urlsplit

__all__ = ["CtlError", "Endpoint", "Answer", "MAX_BODY"]

#: Longest answer body read (a task list of thousands of tasks fits).
MAX_BODY = 16 << 20
TIMEOUT = 10.0


class CtlError(Exception):
    """A failure to report as C{dfctl: error: <message>} (exit status C{code})."""

    def __init__(self, message, code=1):
        Exception.__init__(self, message)
        self.code = code


class Answer:
    """One HTTP answer: C{status}, C{headers} (lower-case names), C{body} bytes."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise CtlError(f"the server sent no JSON (HTTP {self.status})")

    def error(self):
        """The C{{"error"}} text of a JSON error answer, or the status line."""
        try:
            text = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            text = None
        return str(text) if text else f"HTTP {self.status}"


class Endpoint:
    """The API at C{base} (C{http://host:port} or C{https://...})."""

    def __init__(self, base, tls=None, timeout=TIMEOUT):
        if "://" not in base:
            base = ("https://" if tls else "http://") + base
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CtlError(f"not an http(s) address: {base!r}", 2)
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise CtlError(f"bad port in {base!r}", 2)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.tls = tls
        self.timeout = timeout

    def __repr__(self):
        return self.base

    def _connection(self):
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.tls or ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def call(self, method, path, body=None):
        """The L{Answer} to C{method path} (C{body} sent as JSON), whatever its status."""
        conn = self._connection()
        headers = {"User-Agent": "dfctl", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as e:
            raise CtlError(f"cannot reach {self.base}: {getattr(e, 'strerror', None) or e}")
        finally:
            conn.close()
        if len(raw) > MAX_BODY:
            raise CtlError(f"{self.base} sent an answer over {MAX_BODY} bytes")
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, raw)

    def json(self, method, path, body=None, ok=(200,)):
        """The decoded JSON answer; L{CtlError} unless its status is in C{ok}."""
        answer = self.call(method, path, body)
        if answer.status not in ok:
            raise CtlError(f"{self.base}{path}: {answer.error()}")
        return answer.json()


def tls_context(cert=None, key=None, ca=None):
    """An SSL context for C{--tls-cert/--tls-key/--tls-ca}, or None without them."""
    if not (cert or key or ca):
        return None
    if not (cert and key and ca):
        raise CtlError("--tls-cert, --tls-key and --tls-ca go together", 2)
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise CtlError(f"cannot load the TLS files: {e}", 2)
    return ctx

"""nginx as an origin: the one configuration the integration tests and the
benches share (standard library only, so ``bench/`` can import it).

nginx runs in the foreground as one process (``master_process off``: no
worker is left behind when its parent is killed), with its pid, logs and
temp paths under one directory. The access log is one JSON object per
request (``method``, ``uri`` with its query, ``status``, ``bytes`` = body
bytes sent, ``range``, ``ua``, ``client``, ``time``), written when the
request ends, so the bytes an origin sent can be counted exactly.

nginx cannot listen on port 0: the caller picks a free port and starts again
on another one when nginx says it could not bind (L{BIND_FAILED} in its error
log).
"""
import json
import os
import shutil

__all__ = ["BIND_FAILED", "LOG_FORMAT", "binary", "config", "origin_locations",
           "read_access_log", "ssi_verbatim"]

#: What nginx's error log says when its port was taken meanwhile.
BIND_FAILED = "could not bind()"

LOG_FORMAT = ("escape=json '{\"method\":\"$request_method\",\"uri\":\"$request_uri\","
              "\"status\":$status,\"bytes\":$body_bytes_sent,\"range\":\"$http_range\","
              "\"ua\":\"$http_user_agent\",\"client\":\"$remote_addr\",\"time\":$request_time}'")

CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format origin {log_format};
    access_log {tmp}/access.log origin;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/octet-stream bin; text/html html; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    server {{
        listen {host}:{port};
        root {root};
        {limit}
{locations}
    }}
}}
"""


def binary():
    """The nginx executable, or None when it is not installed."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def origin_locations(root, auth_token="x"):
    """The test origin's paths: every file under ``root`` at ``/NAME`` (Range,
    ETag and If-None-Match -> 304, Last-Modified, a Content-Length);
    ``/auth/NAME`` only with ``Authorization: Bearer <auth_token>`` (401 with a
    JSON error otherwise); ``/chunked/NAME`` through the SSI filter, which
    drops Content-Length, ETag and Last-Modified: a body sent chunked, its
    length unknown until the end. The filter passes a file unchanged only when
    it holds no ``<`` (see L{ssi_verbatim})."""
    return f"""\
        location / {{ }}
        location /auth/ {{
            if ($http_authorization != "Bearer {auth_token}") {{
                add_header WWW-Authenticate 'Bearer realm="origin"' always;
                return 401 '{{"error": "authorization required"}}';
            }}
            alias {root}/;
        }}
        location /chunked/ {{ alias {root}/; ssi on; ssi_types *; }}
"""


def ssi_verbatim(data):
    """``data`` with every ``<`` made ``>``: bytes nginx's SSI filter
    (``/chunked/``) sends exactly as they are.

    The filter parses every ``<``: ``<!--#...-->`` is a command, replaced by
    its output or an error message, and a body that ends inside ``<!--``
    (``<``, ``<!``, ``<!-``, ``<!--`` as its last bytes) loses those bytes,
    sent as a well-formed chunked body that is short. One random file in 256
    ends in ``<``: it would come through ``/chunked/`` a byte short."""
    return data.replace(b"<", b">")


def config(tmp, host, port, root, locations="        location / { }\n", limit_rate=0):
    """nginx.conf text: serve ``root`` on ``host:port``; ``locations``: the
    server's location blocks; ``limit_rate``: bytes per second per response
    (0 = unlimited)."""
    limit = f"limit_rate {int(limit_rate)};" if limit_rate else ""
    return CONF.format(tmp=tmp, host=host, port=port, root=root, limit=limit,
                       locations=locations, log_format=LOG_FORMAT)


def read_access_log(path, since=0):
    """The requests logged in ``path`` after byte offset ``since``: a list of
    dicts (see the module doc); a line cut short is left out."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out

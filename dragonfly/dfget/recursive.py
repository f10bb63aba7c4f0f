"""dfget --recursive: walk an HTTP directory listing, one P2P task per file.

The listing (nginx or Apache autoindex HTML, or nginx's JSON autoindex) is
read straight from the origin with C{http.client} (it is small and
per-directory; the files are what the swarm shares). Every entry becomes a
URL under the starting directory; files that pass C{--accept-regex} /
C{--reject-regex} (matched against the whole URL) are downloaded one by one
through the peer daemon, each as its own task, into the output directory at
the same relative path; subdirectories are walked up to C{--level} deep.

An entry is refused, with one warning line and a non-zero exit at the end,
when its path would leave the output directory or the starting URL: C{..}
segments (also percent-encoded), absolute paths, other hosts, backslashes,
NUL. The usual parent-directory link (C{../}) and sort links (C{?C=N;O=D})
are navigation, skipped silently.

Standard library only (the daemon path must not load Twisted).
"""
import html.parser
import http.client
import json
import os
import re
from urllib.parse import quote, unquote, urljoin, urlsplit

from dragonfly.dfget.options import DfgetError
from dragonfly.taskid import task_id_for_url

__all__ = ["parse_listing", "relative_path", "walk", "run", "Refused"]

MAX_LISTING = 8 << 20
MAX_ENTRIES = 100_000
MAX_REDIRECTS = 5
TIMEOUT = 30.0


class Refused(ValueError):
    """An entry whose path would escape the output directory or the start URL."""


class _Links(html.parser.HTMLParser):
    def __init__(self):
        html.parser.HTMLParser.__init__(self, convert_charrefs=True)
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value is not None:
                    self.hrefs.append(value)


def parse_listing(body, content_type):
    """The hrefs of a directory listing: JSON autoindex entries (directories get
    a trailing slash) or the C{<a href>}s of an HTML page, in page order."""
    text = body.decode("utf-8", "replace")
    if "json" in (content_type or "").lower() or text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except ValueError:
            raise DfgetError("the directory listing is not valid JSON")
        if not isinstance(entries, list):
            raise DfgetError("the JSON directory listing is not a list")
        out = []
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                slash = "/" if e.get("type") == "directory" else ""
                out.append(quote(e["name"], safe="") + slash)
        return out
    links = _Links()
    links.feed(text)
    links.close()
    return links.hrefs


def relative_path(base, href):
    """(absolute URL, relative path) of listing entry C{href} under directory URL
    C{base}; None for navigation links; L{Refused} for an escape."""
    if not href or href.startswith(("?", "#")) or href in ("../", "..", "./", "."):
        return None
    if any(c in href for c in "\\\0\r\n"):
        raise Refused(f"refusing listing entry {href!r}: bad characters")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/"):
        target = urljoin(base, href)
        if base.startswith(target.split("?", 1)[0]):
            return None   # an absolute link up the tree: Apache's "Parent Directory"
        if not target.startswith(base):
            raise Refused(f"refusing listing entry {href!r}: outside {base}")
        href = target[len(base):]
        parts = urlsplit(href)
    if parts.query or parts.fragment:
        return None
    segments = parts.path.split("/")
    decoded = [unquote(s) for s in segments]
    is_dir = parts.path.endswith("/")
    names = decoded[:-1] if is_dir else decoded
    if not names or any(n in ("", ".", "..") or "/" in n or "\\" in n or "\0" in n
                        for n in names):
        raise Refused(f"refusing listing entry {href!r}: escapes the output directory")
    url = base + "/".join(quote(n, safe="") for n in names) + ("/" if is_dir else "")
    return url, "/".join(names) + ("/" if is_dir else "")


def _fetch(url, headers, redirects=MAX_REDIRECTS):
    """(body, content type, final URL) of a listing page."""
    for _ in range(redirects + 1):
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=TIMEOUT)
        path = parts.path or "/"
        try:
            conn.request("GET", path + (f"?{parts.query}" if parts.query else ""),
                         headers=dict(headers, **{"User-Agent": "dfget",
                                                  "Accept": "text/html, application/json"}))
            r = conn.getresponse()
            body = r.read(MAX_LISTING + 1)
        except (OSError, http.client.HTTPException) as e:
            raise DfgetError(f"cannot read the listing {url}: {getattr(e, 'strerror', None) or e}")
        finally:
            conn.close()
        if r.status in (301, 302, 303, 307, 308) and r.getheader("location"):
            nxt = urljoin(url, r.getheader("location"))
            if urlsplit(nxt).netloc != parts.netloc:
                raise DfgetError(f"the listing {url} redirects to another host")
            url = nxt
            continue
        if r.status != 200:
            raise DfgetError(f"the listing {url} answered HTTP {r.status}")
        if len(body) > MAX_LISTING:
            raise DfgetError(f"the listing {url} is over {MAX_LISTING} bytes")
        return body, r.getheader("content-type") or "", url
    raise DfgetError(f"the listing {url} redirects too often")


def walk(start, headers, level, accept, reject, warn, fetch=None):
    """Yield (URL, relative path) of every matching file under directory URL C{start}.

    C{level}: how many directory levels deep (the start is level 1; 0 = no
    limit). C{warn(text)} is called for each refused entry.
    """
    fetch = fetch or _fetch
    if not start.endswith("/"):
        start += "/"
    queue = [(start, 1)]
    seen = {start}
    count = 0
    while queue:
        base, depth = queue.pop(0)
        body, ctype, final = fetch(base, headers)
        if final != base and final.rstrip("/") != base.rstrip("/"):
            raise DfgetError(f"the listing {base} moved to {final}")
        for href in parse_listing(body, ctype):
            try:
                entry = relative_path(base, href)
            except Refused as e:
                warn(str(e))
                continue
            if entry is None:
                continue
            url, rel = entry
            count += 1
            if count > MAX_ENTRIES:
                raise DfgetError(f"more than {MAX_ENTRIES} listing entries")
            if rel.endswith("/"):
                if url not in seen and (level == 0 or depth < level):
                    seen.add(url)
                    queue.append((url, depth + 1))
                continue
            if accept is not None and not accept.search(url):
                continue
            if reject is not None and reject.search(url):
                continue
            yield url, url[len(start):]


def run(opts, download_one, stderr, log=lambda msg: None):
    """Download the tree under C{opts["url"]} into C{opts["output"]} (default: the
    start directory's name). C{download_one(file_opts, out)} fetches one file.
    Returns the number of files; raises L{DfgetError} if any was refused or failed."""
    start = opts["url"] if opts["url"].endswith("/") else opts["url"] + "/"
    root = os.path.abspath(opts["output"] or (unquote(urlsplit(start).path.rstrip("/")
                                                      .rsplit("/", 1)[-1]) or "."))
    refused = []

    def warn(text):
        refused.append(text)
        stderr.write(f"dfget: warning: {text}\n")
        stderr.flush()

    accept = re.compile(opts["accept-regex"]) if opts["accept-regex"] else None
    reject = re.compile(opts["reject-regex"]) if opts["reject-regex"] else None
    n = 0
    for url, rel in walk(start, opts["header_map"], opts["level_n"], accept, reject, warn):
        out = os.path.join(root, *unquote(rel).split("/"))
        if os.path.commonpath([root, os.path.abspath(out)]) != root:
            warn(f"refusing {rel!r}: escapes the output directory")
            continue
        os.makedirs(os.path.dirname(out), exist_ok=True)
        file_opts = dict(opts, url=url, output=out, digest_spec=None, md5=None, digest=None,
                         task_id=task_id_for_url(url, opts["filters"], opts["tag"] or ""))
        log(f"{url} -> {out}")
        download_one(file_opts, out)
        n += 1
    if refused:
        raise DfgetError(f"{len(refused)} listing entr{'y' if len(refused) == 1 else 'ies'} "
                         f"refused (see the warnings above); {n} files downloaded")
    return n

"""The preheat messages: a file or an image to warm into the supernode's cache,
and the state of that job.

Part of the one peer<->supernode schema (L{dragonfly.control.messages}): the
supernode API and its preheater parse requests and build answers with these
classes, and C{dfctl} reads the answers with them.
"""
import re
from dataclasses import dataclass

from dragonfly.control.fields import (
    MAX_LENGTH, MessageError, check_headers, check_task_id, check_url, object_of,
    optional_integer, string, task_identity)
from dragonfly.control.messages import _Message
from dragonfly.redact import redact_text, redact_url
from dragonfly.taskid import is_oci_digest

__all__ = ["PreheatRequest", "PreheatStatus", "parse_image_reference", "MANIFEST_URL_RE"]

MANIFEST_URL_RE = re.compile(r"\A(https?://[^/]+)/v2/(.+)/manifests/([^/]+)\Z")
_NAME_RE = re.compile(r"\A[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")

def parse_image_reference(ref, insecure=False):
    """'reg:5000/name:tag' -> (registry base URL, name, reference).

    The registry part is required (a supernode has no default registry).
    """
    if not isinstance(ref, str) or not ref or len(ref) > 1024:
        raise ValueError("image must be a string like registry.example:5000/name:tag")
    first, sep, rest = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        raise ValueError("image reference must start with its registry host (REG[:PORT]/NAME:TAG)")
    if "@" in rest:
        name, _, reference = rest.partition("@")
        if not is_oci_digest(reference):
            raise ValueError(f"bad digest in {ref!r}")
    else:
        name, colon, reference = rest.rpartition(":")
        if not colon or "/" in reference:
            name, reference = rest, "latest"
        if not _TAG_RE.match(reference):
            raise ValueError(f"bad tag in {ref!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"bad repository name in {ref!r}")
    scheme = "http" if insecure else "https"
    return f"{scheme}://{first}", name, reference


def _image_url(obj):
    if "image" in obj:
        try:
            base, name, ref = parse_image_reference(obj["image"], obj.get("insecure") is True)
        except ValueError as e:
            raise MessageError("image", f"bad image: {e}")
        return f"{base}/v2/{name}/manifests/{ref}"
    url = check_url(obj.get("url"))
    if not MANIFEST_URL_RE.match(url):
        raise MessageError("url", "an image url must look like https://REG/v2/NAME/manifests/REF")
    return url


@dataclass(frozen=True)
class PreheatRequest(_Message):
    """C{POST /api/v1/preheat}, normalised: a file (C{kind} "file", its C{task_id}
    given or derived from the URL, C{filter} and C{tag} like dfget) or an image
    (C{kind} "image", C{url} its manifest's, from C{image} "REG/NAME:TAG" or given)."""

    kind: str
    url: str
    headers: dict
    task_id: str = None
    platform: str = "linux/amd64"
    redirected: bool = False

    def to_json(self):
        out = {"type": self.kind, "url": self.url, "headers": dict(self.headers)}
        if self.kind == "file":
            out["task_id"] = self.task_id
        else:
            out["platform"] = self.platform
        if self.redirected:
            out["redirected"] = True
        return out

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a preheat request")
        headers = check_headers(obj.get("headers"))
        kind = "image" if "image" in obj else obj.get("type", "file")
        redirected = obj.get("redirected") is True
        if kind == "file":
            url = check_url(obj.get("url"))
            return cls("file", url, headers, task_identity(obj, url).task_id,
                       redirected=redirected)
        if kind != "image":
            raise MessageError("type", 'type must be "file" or "image"')
        platform = obj.get("platform", "linux/amd64")
        if not isinstance(platform, str) or len(platform) > 256 or platform.count("/") not in (1, 2):
            raise MessageError("platform", "platform must look like os/arch[/variant]")
        return cls("image", _image_url(obj), headers, None, platform, redirected)


@dataclass(frozen=True)
class PreheatStatus(_Message):
    """A preheat job: the 202 answer to a preheat and C{GET /api/v1/preheat/<id>}.

    C{tasks} (image jobs only) lists C{{"task_id", "url", "state", ...}} per blob.
    """

    id: str
    state: str
    type: str
    url: str
    created: float
    task_id: str = None
    length: int = None
    tasks: list = None
    finished: float = None
    error: str = None
    origin_status: int = None

    def to_json(self):
        out = {"id": self.id, "state": self.state, "type": self.type,
               "url": redact_url(self.url), "created": self.created}
        for name in ("task_id", "length", "tasks", "finished", "error", "origin_status"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name == "tasks" else value
        if self.tasks is not None:
            out["tasks"] = [dict(t, url=redact_url(t["url"])) if t.get("url") else dict(t)
                            for t in self.tasks]
        if self.error is not None:
            out["error"] = redact_text(self.error)
        return out

    @classmethod
    def parse(cls, obj):
        obj = object_of(obj, "a preheat job")
        tasks = obj.get("tasks")
        if tasks is not None and (not isinstance(tasks, list)
                                  or not all(isinstance(t, dict) for t in tasks)):
            raise MessageError("tasks", "tasks must be a list of objects")
        times = {}
        for name in ("created", "finished"):
            value = obj.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise MessageError(name, f"{name} must be a number")
            times[name] = value
        if times["created"] is None:
            raise MessageError("created", "created must be a number")
        task_id = obj.get("task_id")
        return cls(string(obj.get("id"), "id", 128), string(obj.get("state"), "state", 64),
                   string(obj.get("type"), "type", 64), string(obj.get("url"), "url"), times["created"],
                   None if task_id is None else check_task_id(task_id),
                   optional_integer(obj, "length", 0, MAX_LENGTH), tasks, times["finished"],
                   string(obj.get("error"), "error", 1 << 16, optional=True),
                   optional_integer(obj, "origin_status", 100, 599))

"""dfctl's supernode commands: C{preheat} and C{cluster} (standard library only).

C{preheat} posts C{/api/v1/preheat} to the first supernode that answers,
follows the owner redirect of a clustered supernode (the task's owner runs
the job), and with C{--wait} polls C{/api/v1/preheat/<id>} there until the
job is done or failed. C{cluster} asks every given supernode, and every
member they name, for C{/healthz} and C{/metrics}. Each returns
C{(exit status, JSON result, text)} for L{dragonfly.dfctl.cli}.
"""
import re
from urllib.parse import quote, urlsplit

from dragonfly.dfctl.client import CtlError, Endpoint

__all__ = ["preheat", "preheat_body", "cluster_report", "POLL_INTERVAL"]

POLL_INTERVAL = 0.5
_HEADER_RE = re.compile(r"\A([!#$%&'*+.^_`|~0-9A-Za-z-]+):\s*(.*)\Z")
_METRICS = {"dragonfly_supernode_tasks": "tasks", "dragonfly_supernode_peers": "peers",
            "dragonfly_supernode_origin_bytes_total": "origin_bytes",
            "dragonfly_supernode_upload_bytes_total": "upload_bytes"}


def preheat_body(args):
    """The C{POST /api/v1/preheat} body for C{dfctl preheat}'s arguments."""
    headers = {}
    for h in args.header:
        m = _HEADER_RE.match(h)
        if not m or any(c in h for c in "\r\n\0"):
            raise CtlError(f"bad header {h!r} (want 'Name: value')", 2)
        headers[m.group(1)] = m.group(2).strip()
    target = args.target.strip()
    if re.match(r"\Ahttps?://", target, re.I):
        filters = [f.strip() for f in re.split(r"[,&]", args.filter) if f.strip()]
        body = {"url": target, "headers": headers}
        if filters:
            body["filter"] = filters
        if args.tag:
            body["tag"] = args.tag
        return body
    if "://" in target or not re.match(r"\A[^/\s]+/\S+\Z", target):
        raise CtlError(f"not a URL or an image reference REGISTRY/NAME[:TAG]: {target!r}", 2)
    return {"image": target, "headers": headers, "insecure": bool(args.insecure),
            "platform": args.platform}


def _start(supernodes, body):
    """(endpoint, job) of the preheat started at the first supernode that answers."""
    errors = []
    for sn in supernodes:
        try:
            answer = sn.call("POST", "/api/v1/preheat", body)
        except CtlError as e:
            errors.append(str(e))
            continue
        if answer.status == 307:
            owner = _owner(answer)
            sn = Endpoint(owner, sn.tls)
            answer = sn.call("POST", "/api/v1/preheat", dict(body, redirected=True))
        if answer.status == 202:
            return sn, answer.json()
        if answer.status >= 500:
            errors.append(f"{sn.base}: {answer.error()}")
            continue
        raise CtlError(f"preheat refused by {sn.base}: {answer.error()}")
    raise CtlError("no supernode took the preheat: " + "; ".join(errors))


def _owner(answer):
    try:
        owner = answer.json().get("owner")
    except (CtlError, AttributeError):
        owner = None
    if not owner and answer.headers.get("location"):
        owner = urlsplit(answer.headers["location"]).netloc
    if not isinstance(owner, str) or not owner:
        raise CtlError("a supernode redirected the preheat without naming the owner")
    return owner


def _progress(job):
    line = f"preheat {job.get('id')}: {job.get('state')}"
    tasks = job.get("tasks")
    if isinstance(tasks, list) and tasks:
        done = sum(1 for t in tasks if isinstance(t, dict) and t.get("state") == "done")
        line += f", {done}/{len(tasks)} blobs"
    if isinstance(job.get("length"), int):
        line += f", {job['length']} bytes"
    if job.get("error"):
        line += f": {job['error']}"
    return line


def preheat(args, supernodes, progress, sleep, clock):
    """Start a preheat (and with C{args.wait}, follow it to its end)."""
    sn, job = _start(supernodes, preheat_body(args))
    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
        raise CtlError(f"{sn.base} answered the preheat without a job id")
    deadline = clock() + args.timeout if args.wait and args.timeout > 0 else None
    last = None
    while args.wait and job.get("state") not in ("done", "failed"):
        line = _progress(job)
        if progress is not None and line != last:
            progress(line)
            last = line
        if deadline is not None and clock() >= deadline:
            raise CtlError(f"preheat {job['id']} not done after {args.timeout:g} seconds")
        sleep(POLL_INTERVAL)
        job = sn.json("GET", f"/api/v1/preheat/{quote(job['id'], safe='')}")
        if not isinstance(job, dict):
            raise CtlError(f"{sn.base} sent a malformed preheat status")
    result = {"supernode": sn.base, "job": job}
    if job.get("state") == "failed":
        return 1, result, f"dfctl: error: {_progress(job)}\n"
    return 0, result, _progress(job) + f" (on {sn.base})\n"


def _metrics(text):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in _METRICS:
            try:
                out[_METRICS[parts[0]]] = int(float(parts[1]))
            except ValueError:
                pass
    return out


def _one(sn):
    row = {"address": sn.base, "health": "down"}
    try:
        answer = sn.call("GET", "/healthz")
        health = answer.json()
    except CtlError as e:
        row["error"] = str(e)
        return row, []
    row["health"] = health.get("status", "?") if isinstance(health, dict) else "?"
    cluster = health.get("cluster") if isinstance(health, dict) else None
    members = []
    if isinstance(cluster, dict):
        row["self"] = cluster.get("self")
        row["members"] = cluster.get("members") or {}
        members = [m for m in row["members"] if isinstance(m, str)]
    try:
        m = sn.call("GET", "/metrics")
        if m.status == 200:
            row.update(_metrics(m.body.decode("utf-8", "replace")))
    except CtlError as e:
        row["error"] = str(e)
    return row, members


def cluster_report(supernodes):
    """Every supernode given, and every cluster member they name: health and counts."""
    seen, rows = set(), []
    queue = list(supernodes)
    while queue and len(seen) < 256:
        sn = queue.pop(0)
        key = urlsplit(sn.base).netloc
        if key in seen:
            continue
        seen.add(key)
        row, members = _one(sn)
        rows.append(row)
        queue.extend(Endpoint(m, sn.tls) for m in members if m not in seen)
    code = 0 if rows and all(r["health"] == "ok" for r in rows) else 1
    lines = []
    for r in rows:
        members = ", ".join(f"{k} {v}" for k, v in sorted((r.get("members") or {}).items()))
        lines.append(f"{r['address']}  {r['health']}  tasks={r.get('tasks', '?')}  "
                     f"peers={r.get('peers', '?')}  origin_bytes={r.get('origin_bytes', '?')}"
                     + (f"  members: {members}" if members else "")
                     + (f"  ({r['error']})" if r.get("error") else ""))
    return code, {"supernodes": rows}, "\n".join(lines) + "\n"

"""dfctl: the operator's command line for a dragonfly fleet (standard library only).

    dfctl task ls | rm TASK_ID...           the local peer's cache (--peer URL)
    dfctl preheat URL|IMAGE [-H ...] [--wait]   warm the supernodes' CDN
    dfctl cluster                           supernodes: members, health, task counts

Every command takes C{--json} (one JSON document on stdout, for scripts). The
peer commands talk to the peer's loopback API (L{dragonfly.peer.api}); the
others to the supernodes' API (C{--supernodes HOST:PORT,...}, with
C{--tls-cert/--tls-key/--tls-ca} for an mTLS fleet). Exit status: 0 done, 1
failed (one C{dfctl: error: ...} line), 2 bad usage.
"""
import argparse
import contextlib
import json
import re
import sys
import time

from dragonfly import __version__
from dragonfly.dfctl.client import CtlError, Endpoint, tls_context
from dragonfly.dfctl.supernodes import cluster_report, preheat
from dragonfly.units import BadValue, parse_hostports

__all__ = ["main", "run", "parser"]

DEFAULT_PEER = "http://127.0.0.1:65002"
DEFAULT_SUPERNODES = "127.0.0.1:8002"
_TASK_ID_RE = re.compile(r"\A[0-9A-Za-z:._-]{1,200}\Z")


def run():
    """Console entry point."""
    sys.exit(main(sys.argv[1:]))


def parser():
    p = argparse.ArgumentParser(
        prog="dfctl", description="Operate a dragonfly fleet: the local peer's tasks, "
                                  "preheating, the supernode cluster.")
    p.add_argument("--version", action="version", version=f"dfctl (dragonfly) {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="JSON on stdout, for scripts.")
    common.add_argument("--peer", default=DEFAULT_PEER,
                        help=f"The local peer's API (default {DEFAULT_PEER}).")
    common.add_argument("--supernodes", default=DEFAULT_SUPERNODES,
                        help=f"Supernodes HOST:PORT,... (default {DEFAULT_SUPERNODES}).")
    for flag in ("cert", "key", "ca"):
        common.add_argument(f"--tls-{flag}", metavar="FILE",
                            help="mTLS: this client's certificate, its key, the fleet's CA "
                                 "(all three; the supernodes are then reached over https).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    task = sub.add_parser("task", help="The local peer's cached tasks.")
    tsub = task.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    tsub.add_parser("ls", help="List the tasks the peer holds.", parents=[common])
    rm = tsub.add_parser("rm", help="Remove tasks from the peer's cache.", parents=[common])
    rm.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    ph = sub.add_parser("preheat", parents=[common],
                        help="Make the supernodes fetch a file or an image ahead of demand.")
    ph.add_argument("target", metavar="URL|IMAGE",
                    help="An http(s) URL, or an image reference REGISTRY/NAME[:TAG|@DIGEST].")
    ph.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                    help="Header passed to the origin (repeatable). Image from a registry "
                         "with token auth: 'Authorization: Basic BASE64(USER:PASSWORD)' goes to "
                         "its token service for a pull token (none: an anonymous token).")
    ph.add_argument("--filter", default="", help="Query parameters NAME,... left out of the "
                                                 "task id (as dfget --filter).")
    ph.add_argument("--tag", default="", help="Text added to the task id (as dfget --tag).")
    ph.add_argument("--insecure", action="store_true", help="Image: plain-HTTP registry.")
    ph.add_argument("--platform", default="linux/amd64", help="Image: os/arch to preheat.")
    ph.add_argument("--wait", action="store_true",
                    help="Show progress until the preheat is done; non-zero if it fails.")
    ph.add_argument("--timeout", type=float, default=0,
                    help="With --wait: give up after this many seconds (0 = never).")
    sub.add_parser("cluster", parents=[common],
                   help="Each supernode: health, cluster members, task and peer counts.")
    return p


def main(argv, stdout=None, stderr=None, sleep=time.sleep, clock=time.monotonic):
    """Run dfctl with C{argv} (no program name); return the exit status."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca)
        if args.command == "task":
            result, text = _task(args)
            code = 0
        elif args.command == "preheat":
            progress = None if args.json else (lambda line: _line(stderr, line))
            code, result, text = preheat(args, _supernodes(args, tls), progress, sleep, clock)
        else:
            code, result, text = cluster_report(_supernodes(args, tls))
    except CtlError as e:
        _line(stderr, "dfctl: error: " + " ".join(str(e).split())[:500])
        return e.code
    except KeyboardInterrupt:
        _line(stderr, "dfctl: error: interrupted")
        return 130
    out = stdout if args.json or code == 0 else stderr
    out.write(json.dumps(result, indent=2, sort_keys=True) + "\n" if args.json else text)
    out.flush()
    return code


def _line(stream, text):
    stream.write(text + "\n")
    stream.flush()


def _supernodes(args, tls):
    try:
        addrs = parse_hostports(args.supernodes)
    except BadValue as e:
        raise CtlError(f"--supernodes: {e}", 2)
    if not addrs:
        raise CtlError("--supernodes: no address given", 2)
    return [Endpoint(f"[{h}]:{p}" if ":" in h else f"{h}:{p}", tls) for h, p in addrs]


def _task(args):
    peer = Endpoint(args.peer)
    if args.action == "ls":
        tasks = peer.json("GET", "/api/v1/tasks").get("tasks", [])
        rows = [(t["task_id"], _size(t.get("length")),
                 "complete" if t.get("complete") else
                 ("downloading" if t.get("downloading") else "partial"), t.get("url", ""))
                for t in tasks]
        return {"tasks": tasks}, _table(("TASK", "SIZE", "STATE", "URL"), rows)
    removed = []
    for task_id in args.task_ids:
        if not _TASK_ID_RE.match(task_id):
            raise CtlError(f"not a task id: {task_id!r}", 2)
        answer = peer.call("DELETE", f"/api/v1/tasks/{task_id}")
        if answer.status != 200:
            raise CtlError(f"cannot remove {task_id}: {answer.error()}")
        removed.append(task_id)
    return {"removed": removed}, "".join(f"removed {t}\n" for t in removed)


def _size(n):
    if not isinstance(n, int):
        return "?"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _table(header, rows):
    """Rows as left-aligned columns under C{header} (the last column unpadded)."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header) - 1)]
    out = []
    for r in [header] + rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in out) + "\n"

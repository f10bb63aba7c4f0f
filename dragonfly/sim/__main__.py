"""python -m dragonfly.sim --hosts 100,1000,10000 --size 1G --link 1Gbit --json out.json

Runs the swarm simulator (dragonfly.sim.swarm) once per host count and prints
completion time (max, median) against the lower bound
max(F/u_seed, F/min(d), N*F/(u_seed + sum(u)), F/origin rate) and the seed's
and the origin's egress as multiples of the file size F. "hop bound" adds
what whole-piece store-and-forward costs at least: the last piece to leave
the seed still needs k piece times over a peer link to reach all N hosts
(holders at most 1, 3, 7, 15, ... per piece time; k = 4 for N=16), so
max/hop is how far the schedule is from a bound it could reach.

Failure scenarios: --supernodes N --kill-owner-at 0.25 kills the task's owner
when the swarm has a quarter of its bytes (peers move to the next supernode,
which fetches from the origin again); --churn 0.2 makes a fifth of the hosts
leave at random times; --slow 0.2 gives a fifth of the hosts a tenth of the
link. "done" counts hosts that completed against those that did not leave.
--join-over S staggers the joins over S seconds. --swarm-uploads 1 is the
supernode's pipelining setting (one piece per link in a swarm).
--progress prints, every 2**20 events, the transfers so far, the simulated
time and the CPU seconds to stderr (for the long runs: 100,000 hosts).
"""
import json
import re
import resource
import sys

from twisted.python import usage

from dragonfly.config import parse_size
from dragonfly.sim.swarm import simulate

_BITS_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:bit|bps|b)(?:/s)?\s*\Z")
_DECIMAL = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_link(value):
    """Bytes per second from '1Gbit' (decimal bits) or '125M' (bytes, K=1024)."""
    m = _BITS_RE.match(value)
    if m:
        rate = float(m.group(1)) * _DECIMAL[m.group(2).upper()] / 8
    else:
        rate = float(parse_size(value))
    return rate


def parse_hosts(value):
    try:
        hosts = [int(h) for h in value.split(",") if h.strip()]
    except ValueError:
        raise usage.UsageError(f"--hosts wants integers like 100,1000: {value!r}")
    if not hosts or any(h < 1 for h in hosts):
        raise usage.UsageError("--hosts wants positive integers")
    return hosts


class Options(usage.Options):
    synopsis = "python -m dragonfly.sim [options]"
    optParameters = [
        ["hosts", None, "100,1000,10000", "Comma-separated peer host counts, one run each."],
        ["size", None, "1G", "File size (K/M/G = powers of 1024)."],
        ["piece-size", None, "4M", "Piece size."],
        ["link", None, "1Gbit", "Every host's uplink and downlink (e.g. 1Gbit, 100Mbit, 125M bytes/s)."],
        ["uplink", None, None, "Peer uplink, overriding --link."],
        ["downlink", None, None, "Peer downlink, overriding --link."],
        ["seed-link", None, None, "The seed's (supernode's) uplink; default --link."],
        ["origin", None, "0", "Origin-to-seed rate; 0 = the seed already holds the file."],
        ["concurrency", None, 4, "Pieces each peer downloads at once.", int],
        ["max-uploads", None, 4, "Scheduler: uploads per peer.", int],
        ["seed-slots", None, 8, "Scheduler: uploads of the seed.", int],
        ["swarm-uploads", None, None, "Scheduler: as the supernode's --swarm-uploads (uploads "
         "per peer, and the seed's and each asker's cap in a swarm; default 4); sets "
         "--max-uploads too.", int],
        ["join-over", None, 0.0, "Hosts join at random times over this many seconds "
         "(0: all at once).", float],
        ["seed", None, 1, "Random seed.", int],
        ["supernodes", None, 1, "Supernodes in the cluster (the task's owner by rendezvous hash).", int],
        ["kill-owner-at", None, None, "Kill the task's owner when the swarm holds this share "
         "(0-1) of its bytes; needs --supernodes 2 or more.", float],
        ["churn", None, 0.0, "Share (0-1) of hosts that leave mid-download at random times.", float],
        ["slow", None, 0.0, "Share (0-1) of hosts at a tenth of the link rate.", float],
        ["json", None, None, "Write the results as JSON to this file."],
    ]
    optFlags = [
        ["progress", None, "Print progress to stderr every 2**20 events (transfers, "
         "simulated time, CPU seconds)."],
    ]

    def postOptions(self):
        self["hosts"] = parse_hosts(self["hosts"])
        try:
            self["size"] = parse_size(self["size"])
            self["piece-size"] = parse_size(self["piece-size"])
            link = parse_link(self["link"])
            self["uplink"] = parse_link(self["uplink"]) if self["uplink"] else link
            self["downlink"] = parse_link(self["downlink"]) if self["downlink"] else link
            self["seed-link"] = parse_link(self["seed-link"]) if self["seed-link"] else link
            self["origin"] = parse_link(self["origin"])
        except (ValueError, KeyError) as e:
            raise usage.UsageError(str(e))
        if self["size"] < 1 or self["piece-size"] < 1:
            raise usage.UsageError("--size and --piece-size must be positive")
        if min(self["uplink"], self["downlink"], self["seed-link"]) <= 0:
            raise usage.UsageError("link rates must be positive")
        if self["swarm-uploads"] is not None:
            self["max-uploads"] = self["swarm-uploads"]
        for k in ("concurrency", "max-uploads", "seed-slots", "supernodes", "swarm-uploads"):
            if self[k] is not None and self[k] < 1:
                raise usage.UsageError(f"--{k} must be at least 1")
        if self["join-over"] < 0:
            raise usage.UsageError("--join-over must not be negative")
        for k in ("churn", "slow"):
            if not 0 <= self[k] <= 1:
                raise usage.UsageError(f"--{k} must be between 0 and 1")
        kill = self["kill-owner-at"]
        if kill is not None and (not 0 < kill < 1 or self["supernodes"] < 2):
            raise usage.UsageError("--kill-owner-at wants a share in (0, 1) and --supernodes 2 or more")


def _scheduler_args(opts):
    args = {"max_uploads_per_peer": opts["max-uploads"], "seed_max_uploads": opts["seed-slots"]}
    if opts["swarm-uploads"] is not None:
        args["seed_swarm_uploads"] = opts["swarm-uploads"]
    return args


def _progress(err):
    def report(swarm):
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(f"  events {swarm.events:,} transfers {swarm.transfers:,} done {swarm.done_count:,} "
              f"at {swarm.clock.seconds():.3f} s, CPU {ru.ru_utime + ru.ru_stime:.1f} s",
              file=err, flush=True)
    return report


def main(argv=None, out=sys.stdout, err=sys.stderr):
    opts = Options()
    try:
        opts.parseOptions(argv if argv is not None else sys.argv[1:])
    except usage.UsageError as e:
        print(f"{opts}\nerror: {e}", file=err)
        return 2
    results = []
    print(f"{'hosts':>7} {'max s':>8} {'median s':>9} {'bound s':>8} {'max/bound':>9} "
          f"{'med/bound':>9} {'hop bound s':>11} {'max/hop':>7} {'seed egress':>11} "
          f"{'origin egress':>13} {'done':>13} {'wall s':>7}", file=out)
    for n in opts["hosts"]:
        r = simulate(
            n, opts["size"], piece_size=opts["piece-size"], up=opts["uplink"],
            down=opts["downlink"], seed_up=opts["seed-link"],
            origin_rate=opts["origin"], concurrency=opts["concurrency"],
            seed=opts["seed"], supernodes=opts["supernodes"],
            kill_owner_at=opts["kill-owner-at"], churn=opts["churn"], slow=opts["slow"],
            progress=_progress(err) if opts["progress"] else None, join_over=opts["join-over"],
            scheduler_args=_scheduler_args(opts))
        results.append(dict(r))
        print(f"{n:>7} {r['max_time']:>8.3f} {r['median_time']:>9.3f} {r['lower_bound']:>8.3f} "
              f"{r['ratio_max']:>9.3f} {r['ratio_median']:>9.3f} {r['hop_bound']:>11.3f} "
              f"{r['ratio_hop']:>7.3f} {r['seed_egress_x']:>10.2f}F "
              f"{r['origin_egress_x']:>12.2f}F {r['completed']:>6}/{r['expected']:<6} "
              f"{r['wall_seconds']:>7.1f}", file=out, flush=True)
        if r["slow"]:
            print(f"  fast hosts: max {r['max_time_fast']:.3f}s, bound {r['lower_bound_fast']:.3f}s "
                  f"({r['max_time_fast'] / r['lower_bound_fast']:.3f}x)", file=out)
        if r["join_over"]:
            print(f"  staggered joins over {r['join_over']:.3f}s: longest join-to-done "
                  f"{r['max_span']:.3f}s", file=out)
        if r["completed"] != r["expected"]:
            print(f"  only {r['completed']} of {r['expected']} staying hosts completed", file=out)
    if opts["json"]:
        with open(opts["json"], "w") as f:
            json.dump({"argv": list(argv if argv is not None else sys.argv[1:]),
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

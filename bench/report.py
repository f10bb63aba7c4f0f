"""Turn bench/results/*.json into summary.md (tables + target check) and PNG plots."""
import json
import os

MB = 1e6
MiB = 1 << 20


def _load(d, name):
    try:
        with open(os.path.join(d, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _size(n):
    if n >= 1 << 30:
        return "%.3g GiB" % (n / (1 << 30))
    return "%.3g MiB" % (n / MiB)


def _f(x, fmt="%.2f", none="-"):
    return none if x is None else fmt % x


def _single_order(runs):
    order = ["curl", "dfget_cold", "dfget_cold_tls", "dfget_warm", "dfget_warm_tls", "dfget_cached"]
    return [k for k in order if k in runs] + sorted(k for k in runs if k not in order)


def _loadavg(v):
    return "/".join("%.1f" % x for x in v) if v else "?"


def _status(ok):
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def targets(res):
    """[(target, measured, ok)] for the issue's targets, from whatever ran."""
    out = []
    single, swarm, memory, sim = (res.get(k) for k in ("single", "swarm", "memory", "sim"))
    if single and "runs" in single and "dfget_warm" in single["runs"]:
        for kind, goal in (("warm", 0.9), ("cold", 0.7)):   # issue 20's targets
            r = single["runs"]["dfget_" + kind]
            first = r.get("first_round_ratio_to_curl")
            ok = r["ratio_to_curl"] >= goal and (first is None or first >= goal)
            out.append(("Single stream %s >= %.1fx curl (median and first round)" % (kind, goal),
                        "%.2fx; first round %s" % (r["ratio_to_curl"], _f(first, "%.2fx")), ok))
    else:
        out.append(("Single stream warm >= 0.9x / cold >= 0.7x curl", "not measured", None))
    p2p = [r for r in (swarm or {}).get("runs", []) if r["kind"] == "p2p"]
    direct = [r for r in (swarm or {}).get("runs", []) if r["kind"] == "direct"]
    if p2p:
        ratios = [r["origin_ratio"] for r in p2p]
        out.append(("Origin bytes = 1.00x file for every N (P2P)",
                    ", ".join("N=%d %.2fx" % (r["n"], r["origin_ratio"]) for r in p2p),
                    all(abs(x - 1.0) < 0.005 for x in ratios)))
        by_n = {r["n"]: r for r in p2p}
        lo, hi = min(by_n), max(by_n)
        if lo != hi:
            g = by_n[hi]["max_s"] / by_n[lo]["max_s"]
            out.append(("P2P time N=%d <= 1.5x N=%d (%s)" % (hi, lo, swarm.get("mode")),
                        "%.2fx (%.1fs vs %.1fs)" % (g, by_n[hi]["max_s"], by_n[lo]["max_s"]), g <= 1.5))
        fr = by_n[hi]["mean_link_fraction"]
        out.append(("Mean per-host rate >= 85%% of link (P2P, N=%d)" % hi, "%.0f%%" % (100 * fr), fr >= 0.85))
        su = by_n[hi]["supernode_upload_bytes"] / swarm["file_bytes"]
        out.append(("Supernode upload <= 2x file at N=%d" % hi, "%.2fx" % su, su <= 2.0))
        if direct:
            d = {r["n"]: r for r in direct}
            if lo in d and hi in d and lo != hi:
                out.append(("(context) direct time N=%d / N=%d, ~N expected" % (hi, lo),
                            "%.1fx" % (d[hi]["max_s"] / d[lo]["max_s"]), None))
        tls = {r["n"]: r for r in (swarm or {}).get("runs", []) if r["kind"] == "p2p-tls"}
        if tls:
            out.append(("(context) mutual TLS: P2P time with TLS / without",
                        ", ".join("N=%d %.2fx" % (n, tls[n]["max_s"] / by_n[n]["max_s"])
                                  for n in sorted(tls) if n in by_n), None))
    else:
        out.append(("Swarm targets (P2P)", "not measured", None))
    if memory and memory.get("cases"):
        for case, r in memory["cases"].items():
            for who in ("peer", "dfget"):
                v = r["peak_rss_bytes"].get(who)
                if v:
                    out.append(("%s RSS < 100 MiB on %s (%s)" % (who, _size(memory["file_bytes"]), case),
                                "%.0f MiB" % (v / MiB), v < 100 * MiB))
    else:
        out.append(("Peer and dfget RSS < 100 MiB on 4 GiB", "not measured", None))
    if sim and sim.get("runs"):
        for r in sim["runs"]:
            if r.get("bound_ratio") is not None and r.get("n") == 1000:
                out.append(("Simulator N=1,000 within 1.25x of lower bound", "%.2fx" % r["bound_ratio"],
                            r["bound_ratio"] <= 1.25))
        for r in sim.get("small_swarm") or ():
            if r.get("bound_ratio") is not None and r.get("n") == 16:
                out.append(("Simulator N=16, 256 MiB at 100 Mbit within 1.08x of lower bound",
                            "%.2fx" % r["bound_ratio"], r["bound_ratio"] <= 1.08))
        for r in sim.get("small_swarm_pipeline") or ():
            if r.get("bound_ratio") is not None and r.get("n") == 16:
                out.append(("Simulator N=16, same, --swarm-uploads 1 (pipelined), within 1.08x",
                            "%.2fx" % r["bound_ratio"], r["bound_ratio"] <= 1.08))
        eg = [r for r in sim["runs"] if r.get("supernode_egress_ratio") is not None]
        if eg:
            out.append(("Simulator supernode egress < 3x file, N=100..10,000",
                        ", ".join("N=%d %.2fx" % (r["n"], r["supernode_egress_ratio"]) for r in eg),
                        all(r["supernode_egress_ratio"] < 3 for r in eg)))
    else:
        out.append(("Simulator targets", "not measured", None))
    out += _mirror_targets(res.get("mirror"))
    load = (res.get("control") or {}).get("load") or {}
    if load.get("latency_ms", {}).get("schedule") and load.get("supernode_rss_bytes"):
        p99, rss = load["latency_ms"]["schedule"]["p99"], load["supernode_rss_bytes"]
        out.append(("Control plane, %d peers: p99 schedule < 100 ms, supernode RSS < 300 MiB"
                    % load.get("simulated_peers", 0), "%.1f ms, %.0f MiB" % (p99, rss / MiB),
                    p99 < 100 and rss < 300 * MiB))
    bound = (res.get("bound") or {}).get("pipelines")
    if bound:
        out.append(("(context) Ceiling under the Rules, least-work pipeline x its reference "
                    "(bench/bound.py, best variant)",
                    ", ".join("%s %.2fx (from CPU %s; target %.1fx)" % (
                        k, bound[k]["ceiling"]["ratio"], _f(bound[k]["ceiling"].get("cpu_ceiling"), "%.2fx"),
                        bound[k]["target"]) for k in _BOUND_ORDER if k in bound), None))
    lazy = res.get("lazy")
    if lazy and lazy.get("cold") and lazy.get("warm"):
        for kind in ("warm", "cold"):
            out.append(("Lazy pull: first byte of a 64 KiB range, %s, %s layer <= %.1f s"
                        % (kind, _size(lazy["layer_bytes"]), lazy["targets"][kind + "_s"]),
                        "max %.3f s" % lazy[kind + "_max_s"], lazy[kind + "_ok"]))
    return out


def _mirror_targets(mirror):
    """Issue 3's speed targets from bench/mirror.py's result."""
    if not (mirror and mirror.get("runs", {}).get("mirror_warm") and mirror.get("small", {}).get("warm")):
        return [("Mirror: warm TTFB < 0.5 s / layer >= 0.5x registry", "not measured", None)]
    t = mirror.get("targets", {})
    limit = t.get("ttfb_s", 0.5)
    out = []
    sw = mirror["small"]["warm"]
    ttfb = sw.get("first_body_median_s")
    out.append(("Mirror TTFB, warm swarm, %s layer < %.1f s (first body byte)"
                % (_size(mirror["small_layer_bytes"]), limit),
                "%.3f s (headers %.3f s)" % (ttfb, sw["headers_median_s"]) if ttfb is not None else "-",
                None if ttfb is None else ttfb < limit))
    bt = mirror["runs"]["mirror_warm"]["ttfb_median_s"]
    out.append(("Mirror TTFB, warm swarm, %s layer < %.1f s (curl)" % (_size(mirror["layer_bytes"]), limit),
                "%.3f s" % bt, bt < limit))
    # Issue 20's targets per path (issue 3 asked 0.5x for warm and cold).
    for k, label, speed in (("mirror_warm", "warm", 0.8), ("mirror_cold", "cold", 0.6),
                            ("mirror_cached", "cached", 1.0)):
        r = mirror["runs"].get(k)
        if r and r.get("ratio_to_registry") is not None:
            out.append(("Mirror %s %s layer >= %.1fx registry" % (label, _size(mirror["layer_bytes"]), speed),
                        "%.2fx (%.0f vs %.0f MB/s)" % (r["ratio_to_registry"], r["mb_s"],
                                                     mirror["runs"]["registry"]["mb_s"]),
                        r["ratio_to_registry"] >= speed))
    return out


def _mirror_section(m):
    L = ["## Registry mirror (loopback, %s layer, median of %d)" % (_size(m["layer_bytes"]), m["repeats"]), "",
         "| path | median s | MB/s | x registry | TTFB s (curl) | supernode fetched at s | "
         "dfdaemon downloaded at s | dfdaemon CPU-s / GiB |", "|---|---|---|---|---|---|---|---|"]

    def _at(v, key):
        xs = sorted(x for x in (v.get("reached_s") or {}).get(key, []) if x is not None)
        return "%.1f" % xs[len(xs) // 2] if xs else "-"
    for k in ("registry", "mirror_cold", "mirror_warm", "mirror_cached"):
        v = m["runs"].get(k)
        if v:
            L.append("| %s | %.2f | %.0f | %s | %.3f | %s | %s | %s |" % (
                k, v["median_s"], v["mb_s"], _f(v.get("ratio_to_registry")), v["ttfb_median_s"],
                _at(v, "supernode_fetched"), _at(v, "dfdaemon_downloaded"),
                _f((v.get("cpu_s_per_gib") or {}).get("dfdaemon"))))
    L += ["", "\"fetched at\" / \"downloaded at\": when (from the client's start) the supernode had read the "
          "whole blob from the registry / the serving dfdaemon had every piece in its store; the rest of the "
          "client's time is the mirror streaming the store to the client."]
    if m.get("small"):
        L += ["", "%s layer, raw-socket client, median s:" % _size(m["small_layer_bytes"]), "",
              "| path | headers | first body byte | complete |", "|---|---|---|---|"]
        for k in ("registry", "cold", "warm", "cached"):
            v = m["small"].get(k)
            if v:
                L.append("| %s | %s | %s | %s |" % (k, _f(v.get("headers_median_s"), "%.3f"),
                                                   _f(v.get("first_body_median_s"), "%.3f"),
                                                   _f(v.get("total_median_s"), "%.3f")))
    bad = [c for c in m.get("cycles", []) if c.get("problems")]
    if bad:
        L += ["", "**%d of %d cycles not counted** (not the P2P path): %s" % (
            len(bad), len(m["cycles"]), "; ".join(bad[0]["problems"]))]
    good = [c for c in m.get("cycles", []) if not c.get("problems")]
    if good:
        c = good[0]
        L += ["", "Registry blob GETs per cycle (cold + warm + cached): big %d (%.2fx layer), small %d; "
              "dfdaemon 2 (warm) bytes by source: %s." % (
                  c["registry_big_gets"], c["registry_big_bytes"] / m["layer_bytes"], c["registry_small_gets"],
                  ", ".join("%s %.0f MiB" % (k, v / MiB) for k, v in c["dfdaemon2_big_from"].items()))]
    L.append("")
    return L


def markdown(res, results_dir):
    L = ["# Benchmark results", ""]
    any_quick = any(r.get("quick") for r in res.values())
    if any_quick:
        L += ["**Quick (smoke) run: small files; not comparable to the targets.**", ""]
    L += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    L += ["| %s | %s | %s |" % (t, m, _status(ok)) for t, m, ok in targets(res)]
    L.append("")
    for name, r in res.items():
        if r.get("error"):
            lines = [x.strip() for x in r["error"].splitlines() if x.strip()]
            why = lines[0][:300] + ("; ... " + lines[-1][:300] if len(lines) > 1 else "")
            L += ["**%s failed:** `%s`" % (name, why), ""]

    s = res.get("single")
    if s and s.get("runs"):
        L += ["## 1. Single stream (loopback, %s, median of %d)" % (_size(s["file_bytes"]), s["repeats"]), "",
              "| client | median s | MB/s | x curl | first round (no warm-up) x curl "
              "| receiving peer CPU-s / GiB | supernode CPU-s / GiB | TLS x plain |",
              "|---|---|---|---|---|---|---|---|"]
        for k in _single_order(s["runs"]):
            v = s["runs"][k]
            L.append("| %s | %.2f | %.0f | %s | %s | %s | %s | %s |" % (
                k, v["median_s"], v["mb_s"], _f(v.get("ratio_to_curl")),
                _f(v.get("first_round_ratio_to_curl")), _f(v.get("peer_cpu_s_per_gib")),
                _f(v.get("supernode_cpu_s_per_gib")), _f(v.get("ratio_to_plain"))))
        if "dfget_cold_tls" in s["runs"]:
            L += ["", "`_tls`: the same rounds with mutual TLS on the supernode API and every piece port "
                  "(certificates from `dragonfly-pki`); cached moves no bytes between nodes, so it has no "
                  "TLS variant."]
        if s.get("bytes"):
            b = s["bytes"][0]
            L += ["", "Origin bytes (cold) %.2fx file; warm download by source: %s. dfget start-up (`--help`) %.2fs."
                  % (b["origin_bytes"] / s["file_bytes"],
                     ", ".join("%s %.0f MiB" % (k, v / MiB) for k, v in b["warm_from"].items()),
                     s.get("dfget_startup_s") or 0)]
        L.append("")

    w = res.get("swarm")
    if w and w.get("runs"):
        L += ["## 2. Swarm (%s mode, %.0f MiB file, %d Mbit/s links; lower bound %.1fs%s)" % (
            w["mode"], w["file_bytes"] / MiB, w["link_mbit"], w["lower_bound_s"],
            ("; every node --upload-limit %d" % w["upload_limit_bytes_s"]
             if w.get("upload_limit_bytes_s") else "")
            + ("; %s under each tbf" % w["qdisc"] if w.get("qdisc", "fifo") != "fifo" else "")), "",
            "| kind | N | max s | median s | mean rate / link | origin x file | supernode upload x file "
            "| p2p share | supernode has the file at s | supernode CPU s | peers CPU s | API req/s "
            "| machine busy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(w["runs"], key=lambda r: (r["kind"], r["n"])):
            busy = (1 - r["machine_cpu"]["idle"] - r["machine_cpu"]["iowait"]) if r.get("machine_cpu") else None
            L.append("| %s | %d | %.1f | %.1f | %.0f%% | %.2f | %s | %s | %s | %s | %s | %s | %s |" % (
                r["kind"], r["n"], r["max_s"], r["median_s"], 100 * r["mean_link_fraction"],
                r["origin_ratio"],
                _f(r["supernode_upload_bytes"] / w["file_bytes"]) if r["kind"] != "direct" else "-",
                ("%.0f%%" % (100 * r["p2p_share"])) if r["kind"] != "direct" else "-",
                _f(r.get("origin_done_s"), "%.1f"),
                _f(r.get("supernode_cpu_s"), "%.1f"),
                _f(sum(r["peer_cpu_s"]) if r.get("peer_cpu_s") else None, "%.1f"),
                _f(r.get("api_requests_per_s"), "%.0f"), _f(busy and 100 * busy, "%.0f%%")))
        L += ["", "Machine busy = share of all %s CPUs not idle during the run (whatever ran, the bench "
              "or anything else on the box); load average before/after the bench: %s / %s." % (
                  (w.get("host") or {}).get("cpus", "?"), _loadavg(w.get("loadavg_before")),
                  _loadavg(w.get("loadavg_after"))),
              "", "![time vs N](swarm_time.png)", ""]

    m = res.get("memory")
    if m and m.get("cases"):
        L += ["## 3. Memory (%s file, peak RSS)" % _size(m["file_bytes"]), "",
              "| case | process | peak RSS MiB |", "|---|---|---|"]
        for case, r in m["cases"].items():
            for who, v in sorted(r["peak_rss_bytes"].items()):
                L.append("| %s | %s | %.0f |" % (case, who, (v or 0) / MiB))
        L.append("")

    c = res.get("control")
    if c and (c.get("load") or c.get("during_swarm")):
        L += ["## 4. Control plane", ""]
        d = c.get("during_swarm")
        if d:
            L += ["While %d peers download (%s, %s): supernode CPU %s s over %s s wall (%s of one core), "
                  "%s API requests/s, peak RSS %s MiB." % (
                      d["n"], d["source"], d["mode"], _f(d["supernode_cpu_s"], "%.1f"), _f(d["wall_s"], "%.1f"),
                      _f(d["supernode_cpu_fraction"] and 100 * d["supernode_cpu_fraction"], "%.0f%%"),
                      _f(d["api_requests_per_s"], "%.1f"),
                      _f(d.get("supernode_rss_bytes") and d["supernode_rss_bytes"] / MiB, "%.0f")), ""]
        lr = c.get("load")
        if lr:
            L += ["Load run: %d simulated peers over %d keep-alive connections, %d requests in %.1fs = "
                  "**%.0f req/s**; supernode CPU %s s (%s ms/request); %d/%d peers done; errors %s." % (
                      lr["simulated_peers"], lr["connections"], lr["requests"], lr["wall_s"],
                      lr["requests_per_s"] or 0, _f(lr["supernode_cpu_s"], "%.1f"),
                      _f(lr["supernode_cpu_s"] and 1000 * lr["supernode_cpu_s"] / max(lr["requests"], 1)),
                      lr["peers_done"], lr["simulated_peers"], lr["errors"] or "none"), "",
                  "| endpoint | requests | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
            for ep in ("register", "schedule", "leave", "all"):
                q = lr["latency_ms"].get(ep)
                if not q:
                    continue
                L.append("| %s | %s | %s | %s | %s | %s |" % (
                    ep, lr["by_endpoint"].get(ep, lr["requests"]), _f(q["p50"], "%.1f"), _f(q["p90"], "%.1f"),
                    _f(q["p99"], "%.1f"), _f(q["max"], "%.1f")))
            L.append("")

    sim = res.get("sim")
    if sim and sim.get("runs"):
        L += ["## Simulator (dragonfly.sim, real scheduler, simulated clock)", "",
              "| N | completion s | lower bound s | x bound | supernode egress x file |", "|---|---|---|---|---|"]
        for r in sim["runs"]:
            L.append("| %d | %s | %s | %s | %s |" % (r["n"], _f(r.get("completion_s"), "%.1f"),
                                                 _f(r.get("lower_bound_s"), "%.1f"), _f(r.get("bound_ratio")),
                                                 _f(r.get("supernode_egress_ratio"))))
        L.append("")
    elif sim and sim.get("skipped"):
        L += ["## Simulator", "", sim["skipped"], ""]

    mi = res.get("mirror")
    if mi and mi.get("runs", {}).get("registry"):
        L += _mirror_section(mi)
    lazy = res.get("lazy")
    if lazy and lazy.get("cold"):
        L += ["## Lazy pulling (loopback, %s layer, 64 KiB ranges)" % _size(lazy["layer_bytes"]), "",
              "| offset | cold first byte s | warm first byte s |", "|---|---|---|"]
        for label, r in lazy["cold"].items():
            w = lazy.get("warm", {}).get(label, {})
            L.append("| %s | %s | %s |" % (label, _f(r.get("first_body_s"), "%.3f"),
                                           _f(w.get("first_body_s"), "%.3f")))
        L += ["", "Registry bytes per cycle: %s" % ", ".join(
            "%s %d" % kv for kv in lazy.get("registry_bytes", {}).items()), ""]
    L += _bound_section(res.get("bound"))
    return "\n".join(L) + "\n"


_BOUND_ORDER = ("single_warm", "single_cold", "mirror_warm", "mirror_cold")


def _bound_section(b):
    """bench/bound.py: each reference and the least-work pipelines under issue 20's Rules."""
    if not (b and b.get("pipelines")):
        return []
    refs = b.get("references", {})
    L = ["## Ceilings under the Rules (bench/bound.py, loopback, %s, %s pieces, %d rounds)"
         % (_size(b["file_bytes"]), _size(b["piece_bytes"]), b["rounds"]), "",
         "| pipeline | reference s | variant | median s | x reference (per round) | target "
         "| from CPU alone, x reference at most | CPU-s / GiB per process |", "|---|---|---|---|---|---|---|---|"]

    def cpu(v):
        return ", ".join("%s %.2f" % kv for kv in sorted(v.get("cpu_s_per_gib", {}).items()))
    for name in [k for k in _BOUND_ORDER if k in b["pipelines"]]:
        p = b["pipelines"][name]
        ref = refs.get(name.split("_")[0], {})
        for take, v in sorted(p["variants"].items(), key=lambda kv: -kv[1]["ratio_to_reference"]):
            best = take == p["ceiling"]["variant"]
            L.append("| %s | %s | %s%s | %.3f | %s%.2f%s (%s) | %.1f | %s | %s |" % (
                name, _f(ref.get("median_s"), "%.3f"), take, " (best)" if best else "", v["median_s"],
                "**" if best else "", v["ratio_to_reference"], "**" if best else "",
                ", ".join("%.2f" % x for x in v.get("ratios_per_round", [])), p["target"],
                _f(v.get("cpu_ceiling")), cpu(v)))
    for kind, ref in sorted(refs.items()):
        L.append("| reference %s | %.3f | - | - | - | - | - | %s |" % (kind, ref["median_s"], cpu(ref)))
    L += ["", "Each pipeline is the least work issue 20's Rules allow (every piece's BLAKE3 checked before "
          "it is used, the blob's sha256 before its last piece leaves the supernode), with no dragonfly "
          "code: the ceiling for the matching target on this machine. \"From CPU alone\": the reference's "
          "busiest process's CPU-s over the larger of the pipeline's CPU-s spread over every core and "
          "its busiest thread's CPU-s (the pipeline cannot beat it unless the reference was waiting, not working; load hardly moves it). "
          "See bench/README.md.", ""]
    return L


def plots(res, results_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    w = res.get("swarm")
    if w and w.get("runs"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for kind, color in (("direct", "tab:red"), ("p2p", "tab:blue"), ("p2p-tls", "tab:green")):
            rs = sorted((r for r in w["runs"] if r["kind"] == kind), key=lambda r: r["n"])
            if not rs:
                continue
            ns = [r["n"] for r in rs]
            ax.plot(ns, [r["max_s"] for r in rs], "o-", color=color, label="%s max" % kind)
            ax.plot(ns, [r["median_s"] for r in rs], "s--", color=color, alpha=0.6, label="%s median" % kind)
        ax.axhline(w["lower_bound_s"], color="gray", lw=0.8, ls=":", label="file / link")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["n"] for r in w["runs"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("hosts downloading at once (N)")
        ax.set_ylabel("completion time (s)")
        ax.set_title("%.0f MiB to N hosts, %d Mbit/s links (%s)" % (w["file_bytes"] / MiB, w["link_mbit"], w["mode"]))
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = os.path.join(results_dir, "swarm_time.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    s = res.get("single")
    if s and s.get("runs"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = _single_order(s["runs"])
        ax.bar(names, [s["runs"][k]["mb_s"] for k in names], color="tab:blue")
        ax.set_ylabel("MB/s")
        ax.set_title("Single stream, %.0f MiB on loopback" % (s["file_bytes"] / MiB))
        fig.tight_layout()
        p = os.path.join(results_dir, "single.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    return made


def write(results_dir):
    res = {}
    for name in ("single", "swarm", "memory", "control", "sim", "mirror", "lazy", "bound"):
        r = _load(results_dir, name)
        if r is not None:
            res[name] = r
    made = plots(res, results_dir)
    text = markdown(res, results_dir)
    if any(p.endswith("single.png") for p in made) and "## 1." in text:
        text = text.replace("\n## 2.", "\n![single stream](single.png)\n\n## 2.", 1) if "## 2." in text else text
    with open(os.path.join(results_dir, "summary.md"), "w") as f:
        f.write(text)
    return text

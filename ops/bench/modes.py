"""The closed-loop modes: the throughput table, 1 vs. 2 workers, and the RSS soak. Each returns the text to
print, the settings and the results for the JSON."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import instructions as callgrind
import report
import wrk
from latency import latency
from procs import cpu_split, rss_by_process, rss_mib, stop
from rig import Rig, Target, limiter_skips, verify_full_chain

__all__ = ["instructions", "latency", "soak", "throughput", "workers_scaling"]
Outcome = tuple[str, dict[str, Any], dict[str, Any]]
RSS_TARGET_MIB = 80e6 / 2**20  # the 80 MB per worker
SAMPLE_EVERY = 10.0


def measure(target: Target, seconds: int, connections: int, load_cpus: str) -> dict[str, Any]:
    """One wrk run against the target, plus its CPU time (and its Redis's) over the same window."""
    before = cpu_split(target.proc.pid) if target.proc else (0.0, 0.0)
    redis_before = target.redis.sample() if target.redis else None
    skips_before = limiter_skips(target) if target.redis else 0.0
    result: dict[str, Any] = wrk.run(target.url, seconds, connections, load_cpus, target.headers)
    requests = max(result["requests"], 1)
    if target.proc:
        user, system = cpu_split(target.proc.pid)
        kernel = system - before[1]
        used = user - before[0] + kernel
        result["cpu_us_per_req"] = used * 1e6 / requests
        result["kernel_us_per_req"] = kernel * 1e6 / requests
        result["core_busy"] = used / seconds / target.cores  # near 1.0: the proxy itself was the limit
    if target.redis and redis_before:
        cpu, calls = target.redis.sample()
        result["redis_us_per_req"] = (cpu - redis_before[0]) * 1e6 / requests
        result["redis_calls_per_req"] = (calls - redis_before[1]) / requests
        result["failed_open"] = limiter_skips(target) - skips_before
    return result


def run_rounds(targets: Sequence[Target], args: argparse.Namespace, load_cpus: str) -> None:
    """A 1 s warm-up each, then the rounds: every target once per round, in turn."""
    seconds, connections = args.duration or 5, args.connections or 50
    for t in targets:
        measure(t, 1, connections, load_cpus)  # warm-up (connection pools, caches), discarded
    for round_no in range(1, args.rounds + 1):
        for t in targets:
            t.runs.append(run := measure(t, seconds, connections, load_cpus))
            print(f"round {round_no}/{args.rounds} {t.name:<18} {run['rps']:>9,.0f} req/s", file=sys.stderr)
    for t in targets:
        if t.proc:
            t.peak_rss_mib = rss_mib(t.proc.pid, "VmHWM")


def _settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {"duration_s": args.duration or 5, "rounds": args.rounds, "connections": args.connections or 50,
            "path": "/api/v1/users/profile", "wrk_threads": 1, **extra}


def throughput(rig: Rig, args: argparse.Namespace) -> Outcome:
    targets = [Target("direct", rig.upstream_port), rig.add_naive(), rig.add_floor(),
               rig.add_gateway("gateway-bare", "bare")]
    if args.with_default:
        targets.append(rig.add_gateway("gateway-default", "default"))
    full = rig.add_gateway("gateway-full", "full")
    targets.append(full)
    skipped = []
    for name, add in (("nginx-proxy", rig.add_nginx_proxy), ("caddy-proxy", rig.add_caddy_proxy)):
        if (target := add()) is not None:
            targets.append(target)
        else:
            skipped.append(f"{name} skipped: {name.split('-')[0]} is not installed (Debian package "
                           f"{name.split('-')[0]}; ops/bench/run installs it as root)")
    rig.ready()
    verify_full_chain(full)
    run_rounds(targets, args, rig.load_cpus)
    rows = report.summarize(targets)
    by_name = {row["target"]: row for row in rows}
    goals = [f"target: gateway-full >= 1.5x naive (2x aimed): {by_name['gateway-full']['x_naive']:.2f}x",
             f"target: gateway-bare >= 2.5x naive: {by_name['gateway-bare']['x_naive']:.2f}x"]
    text = "\n".join([report.render_throughput(rows), *skipped, *goals])
    return text, _settings(args, skipped=skipped), {"targets": rows}


def workers_scaling(rig: Rig, args: argparse.Namespace) -> Outcome:
    both = f"{rig.proxy_cpus},{rig.load_cpus}"
    one = rig.add_gateway("gateway-full-w1", "full")
    two = rig.add_gateway("gateway-full-w2", "full", workers=2, cpus=both)
    rig.ready()
    for target in (one, two):
        verify_full_chain(target)
    run_rounds([one, two], args, rig.load_cpus)
    rows = report.summarize([one, two], baseline=None)
    ratio = rows[1]["rps_median"] / rows[0]["rps_median"]
    lines = [report.render_throughput(rows),
             f"--workers 2 / --workers 1: {ratio:.2f}x req/s",
             f"note: gateway-full-w1 is pinned to core {rig.proxy_cpus}; gateway-full-w2 (supervisor and 2 workers) "
             f"may use cores {both}, so its workers share core {rig.load_cpus} with wrk, the upstream and Redis: "
             "the ratio understates what a second free core gives. CPU us/req and RSS add up all its processes."]
    return "\n".join(lines), _settings(args, workers=[1, 2]), {"targets": rows, "ratio": ratio}


def soak(rig: Rig, args: argparse.Namespace) -> Outcome:
    cpus = rig.proxy_cpus if args.workers == 1 else f"{rig.proxy_cpus},{rig.load_cpus}"
    target = rig.add_gateway("gateway-full", "full", workers=args.workers, cpus=cpus)
    rig.ready()
    verify_full_chain(target)
    assert target.proc is not None
    connections = args.connections or 50
    measure(target, 1, connections, rig.load_cpus)  # warm-up
    redis_before = target.redis.sample() if target.redis else (0.0, 0)
    skips_before = limiter_skips(target)
    out = rig.tmp / "soak-wrk.txt"
    with out.open("w") as sink:
        load = subprocess.Popen(wrk.command(target.url, args.soak, connections, rig.load_cpus, target.headers),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    rig.stack.callback(stop, load)
    started, series = time.monotonic(), []
    while True:
        elapsed = time.monotonic() - started
        if not series or elapsed - series[-1]["t_s"] >= 1:  # wrk ending just after a sample: no repeat
            processes = rss_by_process(target.proc.pid)
            series.append({"t_s": round(elapsed, 1), "rss_mib": round(sum(processes.values()), 1),
                           "by_pid_mib": {str(pid): round(mib, 1) for pid, mib in processes.items()}})
            print(f"soak {elapsed:5.0f} s  RSS {series[-1]['rss_mib']:.1f} MiB", file=sys.stderr)
        if load.poll() is not None:
            break
        next_at = started + SAMPLE_EVERY * len(series)
        while load.poll() is None and time.monotonic() < next_at:
            time.sleep(0.2)
    result = wrk.parse(out.read_text())
    calls = (target.redis.sample()[1] - redis_before[1]) / max(result["requests"], 1) if target.redis else 0.0
    failed_open = limiter_skips(target) - skips_before
    rss = [point["rss_mib"] for point in series]
    summary = {"first_mib": rss[0], "last_mib": rss[-1], "max_mib": max(rss), "growth_mib": rss[-1] - rss[0]}
    lines = [report.table(["t s", "RSS MiB"], [[f"{p['t_s']:.0f}", f"{p['rss_mib']:.1f}"] for p in series]),
             "RSS (VmRSS{}): first {first_mib:.1f} MiB, last {last_mib:.1f}, max {max_mib:.1f}, growth "
             "{growth_mib:+.1f}".format(f", {args.workers} workers and the supervisor" if args.workers > 1 else "",
                                        **summary),
             f"load: {result['rps']:,.0f} req/s over {args.soak} s, {result['non_2xx']} non-2xx, "
             f"{result['socket_errors']} socket errors, {calls:.2f} Redis calls/request"]
    if failed_open:
        lines.append(f"(!) {failed_open:,.0f} requests passed without a limiter decision (failed open: Redis too slow)")
    if args.workers == 1:
        verdict = "met" if summary["max_mib"] <= RSS_TARGET_MIB else "NOT met"
        lines.append(f"target: RSS of one worker <= 80 MB ({RSS_TARGET_MIB:.1f} MiB), flat: {verdict} on the max; "
                     "flat means the growth above stays near zero over a 5-minute run")
    settings = _settings(args, soak_s=args.soak, workers=args.workers, sample_every_s=SAMPLE_EVERY)
    load_result = result | {"redis_calls_per_req": calls, "failed_open": failed_open}
    return "\n".join(lines), settings, {"series": series, "summary": summary, "load": load_result}


def instructions(rig: Rig, args: argparse.Namespace) -> Outcome:
    """naive, floor, gateway-bare and gateway-full under callgrind: user-space instructions per request."""
    seconds, connections = args.duration or 15, args.connections or 8
    made = callgrind.targets(rig)
    rig.ready(timeout=300)  # valgrind takes a while to start Python
    for target, _out in made:
        if target.name == "gateway-full":
            verify_full_chain(target)
    rows = []
    for target, out in made:
        counted = callgrind.count(target, out, seconds, connections, rig.load_cpus)
        rows.append({"target": target.name, **counted})
        print(f"{target.name:<14} {counted['per_request']:>12,.0f} instructions/request", file=sys.stderr)
    naive = rows[0]["per_request"]
    body = []
    for row in rows:
        row["x_naive"] = naive / row["per_request"] if row["per_request"] else None
        body.append([row["target"] + (" (!)" if row["errors"] else ""), f"{row['requests']:,}",
                     f"{row['per_request']:,.0f}", report.num(row["x_naive"], ".2f")])
    lines = [report.table(["target", "requests counted", "instructions/request", "x naive (fewer is higher)"], body),
             "user-space instructions only (no system calls); one run each: the counts move by about 2 % between runs"]
    if any(row["errors"] for row in rows):
        lines.append("(!) a target answered with errors: its count is not comparable")
    return "\n".join(lines), _settings(args, duration_s=seconds, connections=connections), {"targets": rows}

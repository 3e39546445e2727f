"""--latency: open-loop load at a fixed rate (ops/bench/openloop.py), direct vs. gateway-full, in rounds.

Percentiles are taken over every sample of all rounds (p99.9 needs thousands); the added latency is the
gateway's percentile minus direct's. Direct's own figures show what the client and the set-up cost.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import report
from openloop import summary_ms
from procs import cpu_seconds
from rig import Rig, Target, limiter_skips, verify_full_chain

HERE = Path(__file__).resolve().parent
ADDED_P99_TARGET_MS = 3.0
PCTS = ("p50", "p99", "p99.9")


def run_openloop(target: Target, rate: int, seconds: int, connections: int, load_cpus: str) -> dict[str, Any]:
    """One open-loop run (1 s warm-up, then seconds measured), plus the proxy's CPU time over it."""
    cmd = ["taskset", "-c", load_cpus, sys.executable, str(HERE / "openloop.py"), target.url, "--rate", str(rate),
           "--duration", str(seconds), "--connections", str(connections), "--samples"]
    for name, value in target.headers.items():
        cmd += ["-H", f"{name}: {value}"]
    before = cpu_seconds(target.proc.pid) if target.proc else 0.0
    skips_before = limiter_skips(target) if target.redis else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(out.stdout)
    if target.redis:
        result["failed_open"] = limiter_skips(target) - skips_before
    if target.proc:
        sent = result["requests"] + rate  # the warm-up second's requests are served too
        result["cpu_us_per_req"] = (cpu_seconds(target.proc.pid) - before) * 1e6 / sent
    return result


def latency(rig: Rig, args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any]]:
    rate, seconds, connections = args.latency, args.duration or 10, args.connections or 32
    direct = Target("direct", rig.upstream_port)
    full = rig.add_gateway("gateway-full", "full")
    rig.ready()
    verify_full_chain(full)
    samples: dict[str, list[float]] = {"direct": [], "gateway-full": []}
    for round_no in range(1, args.rounds + 1):
        for t in (direct, full):
            run = run_openloop(t, rate, seconds, connections, rig.load_cpus)
            samples[t.name] += [value / 1e3 for value in run.pop("samples_ms")]
            t.runs.append(run)
            print(f"round {round_no}/{args.rounds} {t.name:<14} p99 {run['latency_ms']['p99']:7.2f} ms, "
                  f"{run['achieved_rps']:,.0f} req/s", file=sys.stderr)
    rows = [_row(t, samples[t.name]) for t in (direct, full)]
    for row in rows:
        row["added_ms"] = {pct: row["latency_ms"][pct] - rows[0]["latency_ms"][pct] for pct in PCTS}
    notes = [f"(!) {rows[1]['failed_open']:,} requests passed without a limiter decision (failed open: Redis too slow)"
             ] if rows[1]["failed_open"] else []
    text = "\n".join([_render(rows), *notes, *_client_lines(direct), _goal(rows[1], rate)])
    settings = {"rate": rate, "duration_s": seconds, "warmup_s": 1, "rounds": args.rounds,
                "connections": connections, "path": "/api/v1/users/profile"}
    return text, settings, {"targets": rows}


def _row(target: Target, values: list[float]) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(run["errors"][key]) for run in target.runs)

    return {"target": target.name, "samples": len(values), "latency_ms": summary_ms(values),
            "achieved_rps": report.median([run["achieved_rps"] for run in target.runs]),
            "p99_ms_per_round": [run["latency_ms"]["p99"] for run in target.runs],
            "cpu_us_per_req": report.median([run["cpu_us_per_req"] for run in target.runs if "cpu_us_per_req" in run]),
            "errors": {key: total(key) for key in ("status", "connection", "timeout")},
            "failed_open": sum(int(run.get("failed_open", 0)) for run in target.runs), "runs": target.runs}


def _render(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        lat, added, errors = r["latency_ms"], r["added_ms"], sum(r["errors"].values())
        body.append([r["target"] + (" (!)" if errors else ""), f"{r['achieved_rps']:,.0f}",
                     *(f"{lat[p]:.2f}" for p in (*PCTS, "max")),
                     " / ".join(f"{added[p]:+.2f}" for p in PCTS) if r["target"] != "direct" else "-",
                     report.num(r["cpu_us_per_req"], ".0f"), str(errors) if errors else "-"])
    header = ["target", "achieved req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "added p50/p99/p99.9 ms",
              "CPU us/req", "errors"]
    return report.table(header, body)


def _client_lines(direct: Target) -> list[str]:
    """The client's own cost, from its runs against direct: it must be small next to what is measured."""
    lag = report.median([run["send_lag_ms"]["p99"] for run in direct.runs]) or 0.0
    cpu = report.median([run["client_cpu_us_per_req"] for run in direct.runs]) or 0.0
    busy = report.median([run["client_core_busy"] for run in direct.runs]) or 0.0
    lines = [f"client (against direct): send lag p99 {lag:.2f} ms behind schedule, {cpu:.0f} us CPU per request "
             f"({busy:.0%} of its core); direct's percentiles are the floor the client and set-up put under all rows"]
    if lag > 1.0 or busy > 0.5:
        lines.append("(!) the client fell behind its schedule or is busy: added-latency figures are less precise")
    return lines


def _goal(full: dict[str, Any], rate: int) -> str:
    added = full["added_ms"]["p99"]
    verdict = "met" if added <= ADDED_P99_TARGET_MS and not sum(full["errors"].values()) else "NOT met"
    return (f"target: gateway-full p99 added over direct <= {ADDED_P99_TARGET_MS:g} ms at {rate:,} req/s: "
            f"{added:+.2f} ms, {verdict}")

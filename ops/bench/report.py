"""What the benchmark prints and writes: summaries of the rounds, text tables, machine facts, JSON."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import wrk
from rig import Target, which


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(targets: Sequence[Target], baseline: str | None = "naive") -> list[dict[str, Any]]:
    """One row per target: medians over its wrk rounds, errors summed, the raw runs kept for the JSON."""
    def med(target: Target, key: str) -> float | None:
        return median([run[key] for run in target.runs if key in run])

    base = next((t for t in targets if t.name == baseline), None)
    base_rps = med(base, "rps") if base else None
    rows = []
    for t in targets:
        rps = [run["rps"] for run in t.runs]
        row: dict[str, Any] = {"target": t.name, "rps_median": statistics.median(rps), "rps_min": min(rps),
                               "rps_max": max(rps), "peak_rss_mib": t.peak_rss_mib,
                               "x_naive": statistics.median(rps) / base_rps if base_rps else None}
        keys = ("p50_ms", "p99_ms", "cpu_us_per_req", "kernel_us_per_req", "core_busy", "redis_us_per_req",
                "redis_calls_per_req")
        row.update({key: med(t, key) for key in keys})
        row.update({key: sum(int(run[key]) for run in t.runs) for key in ("non_2xx", "socket_errors")})
        if t.redis:
            row["failed_open"] = sum(int(run.get("failed_open", 0)) for run in t.runs)
        rows.append(row | {"runs": t.runs})
    return rows


def num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    rows = [list(header), *map(list, body)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def render_throughput(rows: Sequence[dict[str, Any]]) -> str:
    body, notes, idle = [], [], []
    for r in rows:
        failed = r["non_2xx"] or r["socket_errors"]
        body.append([
            r["target"] + (" (!)" if failed else ""),
            f"{r['rps_median']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})",
            num(r["p50_ms"], ".2f"), num(r["p99_ms"], ".2f"), num(r["cpu_us_per_req"], ".0f"),
            num(r.get("kernel_us_per_req"), ".0f"), num(r["peak_rss_mib"], ".1f"), num(r["x_naive"], ".2f"),
            f"{r['non_2xx']} non-2xx, {r['socket_errors']} socket" if failed else "-",
        ])
        if failed:
            notes.append(f"(!) {r['target']} answered with errors: its figures are not comparable.")
        if r["core_busy"] is not None and r["core_busy"] < 0.9:
            idle.append(f"{r['target']} {r['core_busy']:.0%}")
        if r["redis_us_per_req"] is not None:
            notes.append(redis_line(r))
    if idle:
        notes.append(f"note: cores less than 90% busy: {', '.join(idle)}. Such a proxy waited on wrk or the upstream, "
                     "or other processes took its core: its req/s understates it.")
    header = ["target", "req/s median (min-max)", "p50 ms", "p99 ms", "CPU us/req", "of it kernel", "peak RSS MiB",
              "x naive", "errors"]
    return "\n".join([table(header, body), *notes])


def redis_line(row: dict[str, Any]) -> str:
    """Redis's share of a row whose limiter calls the bench's Redis, and what one Redis core then sustains."""
    cost, calls = row["redis_us_per_req"], row["redis_calls_per_req"] or 0.0
    # Every request is one decision, however the gateway packs them into Lua calls.
    line = f"redis ({row['target']}): {cost:.1f} us CPU and {calls:.2f} Lua calls per request"
    if cost:
        line += f"; one Redis core at this cost sustains ~{1e6 / cost:,.0f} limiter decisions/s"
    if row.get("failed_open"):
        line += (f"\n(!) {row['failed_open']:,} of {row['target']}'s requests passed without a limiter decision "
                 "(failed open: Redis too slow): they cost less, so the row is flattered")
    return line


def _tool_version(cmd: list[str]) -> str | None:
    if not which(cmd[0]):
        return None
    out = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True, text=True, check=False)
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def _git(*args: str) -> str:
    if not shutil.which("git"):
        return ""
    out = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[2])
    return out.stdout.strip()


def machine_info(proxy_cpus: str, load_cpus: str, upstream: str) -> dict[str, Any]:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return {
        "nproc": os.cpu_count(), "cpu_model": models[0] if models else platform.machine(),
        "kernel": platform.release(), "python": platform.python_version(),
        "aiohttp": importlib.metadata.version("aiohttp"), "gateway": importlib.metadata.version("kadai-gateway"),
        "gateway_loop": _gateway_loop(),
        "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--", "gateway")),
        "wrk": wrk.version(), "nginx": _tool_version(["nginx", "-v"]), "caddy": _tool_version(["caddy", "version"]),
        "redis": _tool_version(["redis-server", "--version"]), "upstream": upstream,
        "proxy_cpus": proxy_cpus, "load_cpus": load_cpus,
    }


def _gateway_loop() -> str:
    """The event loop the gateway serves on in the bench (KADAI_EVENT_LOOP is not passed to it)."""
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio"


def machine_line(machine: dict[str, Any]) -> str:
    return ("machine: {nproc} cores ({cpu_model}), Python {python}, aiohttp {aiohttp}, gateway {gateway} at {commit}"
            "{dirt} on {loop}, upstream {upstream}; proxies on core {proxy_cpus}, load (wrk, upstream, Redis) on core "
            "{load_cpus}").format(**machine, dirt=" (gateway/ modified)" if machine["dirty"] else "",
                                  loop=machine.get("gateway_loop", "asyncio"))


def write_json(path: Path, mode: str, machine: dict[str, Any], settings: dict[str, Any], **results: Any) -> None:
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"mode": mode, "date": date, "machine": machine, "settings": settings, **results}
    path.write_text(json.dumps(document, indent=2) + "\n")

"""Benchmark the gateway against a naive aiohttp proxy, side by side, from one run.

Targets, each proxy a single process pinned to one core (figures are per core):

  direct            wrk straight at the upstream, no proxy: what the set-up itself can do
  naive             ops/bench/naive_proxy.py, the baseline every "x naive" ratio refers to
  gateway-bare      the gateway with every middleware switched off
  gateway-default   the gateway with its default chain; JSON access log formatted, written to /dev/null

wrk and the upstream share a second core. Targets are measured in interleaved rounds so that drift on
the machine (frequency, neighbours) hits all of them alike; only ratios within one run are meaningful.
Run it through ops/bench/run. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upstream import BODY

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REQUEST_PATH = "/api/v1/users/profile"
TICK = os.sysconf("SC_CLK_TCK")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}  # wrk's latency units, to milliseconds


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None for direct: no proxy process to measure
    runs: list[dict[str, float]] = field(default_factory=list)
    peak_rss_mib: float | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(cmd: list[str], cpu: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches only us, and stop() can signal the whole group (nginx's worker too).
    with log.open("wb") as err:
        return subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(name: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the target answers the benchmark request with the upstream's body."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {name} exited at start-up:\n{log.read_text()[-2000:]}")
        url = f"http://127.0.0.1:{port}{REQUEST_PATH}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200 and reply.read() == BODY.encode():
                return
        time.sleep(0.1)
    sys.exit(f"bench: {name} did not answer {REQUEST_PATH} correctly within 20 s:\n{log.read_text()[-2000:]}")


def cpu_seconds(pid: int) -> float:
    # utime and stime are fields 14 and 15; split after ")" since the command name may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid: int) -> float | None:
    # VmHWM: the resident set's high-water mark over the process's life. Absent once it has exited.
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def parse_wrk(text: str) -> dict[str, float]:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, text, re.MULTILINE)

    requests, rps = find(r"^\s*(\d+) requests in"), find(r"^Requests/sec:\s+([\d.]+)")
    if not (requests and rps):
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    result = {"requests": int(requests.group(1)), "rps": float(rps.group(1))}
    for pct in ("50", "99"):
        if not (m := find(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$")):
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{text}")
        result[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)]
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    result["socket_errors"] = sum(map(int, sockets.groups())) if sockets else 0
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def measure(target: Target, seconds: int, connections: int, cpu: int) -> dict[str, float]:
    """One wrk run against the target, plus the proxy's CPU time over the same window."""
    url = f"http://127.0.0.1:{target.port}{REQUEST_PATH}"
    before = cpu_seconds(target.proc.pid) if target.proc else 0.0
    out = subprocess.run(["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", url], capture_output=True, text=True, timeout=seconds + 30, check=True)
    result = parse_wrk(out.stdout)
    if target.proc:
        used = cpu_seconds(target.proc.pid) - before
        result["cpu_us_per_req"] = used * 1e6 / max(result["requests"], 1)
        result["core_busy"] = used / seconds  # near 1.0 means the proxy, not the set-up, was the limit
    return result


def start_upstream(tmp: Path, cpu: int) -> tuple[subprocess.Popen[bytes], int, str]:
    """nginx when installed (it costs the shared core least), else ops/bench/upstream.py."""
    port, nginx = free_port(), shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx:
        conf = string.Template((HERE / "nginx.conf").read_text()).substitute(dir=tmp, port=port, body=BODY)
        (tmp / "nginx.conf").write_text(conf)
        # -e: nginx opens its default error log before reading the config, which fails without root.
        cmd = [nginx, "-p", str(tmp), "-e", str(tmp / "upstream.log"), "-c", str(tmp / "nginx.conf")]
        return spawn(cmd, cpu, tmp / "upstream.log"), port, "nginx"
    proc = spawn([sys.executable, str(HERE / "upstream.py"), "--port", str(port)], cpu, tmp / "upstream.log")
    return proc, port, "aiohttp (ops/bench/upstream.py; nginx not installed)"


def write_registry(path: Path, upstream_port: int, bare: bool) -> Path:
    # bare: every middleware off; default: the code's default chain (request ID, metrics, access log,
    # retry, breaker) on a route that needs no token.
    off = "request_id: false, access_log: false, metrics: false, jwt: false, retry: false, breaker: false"
    defaults = f"defaults: {{auth: false, {off}}}\n" if bare else "defaults: {auth: false}\n"
    path.write_text(f"""version: 1
{defaults}services:
  user-service:
    instances: [http://127.0.0.1:{upstream_port}]
    routes:
      - {{prefix: /api/v1/users}}
""")
    return path


def summarize(targets: list[Target]) -> list[dict[str, Any]]:
    """One row per target: medians over the rounds, errors summed, the raw runs kept for the JSON."""

    def median(target: Target, key: str) -> float | None:
        values = [run[key] for run in target.runs if key in run]
        return statistics.median(values) if values else None

    naive = median(next(t for t in targets if t.name == "naive"), "rps") or 1.0
    rows = []
    for t in targets:
        rps = [run["rps"] for run in t.runs]
        row: dict[str, Any] = {"target": t.name, "rps_median": statistics.median(rps), "rps_min": min(rps),
                               "rps_max": max(rps), "x_naive": statistics.median(rps) / naive,
                               "peak_rss_mib": t.peak_rss_mib}
        row.update({key: median(t, key) for key in ("p50_ms", "p99_ms", "cpu_us_per_req", "core_busy")})
        row.update({key: sum(int(run[key]) for run in t.runs) for key in ("non_2xx", "socket_errors")})
        rows.append(row | {"runs": t.runs})
    return rows


def render(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = [["target", "req/s median (min-max)", "p50 ms", "p99 ms", "CPU us/req", "peak RSS MiB", "x naive",
              "errors"]]
    notes = []
    for r in rows:
        failed = r["non_2xx"] or r["socket_errors"]
        table.append([
            r["target"] + (" (!)" if failed else ""),
            f"{r['rps_median']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})",
            num(r["p50_ms"], ".2f"), num(r["p99_ms"], ".2f"), num(r["cpu_us_per_req"], ".0f"),
            num(r["peak_rss_mib"], ".1f"), f"{r['x_naive']:.2f}",
            f"{r['non_2xx']} non-2xx, {r['socket_errors']} socket" if failed else "-",
        ])
        if failed:
            notes.append(f"(!) {r['target']} answered with errors: its figures are not comparable.")
        # Below ~90% the proxy was waiting on wrk or the upstream: its req/s then understates it.
        if r["core_busy"] is not None and r["core_busy"] < 0.9:
            notes.append(f"note: {r['target']} kept its core only {r['core_busy']:.0%} busy (limited by wrk/upstream).")
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines += notes
    lines.append("machine: {nproc} cores ({cpu_model}), Python {python}, aiohttp {aiohttp}, upstream {upstream}; "
                 "proxies on core {proxy_cpu}, wrk and upstream on core {load_cpu}".format(**machine))
    return "\n".join(lines)


def machine_info(upstream: str, proxy_cpu: int, load_cpu: int) -> dict[str, Any]:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return {"nproc": os.cpu_count(), "cpu_model": models[0] if models else platform.machine(),
            "python": platform.python_version(), "aiohttp": importlib.metadata.version("aiohttp"),
            "upstream": upstream, "proxy_cpu": proxy_cpu, "load_cpu": load_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description="Gateway vs. a naive aiohttp proxy, one core each, one run.")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "results.json", help="results file")
    args = parser.parse_args()
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found. Install it (sudo apt-get install {package}); ops/bench/run "
                     "installs wrk by itself when run as root.")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("bench: needs two CPU cores (one for the proxy, one for wrk and the upstream)")
    proxy_cpu, load_cpu = cpus[0], cpus[1]
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the ExitStack below stops every process we started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kadai-bench-")))
        upstream, upstream_port, upstream_label = start_upstream(tmp, load_cpu)
        stack.callback(stop, upstream)
        targets = [Target("direct", upstream_port)]
        gateway = [sys.executable, "-m", "gateway", "gateway", "--workers", "1", "--registry"]
        commands = {
            "naive": [sys.executable, str(HERE / "naive_proxy.py"), "--upstream", f"http://127.0.0.1:{upstream_port}"],
            "gateway-bare": [*gateway, str(write_registry(tmp / "bare.yaml", upstream_port, bare=True))],
            "gateway-default": [*gateway, str(write_registry(tmp / "default.yaml", upstream_port, bare=False))],
        }
        env = dict(os.environ, LOG_LEVEL="INFO")  # the default, made explicit: a DEBUG shell must not skew it
        started = [("upstream", upstream_port, upstream)]
        for name, cmd in commands.items():
            port = free_port()
            proc = spawn([*cmd, "--host", "127.0.0.1", "--port", str(port)], proxy_cpu, tmp / f"{name}.log", env)
            stack.callback(stop, proc)
            targets.append(Target(name, port, proc))
            started.append((name, port, proc))
        for name, port, proc in started:  # all start in parallel; the gateway's imports take a second
            wait_ready(name, port, proc, tmp / f"{name}.log")

        print(f"upstream: {upstream_label}; warming up", file=sys.stderr)
        for t in targets:
            measure(t, 1, args.connections, load_cpu)  # warm-up (connection pools, caches), discarded
        for round_no in range(1, args.rounds + 1):
            for t in targets:
                t.runs.append(run := measure(t, args.duration, args.connections, load_cpu))
                print(f"round {round_no}/{args.rounds} {t.name:<16} {run['rps']:>9,.0f} req/s", file=sys.stderr)
        for t in targets:
            if t.proc:
                t.peak_rss_mib = peak_rss_mib(t.proc.pid)

    machine = machine_info(upstream_label, proxy_cpu, load_cpu)
    rows = summarize(targets)
    print(render(rows, machine))
    settings = {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                "path": REQUEST_PATH}
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": date, "machine": machine, "settings": settings, "targets": rows},
                                    indent=2) + "\n")
    print(f"results written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # our processes are stopped by then; no traceback for a Ctrl-C
        sys.exit(130)

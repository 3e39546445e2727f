"""wrk, the closed-loop load generator: its command line and its report."""
from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}  # wrk's latency units, to milliseconds


def command(url: str, seconds: int, connections: int, cpus: str, headers: Mapping[str, str]) -> list[str]:
    """One wrk thread pinned to cpus, keep-alive connections, latency percentiles in the report."""
    cmd = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return [*cmd, url]


def run(url: str, seconds: int, connections: int, cpus: str, headers: Mapping[str, str]) -> dict[str, float]:
    out = subprocess.run(command(url, seconds, connections, cpus, headers), capture_output=True, text=True,
                         timeout=seconds + 30, check=True)
    return parse(out.stdout)


def parse(text: str) -> dict[str, float]:
    """requests, rps, p50_ms, p99_ms, socket_errors, non_2xx from wrk's --latency report."""
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


def version() -> str:
    # `wrk -v` prints its banner and exits 1.
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("\n", 1)[0].strip()

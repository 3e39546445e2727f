"""The gateway's benchmark (README.md, "Benchmark"): everything on loopback, started and stopped by one run.

Modes (one per run; JSON in .bench/<mode>.json):
  throughput (default)  wrk, closed loop, targets in interleaved rounds: direct, naive, gateway-bare,
                        gateway-full, nginx-proxy, caddy-proxy (the last two when installed)
  --latency [RATE]      open loop at a fixed rate (ops/bench/openloop.py): direct vs. gateway-full
  --workers-scaling     gateway-full with --workers 1 vs. --workers 2
  --soak SECONDS        gateway-full under wrk load, its RSS sampled every 10 s
  --instructions        naive, floor, gateway-bare, gateway-full under callgrind: instructions per request
                        (ops/bench/instructions.py), the figure to rank hot-path changes by on a noisy machine

Each proxy runs pinned to core 0, so its figures are per core; wrk (or the open-loop client), the upstream
and the bench's own Redis share core 1. Only ratios within one run are meaningful. Run it through
ops/bench/run. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import modes
import report
from rig import Rig

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The gateway's benchmark; see README.md, \"Benchmark\".")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--latency", type=int, nargs="?", const=1000, metavar="RATE",
                       help="open-loop latency at RATE req/s (default 1000): direct vs. gateway-full")
    which.add_argument("--workers-scaling", action="store_true", help="gateway-full, 1 worker vs. 2")
    which.add_argument("--soak", type=int, metavar="SECONDS", help="gateway-full under load, RSS every 10 s")
    which.add_argument("--instructions", action="store_true",
                       help="instructions per request under callgrind: naive, floor, gateway-bare, gateway-full")
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 5; 10 with --latency)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int,
                        help="wrk connections (default 50); open-loop pool with --latency (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers for --soak (default 1)")
    parser.add_argument("--with-default", action="store_true",
                        help="throughput: add the gateway-default row (the default chain, no token, no Redis)")
    parser.add_argument("--json", type=Path, help="results file (default .bench/<mode>.json)")
    args = parser.parse_args()
    if args.latency is not None and args.latency <= 0 or args.soak is not None and args.soak <= 0:
        parser.error("--latency RATE and --soak SECONDS must be positive")
    if args.workers < 1 or args.rounds < 1 or (args.duration or 1) < 1:
        parser.error("--workers, --rounds and --duration must be positive")
    if args.workers != 1 and args.soak is None:
        parser.error("--workers applies to --soak (--workers-scaling compares 1 and 2 by itself)")
    if args.with_default and (args.latency is not None or args.workers_scaling or args.soak is not None
                              or args.instructions):
        parser.error("--with-default applies to the throughput table only")
    return args


def main() -> None:
    args = parse_args()
    mode = ("latency" if args.latency is not None else "workers-scaling" if args.workers_scaling
            else "soak" if args.soak is not None else "instructions" if args.instructions else "throughput")
    tools = [("wrk", "wrk"), ("taskset", "util-linux")] + [("valgrind", "valgrind")] * (mode == "instructions")
    for tool, package in tools:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found. Install it (sudo apt-get install {package}); ops/bench/run "
                     "installs it by itself when run as root.")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("bench: needs two CPU cores (one for the proxy, one for the load, the upstream and Redis)")
    proxy_cpu, load_cpu = str(cpus[0]), str(cpus[1])
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the ExitStack below stops every process we started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kadai-bench-")))
        rig = Rig(stack, tmp, proxy_cpu, load_cpu)
        rig.start_upstream()
        redis = rig.start_redis()
        print(f"upstream: {rig.upstream_label}; redis-server {redis.version()} on port {redis.port}",
              file=sys.stderr)
        run = {"throughput": modes.throughput, "latency": modes.latency, "workers-scaling": modes.workers_scaling,
               "soak": modes.soak, "instructions": modes.instructions}[mode]
        text, settings, results = run(rig, args)

    machine = report.machine_info(proxy_cpu, load_cpu, rig.upstream_label)
    print(text)
    print(report.machine_line(machine))
    path = args.json or ROOT / ".bench" / f"{mode}.json"
    report.write_json(path, mode, machine, settings, **results)
    print(f"results written to {path}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # our processes are stopped by then; no traceback for a Ctrl-C
        sys.exit(130)

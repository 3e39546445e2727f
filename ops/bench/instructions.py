"""Instructions per request under callgrind: a figure that does not move with the machine's noise.

CPU time per request moves by 10-20 % between rounds on a shared virtual machine, more than most single
hot-path changes are worth. The user-space instructions a request costs move by about 2 % from run to
run, so they rank changes that the throughput table cannot tell apart. They leave out the kernel (system
calls) and say nothing about cache misses: a change still has to show in the throughput table.

Each target runs under `valgrind --tool=callgrind` with instrumentation off; after a warm-up, wrk drives
it with a few connections while counting is on. Valgrind slows Python 30-50 times, so the counts come
from a few thousand requests.
"""
from __future__ import annotations

import subprocess
import time
from functools import partial
from pathlib import Path

import wrk
from rig import Rig, Target

WARM_UP_S = 5


def under_callgrind(out: Path, cmd: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *cmd]


def count(target: Target, out: Path, seconds: int, connections: int, load_cpus: str) -> dict[str, float]:
    """Instructions per request over one wrk run with counting on (after a warm-up with it off)."""
    assert target.proc is not None
    pid = str(target.proc.pid)
    wrk.run(target.url, WARM_UP_S, connections, load_cpus, target.headers)
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    result = wrk.run(target.url, seconds, connections, load_cpus, target.headers)
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
    instructions, deadline = 0, time.monotonic() + 30
    while not instructions and time.monotonic() < deadline:  # valgrind writes the dump in its own time
        time.sleep(0.5)
        instructions = sum(_total(dump) for dump in out.parent.glob(out.name + "*"))
    return {"requests": result["requests"], "instructions": instructions,
            "per_request": instructions / max(result["requests"], 1),
            "errors": result["socket_errors"] + result.get("non_2xx", 0)}


def _total(dump: Path) -> int:
    """The event total of one callgrind dump: the larger of its `totals:` and `summary:` lines (a dump asked
    for with counting off has `summary: 0` and the counted total under `totals:`)."""
    found = [int(line.split()[1]) for line in dump.read_text(errors="replace").splitlines()
             if line.startswith(("totals:", "summary:"))]
    return max(found, default=0)


def targets(rig: Rig) -> list[tuple[Target, Path]]:
    """naive, floor, gateway-bare and gateway-full, each under callgrind, with the file it counts into."""
    made = []
    for name, add in (("naive", rig.add_naive), ("floor", rig.add_floor),
                      ("gateway-bare", partial(rig.add_gateway, "gateway-bare", "bare")),
                      ("gateway-full", partial(rig.add_gateway, "gateway-full", "full"))):
        out = rig.tmp / f"{name}.callgrind"
        made.append((add(wrap=partial(under_callgrind, out)), out))
    return made

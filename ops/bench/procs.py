"""Processes of the benchmark: start pinned to a core, wait until they answer, read their CPU and memory
from /proc, stop them and everything they started."""
from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS_FLOOR = 10_000
_handed_out: set[int] = set()


def listen_ports(ephemeral_range: str) -> range:
    """The ports free_port() hands out: those below the kernel's ephemeral range (empty when it starts low).

    A port from bind(0) lies inside that range, so any outgoing connection on the machine (the started
    process's own, to Redis or RabbitMQ) can take it as its source port before the process listens."""
    try:
        ephemeral_low = int(ephemeral_range.split()[0])
    except (ValueError, IndexError):
        return range(0)
    return range(LISTEN_PORTS_FLOOR, max(LISTEN_PORTS_FLOOR, ephemeral_low))


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to start; never the same twice in a process."""
    try:
        candidates = listen_ports(EPHEMERAL_RANGE.read_text())
    except OSError:
        candidates = range(0)
    for port in random.SystemRandom().sample(candidates, min(200, len(candidates))):
        if port not in _handed_out and bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: the kernel's choice, race and all
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether nothing holds the loopback port: no listener, no bound socket."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn(cmd: list[str], cpus: str, log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start cmd pinned to cpus ("0" or "0,1"); stdout to /dev/null (the gateway's access log), stderr to log."""
    # Own session: Ctrl-C reaches only us, and stop() can signal the whole group (nginx's worker too).
    with log.open("wb") as err:
        return subprocess.Popen(["taskset", "-c", cpus, *cmd], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the gateway's workers sit in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int(_stat_fields(int(entry.name))[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, ()))
    return found


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL after 10 s; then kill any descendant that outlived it."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in tree[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log: Path, body: bytes,
               headers: Mapping[str, str] | None = None, timeout: float = 20.0) -> None:
    """Wait until the target answers url with 200 and exactly body; exit with its log otherwise."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=dict(headers or {}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {name} exited at start-up:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException), \
                urllib.request.urlopen(request, timeout=2) as reply:
            if reply.status == 200 and reply.read() == body:
                return
        time.sleep(0.1)
    sys.exit(f"bench: {name} did not answer {url} correctly within {timeout:g} s:\n{log.read_text(errors='replace')[-2000:]}")


def _stat_fields(pid: int) -> list[str]:
    # Fields after the command name, which may hold spaces and ")": state is [0], ppid [1], utime [11].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid and its descendants alive now (all their threads)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of pid and its descendants alive now: system time is the kernel's work
    for them, mostly the socket reads and writes and what a loopback write runs for its receiver."""
    user = system = 0
    for each in descendants(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(each)
            user += int(fields[11])
            system += int(fields[12])
    return user / TICK, system / TICK


def _status_kib(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_by_process(pid: int, key: str = "VmRSS") -> dict[int, float]:
    """Resident memory in MiB of pid and each descendant; key VmHWM gives each one's high-water mark."""
    found = {}
    for each in descendants(pid):
        with contextlib.suppress(OSError):
            found[each] = _status_kib(each, key) / 1024
    return found


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of pid and its descendants, summed."""
    return sum(rss_by_process(pid, key).values())

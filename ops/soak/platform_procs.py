"""The platform's processes, found by the TCP ports they listen on (the gateway's and its services'), and
their resident memory, from /proc (Linux; the platform on this machine)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_LISTEN = "0A"


def listening_inodes(table: str, ports: Iterable[int]) -> dict[int, int]:
    """Socket inode -> port of the listening sockets on `ports` in a /proc/net/tcp(6) table."""
    wanted = set(ports)
    found = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        if port in wanted:
            found[int(fields[9])] = port
    return found


def vm_rss_kib(status: str) -> int | None:
    """VmRSS of a /proc/<pid>/status text, in KiB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def listeners(ports: Iterable[int]) -> dict[int, set[int]]:
    """pid -> the ports among `ports` it listens on."""
    inodes: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes.update(listening_inodes(Path(table).read_text(), ports))
    found: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    found.setdefault(int(entry.name), set()).add(inodes[int(target[8:-1])])
    return found


def rss(pids: Iterable[int]) -> dict[int, int]:
    """pid -> RSS in KiB, for the pids still running."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            value = vm_rss_kib(Path(f"/proc/{pid}/status").read_text())
            if value is not None:
                found[pid] = value
    return found


def describe(pid: int, ports: Iterable[int]) -> str:
    """A short name: the command (`kadai up`, `kadai service user`, ...) and the ports it serves."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [Path(arg.decode(errors="replace")).name for arg in argv if arg][:4]
    except OSError:
        words = ["?"]
    shown = " ".join(word for word in words if not word.startswith("python"))
    served = sorted(ports)
    return f"{shown} :{served[0]}" if len(served) == 1 else f"{shown} ({len(served)} ports)"

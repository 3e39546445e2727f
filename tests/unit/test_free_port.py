"""The ports tests hand to the servers they start: outside the kernel's ephemeral range, so no outgoing
connection can take one as its source port before the server listens on it."""
from __future__ import annotations

import socket

from ops.bench.procs import EPHEMERAL_RANGE, LISTEN_PORTS_FLOOR, free_port, listen_ports


def test_listen_ports_lie_below_the_ephemeral_range() -> None:
    assert listen_ports("32768\t60999\n") == range(LISTEN_PORTS_FLOOR, 32768)


def test_an_ephemeral_range_that_starts_low_leaves_no_listen_ports() -> None:
    assert listen_ports("1024 65535") == range(0)
    assert listen_ports(f"{LISTEN_PORTS_FLOOR} 65535") == range(0)


def test_an_unreadable_ephemeral_range_leaves_no_listen_ports() -> None:
    assert listen_ports("") == range(0)
    assert listen_ports("low high") == range(0)


def test_free_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = (int(bound) for bound in EPHEMERAL_RANGE.read_text().split())
    assert low > LISTEN_PORTS_FLOOR, f"the ephemeral range {low}-{high} leaves no ports to listen on below it"
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(not low <= port <= high for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))

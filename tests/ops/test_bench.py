"""The benchmark's own logic (ops/bench): wrk's report, percentiles, HTTP framing of the open-loop client,
the summaries, and the registries the gateway rows run on. The benchmark itself never runs here."""
from __future__ import annotations

import math
import os
import string
import sys
import time
from typing import Any

import pytest

from gateway.config.loader import parse_registry
from tests.support import REPO

BENCH = REPO / "ops" / "bench"
sys.path.insert(0, str(BENCH))  # the bench's modules import one another as scripts do

import openloop  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import wrk  # noqa: E402
from rig import Target  # noqa: E402

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:3998/x
  1 threads and 5 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   847.63us    1.40ms  12.41ms   86.27%
    Req/Sec    16.21k     7.49k   30.49k    70.00%
  Latency Distribution
     50%  {p50}
     75%  840.00us
     90%    2.80ms
     99%    {p99}
  16188 requests in 1.00s, 3.72MB read
{errors}Requests/sec:  16119.35
Transfer/sec:      3.70MB
"""


@pytest.mark.parametrize(
    ("p50", "p99", "errors", "expected"),
    [
        ("231.00us", "6.49ms", "", {"p50_ms": 0.231, "p99_ms": 6.49, "socket_errors": 0, "non_2xx": 0}),
        ("1.50s", "1.00m", "", {"p50_ms": 1500.0, "p99_ms": 60000.0, "socket_errors": 0, "non_2xx": 0}),
        ("2.00ms", "9.00ms",
         "  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 17\n",
         {"p50_ms": 2.0, "p99_ms": 9.0, "socket_errors": 10, "non_2xx": 17}),
    ],
    ids=["us-and-ms", "s-and-m", "errors"],
)
def test_wrk_report_is_parsed(p50: str, p99: str, errors: str, expected: dict[str, float]) -> None:
    result = wrk.parse(WRK_OUTPUT.format(p50=p50, p99=p99, errors=errors))
    assert result["requests"] == 16188
    assert result["rps"] == 16119.35
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)


def test_wrk_report_without_percentiles_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no 50% latency"):
        wrk.parse("  10 requests in 1.00s, 1KB read\nRequests/sec: 10.0\n")


def test_wrk_command_sends_the_headers() -> None:
    cmd = wrk.command("http://127.0.0.1:1/x", 5, 50, "1", {"Authorization": "Bearer t"})
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert cmd[cmd.index("-H") + 1] == "Authorization: Bearer t"
    assert cmd[-1] == "http://127.0.0.1:1/x"


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 99, 4.0),
        (list(map(float, range(1, 1001))), 99.9, 999.0),
        (list(map(float, range(1, 1001))), 99, 990.0),
        ([5.0], 50, 5.0),
    ],
    ids=["median-of-four", "p99-of-four", "p99.9-of-1000", "p99-of-1000", "single"],
)
def test_nearest_rank_percentile(values: list[float], pct: float, expected: float) -> None:
    assert openloop.percentile(values, pct) == expected


def test_summary_is_in_milliseconds_and_empty_is_nan() -> None:
    summary = openloop.summary_ms([0.003, 0.001, 0.002])
    assert summary["p50"] == pytest.approx(2.0)
    assert summary["max"] == pytest.approx(3.0)
    assert set(summary) == {"p50", "p90", "p99", "p99.9", "max"}
    assert math.isnan(openloop.summary_ms([])["p99"])


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], (200, True)),
        ([b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nhel", b"lo"], (200, True)),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", b"lo\r\n0\r\n", b"\r\n"], (200, True)),
        ([b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"], (204, True)),
        ([b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"], (503, False)),
        ([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], (200, False)),
    ],
    ids=["content-length", "split-everywhere", "chunked-split", "204-no-body", "connection-close", "http-1.0"],
)
def test_response_framing(chunks: list[bytes], expected: tuple[int, bool]) -> None:
    reader = openloop.ResponseReader()
    results = [reader.feed(chunk) for chunk in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)  # nothing is reported before the last byte
    assert results[-1] == expected
    assert reader.buffer == b""


def test_two_responses_in_one_read_are_told_apart() -> None:
    reader = openloop.ResponseReader()
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert reader.feed(one + one[:10]) == (200, True)
    assert reader.feed(one[10:]) == (200, True)


def _target(name: str, rps: list[float], **extra: Any) -> Target:
    target = Target(name, 1)
    target.runs = [{"rps": value, "p50_ms": 1.0, "p99_ms": 2.0, "non_2xx": 0, "socket_errors": 0, **extra}
                   for value in rps]
    return target


def test_summary_rows_are_medians_over_rounds_against_naive() -> None:
    rows = report.summarize([_target("naive", [900, 1000, 1100]), _target("gateway", [1400, 1500, 3000]),
                             _target("broken", [10], non_2xx=3)])
    naive, gateway, broken = rows
    assert (gateway["rps_median"], gateway["rps_min"], gateway["rps_max"]) == (1500, 1400, 3000)
    assert gateway["x_naive"] == pytest.approx(1.5)
    assert naive["x_naive"] == pytest.approx(1.0)
    assert broken["non_2xx"] == 3
    text = report.render_throughput(rows)
    assert "broken (!)" in text and "gateway (!)" not in text


def test_the_kernel_share_of_each_row_is_reported_beside_its_cpu() -> None:
    rows = report.summarize([_target("naive", [1000, 1000], cpu_us_per_req=140.0, kernel_us_per_req=40.0),
                             _target("direct", [9000, 9000])])
    naive, direct = rows
    assert (naive["cpu_us_per_req"], naive["kernel_us_per_req"]) == (140.0, 40.0)
    assert direct["kernel_us_per_req"] is None  # no proxy process of its own
    header, _rule, naive_line, direct_line = report.render_throughput(rows).splitlines()[:4]
    columns = [cell.strip() for cell in header.split("|")]
    kernel = columns.index("of it kernel")
    assert columns[kernel - 1] == "CPU us/req"
    assert [cell.strip() for cell in naive_line.split("|")][kernel - 1:kernel + 1] == ["140", "40"]
    assert [cell.strip() for cell in direct_line.split("|")][kernel] == "-"


def test_cpu_split_tells_the_kernel_s_time_from_the_process_s_own() -> None:
    pid = os.getpid()
    user, system = procs.cpu_split(pid)
    deadline = time.monotonic() + 0.5
    with open("/dev/zero", "rb", buffering=0) as zeros:
        while time.monotonic() < deadline:  # the kernel fills 1 MiB per call: nearly all of it kernel time
            zeros.read(1 << 20)
    user_after, system_after = procs.cpu_split(pid)
    assert system_after - system >= 0.1
    assert system_after - system > user_after - user
    assert procs.cpu_seconds(pid) == pytest.approx(user_after + system_after, abs=0.05)


@pytest.mark.parametrize(("failed_open", "flagged"), [(0, False), (120, True)], ids=["all-decided", "failed-open"])
def test_redis_line_flags_requests_that_skipped_the_limiter(failed_open: int, flagged: bool) -> None:
    line = report.redis_line({"target": "full", "redis_us_per_req": 50.0, "redis_calls_per_req": 1.0,
                              "failed_open": failed_open})
    assert "~20,000 limiter decisions/s" in line  # one decision per request, 50 us of Redis CPU each
    assert ("(!) 120 of full's requests passed without a limiter decision" in line) is flagged


def _registry(name: str) -> Any:
    text = string.Template((BENCH / "registries" / f"{name}.yaml").read_text()).substitute(upstream_port=3001)
    config = parse_registry(text.encode(), f"{name}.yaml")
    (route,) = config.routes
    return route


def test_full_registry_runs_the_production_chain_on_an_authenticated_route() -> None:
    route = _registry("full")
    assert route.options.auth is True
    assert set(route.middleware) == {"request_id", "metrics", "access_log", "jwt", "rate_limit", "retry", "breaker"}
    tiers = {tier.name: (tier.limit, tier.window_ms) for tier in route.middleware["rate_limit"].tiers()}
    assert tiers == {"second": (10**9, 1000), "ten_seconds": (10**9, 10_000), "minute": (10**9, 60_000)}


@pytest.mark.parametrize(("name", "chain"), [("bare", set()), ("default", {"request_id", "metrics", "access_log",
                                                                              "jwt", "retry", "breaker"})],
                         ids=["bare", "default"])
def test_other_registries_need_no_token_and_no_redis(name: str, chain: set[str]) -> None:
    route = _registry(name)
    assert route.options.auth is False
    assert set(route.middleware) == chain

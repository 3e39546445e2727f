"""The soak's own logic (ops/soak): percentiles, what counts as an unintended error, the end-of-run event
check, the memory rows, the report and its exit code, /proc parsing. The soak itself never runs here."""
from __future__ import annotations

import math
import sys
import time
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from tests.integration.helpers import StartUpstream
from tests.support import REPO

sys.path.insert(0, str(REPO / "ops" / "soak"))  # the soak's modules import one another as scripts do

import platform_procs as procs  # noqa: E402
import soak  # noqa: E402
import tally  # noqa: E402

SELLER_ID = "user_seller"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([float(n) for n in range(1, 101)], 95, 95.05),
        ([float(n) for n in range(1, 101)], 99, 99.01),
    ],
    ids=["one-p50", "one-p99", "even-median", "unsorted", "p0", "p100", "p95", "p99"],
)
def test_percentiles_interpolate_between_the_closest_ranks(values: list[float], q: float, expected: float) -> None:
    assert tally.percentile(values, q) == pytest.approx(expected)


def test_the_percentile_of_nothing_is_not_a_number() -> None:
    assert math.isnan(tally.percentile([], 50))


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("burst", "429", False),
        ("burst", "200", False),
        ("burst", "503", True),
        ("read", "429", True),
        ("read", "200", False),
        ("order", "201", False),
        ("read", "304", False),
        ("order", "409", True),
        ("read", "502", True),
        ("read", "ClientConnectorError", True),
        ("check", "TimeoutError", True),
    ],
    ids=["burst-429", "burst-200", "burst-503", "read-429", "read-200", "order-201", "read-304", "order-409",
         "read-502", "no-answer", "check-timeout"],
)
def test_only_the_bursts_429s_are_intended(kind: str, status: str, error: bool) -> None:
    assert tally.is_error(kind, status) is error


def test_a_tally_counts_requests_errors_and_latencies_by_kind() -> None:
    counts = tally.Tally()
    for kind, status, seconds in [
        ("read", 200, 0.010), ("read", 200, 0.030), ("order", 201, 0.020), ("burst", 429, 0.001),
        ("burst", 200, 0.002), ("read", 429, 0.003), ("order", "ServerDisconnectedError", None),
        ("setup", 201, 0.5),
    ]:
        counts.record(kind, status, seconds)

    assert counts.requests() == 8
    assert counts.requests(tally.LOAD_KINDS) == 5
    assert counts.errors() == Counter({"read 429": 1, "order ServerDisconnectedError": 1})
    assert counts.intended() == 1
    # The load's percentiles (3, 10, 20, 30 ms) leave out setup and bursts; a request without an answer has
    # no latency.
    assert counts.summary(tally.LOAD_KINDS) == {"p50": 15.0, "p95": 28.5, "p99": 29.7}
    assert counts.statuses["read"] == Counter({"200": 2, "429": 1})


def orders() -> list[tally.Order]:
    return [
        tally.Order("ord_1", "user_a", 2, 5000, declined=False),
        tally.Order("ord_2", "user_b", 1, 1013, declined=True),
    ]


def complete() -> tally.Observed:
    """What the platform shows when every event of orders() arrived once."""
    buyer = {
        "n1": ("ord_1", "order.confirmation", "sent"),
        "n2": ("ord_1", "payment.receipt", "sent"),
        "n3": ("ord_2", "order.confirmation", "sent"),
        "n4": ("ord_2", "payment.failed", "sent"),
    }
    seller = {
        "n5": ("ord_1", "order.new", "sent"),
        "n6": ("ord_1", "order.paid", "sent"),
        "n7": ("ord_2", "order.new", "sent"),
    }
    analytics = {
        "sellerId": SELLER_ID, "orders": 2, "paidOrders": 1, "paymentFailures": 1, "unitsSold": 2,
        "revenueCents": {"USD": 5000}, "notificationsSent": 7,
    }
    return tally.Observed({"ord_1": "paid", "ord_2": "payment_failed"}, {"buyer": buyer, "seller": seller}, analytics)


def test_every_event_arrived_once_leaves_no_problem() -> None:
    assert tally.event_problems(orders(), complete(), "USD") == []


def _drop(seen: tally.Observed, recipient: str, message: str) -> tally.Observed:
    del seen.messages[recipient][message]
    return seen


def _twice(seen: tally.Observed) -> tally.Observed:
    seen.messages["buyer"]["n8"] = ("ord_1", "payment.receipt", "sent")
    return seen


def _status(seen: tally.Observed, order_id: str, status: str | None) -> tally.Observed:
    if status is None:
        del seen.statuses[order_id]
    else:
        seen.statuses[order_id] = status
    return seen


def _pending(seen: tally.Observed) -> tally.Observed:
    seen.messages["seller"]["n7"] = ("ord_2", "order.new", "pending")
    return seen


def _analytics(seen: tally.Observed, **changes: object) -> tally.Observed:
    seen.analytics = {**seen.analytics, **changes}
    return seen


@pytest.mark.parametrize(
    ("observe", "problem"),
    [
        (lambda seen: _status(seen, "ord_1", "pending"), "order ord_1: pending, not paid"),
        (lambda seen: _status(seen, "ord_2", None), "order ord_2: not listed, not payment_failed"),
        (lambda seen: _drop(seen, "buyer", "n2"),
         "order ord_1: buyer messages {'order.confirmation': 1}, not {'order.confirmation': 1, 'payment.receipt': 1}"),
        (lambda seen: _drop(seen, "seller", "n7"), "order ord_2: seller messages {}, not {'order.new': 1}"),
        (_twice, "order ord_1: buyer messages {'order.confirmation': 1, 'payment.receipt': 2}, "
                 "not {'order.confirmation': 1, 'payment.receipt': 1}"),
        (_pending, "order ord_2: 1 message(s) not sent yet"),
        (lambda seen: _analytics(seen, paidOrders=2), "analytics paidOrders: 2, not 1"),
        (lambda seen: _analytics(seen, revenueCents={"USD": 10000}),
         "analytics revenueCents: {'USD': 10000}, not {'USD': 5000}"),
        (lambda seen: _analytics(seen, notificationsSent=6), "analytics notificationsSent: 6, not 7"),
        (lambda seen: setattr(seen, "analytics", {}) or seen, "analytics orders: None, not 2"),
    ],
    ids=["not-paid", "not-listed", "buyer-missing", "seller-missing", "twice", "unsent", "paid-count", "revenue",
         "notifications", "no-analytics"],
)
def test_a_missing_or_repeated_effect_is_a_problem(observe: object, problem: str) -> None:
    seen = observe(complete())  # type: ignore[operator]
    assert problem in tally.event_problems(orders(), seen, "USD")


def test_memory_rows_give_each_process_its_first_last_and_highest_sample() -> None:
    memory = tally.Memory(names={10: "kadai up (9 ports)", 20: "kadai service user :3001", 30: "gone"})
    memory.add(0.0, {10: 80 * 1024, 20: 40 * 1024})
    memory.add(10.0, {10: 95 * 1024, 20: 41 * 1024})
    memory.add(20.0, {10: 90 * 1024})

    assert memory.rows() == [
        {"pid": 10, "name": "kadai up (9 ports)", "startMiB": 80.0, "endMiB": 90.0, "maxMiB": 95.0, "changeMiB": 10.0,
         "warmMiB": None, "lateMiB": None, "perMinuteMiB": None, "samples": [[0, 80.0], [10, 95.0], [20, 90.0]]},
        {"pid": 20, "name": "kadai service user :3001", "startMiB": 40.0, "endMiB": 41.0, "maxMiB": 41.0,
         "changeMiB": 1.0, "warmMiB": None, "lateMiB": None, "perMinuteMiB": None,
         "samples": [[0, 40.0], [10, 41.0]]},
    ]


def figures(*, errors: bool = False, problems: tuple[str, ...] = ()) -> dict[str, object]:
    counts = tally.Tally()
    counts.record("read", 200, 0.004)
    counts.record("order", 201, 0.012)
    counts.record("burst", 429, 0.001)
    if errors:
        counts.record("read", 502, 0.002)
    memory = tally.Memory(names={10: "kadai up (9 ports)"})
    memory.add(0.0, {10: 81920})
    memory.add(60.0, {10: 82944})
    return tally.report(counts, memory, list(problems), 60.0, 1)


@pytest.mark.parametrize(
    ("errors", "problems", "code"),
    [(False, (), 0), (True, (), 1), (False, ("order ord_1: pending, not paid",), 1)],
    ids=["clean", "unintended-error", "missing-event"],
)
def test_the_exit_code_fails_on_an_unintended_error_or_a_missing_event(
    errors: bool, problems: tuple[str, ...], code: int
) -> None:
    assert tally.exit_code(figures(errors=errors, problems=problems)) == code


def test_the_report_shows_every_figure() -> None:
    report = figures(errors=True, problems=("order ord_1: pending, not paid",))
    assert (report["requests"], report["intended429"], report["missingEvents"]) == (3, 1, 1)
    text = tally.render(report)

    assert text.splitlines()[0] == "soak: 60 s, 3 requests (0.1/s), 1 orders"
    assert "intended 429s (bursts): 1" in text
    assert "unintended errors: read 502: 1" in text
    assert "  burst      429: 1" in text
    assert "kadai up (9 ports)          80.0      81.0      81.0      +1.0             (too few samples)   (pid 10)" in text
    assert "missing events: 1\n  order ord_1: pending, not paid" in text


TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 0100007F:0FA0 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0
"""


def test_listening_sockets_are_found_by_port() -> None:
    # 0x0FA0 = 4000 (listening, and one established connection that is not counted), 0x0BB9 = 3001, 0x1F90 = 8080.
    assert procs.listening_inodes(TCP_TABLE, {4000, 3001}) == {111: 4000, 222: 3001}


def test_rss_is_read_from_the_status_file() -> None:
    assert procs.vm_rss_kib("Name:\tkadai\nVmPeak:\t  200000 kB\nVmRSS:\t   86528 kB\n") == 86528
    assert procs.vm_rss_kib("Name:\tkthreadd\n") is None


@pytest.mark.parametrize(
    "argv",
    [["--duration", "0"], ["--customers", "0"], ["--rate", "0"], ["--rate", "9"]],
    ids=["no-duration", "no-customers", "no-rate", "over-the-limit"],
)
def test_arguments_that_cannot_make_a_soak_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        soak.parse(argv)
    assert exited.value.code == 2
    assert "--rate in (0, 8]" in capsys.readouterr().err


def test_the_defaults_are_the_issues_ten_minutes_on_port_4000() -> None:
    args = soak.parse([])
    assert (args.url, args.duration, args.burst_every) == ("http://127.0.0.1:4000", 600, 60)


def test_memory_trend_after_warm_up_is_median_to_median_per_minute() -> None:
    memory = tally.Memory(names={10: "kadai up (9 ports)"})
    memory.add(0.0, {10: 60 * 1024})  # start-up, left out
    for minute in range(1, 10):  # +0.5 MiB a minute once warm, with one 32 MiB burst given back
        memory.add(minute * 60.0, {10: int((80 + 0.5 * minute + (32 if minute == 5 else 0)) * 1024)})
    memory.add(600.0, {10: 200 * 1024})  # a late burst: one sample among the last third moves no median
    (row,) = memory.rows(warm_up=60.0)
    assert row["warmMiB"] == 81.0 and row["lateMiB"] == 84.5
    assert row["perMinuteMiB"] == 0.5  # 81.0 at minute 2, 84.5 at minute 9
    assert row["startMiB"] == 60.0 and row["maxMiB"] == 200.0


def test_memory_trend_of_a_flat_process_is_zero_and_needs_six_samples() -> None:
    memory = tally.Memory(names={10: "kadai up (9 ports)"})
    for second in range(0, 540, 60):
        memory.add(float(second), {10: 90 * 1024 + (512 if second % 120 else 0)})
    assert memory.rows(warm_up=0.0)[0]["perMinuteMiB"] == 0.0
    short = tally.Memory(names={10: "kadai up (9 ports)"})
    for second in range(5):
        short.add(float(second), {10: 90 * 1024})
    assert short.rows()[0]["perMinuteMiB"] is None


async def test_a_client_refreshes_its_token_before_it_expires(start_upstream: StartUpstream) -> None:
    """A soak longer than a token's life (an hour) goes on as a real client would: refreshed a minute early."""
    refreshes: list[object] = []

    async def refresh(request: web.Request) -> web.Response:
        refreshes.append((await request.json())["refreshToken"])
        data = {"accessToken": "fresh", "refreshToken": "refresh-2", "tokenType": "Bearer", "expiresIn": 3600}
        return web.json_response({"success": True, "data": data})

    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer fresh":
            return web.json_response({"success": False, "error": "expired"}, status=401)
        return web.json_response({"success": True, "data": {}})

    app = web.Application()
    app.router.add_post("/api/v1/auth/refresh", refresh)
    app.router.add_get("/api/v1/things", guarded)
    base = await start_upstream(app)
    async with aiohttp.ClientSession() as session:
        api = soak.Api(session, base, tally.Tally())
        user = soak.User("c@example.com", soak.Pacer(0.0))
        api.hold(user, {"accessToken": "old", "refreshToken": "refresh-1", "expiresIn": 3600})
        assert user.renew_at - time.monotonic() == pytest.approx(3540, abs=5)  # a minute before it expires
        user.renew_at = time.monotonic()  # ... and that time has come

        status, _ = await api.call("read", "GET", "/api/v1/things", user)
        again, _ = await api.call("read", "GET", "/api/v1/things", user)

    assert (status, again) == (200, 200)
    assert refreshes == ["refresh-1"]  # once: the new token has an hour
    assert (user.token, user.refresh_token) == ("fresh", "refresh-2")
    assert api.counts.statuses["refresh"] == Counter({"200": 1})

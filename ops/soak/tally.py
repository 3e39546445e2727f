"""What a soak run measured and what it concludes: requests and statuses by kind, latency percentiles, the
platform's memory, and the orders whose events did not all arrive. Pure logic, tested in tests/ops/test_soak.py."""
from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

INTENDED = frozenset({("burst", "429")})
"""(kind, status) pairs the soak provokes on purpose: the over-limit bursts' 429s."""
LOAD_KINDS = ("read", "order", "login", "refresh", "seller")
"""Kinds whose latencies make the run's percentiles (setup, bursts and the final checks are apart)."""

BUYER_MESSAGES = {False: Counter({"order.confirmation": 1, "payment.receipt": 1}),
                  True: Counter({"order.confirmation": 1, "payment.failed": 1})}
SELLER_MESSAGES = {False: Counter({"order.new": 1, "order.paid": 1}), True: Counter({"order.new": 1})}
"""Templates notification-service records once per order (key: declined), to its buyer and its seller."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of values, linearly interpolated between the closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def is_error(kind: str, status: str) -> bool:
    """An answer the soak did not want: 4xx/5xx or no answer at all, except the intended 429s."""
    return (kind, status) not in INTENDED and not (status.isdigit() and int(status) < 400)


@dataclass
class Tally:
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    """kind -> status ("200", "429", or the exception's name when nothing answered) -> count."""
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """kind -> milliseconds of every answered request."""

    def record(self, kind: str, status: int | str, seconds: float | None) -> None:
        self.statuses.setdefault(kind, Counter())[str(status)] += 1
        if seconds is not None:
            self.latencies.setdefault(kind, []).append(seconds * 1000)

    def requests(self, kinds: Iterable[str] | None = None) -> int:
        return sum(sum(self.statuses.get(kind, Counter()).values()) for kind in kinds or self.statuses)

    def errors(self) -> Counter[str]:
        """"kind status" -> count of unintended errors."""
        return Counter({f"{kind} {status}": count for kind, counts in self.statuses.items()
                        for status, count in counts.items() if is_error(kind, status)})

    def intended(self) -> int:
        return sum(self.statuses.get(kind, Counter())[status] for kind, status in INTENDED)

    def summary(self, kinds: Iterable[str]) -> dict[str, float]:
        values = [value for kind in kinds for value in self.latencies.get(kind, [])]
        return {f"p{q}": round(percentile(values, q), 2) for q in (50, 95, 99)}


@dataclass(frozen=True, slots=True)
class Order:
    """An order the soak placed (201), and what it should become."""

    order_id: str
    buyer: str
    quantity: int
    amount_cents: int
    declined: bool

    @property
    def final_status(self) -> str:
        return "payment_failed" if self.declined else "paid"


@dataclass
class Observed:
    """What the platform shows through the gateway at the end."""

    statuses: dict[str, str] = field(default_factory=dict)
    """order ID -> status."""
    messages: dict[str, dict[str, tuple[str, str, str]]] = field(default_factory=dict)
    """recipient ("buyer" or "seller") -> notification ID -> (order ID, template, status)."""
    analytics: Mapping[str, Any] = field(default_factory=dict)
    """The seller's /analytics/sellers/{id} data."""


def event_problems(orders: Sequence[Order], seen: Observed, currency: str) -> list[str]:
    """Every way the placed orders' events did not all arrive exactly once; empty when they did."""
    problems = []
    templates: dict[str, dict[str, Counter[str]]] = {"buyer": {}, "seller": {}}
    unsent: Counter[str] = Counter()
    for recipient, messages in seen.messages.items():
        for order_id, template, status in messages.values():
            templates[recipient].setdefault(order_id, Counter())[template] += 1
            unsent[order_id] += status != "sent"
    for order in orders:
        status = seen.statuses.get(order.order_id)
        if status != order.final_status:
            problems.append(f"order {order.order_id}: {status or 'not listed'}, not {order.final_status}")
        for recipient, wanted in (("buyer", BUYER_MESSAGES), ("seller", SELLER_MESSAGES)):
            got = templates[recipient].get(order.order_id, Counter())
            if got != wanted[order.declined]:
                problems.append(f"order {order.order_id}: {recipient} messages {dict(got)}, "
                                f"not {dict(wanted[order.declined])}")
        if unsent[order.order_id]:
            problems.append(f"order {order.order_id}: {unsent[order.order_id]} message(s) not sent yet")
    problems.extend(analytics_problems(orders, seen.analytics, currency))
    return problems


def analytics_problems(orders: Sequence[Order], metrics: Mapping[str, Any], currency: str) -> list[str]:
    """The seller's analytics against the orders (the seller is the run's own: nothing else counts there)."""
    paid = [order for order in orders if not order.declined]
    wanted = {
        "orders": len(orders),
        "paidOrders": len(paid),
        "paymentFailures": len(orders) - len(paid),
        "unitsSold": sum(order.quantity for order in paid),
        "revenueCents": {currency: sum(order.amount_cents for order in paid)} if paid else {},
        "notificationsSent": sum(sum((BUYER_MESSAGES[o.declined] + SELLER_MESSAGES[o.declined]).values())
                                 for o in orders),
    }
    return [f"analytics {name}: {metrics.get(name)}, not {value}"
            for name, value in wanted.items() if metrics.get(name) != value]


@dataclass
class Memory:
    """RSS samples of the platform's processes: (seconds into the run, {pid: KiB})."""

    names: dict[int, str] = field(default_factory=dict)
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def add(self, at: float, rss: Mapping[int, int]) -> None:
        self.samples.append((at, dict(rss)))

    def rows(self, warm_up: float = 0.0) -> list[dict[str, Any]]:
        """Per process: RSS at the first and last sample, the highest, the change, the trend after
        `warm_up` seconds (see trend()), and every sample, in MiB."""
        rows = []
        for pid, name in self.names.items():
            series = [(at, rss[pid] / 1024) for at, rss in self.samples if pid in rss]
            if not series:
                continue
            first, last = series[0][1], series[-1][1]
            rows.append({"pid": pid, "name": name, "startMiB": round(first, 1), "endMiB": round(last, 1),
                         "maxMiB": round(max(mib for _at, mib in series), 1), "changeMiB": round(last - first, 1),
                         **trend([(at, mib) for at, mib in series if at >= warm_up]),
                         "samples": [[round(at), round(mib, 1)] for at, mib in series]})
        return rows


def trend(series: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """How RSS moves once warm: the median of the first third of the samples against the median of the
    last third, as MiB at each end and MiB per minute between their midpoints. Medians, so a burst that
    is given back (a password hash's 32 MiB) does not read as growth. None with fewer than 6 samples."""
    if len(series) < 6:
        return {"warmMiB": None, "lateMiB": None, "perMinuteMiB": None}
    third = len(series) // 3
    early, late = series[:third], series[-third:]
    early_mib, late_mib = statistics.median(m for _at, m in early), statistics.median(m for _at, m in late)
    minutes = (statistics.median(at for at, _m in late) - statistics.median(at for at, _m in early)) / 60
    return {"warmMiB": round(early_mib, 1), "lateMiB": round(late_mib, 1),
            "perMinuteMiB": round((late_mib - early_mib) / minutes, 3) if minutes > 0 else None}


def report(
    tally: Tally, memory: Memory, problems: Sequence[str], duration: float, orders: int, warm_up: float = 0.0
) -> dict[str, Any]:
    """The run's figures, as --json writes them."""
    load = tally.requests(LOAD_KINDS)
    return {
        "durationSeconds": round(duration, 1),
        "requests": load,
        "requestsPerSecond": round(load / duration, 1) if duration else 0.0,
        "ordersPlaced": orders,
        "latencyMs": {"all": tally.summary(LOAD_KINDS), **{kind: tally.summary([kind]) for kind in LOAD_KINDS}},
        "statuses": {kind: dict(sorted(counts.items())) for kind, counts in sorted(tally.statuses.items())},
        "intended429": tally.intended(),
        "unintendedErrors": dict(tally.errors()),
        "memoryWarmUpSeconds": round(warm_up),
        "memory": memory.rows(warm_up),
        "missingEvents": len(problems),
        "problems": list(problems[:50]),
    }


def render(figures: Mapping[str, Any]) -> str:
    """The report as text."""
    lines = [
        f"soak: {figures['durationSeconds']:g} s, {figures['requests']} requests "
        f"({figures['requestsPerSecond']:g}/s), {figures['ordersPlaced']} orders",
        "latency (ms)        p50       p95       p99",
    ]
    for kind, summary in figures["latencyMs"].items():
        lines.append(f"  {kind:<10} {summary['p50']:>9.2f} {summary['p95']:>9.2f} {summary['p99']:>9.2f}")
    lines.append("statuses")
    for kind, counts in figures["statuses"].items():
        lines.append(f"  {kind:<10} " + ", ".join(f"{status}: {count}" for status, count in counts.items()))
    lines.append(f"intended 429s (bursts): {figures['intended429']}")
    errors = figures["unintendedErrors"]
    lines.append("unintended errors: " + (", ".join(f"{key}: {n}" for key, n in errors.items()) if errors else "0"))
    lines.append("memory (RSS, MiB)           start       end       max    change      warm      late   per min")
    for row in figures["memory"]:
        warm = (f"{row['warmMiB']:>9.1f} {row['lateMiB']:>9.1f} {row['perMinuteMiB']:>+9.3f}"
                if row["perMinuteMiB"] is not None else f"{'(too few samples)':>29}")
        lines.append(f"  {row['name'][:24]:<24} {row['startMiB']:>7.1f} {row['endMiB']:>9.1f} "
                     f"{row['maxMiB']:>9.1f} {row['changeMiB']:>+9.1f} {warm}   (pid {row['pid']})")
    lines.append(f"  warm / late / per min: medians of the first and last thirds of the samples after "
                 f"{figures['memoryWarmUpSeconds']} s of warm-up, and the change per minute between them")
    lines.append(f"missing events: {figures['missingEvents']}")
    lines.extend(f"  {problem}" for problem in figures["problems"][:10])
    return "\n".join(lines)


def exit_code(figures: Mapping[str, Any]) -> int:
    """0 when nothing went wrong but the intended 429s, else 1."""
    return 1 if figures["unintendedErrors"] or figures["missingEvents"] else 0

"""The start-up text of `kadai up`: one plain block saying what runs where, on which backends, and what to
open. It goes to stderr, apart from the log lines on stdout."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.platform.backends import Backends

_LABEL = 22


@dataclass(frozen=True, slots=True)
class ServiceLine:
    name: str
    where: tuple[str, ...]
    """Listening URLs when started."""
    state: str
    """The gateway's view (healthy, unhealthy: ..., unknown), or why it was not started."""
    started: bool


@dataclass(frozen=True, slots=True)
class Facts:
    gateway_url: str
    registry: str
    routes: int
    services: Sequence[ServiceLine]
    backends: Backends
    data_dir: str
    events_prefix: str
    management_url: str | None
    """RabbitMQ's management UI when the platform uses a broker and the UI answers."""
    seconds: float
    pid: int
    log_format: str


def public_host(host: str) -> str:
    """The host to put in URLs a person opens: a wildcard address is reached through localhost."""
    return "localhost" if host in ("", "0.0.0.0", "::") else host


def _row(label: str, text: str, indent: int = 2) -> str:
    return f"{' ' * indent}{label:<{_LABEL - indent + 2}}{text}".rstrip()


def render(facts: Facts) -> str:
    backends = facts.backends
    redis, amqp = backends.redis, backends.amqp
    started = sum(1 for line in facts.services if line.started)
    services = f"{started} service" if started == 1 else f"{started} services"
    headline = (
        f"Kadai platform is up in {facts.seconds:.1f}s: the gateway and {services} in one process "
        f"(pid {facts.pid}), {backends.mode} backends"
    )
    lines = [headline]
    if backends.mode != "external":
        lines += [
            "  embedded: inside this process, nothing else to install. For development only: other processes",
            "  do not share its rate limits or its events, and events still in flight end with it",
        ]
    lines += ["", _row("gateway", f"{facts.gateway_url}   {facts.registry}, {facts.routes} routes")]
    for line in facts.services:
        if line.started:
            lines.append(_row(line.name, f"{', '.join(line.where)}   {line.state}"))
        else:
            lines.append(_row(line.name, f"not started: {line.state}"))

    lines += ["", "  backends"]
    if redis.mode == "embedded":
        lines.append(_row("rate limits", f"in-process (embedded): {redis.reason}", 4))
        lines.append(_row("response cache", "off (it needs Redis)", 4))
    else:
        lines.append(_row("rate limits", f"Redis at {redis.shown_url} (external, {redis.reason})", 4))
        lines.append(_row("response cache", f"Redis at {redis.shown_url}, on the routes that enable it", 4))
    if amqp.mode == "embedded":
        lines.append(_row("events", f"in-process bus (embedded): {amqp.reason}", 4))
    else:
        lines.append(
            _row("events", f"RabbitMQ at {amqp.shown_url} (external, {amqp.reason}), prefix {facts.events_prefix}", 4)
        )
    lines.append(_row("databases", f"{facts.data_dir}/<service>.sqlite3", 4))

    base = facts.gateway_url
    lines += [
        "",
        "  open",
        _row("API", f"{base}/api/v1/...   (routes: kadai routes; a walk-through: kadai demo)", 4),
        _row("API docs", f"{base}/api/docs", 4),
        _row("dashboard", f"{base}/dashboard", 4),
        _row("health", f"{base}/api/v1/health   (details: {base}/api/v1/health/detailed)", 4),
    ]
    if facts.management_url:
        lines.append(_row("RabbitMQ", f"{facts.management_url}   (management UI)", 4))
    lines += ["", f"  Ctrl-C or SIGTERM stops everything. Logs: {facts.log_format} on stdout."]
    return "\n".join(lines)

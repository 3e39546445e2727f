"""What `kadai up` starts (services/platform/plan.py), its start-up text (banner.py) and its log attribution
(logs.py): pure logic, no servers."""
from __future__ import annotations

import contextvars
import io
import json
import logging
from pathlib import Path

import pytest

from gateway.config.loader import load_registry
from services import catalog
from services.platform import banner, plan
from services.platform.backends import Backends, decide
from services.platform.logs import PLATFORM, PlatformConsoleFormatter, PlatformJsonFormatter, current_service
from tests.support import REPO, service, write_registry


def _registry(tmp_path: Path, services: dict[str, list[str]]) -> Path:
    return write_registry(
        tmp_path / "registry.yaml",
        {name: service(urls, f"/api/v1/{name.split('-')[0]}") for name, urls in services.items()},
    )


def test_the_shipped_registry_gives_the_spec_ports() -> None:
    planned = plan.plan(load_registry(REPO / "registry.yaml"))

    assert {item.name: [listener.port for listener in item.listeners] for item in planned} == {
        entry.name: [entry.port] for entry in catalog.CATALOG.values()
    }
    assert all(item.skipped is None for item in planned)
    assert {listener.host for item in planned for listener in item.listeners} == {"127.0.0.1"}


def test_services_outside_the_catalogue_or_without_instances_are_skipped_with_a_reason(tmp_path: Path) -> None:
    registry = _registry(
        tmp_path,
        {
            "user-service": ["http://127.0.0.1:4101", "http://localhost:4102/"],
            "billing": ["http://127.0.0.1:4103"],
            "order-service": [],
        },
    )

    planned = {item.name: item for item in plan.plan(load_registry(registry))}

    assert planned["user-service"].listeners == (plan.Listener("127.0.0.1", 4101), plan.Listener("localhost", 4102))
    assert planned["user-service"].skipped is None
    assert planned["billing"].skipped is not None and "not in the services catalogue" in planned["billing"].skipped
    assert planned["order-service"].skipped == "no instances in the registry"


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ("https://127.0.0.1:3443", "must be http://HOST:PORT"),
        ("http://127.0.0.1:3001/users", "has a path"),
    ],
    ids=["https", "path"],
)
def test_an_instance_this_process_cannot_serve_is_refused(tmp_path: Path, instance: str, problem: str) -> None:
    config = load_registry(_registry(tmp_path, {"user-service": [instance]}))

    with pytest.raises(plan.PlanError, match=problem):
        plan.plan(config)


def test_listener_urls_bracket_ipv6() -> None:
    assert plan.Listener("::1", 3001).url == "http://[::1]:3001"
    assert plan.Listener("127.0.0.1", 3001).url == "http://127.0.0.1:3001"


def test_load_imports_the_declaration_or_says_the_service_is_not_written_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalog.CATALOG, "empty-service", catalog.CatalogEntry("empty-service", "tests.platform", 1))
    monkeypatch.setitem(
        catalog.CATALOG, "ghost-service", catalog.CatalogEntry("ghost-service", "tests.platform.no_such_module", 2)
    )
    listeners = (plan.Listener("127.0.0.1", 1),)

    user = plan.load(plan.PlannedService("user-service", ("http://127.0.0.1:1",), listeners))
    empty = plan.load(plan.PlannedService("empty-service", ("http://127.0.0.1:1",), listeners))
    ghost = plan.load(plan.PlannedService("ghost-service", ("http://127.0.0.1:2",), listeners))

    assert user.declaration is not None and user.declaration.name == "user-service" and user.skipped is None
    assert empty.skipped == "empty-service is not implemented yet (tests.platform declares no SERVICE)"
    assert ghost.skipped == "ghost-service is not implemented yet (no module tests.platform.no_such_module)"


def test_services_reach_one_another_where_the_gateway_sends_their_requests(tmp_path: Path) -> None:
    registry = _registry(
        tmp_path, {"user-service": ["http://127.0.0.1:4101", "http://127.0.0.1:4102"], "billing": ["http://b:1"]}
    )

    assert plan.service_urls(load_registry(registry)) == {"USER_SERVICE_URL": "http://127.0.0.1:4101"}


# -- start-up text ------------------------------------------------------------------------------------------


def _facts(backends: Backends, management: str | None = None) -> banner.Facts:
    return banner.Facts(
        gateway_url="http://localhost:4000",
        registry="registry.yaml",
        routes=9,
        services=[
            banner.ServiceLine("user-service", ("http://127.0.0.1:3001",), "healthy", started=True),
            banner.ServiceLine("ai-service", (), "ai-service is not implemented yet", started=False),
        ],
        backends=backends,
        data_dir="/srv/kadai/var",
        events_prefix="kadai",
        management_url=management,
        seconds=0.42,
        pid=1234,
        log_format="JSON lines",
    )


def _rows(text: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in text.splitlines():
        label, _, rest = line.strip().partition("  ")
        rows.setdefault(label, rest.strip())
    return rows


def test_embedded_start_up_text_names_every_part_and_the_stand_ins() -> None:
    embedded = Backends(
        decide("REDIS_URL", "memory://", False, None),
        decide("AMQP_URL", "amqp://guest:secret@127.0.0.1:5672/", False, "ConnectionRefusedError: refused"),
    )

    text = banner.render(_facts(embedded, management="http://127.0.0.1:15672"))
    rows = _rows(text)

    assert text.splitlines()[0] == (
        "Kadai platform is up in 0.4s: the gateway and 1 service in one process (pid 1234), embedded backends"
    )
    assert rows["gateway"] == "http://localhost:4000   registry.yaml, 9 routes"
    assert rows["user-service"] == "http://127.0.0.1:3001   healthy"
    assert rows["ai-service"] == "not started: ai-service is not implemented yet"
    assert rows["rate limits"] == "in-process (embedded): REDIS_URL=memory://"
    assert rows["response cache"] == "off (it needs Redis)"
    assert rows["events"] == (
        "in-process bus (embedded): AMQP_URL amqp://guest:***@127.0.0.1:5672/ did not answer "
        "(ConnectionRefusedError: refused)"
    )
    assert rows["databases"] == "/srv/kadai/var/<service>.sqlite3"
    assert rows["API docs"] == "http://localhost:4000/api/docs"
    assert rows["dashboard"] == "http://localhost:4000/dashboard"
    assert rows["RabbitMQ"] == "http://127.0.0.1:15672   (management UI)"
    assert "secret" not in text


def test_external_start_up_text_names_the_servers() -> None:
    external = Backends(
        decide("REDIS_URL", "redis://:pw@cache:6379/0", False, None),
        decide("AMQP_URL", "amqp://u:pw@mq:5672/", False, None),
    )

    text = banner.render(_facts(external))
    rows = _rows(text)

    assert text.splitlines()[0].endswith("external backends")
    assert "embedded" not in text and "RabbitMQ  " not in text
    assert rows["rate limits"] == "Redis at redis://:***@cache:6379/0 (external, answered at start)"
    assert rows["events"] == "RabbitMQ at amqp://u:***@mq:5672/ (external, answered at start), prefix kadai"


@pytest.mark.parametrize(("host", "shown"), [("0.0.0.0", "localhost"), ("::", "localhost"), ("10.0.0.5", "10.0.0.5")])
def test_wildcard_addresses_are_shown_as_localhost(host: str, shown: str) -> None:
    assert banner.public_host(host) == shown


# -- log attribution ----------------------------------------------------------------------------------------


def test_each_part_of_the_process_logs_under_its_own_name() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PlatformJsonFormatter(PLATFORM))
    logger = logging.getLogger("tests.platform.attribution")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("from the platform")
        context = contextvars.copy_context()
        context.run(current_service.set, "order-service")
        context.run(logger.warning, "from order-service")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["service"], line["message"]) for line in lines] == [
        (PLATFORM, "from the platform"),
        ("order-service", "from order-service"),
    ]


def test_terminal_lines_name_the_part_after_the_clock() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "listening", None, None)
    context = contextvars.copy_context()
    context.run(current_service.set, "user-service")

    text = context.run(PlatformConsoleFormatter().format, record)

    _clock, part, level, message = text.split(maxsplit=3)
    assert (part, level, message) == ("user-service", "info", "listening")
    assert PlatformConsoleFormatter().format(record).split()[1] == PLATFORM

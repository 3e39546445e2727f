"""What `kadai service` and `kadai events dlq` do (the parser lives in gateway/cli.py)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TextIO, TypeVar

import orjson

from gateway.config.errors import ConfigError
from gateway.config.settings import mask_url
from gateway.logs import configure_logging
from services import catalog
from services.events.bus import DeadLetter
from services.events.rabbit import NoDeadLetterQueue, RabbitBus
from services.kit.credential import service_credential
from services.kit.settings import ServiceSettings, load_service_settings


def _settings(command: str) -> ServiceSettings | None:
    try:
        return load_service_settings()
    except ConfigError as exc:
        print(f"kadai {command}: {exc.render()}", file=sys.stderr)
        return None


def run_service(name: str, host: str, port: int | None) -> int:
    """`kadai service NAME`: run one service until SIGTERM/SIGINT."""
    from services.kit import server

    settings = _settings("service")
    if settings is None:
        return 2
    try:
        service = catalog.load(name)
    except catalog.UnknownService as exc:
        print(f"kadai service: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.platform.log_level, service.name)
    return server.run(service, settings, host, port or service.port)


def print_service_credential(name: str, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """`kadai service-credential NAME`: the service's KADAI_SERVICE_CREDENTIAL, derived from the
    KADAI_SERVICE_SECRET of this environment (the one user-service has). Only that variable is read: the
    operator running it needs none of the service's other settings."""
    environ = os.environ if environ is None else environ
    try:
        entry = catalog.entry(name)
    except catalog.UnknownService as exc:
        print(f"kadai service-credential: {exc}", file=sys.stderr)
        return 2
    secret = environ.get("KADAI_SERVICE_SECRET")
    if not secret:
        print("kadai service-credential: KADAI_SERVICE_SECRET is not set: credentials derive from it", file=sys.stderr)
        return 2
    print(service_credential(secret, entry.name), file=out or sys.stdout)
    return 0


def _bus(name: str, command: str) -> RabbitBus | None:
    settings = _settings(command)
    if settings is None:
        return None
    # The command reports a broker failure in one line of its own; the AMQP libraries would add theirs.
    for library in ("aiormq", "aio_pika"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    if settings.memory_bus:
        print(
            f"kadai {command}: AMQP_URL is memory://: the in-process bus keeps dead letters inside the running "
            "service, there is no broker to look at",
            file=sys.stderr,
        )
        return None
    try:
        entry = catalog.entry(name)
    except catalog.UnknownService as exc:
        print(f"kadai {command}: {exc}", file=sys.stderr)
        return None
    return RabbitBus(entry.name, settings)


T = TypeVar("T")


def _on_broker(bus: RabbitBus, command: str, work: Coroutine[Any, Any, T]) -> T | None:
    """Run one broker operation of a command; None (after one line on stderr, not a traceback) when it fails."""
    try:
        return asyncio.run(work)
    except NoDeadLetterQueue as exc:
        print(f"kadai {command}: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for an operator
        broker = mask_url(bus.settings.amqp_url)
        print(f"kadai {command}: broker at {broker}: {exc or type(exc).__name__}", file=sys.stderr)
    return None


def list_dead_letters(name: str, limit: int, as_json: bool, out: TextIO | None = None) -> int:
    """`kadai events dlq SERVICE`: the dead letters with their error and attempt count, left in place."""
    # sys.stdout as it is when called (a default argument would keep the one of the import).
    out = out or sys.stdout
    bus = _bus(name, "events dlq")
    if bus is None:
        return 2
    letters = _on_broker(bus, "events dlq", bus.dead_letters(limit))
    if letters is None:
        return 1
    if as_json:
        for letter in letters:
            out.write(orjson.dumps(_as_record(letter)).decode() + "\n")
        return 0
    print(f"{len(letters)} dead-lettered event(s) in {bus.topology.dead_letter_queue}", file=out)
    if letters:
        print(_table(letters), file=out)
    return 0


def replay_dead_letters(name: str, event_ids: Sequence[str] | None, out: TextIO | None = None) -> int:
    """`kadai events dlq SERVICE replay --id ID | --all`: back to the service's queue, with fresh attempts."""
    out = out or sys.stdout
    bus = _bus(name, "events dlq replay")
    if bus is None:
        return 2
    replayed = _on_broker(bus, "events dlq replay", bus.replay(event_ids))
    if replayed is None:
        return 1
    print(f"replayed {len(replayed)} event(s) to {bus.topology.queue}", file=out)
    for event_id in replayed:
        print(f"  {event_id}", file=out)
    missing = sorted(set(event_ids or ()) - set(replayed))
    if missing:
        print(f"kadai events dlq replay: not in the dead-letter queue: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _as_record(letter: DeadLetter) -> dict[str, object]:
    try:
        event: object = orjson.loads(letter.body)
    except orjson.JSONDecodeError:
        event = letter.body.decode("utf-8", "replace")
    return {
        "eventId": letter.event_id,
        "type": letter.type,
        "attempts": letter.attempts,
        "failedAt": letter.failed_at,
        "error": letter.error,
        "event": event,
    }


def _table(letters: Sequence[DeadLetter]) -> str:
    rows = [("EVENT ID", "TYPE", "ATTEMPTS", "FAILED AT", "ERROR")]
    rows += [(item.event_id, item.type, str(item.attempts), item.failed_at, item.error) for item in letters]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )

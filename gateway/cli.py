"""The `kadai` command: `kadai up`, `kadai gateway`, `kadai check`, `kadai routes`, `kadai token`,
`kadai service`, `kadai service-credential`, `kadai events`, `kadai demo`."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from gateway.config.errors import ConfigError
from gateway.config.loader import load_registry
from gateway.config.settings import Settings, load_settings
from gateway.logs import configure_logging
from gateway.runtime import pin_malloc_mmap_threshold

log = logging.getLogger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kadai", description="Kadai Gateway and platform tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole platform: the gateway and every service, in one process")
    up.add_argument("--registry", help="registry file (default: $KADAI_REGISTRY or ./registry.yaml)")
    up.add_argument("--host", default="0.0.0.0", help="address the gateway listens on (default: 0.0.0.0)")
    up.add_argument("--port", type=int, default=4000, help="port the gateway listens on (default: 4000)")

    gateway = commands.add_parser("gateway", help="run the API gateway")
    gateway.add_argument("--registry", help="registry file (default: $KADAI_REGISTRY or ./registry.yaml)")
    gateway.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    gateway.add_argument("--port", type=int, default=4000, help="port to listen on (default: 4000)")
    gateway.add_argument("--workers", type=_positive, default=1, help="worker processes sharing the port (default: 1)")
    gateway.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set for workers)")

    check = commands.add_parser("check", help="validate a registry file")
    check.add_argument("path", nargs="?", default=None, help="registry file (default: ./registry.yaml)")

    routes = commands.add_parser("routes", help="print the route table of a registry")
    routes.add_argument("--registry", help="registry file (default: $KADAI_REGISTRY or ./registry.yaml)")

    token = commands.add_parser("token", help="print a signed development JWT (refused in production)")
    token.add_argument("--sub", required=True, help="subject: the user ID")
    token.add_argument("--role", required=True, help="role claim, e.g. seller, admin, service")
    token.add_argument("--ttl", type=_positive, default=3600, help="lifetime in seconds (default: 3600)")
    token.add_argument("--email", help="email claim")

    service = commands.add_parser("service", help="run one platform service (see services/catalog.py)")
    service.add_argument("name", help="service name, e.g. user-service (or user)")
    service.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    service.add_argument("--port", type=int, default=None, help="port to listen on (default: the service's own)")

    credential = commands.add_parser(
        "service-credential",
        help="print a service's credential for user-service's service tokens (from $KADAI_SERVICE_SECRET)",
    )
    credential.add_argument("name", help="service name, e.g. order-service (or order)")

    events = commands.add_parser("events", help="inspect and repair event delivery")
    events_commands = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    dlq = events_commands.add_parser("dlq", help="list a service's dead-lettered events, or replay them")
    dlq.add_argument("service", help="the consuming service, e.g. notification-service")
    dlq.add_argument("--limit", type=_positive, default=100, help="list at most this many (default: 100)")
    dlq.add_argument("--json", action="store_true", help="one JSON object per line, event included")
    dlq_actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION")
    replay = dlq_actions.add_parser("replay", help="send dead letters back to the service with fresh attempts")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="EVENT_ID", help="an event ID (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter of the service")

    demo = commands.add_parser("demo", help="walk a running platform through the order flow, step by step")
    demo.add_argument("--url", default="http://127.0.0.1:4000", help="the gateway (default: http://127.0.0.1:4000)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("up", "service"):
        # The services' processes; the gateway alone stays flat without it and keeps glibc's faster
        # default on its hot path (see gateway/runtime.py).
        pin_malloc_mmap_threshold()  # before the process has built much of its heap
    if args.command in ("service", "service-credential", "events", "up", "demo"):
        return _services(args)  # services read their own settings (AMQP_URL may be memory://)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"kadai: {exc.render()}", file=sys.stderr)
        return 2
    if args.command == "check":
        return _check(args.path or settings.registry_path)
    if args.command == "routes":
        return _routes(args.registry or settings.registry_path)
    if args.command == "token":
        return _token(settings, args)
    return _gateway(settings, args)


def _check(path: str) -> int:
    try:
        config = load_registry(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    instances = sum(len(service.instances) for service in config.services.values())
    print(f"{path}: OK ({len(config.services)} services, {len(config.routes)} routes, {instances} instances)")
    return 0


def _routes(path: str) -> int:
    from gateway.route_listing import render

    try:
        config = load_registry(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(render(config))
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.tokens import TokenRefused, mint_token

    try:
        print(mint_token(settings, args.sub, args.role, ttl=args.ttl, email=args.email))
    except TokenRefused as exc:
        print(f"kadai token: {exc}", file=sys.stderr)
        return 2
    return 0


def _services(args: argparse.Namespace) -> int:
    from services import commands

    if args.command == "up":
        from services.platform import runner

        return runner.run(runner.UpOptions(args.registry, args.host, args.port))
    if args.command == "demo":
        from services.platform import demo

        return demo.run(args.url)
    if args.command == "service":
        return commands.run_service(args.name, args.host, args.port)
    if args.command == "service-credential":
        return commands.print_service_credential(args.name)
    if args.dlq_action == "replay":
        return commands.replay_dead_letters(args.service, None if args.all else args.ids)
    return commands.list_dead_letters(args.service, args.limit, args.json)


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import server

    configure_logging(settings.log_level)
    registry = args.registry or settings.registry_path
    settings = dataclasses.replace(settings, registry_path=registry)
    try:
        load_registry(registry)  # fail before binding, with the file's own errors
    except ConfigError as exc:
        log.error("cannot start: invalid registry", extra={"fields": {"error": exc.render()}})
        print(exc.render(), file=sys.stderr)
        return 1
    if args.workers > 1:
        return server.run_workers(settings, registry, args.host, args.port, args.workers)
    try:
        return server.run_single(settings, registry, args.host, args.port, reuse_port=args.reuse_port)
    except OSError as exc:
        log.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1

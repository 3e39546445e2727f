"""`kadai up`: the gateway and every catalogued service of the registry in one process and one event loop,
each on its own aiohttp AppRunner and sites, on external or embedded backends (services/platform/backends.py).

Start: settings validated -> backends probed -> services started (each on its registry ports) -> gateway
-> the gateway's health poller finds the services -> start-up text on stderr. SIGTERM or SIGINT: health
answers 503 (for KADAI_DRAIN_DELAY), the gateway drains its in-flight requests, then the services drain
theirs and their event handlers and flush their outboxes; exit 0. SIGHUP re-reads the registry.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO, TypeVar

from aiohttp import web

from gateway.app import Gateway, create_app
from gateway.config.errors import ConfigError
from gateway.config.loader import load_registry
from gateway.config.schema import RegistryConfig
from gateway.config.settings import Settings, load_settings
from gateway.dispatch import use_direct_dispatch
from gateway.logs import log_fields
from gateway.protocol import use_envelope_errors
from gateway.resources import Resources
from gateway.routing import InstanceState
from gateway.runtime import settle_garbage_collector
from services.kit.app import build_app
from services.kit.db import MigrationError
from services.kit.settings import ServiceSettings, load_service_settings
from services.platform import backends as backend_probes
from services.platform import banner, plan
from services.platform.backends import Backends
from services.platform.logs import PLATFORM, current_service
from services.platform.logs import configure as configure_logging

log = logging.getLogger("services.platform")

GATEWAY = "api-gateway"
COMPONENT = "platform"
"""Name of the platform's report in the gateway's /api/v1/health/detailed components."""
HEALTHY_WAIT = 10.0
"""Longest wait at start for the gateway's first health polls to find the services healthy."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UpOptions:
    registry: str | None
    host: str
    port: int


@dataclass(slots=True)
class RunningService:
    planned: plan.PlannedService
    runner: web.AppRunner
    context: contextvars.Context


class StartFailed(Exception):
    """A part of the platform could not start; the message says which and why."""


def in_context(name: str) -> contextvars.Context:
    """A context whose tasks log as `name` (services/platform/logs.py)."""
    context = contextvars.copy_context()
    context.run(current_service.set, name)
    return context


async def run_in(context: contextvars.Context, work: Callable[[], Awaitable[T]]) -> T:
    """Await work() in a task of `context`: everything it starts (sites, consumers, relays) inherits it."""
    return await asyncio.create_task(work(), context=context)  # type: ignore[arg-type]


class Platform:
    def __init__(
        self,
        options: UpOptions,
        registry: str,
        config: RegistryConfig,
        planned: list[plan.PlannedService],
        backends: Backends,
        gateway_settings: Settings,
        service_settings: ServiceSettings,
    ) -> None:
        self.options = options
        self.registry = registry
        self.config = config
        self.planned = planned
        self.backends = backends
        self.gateway_settings = gateway_settings
        self.service_settings = service_settings
        self.services: list[RunningService] = []
        self.gateway: Gateway | None = None
        self.gateway_runner: web.AppRunner | None = None
        self.gateway_context = in_context(GATEWAY)
        self.stopping = False

    # -- start -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Services first, so the gateway's first health polls find them; StartFailed undoes what started."""
        try:
            await self._start_services()
            await run_in(self.gateway_context, self._start_gateway)
        except BaseException:
            await self.stop()
            raise

    async def _start_services(self) -> None:
        wanted = [service for service in self.planned if service.skipped is None]
        contexts = [in_context(service.name) for service in wanted]
        results = await asyncio.gather(
            *(
                run_in(context, functools.partial(self._start_service, service))
                for service, context in zip(wanted, contexts, strict=True)
            ),
            return_exceptions=True,
        )
        failures = []
        for service, context, result in zip(wanted, contexts, results, strict=True):
            if isinstance(result, web.AppRunner):
                self.services.append(RunningService(service, result, context))
            elif isinstance(result, BaseException):
                failures.append(_start_problem(service, result))
        if failures:
            raise StartFailed("; ".join(failures))

    async def _start_service(self, service: plan.PlannedService) -> web.AppRunner:
        assert service.declaration is not None
        settings = self.service_settings
        runner = web.AppRunner(
            build_app(service.declaration, settings),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=settings.platform.drain_timeout,
        )
        try:
            await runner.setup()
            use_envelope_errors(runner)  # requests aiohttp's parser rejects get the error envelope too
            for listener in service.listeners:
                await web.TCPSite(runner, listener.host, listener.port).start()
        except BaseException:
            await runner.cleanup()  # closes what started before the failure (cleanup_ctx in reverse)
            raise
        where = ", ".join(listener.url for listener in service.listeners)
        log.info(f"{service.name} listening on {where}", extra=log_fields(pid=os.getpid()))
        return runner

    async def _start_gateway(self) -> None:
        settings = self.gateway_settings
        resources = Resources(settings)
        resources.components[COMPONENT] = self.report
        try:
            self.gateway = gw = Gateway(settings, self.registry, resources)
        except ConfigError as exc:  # the file changed since it was checked, and not for the better
            raise StartFailed(f"{GATEWAY}: {exc.render()}") from None
        # As in `kadai gateway`: a client that hangs up cancels its upstream call, and request bodies are
        # forwarded as encoded (never decompressed).
        runner = web.AppRunner(
            create_app(gw),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=settings.drain_timeout,
            handler_cancellation=True,
            auto_decompress=False,
        )
        await runner.setup()
        self.gateway_runner = runner
        use_envelope_errors(runner, header_timeout=settings.header_timeout)
        use_direct_dispatch(runner, gw)
        host, port = self.options.host, self.options.port
        try:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except OSError as exc:
            raise StartFailed(f"{GATEWAY}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        log.info(
            f"gateway listening on http://{host}:{port}",
            extra=log_fields(pid=os.getpid(), routes=len(gw.table.routes), settings=settings.public_view()),
        )

    async def wait_healthy(self, timeout: float = HEALTHY_WAIT) -> None:
        """Until the gateway's health poller has found every started, polled service healthy (bounded: the
        start-up text then shows each one's state as it is)."""
        assert self.gateway is not None
        names = {running.planned.name for running in self.services}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            services = [s for name, s in self.gateway.table.services.items() if name in names and s.health.enabled]
            if all(i.state is InstanceState.HEALTHY for s in services for i in s.instances):
                return
            await asyncio.sleep(0.05)

    # -- stop ------------------------------------------------------------------------------------------

    async def drain(self, stop: asyncio.Event) -> None:
        """Health turns 503 for KADAI_DRAIN_DELAY (a second signal cuts it short), then stop()."""
        if self.gateway is not None:
            self.gateway.resources.draining = True
            delay = self.gateway_settings.drain_delay
            if delay > 0:
                log.info("shutting down: health reports draining", extra=log_fields(delay=delay))
                stop.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await self.stop()

    async def stop(self) -> None:
        """The gateway first (its in-flight requests may still need the services), then every service."""
        if self.stopping:
            return
        self.stopping = True
        if self.gateway_runner is not None:
            log.info(
                "shutting down: the gateway drains in-flight requests",
                extra=log_fields(timeout=self.gateway_settings.drain_timeout),
            )
            await run_in(self.gateway_context, self.gateway_runner.cleanup)
        if self.services:
            log.info(
                "shutting down: the services drain requests and event handlers, then flush their outboxes",
                extra=log_fields(timeout=self.service_settings.platform.drain_timeout),
            )
            results = await asyncio.gather(
                *(run_in(running.context, running.runner.cleanup) for running in self.services),
                return_exceptions=True,
            )
            for running, result in zip(self.services, results, strict=True):
                if isinstance(result, BaseException):
                    log.error(f"{running.planned.name} did not stop cleanly: {result!r}")

    # -- reports ---------------------------------------------------------------------------------------

    def report(self) -> dict[str, object]:
        """The platform's part of /api/v1/health/detailed: which backends, what runs in this process."""
        redis, amqp = self.backends.redis, self.backends.amqp
        embedded_redis = redis.mode == "embedded"
        return {
            "mode": self.backends.mode,
            "process": "single",
            "pid": os.getpid(),
            "backends": {"redis": redis.describe(), "amqp": amqp.describe()},
            "rateLimiter": "in-process" if embedded_redis else "redis",
            "responseCache": "off" if embedded_redis else "redis",
            "eventBus": "in-process" if amqp.mode == "embedded" else "rabbitmq",
            "services": {
                running.planned.name: {"listening": [listener.url for listener in running.planned.listeners]}
                for running in self.services
            },
            "notStarted": {service.name: service.skipped for service in self.planned if service.skipped is not None},
        }

    def service_lines(self) -> list[banner.ServiceLine]:
        assert self.gateway is not None
        table = self.gateway.table.services
        running = {item.planned.name for item in self.services}
        lines = []
        for service in self.planned:
            if service.name not in running:
                lines.append(banner.ServiceLine(service.name, (), service.skipped or "not started", started=False))
                continue
            instances = table[service.name].instances if service.name in table else ()
            states = sorted({_state(instance.state.value, instance.last_error) for instance in instances})
            where = tuple(listener.url for listener in service.listeners)
            lines.append(banner.ServiceLine(service.name, where, ", ".join(states) or "unknown", started=True))
        return lines


def _state(state: str, error: str | None) -> str:
    if state == InstanceState.UNHEALTHY.value and error:
        return f"unhealthy ({error})"
    if state == InstanceState.UNKNOWN.value:
        return "not checked yet"
    return state


def _start_problem(service: plan.PlannedService, exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = ", ".join(f"{listener.host}:{listener.port}" for listener in service.listeners)
        return f"{service.name}: cannot listen on {where}: {exc.strerror or exc}"
    if isinstance(exc, MigrationError | ConfigError | sqlite3.Error):
        return f"{service.name}: {exc}"
    log.error(f"{service.name} failed to start", exc_info=exc)
    return f"{service.name}: {exc.__class__.__name__}: {exc}"


# -- the command -------------------------------------------------------------------------------------------


def run(options: UpOptions, environ: dict[str, str] | None = None, out: TextIO | None = None) -> int:
    """`kadai up`: 0 after a clean stop, 1 when something cannot start, 2 for bad settings."""
    out = out or sys.stderr
    env = dict(os.environ if environ is None else environ)
    try:
        # The services' loader checks everything the gateway's does (bar AMQP_URL, which it checks itself).
        initial = load_service_settings(env)
    except ConfigError as exc:
        print(f"kadai up: {exc.render()}", file=out)
        return 2
    registry = options.registry or initial.platform.registry_path
    try:
        config = load_registry(registry)
        planned = plan.plan(config)
    except ConfigError as exc:
        print(exc.render(), file=out)
        return 1
    except plan.PlanError as exc:
        print(f"kadai up: {exc}", file=out)
        return 1
    configure_logging(initial.platform.log_level)
    current_service.set(PLATFORM)
    return asyncio.run(_up(options, env, registry, config, planned, initial.platform.production, out))


async def _up(
    options: UpOptions,
    env: dict[str, str],
    registry: str,
    config: RegistryConfig,
    planned: list[plan.PlannedService],
    production: bool,
    out: TextIO,
) -> int:
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        backends = await backend_probes.resolve(env, production)
        for backend in (backends.redis, backends.amqp):
            # A server that did not answer is worth a warning whichever way it went; memory:// is a choice.
            level = logging.WARNING if backend.reachable is False else logging.INFO
            used = "the embedded backend" if backend.mode == "embedded" else backend.shown_url
            log.log(level, f"{backend.variable}: {used}", extra=log_fields(reason=backend.reason))
        env = {**env, **backends.overrides(), **plan.service_urls(config)}
        try:
            # As `kadai gateway` does: status and logs name the registry actually in use.
            gateway_settings = replace(load_settings(env), registry_path=registry)
            service_settings = load_service_settings(env)
            planned = [plan.load(service) for service in planned]
        except ConfigError as exc:
            print(f"kadai up: {exc.render()}", file=out)
            return 2
        platform = Platform(options, registry, config, planned, backends, gateway_settings, service_settings)
        try:
            await platform.start()
        except StartFailed as exc:
            print(f"kadai up: cannot start: {exc}", file=out)
            return 1
        assert platform.gateway is not None
        loop.add_signal_handler(signal.SIGHUP, platform.gateway.watcher.reload_now)
        if not stop.is_set():
            await platform.wait_healthy()
            management = None
            if backends.amqp.mode == "external":
                url = backend_probes.management_url(backends.amqp.url)
                management = url if await backend_probes.port_answers(url) else None
            facts = _facts(platform, options, service_settings, management, time.monotonic() - began)
            print(banner.render(facts), file=out, flush=True)
        settle_garbage_collector()
        await stop.wait()
        # Handlers stay installed through the drain: a second signal must not cut finishing work short.
        await platform.drain(stop)
        log.info("platform stopped")
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def _facts(
    platform: Platform, options: UpOptions, settings: ServiceSettings, management: str | None, seconds: float
) -> banner.Facts:
    return banner.Facts(
        gateway_url=f"http://{banner.public_host(options.host)}:{options.port}",
        registry=platform.registry,
        routes=len(platform.config.routes),
        services=platform.service_lines(),
        backends=platform.backends,
        data_dir=str(Path(settings.data_dir).resolve()),
        events_prefix=settings.events_prefix,
        management_url=management,
        seconds=seconds,
        pid=os.getpid(),
        log_format="readable text" if sys.stdout.isatty() else "JSON lines",
    )

"""Run one service process: listen, serve until SIGTERM/SIGINT, then shut down gracefully.

Shutdown: health answers 503 "draining" (for KADAI_DRAIN_DELAY, 0 by default, the listener stays open so
that health checks see it), the service stops taking events, the listener closes, in-flight
requests and event handlers get up to KADAI_DRAIN_TIMEOUT to finish, the outbox relay publishes what
they committed, and the process exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3

from aiohttp import web

from gateway.config.errors import ConfigError
from gateway.logs import log_fields
from gateway.protocol import use_envelope_errors
from gateway.runtime import keep_serving_while_draining, settle_garbage_collector
from services.kit.app import build_app
from services.kit.db import MigrationError
from services.kit.keys import RUNTIME_KEY
from services.kit.service import Service
from services.kit.settings import ServiceSettings

log = logging.getLogger("services.server")


async def serve(service: Service, settings: ServiceSettings, host: str, port: int) -> None:
    app = build_app(service, settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=settings.platform.drain_timeout)
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()  # closes what started before the failure (cleanup_ctx in reverse)
        raise
    # Requests aiohttp's parser rejects get the error envelope too.
    use_envelope_errors(runner)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            f"{service.name} listening on http://{host}:{port}",
            extra=log_fields(pid=os.getpid(), settings=settings.public_view()),
        )
        settle_garbage_collector()
        await stop.wait()
        app[RUNTIME_KEY].draining = True  # health answers 503 "draining" from here on
        delay = settings.platform.drain_delay
        if delay > 0:
            log.info("shutting down: health reports draining", extra=log_fields(delay=delay))
        await keep_serving_while_draining(stop, delay)
        log.info("shutting down: draining", extra=log_fields(timeout=settings.platform.drain_timeout))
    finally:
        # Handlers stay installed through the drain: a second signal must not kill finishing work.
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info(f"{service.name} stopped")


def run(service: Service, settings: ServiceSettings, host: str, port: int) -> int:
    """Serve until a signal; exit status 1 when the service cannot start."""
    try:
        asyncio.run(serve(service, settings, host, port))
    except (MigrationError, ConfigError, sqlite3.Error) as exc:
        log.error(f"{service.name} cannot start: {exc}")
        return 1
    except OSError as exc:
        log.error(f"{service.name} cannot start: {exc.strerror or exc}", extra=log_fields(host=host, port=port))
        return 1
    return 0

"""Run the gateway: one process, or a supervisor with N workers sharing the port (SO_REUSEPORT).

SIGTERM or SIGINT: stop accepting connections, let in-flight requests finish within the drain timeout,
then exit 0. SIGHUP: reload registry.yaml now.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings
from gateway.logs import log_fields

log = logging.getLogger("gateway.server")

_CRASH_LOOP_SECONDS = 5.0


async def serve(
    settings: Settings, registry: str | Path, host: str, port: int, *, reuse_port: bool = False
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    gw = Gateway(settings, registry)
    app = create_app(gw)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=settings.drain_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gw.watcher.reload_now)
        log.info(
            f"gateway listening on http://{host}:{port}",
            extra=log_fields(
                pid=os.getpid(),
                services=len(gw.table.services),
                routes=len(gw.table.routes),
                settings=gw.resources.settings.public_view(),
            ),
        )
        await stop.wait()
        gw.resources.draining = True
        if settings.drain_delay > 0:
            # Keep serving while health says 503, so load balancers take this instance out first.
            log.info("shutting down: health reports draining", extra=log_fields(delay=settings.drain_delay))
            stop.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.drain_delay)  # a second signal cuts it short
        log.info("shutting down: draining in-flight requests", extra=log_fields(timeout=settings.drain_timeout))
    finally:
        # Handlers stay installed through the drain: a second SIGTERM (a process group signalled
        # twice, the supervisor forwarding one) must not kill requests that are finishing.
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("gateway stopped")


def _event_loop_policy() -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_single(settings: Settings, registry: str | Path, host: str, port: int, reuse_port: bool = False) -> int:
    _event_loop_policy()
    asyncio.run(serve(settings, registry, host, port, reuse_port=reuse_port))
    return 0


def run_workers(settings: Settings, registry: str | Path, host: str, port: int, workers: int) -> int:
    """Start N worker processes bound with SO_REUSEPORT, restart any that dies, stop them all on a signal."""
    metrics_dir = tempfile.mkdtemp(prefix="kadai-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    command = [
        sys.executable, "-m", "gateway", "gateway",
        "--registry", str(registry), "--host", host, "--port", str(port), "--workers", "1", "--reuse-port",
    ]
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        received.append(signum)

    def forward_hup(_signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, forward_hup)
    def spawn() -> subprocess.Popen[bytes]:
        # Workers start with SIGHUP ignored until their event loop installs the reload handler:
        # a SIGHUP forwarded while one is still importing must not kill it.
        return subprocess.Popen(command, env=env, preexec_fn=_ignore_sighup)  # noqa: PLW1509

    children = [spawn() for _ in range(workers)]
    started = [time.monotonic()] * workers
    log.info("gateway supervisor started", extra=log_fields(workers=workers, pids=[c.pid for c in children]))
    exit_code = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for index, child in enumerate(children):
                code = child.poll()
                if code is None or stopping:
                    continue
                _mark_dead(child.pid, metrics_dir)
                if time.monotonic() - started[index] < _CRASH_LOOP_SECONDS:
                    # Dying right after start (port taken, bad config) would only repeat: give up.
                    log.error("worker failed at start-up; stopping", extra=log_fields(pid=child.pid, code=code))
                    stopping, exit_code = True, 1
                    break
                log.error("worker exited; starting another", extra=log_fields(pid=child.pid, code=code))
                children[index] = spawn()
                started[index] = time.monotonic()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        failed = 0
        for child in children:
            try:
                code = child.wait(timeout=settings.drain_timeout + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            failed += code != 0
        return 1 if failed or exit_code else 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        for path in Path(metrics_dir).glob("*"):
            path.unlink(missing_ok=True)
        os.rmdir(metrics_dir)


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)

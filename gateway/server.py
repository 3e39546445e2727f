"""Run the gateway: one process, or a supervisor with N workers sharing the port (SO_REUSEPORT).

SIGTERM or SIGINT: stop accepting connections, let in-flight requests finish within the drain timeout,
then exit 0. SIGHUP: reload registry.yaml now.
"""
from __future__ import annotations

import asyncio
import ctypes
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
from gateway.dispatch import use_direct_dispatch
from gateway.event_loop import loop_factory, running_event_loop
from gateway.logs import log_fields
from gateway.protocol import use_envelope_errors
from gateway.runtime import keep_serving_while_draining, settle_garbage_collector

log = logging.getLogger("gateway.server")

_CRASH_LOOP_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


async def serve(
    settings: Settings, registry: str | Path, host: str, port: int, *, reuse_port: bool = False
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    gw = Gateway(settings, registry)
    app = create_app(gw)
    # handler_cancellation: a client that hangs up cancels its request, upstream call included, instead
    # of leaving it to hold a pooled connection until the route's timeout. auto_decompress=False: a
    # request body goes upstream as the client encoded it (and max_body_size counts the bytes sent).
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.drain_timeout,
        handler_cancellation=True,
        auto_decompress=False,
    )
    await runner.setup()
    use_envelope_errors(runner, header_timeout=settings.header_timeout)
    use_direct_dispatch(runner, gw)
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
                eventLoop=running_event_loop(),
                services=len(gw.table.services),
                routes=len(gw.table.routes),
                settings=gw.resources.settings.public_view(),
            ),
        )
        settle_garbage_collector()
        await stop.wait()
        gw.resources.draining = True
        if settings.drain_delay > 0:
            log.info("shutting down: health reports draining", extra=log_fields(delay=settings.drain_delay))
        await keep_serving_while_draining(stop, settings.drain_delay)
        log.info("shutting down: draining in-flight requests", extra=log_fields(timeout=settings.drain_timeout))
    finally:
        # Handlers stay installed through the drain: a second SIGTERM (a process group signalled
        # twice, the supervisor forwarding one) must not kill requests that are finishing.
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("gateway stopped")


def run_single(settings: Settings, registry: str | Path, host: str, port: int, reuse_port: bool = False) -> int:
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings, registry, host, port, reuse_port=reuse_port))
    return 0


def run_workers(settings: Settings, registry: str | Path, host: str, port: int, workers: int) -> int:
    """Start N worker processes bound with SO_REUSEPORT, restart any that dies, stop them all on a signal.

    Workers run in a session of their own, so a signal to the supervisor's process group (Ctrl-C, a
    service manager) reaches them once, through the supervisor; they die with it if it is killed.
    """
    metrics_dir = tempfile.mkdtemp(prefix="kadai-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    command = [
        sys.executable, "-m", "gateway", "gateway",
        "--registry", str(registry), "--host", host, "--port", str(port), "--workers", "1", "--reuse-port",
    ]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:  # forwarded at once, and only once: a second SIGTERM would cut the drain delay
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
        stopping = True

    def forward_hup(_signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signal.SIGHUP)

    def spawn() -> subprocess.Popen[bytes]:
        parent = os.getpid()
        return subprocess.Popen(  # noqa: PLW1509 - the preexec work is async-signal-safe enough: no locks
            command, env=env, start_new_session=True, preexec_fn=lambda: _prepare_worker(parent)
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, forward_hup)
    children.extend(spawn() for _ in range(workers))
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
                    on_signal(signal.SIGTERM, None)
                    exit_code = 1
                    break
                log.error("worker exited; starting another", extra=log_fields(pid=child.pid, code=code))
                children[index] = spawn()
                started[index] = time.monotonic()
        # One deadline for all: every worker drains at the same time, delay included.
        deadline = time.monotonic() + settings.drain_delay + settings.drain_timeout + 5
        failed = 0
        for child in children:
            try:
                code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
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


def _prepare_worker(parent: int) -> None:
    """Runs in the worker between fork and exec."""
    # SIGHUP is ignored until the worker's event loop installs the reload handler: one forwarded while
    # it is still importing must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when the supervisor dies (it is in another session)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: a killed supervisor leaves its workers to the service manager
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)

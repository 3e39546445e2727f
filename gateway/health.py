"""Active health checks: poll each instance's health endpoint and take failing instances out of routing.

Every service's `health:` settings say what to poll, how often and how many results in a row change an
instance's state. Polls run as their own tasks, concurrently and bounded, never on the request path.
The poller reads the live route table on every tick, so instances added by a registry reload are
polled at once and removed ones are forgotten (their gauge series too); when a reload switches a
service's polling off, its instances go back to "unknown", and so into routing. A new instance is
polled right away; until its first result it counts as routable ("unknown"), and its first result
decides its state.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from gateway.logs import log_fields
from gateway.resources import Resources
from gateway.routing import Instance, InstanceState, RouteTable, Service
from gateway.telemetry import multiprocess_mode

log = logging.getLogger("gateway.health")

_TICK = 0.25
"""How often the poller looks for due checks; bounds how late a check can start."""
_MAX_CONCURRENT = 64
_USER_AGENT = "kadai-gateway-health"
_BODY_READ_LIMIT = 64 * 1024


class HealthPoller:
    def __init__(self, table: Callable[[], RouteTable], resources: Resources) -> None:
        self.table = table
        self.resources = resources
        self.due: dict[tuple[str, str], float] = {}
        self.running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.limit = asyncio.Semaphore(_MAX_CONCURRENT)

    async def run(self) -> None:
        try:
            while True:
                self.tick(time.monotonic())
                await asyncio.sleep(_TICK)
        finally:
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    def tick(self, now: float) -> None:
        live: set[tuple[str, str]] = set()
        unpolled: dict[tuple[str, str], Instance] = {}
        for service in self.table().services.values():
            for instance in service.instances:
                key = (service.name, instance.url)
                if not service.health.enabled:
                    unpolled[key] = instance
                    continue
                live.add(key)
                if key in self.running or self.due.get(key, now) > now:
                    continue
                self.due[key] = now + service.health.interval
                task = asyncio.create_task(self.check(service, instance), name=f"health {instance.url}")
                self.running[key] = task
                task.add_done_callback(lambda task, key=key: self._done(key, task))
        for key in [key for key in self.due if key not in live]:
            self.forget(key, unpolled.get(key))

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self.running.get(key) is task:  # not a newer poll of an instance forgotten and polled again
            del self.running[key]

    def forget(self, key: tuple[str, str], instance: Instance | None) -> None:
        """Stop polling an instance that a reload removed (instance None), or whose service's polling it
        switched off."""
        del self.due[key]
        task = self.running.pop(key, None)
        if task is not None:
            task.cancel()
        # A series left at 0 would keep an "instance down" alert firing for an instance nobody polls.
        gauge = self.resources.metrics.instance_healthy
        if multiprocess_mode():
            gauge.labels(*key).set(1)  # prometheus-client cannot remove a series in multiprocess mode
        else:
            gauge.remove(*key)
        if instance is not None and instance.state is not InstanceState.UNKNOWN:
            # Its last verdict would never be revisited: an unhealthy one would stay out of routing for good.
            instance.state = InstanceState.UNKNOWN
            instance.passes = instance.fails = 0
            instance.checked_at = instance.last_error = None
            log.info(
                "health checks of %s switched off; instance %s is routable", key[0], instance.url,
                extra=log_fields(service=key[0], instance=instance.url, state=instance.state.value),
            )

    async def check(self, service: Service, instance: Instance) -> None:
        session = self.resources.session
        if session is None:
            return
        health = service.health
        error: str | None = None
        async with self.limit:
            try:
                async with session.get(
                    instance.url + health.path,
                    timeout=aiohttp.ClientTimeout(total=health.timeout),
                    headers={"User-Agent": _USER_AGENT},
                    allow_redirects=False,
                ) as response:
                    # The status decides; a little of the body is read so the connection can be reused,
                    # never all of an endless or huge one (the rest is dropped with the connection).
                    await response.content.read(_BODY_READ_LIMIT)
                    if not 200 <= response.status < 300:
                        error = f"status {response.status}"
            except TimeoutError:
                error = f"no answer within {health.timeout:g}s"
            except aiohttp.ClientError as exc:
                error = f"{exc.__class__.__name__}: {exc}"
        self.record(service, instance, error)

    def record(self, service: Service, instance: Instance, error: str | None) -> None:
        """Apply one poll result: thresholds decide when the state flips."""
        metrics = self.resources.metrics
        instance.checked_at = time.time()
        instance.last_error = error
        before = instance.state
        health = service.health
        if error is None:
            instance.passes += 1
            instance.fails = 0
            if before is InstanceState.UNKNOWN or (
                before is InstanceState.UNHEALTHY and instance.passes >= health.healthy_threshold
            ):
                instance.state = InstanceState.HEALTHY
        else:
            instance.fails += 1
            instance.passes = 0
            if before is InstanceState.UNKNOWN or (
                before is InstanceState.HEALTHY and instance.fails >= health.unhealthy_threshold
            ):
                instance.state = InstanceState.UNHEALTHY
        metrics.health_checks.labels(service.name, instance.url, "ok" if error is None else "failed").inc()
        metrics.instance_healthy.labels(service.name, instance.url).set(1 if instance.routable else 0)
        if instance.state is not before:
            fields = log_fields(service=service.name, instance=instance.url, state=instance.state.value, error=error)
            if instance.state is InstanceState.UNHEALTHY:
                log.warning("instance %s of %s taken out of routing: %s", instance.url, service.name, error, extra=fields)
            elif before is InstanceState.UNHEALTHY:
                log.info("instance %s of %s back in routing", instance.url, service.name, extra=fields)
